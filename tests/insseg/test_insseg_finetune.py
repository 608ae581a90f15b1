"""Mask R-CNN fine-tuning and evaluation end to end on CPU, at the generated frames' 60×80, via API and CLI."""

from __future__ import annotations

import json
import math
import re
import shutil
from unittest import mock

import numpy as np
import pytest
import torch
import torchvision
from torchvision.transforms.v2 import functional as TF

from pri3d.cli import main
from pri3d.data.insseg import build_insseg_dataset
from pri3d.engine import trainer as trainer_module
from pri3d.engine.checkpoint import latest_checkpoint, load_checkpoint
from pri3d.engine.config import to_dict
from pri3d.io.atomic import atomic_write
from pri3d.io.images import IMAGENET_MEAN, IMAGENET_STD
from pri3d.tasks import insseg as insseg_task
from pri3d.tasks.insseg import evaluate_insseg, finetune_insseg
from pri3d.tasks.insseg_config import insseg_config
from pri3d.tasks.pretrain_config import PretrainRunConfig
from pri3d.tasks.semseg_config import SemsegRunConfig

#: Every image gets 10 detections (score threshold 0) from 100 proposals: the COCO results path runs
#: whatever the barely trained scores are, at a fraction of the recipe's 1000-proposal test cost.
EVAL_SETTINGS = ["finetune.score_thresh_test=0.0", "finetune.detections_per_image=10", "finetune.proposals_test=100",
                 "finetune.eval_batch_size=4", "train.workers=0"]  # fmt: skip


def _run(root, coco_dir, log_dir, *extra):
    return [
        "dataset=scannet",
        f"dataset.path={root}",
        f"dataset.annotations={coco_dir}",
        "train.batch_size=2",
        "scheduler.auto_scale=false",
        "train.threads=1",
        "logging.tensorboard=false",
        "train.report_batch=1",
        f"train.log_dir={log_dir}",
        *EVAL_SETTINGS,
        *extra,
    ]


def _calibrated_resnet50(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """A random ResNet-50 whose BatchNorm statistics are measured on ``images`` [B, 3, H, W] in [0, 1].

    Frozen BatchNorm then normalises as a pre-trained backbone's does; with the identity statistics
    of a fresh ResNet the activations grow by orders of magnitude and training diverges at once.
    """
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average: the statistics of this one batch
    with torch.no_grad():
        net(TF.normalize(images, IMAGENET_MEAN, IMAGENET_STD))
    return net.state_dict()


@pytest.fixture(scope="module")
def finetuned(insseg_root, coco_dir, tmp_path_factory):
    """8 steps on one fixed batch (2 frames, no flip, one scale) from a torchvision-layout ResNet-50 file,
    so that the loss must fall; evaluation after step 4 (period 4, one step per epoch) and at the end. Also
    the files the run wrote through `atomic_write`, relative to its folder."""
    base = tmp_path_factory.mktemp("insseg_finetune")
    document = json.loads((coco_dir / "scannet_train.coco.json").read_text())
    busiest = sorted(
        document["images"], key=lambda i: -sum(a["image_id"] == i["id"] for a in document["annotations"])
    )
    keep = {image["id"] for image in busiest[:2]}
    document["images"] = [i for i in document["images"] if i["id"] in keep]
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] in keep]
    (base / "two.coco.json").write_text(json.dumps(document))
    frames = build_insseg_dataset("ScanNet", insseg_root, coco_dir, "train", train=False)
    images = torch.stack([frames[i]["image"] for i in range(0, len(frames), 2)])
    torch.save(_calibrated_resnet50(images), base / "r50_export.pth")
    config = insseg_config(
        _run(
            insseg_root,
            base / "two.coco.json",
            base / "run",
            f"init={base / 'r50_export.pth'}",
            "train.max_steps=8",
            "train.checkpoint_every=5",
            "scheduler.warmup_steps=2",
            "optimizer.lr=0.001",
            "finetune.eval_period=4",
            "finetune.flip=false",
            "finetune.min_size_train=[60]",
        )
    )
    with (
        mock.patch.object(insseg_task, "atomic_write", wraps=atomic_write) as writes,
        mock.patch.object(trainer_module, "atomic_write", new=writes),  # config.yaml
    ):
        summary = finetune_insseg(config)
    written = {str(call.args[0].relative_to(base / "run")) for call in writes.call_args_list}
    return base, summary, written


@pytest.mark.slow
def test_finetune_trains_at_the_data_resolution_and_reports_coco_metrics(finetuned):
    base, summary, written = finetuned
    run = base / "run"
    assert json.loads((run / "results.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["input_sizes"] == {"min_size_train": [60], "min_size_test": 60, "max_size": 80}
    final = summary["final"]
    assert final["step"] == 8 and final["images"] == 2
    assert final["detections"] > 0  # score threshold 0: the RLE path is exercised
    for kind in ("bbox", "segm"):
        assert all(0 <= final[kind][n] <= 1 for n in ("AP", "AP50", "AP75"))
        assert all(v["AP50"] is None or 0 <= v["AP50"] <= 1 for v in final[kind]["per_class"].values())
    assert [r["step"] for r in summary["schedule"]] == [4]
    init = summary["init"]
    assert init["layout"] == "torchvision" and "fc.weight" in init["skipped"] and len(init["taken"]) == 318
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train/total_loss"] for m in lines if "train/total_loss" in m]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])  # one batch, seen 8 times
    assert {"train/loss_mask", "train/loss_classifier", "train/loss_objectness"} <= set(lines[0])
    # the final evaluation goes through the run's logger, like the periodic ones, once
    assert [m["step"] for m in lines if "val/bbox_AP50" in m] == [4, 8]
    log = (run / "train.log").read_text()
    assert log.count("eval step0000004 (step 4)") == 1 and log.count("eval final (step 8)") == 1
    # whole or not at all: a crash cannot leave a half-written result beside valid checkpoints
    assert written == {
        "config.yaml",
        "init_report.json",
        "eval/step0000004.json",
        "eval/final.json",
        "results.json",
    }
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert state["step"] == 8 and "detector.roi_heads.mask_predictor.mask_fcn_logits.weight" in state["model"]
    assert state["config"]["finetune"]["min_size_test"] == 60  # the resolved sizes travel with the checkpoint


@pytest.mark.slow
def test_eval_cli_reproduces_the_final_numbers_and_draws(finetuned, tmp_path, capsys):
    base, summary, _ = finetuned
    out = tmp_path / "eval.json"
    with mock.patch.object(insseg_task, "atomic_write", wraps=atomic_write) as writes:
        code = main(
            [
                "eval",
                "insseg",
                f"checkpoint={base / 'run'}",
                f"out={out}",
                "--save-vis",
                "2",
                "--device",
                "cpu",
            ]
        )
    assert code == 0 and [call.args[0] for call in writes.call_args_list] == [out]
    printed = capsys.readouterr().out
    assert "AP50" in printed and "report:" in printed
    report = json.loads(out.read_text())
    for kind in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75"):
            assert report[kind][name] == pytest.approx(summary["final"][kind][name])
        assert report[kind]["per_class"] == summary["final"][kind]["per_class"]
    assert len(report["figures"]) == 2 and all(p.endswith(".png") for p in report["figures"])
    from PIL import Image

    with Image.open(report["figures"][0]) as figure:
        assert figure.width > 2 * 80 and figure.height > 60  # enlarged 60×80 panels side by side


@pytest.mark.slow
def test_a_torchvision_state_dict_evaluates_too(finetuned, insseg_root, tmp_path):
    base, summary, _ = finetuned
    state = load_checkpoint(latest_checkpoint(base / "run" / "checkpoints"))["model"]
    plain = {k.removeprefix("detector."): v for k, v in state.items()}
    detector = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=19
    )
    result = detector.load_state_dict(plain, strict=False)  # FrozenBN has no num_batches_tracked counters
    assert not result.unexpected_keys and all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    torch.save(plain, tmp_path / "maskrcnn.pth")
    overrides = [
        "dataset=scannet",
        f"dataset.path={insseg_root}",
        f"dataset.annotations={base / 'two.coco.json'}",
        "finetune.min_size_test=60",
        "finetune.max_size=80",
        *EVAL_SETTINGS,
    ]
    report = evaluate_insseg(tmp_path / "maskrcnn.pth", overrides, out=tmp_path / "plain.json")
    assert report["segm"]["AP50"] == pytest.approx(summary["final"]["segm"]["AP50"])


def test_cli_errors_and_help(insseg_root, coco_dir, tmp_path, capsys):
    assert (
        main(
            [
                "finetune",
                "insseg",
                "dataset=scannet",
                f"dataset.path={insseg_root}",
                f"dataset.annotations={tmp_path}",
                "train.log_dir=" + str(tmp_path / "run"),
            ]
        )
        == 1
    )
    assert "write it with `pri3d coco scannet --split train" in capsys.readouterr().err
    missing_init = _run(insseg_root, coco_dir, tmp_path / "run", f"init={tmp_path / 'none.pth'}")
    assert main(["finetune", "insseg", *missing_init]) == 1
    assert re.search(r"finetune\.pretrain=.*none\.pth: file not found", capsys.readouterr().err)
    assert main(["eval", "insseg", "dataset=scannet"]) == 1
    assert "checkpoint=PATH is required" in capsys.readouterr().err
    assert main(["eval", "insseg", f"checkpoint={tmp_path / 'none.pth'}"]) == 1
    assert "none.pth: file not found" in capsys.readouterr().err
    for argv in (["finetune", "insseg", "--help"], ["eval", "insseg", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    assert "--save-vis" in capsys.readouterr().out


def test_eval_names_a_checkpoint_of_another_task(tmp_path, capsys):
    encoder = {f"backbone.encoder.{k}": v for k, v in torchvision.models.resnet50().state_dict().items()}
    torch.save(
        {"model": encoder, "config": to_dict(PretrainRunConfig()), "step": 3}, tmp_path / "pretrain.pth"
    )
    torch.save({"model": encoder, "config": to_dict(SemsegRunConfig())}, tmp_path / "semseg.pth")
    assert main(["eval", "insseg", f"checkpoint={tmp_path / 'pretrain.pth'}"]) == 1
    error = capsys.readouterr().err
    assert "pretrain.pth is a Pri3D pre-training checkpoint, not an instance segmentation one" in error
    assert "use it as init=" in error
    assert main(["eval", "insseg", f"checkpoint={tmp_path / 'semseg.pth'}"]) == 1
    error = capsys.readouterr().err
    assert "semseg.pth is a pri3d semantic segmentation checkpoint, not an instance segmentation one" in error
    assert "pri3d eval semseg" in error


@pytest.mark.slow
def test_rerunning_resumes_from_the_last_checkpoint(finetuned, insseg_root, tmp_path):
    base, summary, _ = finetuned
    shutil.copytree(base / "run", tmp_path / "run")
    config = insseg_config(
        _run(
            insseg_root,
            base / "two.coco.json",
            tmp_path / "run",
            "init=imagenet",
            "train.max_steps=9",
            "finetune.flip=false",
            "finetune.min_size_train=[60]",
        )
    )
    resumed = finetune_insseg(config)  # init=imagenet is not needed (nor fetched) when resuming
    assert resumed["final"]["step"] == 9 and "resumed from" in (tmp_path / "run" / "train.log").read_text()
    assert resumed["init"] == summary["init"]  # the first run's report stays
