"""Fine-tuning and evaluation end to end on a generated scannet_frames_25k, through the API and the CLI."""

from __future__ import annotations

import json
import urllib.error
from unittest import mock

import numpy as np
import pytest
import torch

from pri3d.cli import main
from pri3d.engine import trainer as trainer_module
from pri3d.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from pri3d.engine.config import to_dict
from pri3d.io.atomic import atomic_write
from pri3d.io.scene_lists import scene_list_dir, shipped_split_dir
from pri3d.models.registry import build_backbone
from pri3d.tasks import semseg as semseg_task
from pri3d.tasks.insseg_config import InssegRunConfig
from pri3d.tasks.pretrain_config import PretrainRunConfig
from pri3d.tasks.semseg import build_dataset, evaluate_semseg, finetune_semseg
from pri3d.tasks.semseg_config import expand_short_forms, semseg_config


def _small(root, log_dir, *extra):
    return [
        "dataset=scannet",
        f"dataset.path={root}",
        f"dataset.split_dir={root}",
        "dataset.size=[30,40]",
        "backbone=Res18UNet",
        "train.batch_size=4",
        "train.workers=0",
        "train.threads=2",
        "logging.tensorboard=false",
        "train.report_batch=1",
        f"train.log_dir={log_dir}",
        *extra,
    ]


@pytest.fixture(scope="module")
def finetuned(semseg_root, tmp_path_factory):
    """3 epochs × 4 steps of Res18-UNet from a Pri3D-layout checkpoint, evaluating after epoch 1 and at the end;
    also the files the run wrote through `atomic_write`, relative to its folder."""
    base = tmp_path_factory.mktemp("finetune")
    unet = build_backbone("Res18UNet", 32)
    state = {f"backbone.{k}": v for k, v in unet.state_dict().items()}
    state.update({"w2d.weight": torch.zeros(64, 32), "w2d.bias": torch.zeros(64)})
    # a pre-training run folder: init= takes its newest checkpoint
    save_checkpoint(base / "pretrain" / "checkpoints", "step0000010.pth", {"model": state, "step": 10})
    config = semseg_config(
        _small(
            semseg_root,
            base / "run",
            f"init={base / 'pretrain'}",
            "scheduler.max_epochs=3",
            "train.report_epoch=2",
            "optimizer.lr=0.05",
        )
    )
    with (
        mock.patch.object(semseg_task, "atomic_write", wraps=atomic_write) as writes,
        mock.patch.object(trainer_module, "atomic_write", new=writes),  # config.yaml
    ):
        summary = finetune_semseg(config)
    written = {str(call.args[0].relative_to(base / "run")) for call in writes.call_args_list}
    return base, config, summary, written


def test_finetune_reports_final_schedule_and_labelled_best(finetuned):
    base, _, summary, written = finetuned
    run = base / "run"
    assert json.loads((run / "results.json").read_text()) == json.loads(json.dumps(summary))
    assert [r["epoch"] for r in summary["schedule"]] == [1]  # the original's 0-based `epoch % 2 == 0`
    assert summary["final"]["step"] == 12 and summary["final"]["epoch"] == 3
    assert 0 <= summary["final"]["miou"] <= 1 and 0 <= summary["final"]["miou_original"] <= 1
    assert "evaluation data" in summary["best_on_val_model_selection"]["note"]
    init = summary["init"]
    # conv0 re-initialised (other shape), pre-training heads skipped
    assert len(init["missing"]) == 2 and "w2d.weight" in init["skipped"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train/total_loss"] for m in lines if "train/total_loss" in m]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert [m["step"] for m in lines if "val/miou" in m] == [4, 12]
    log = (run / "train.log").read_text()
    assert "initialisation:" in log and init["source"].endswith("step0000010.pth")
    # the final evaluation goes through the run's logger, like the scheduled ones, once
    assert log.count("eval epoch001 (step 4)") == 1 and log.count("eval final (step 12)") == 1
    # whole or not at all: a crash cannot leave a half-written result beside valid checkpoints
    assert written == {
        "config.yaml",
        "init_report.json",
        "eval/epoch001.json",
        "eval/final.json",
        "results.json",
    }


def test_evaluating_the_checkpoint_reproduces_the_final_numbers_and_torchmetrics(
    finetuned, semseg_root, tmp_path
):
    torchmetrics = pytest.importorskip("torchmetrics")
    base, config, summary, _ = finetuned
    report = evaluate_semseg(base / "run", [f"dataset.path={semseg_root}"], out=tmp_path / "eval.json")
    assert report["miou"] == pytest.approx(summary["final"]["miou"])
    assert report["miou_original"] == pytest.approx(summary["final"]["miou_original"])
    assert json.loads((tmp_path / "eval.json").read_text())["frames"] == 8

    # the same predictions through torchmetrics
    model_state = load_checkpoint(latest_checkpoint(base / "run" / "checkpoints"))["model"]
    from pri3d.models.segmentation import Semantic2D

    model = Semantic2D("Res18UNet", 21)
    model.load_state_dict(model_state, strict=True)
    model.eval()
    dataset = build_dataset(config, "val", train=False)
    metric = torchmetrics.classification.MulticlassJaccardIndex(21, average="macro", ignore_index=0)
    with torch.no_grad():
        for i in range(len(dataset)):
            sample = dataset[i]
            metric.update(model.logits(sample["image"][None], (30, 40)).argmax(1), sample["label"][None])
    assert report["miou"] == pytest.approx(float(metric.compute()), rel=1e-5)


def test_eval_cli_writes_report_and_figures(finetuned, semseg_root, tmp_path, capsys):
    base, _, _, _ = finetuned
    out = tmp_path / "cli" / "eval.json"
    with mock.patch.object(semseg_task, "atomic_write", wraps=atomic_write) as writes:
        code = main(
            [
                "eval",
                "semseg",
                f"checkpoint={base / 'run'}",
                f"dataset.path={semseg_root}",
                f"out={out}",
                "--save-vis",
                "2",
            ]
        )
    assert code == 0 and [call.args[0] for call in writes.call_args_list] == [out]
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "standard | original Pri3D definition" in printed
    report = json.loads(out.read_text())
    assert len(report["classes"]) == 20 and "definitions" in report
    figures = sorted((tmp_path / "cli").glob("eval-vis/*.png"))
    assert len(figures) == 2 and figures[0].stat().st_size > 5000  # PNGs with three panels and a legend


def test_eval_refuses_a_checkpoint_of_another_model(finetuned, semseg_root):
    base, _, _, _ = finetuned
    with pytest.raises(ValueError, match="does not match"):
        evaluate_semseg(base / "run", [f"dataset.path={semseg_root}", "model=pspnet"])


def test_eval_names_a_checkpoint_of_another_task(tmp_path, capsys):
    unet = {f"backbone.{k}": v for k, v in build_backbone("Res18UNet", 32).state_dict().items()}
    pretrain = {"model": {**unet, "w2d.weight": torch.zeros(64, 32)}, "config": to_dict(PretrainRunConfig())}
    save_checkpoint(tmp_path / "pretrain" / "checkpoints", "step0000010.pth", {**pretrain, "step": 10})
    insseg = {
        "model": {"detector.backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7)},
        "config": to_dict(InssegRunConfig()),
    }
    torch.save(insseg, tmp_path / "insseg.pth")
    assert main(["eval", "semseg", f"checkpoint={tmp_path / 'pretrain'}", "dataset.path=unused"]) == 1
    error = capsys.readouterr().err
    assert "step0000010.pth is a Pri3D pre-training checkpoint, not a semantic segmentation one" in error
    assert "use it as init=" in error
    assert main(["eval", "semseg", f"checkpoint={tmp_path / 'insseg.pth'}"]) == 1
    error = capsys.readouterr().err
    assert "insseg.pth is a pri3d instance segmentation checkpoint, not a semantic segmentation one" in error
    assert "pri3d eval insseg" in error


def test_short_forms_and_presets(capsys):
    overrides, extra = expand_short_forms(
        [
            "dataset=cityscapes",
            "model=pspnet",
            "train.batch_size=4",
            "dataset.split=train20",
            "checkpoint=x.pth",
        ]
    )
    config = semseg_config(overrides)
    assert (config.dataset.name, config.dataset.size, config.finetune.model) == (
        "Cityscapes",
        [180, 360],
        "PSPNet",
    )
    assert (
        config.train.batch_size == 4 and config.train.phase == "train20" and extra == {"checkpoint": "x.pth"}
    )
    assert config.finetune.head_lr_mult == 10 and not config.finetune.bn_schedule
    default = semseg_config([])
    assert (default.optimizer.lr, default.scheduler.max_epochs, default.train.batch_size) == (0.01, 80, 8)
    assert (default.optimizer.sgd_dampening, default.finetune.model, default.dataset.size) == (
        0.1,
        "Semantic2D",
        [240, 320],
    )
    assert expand_short_forms(["dataset.split=val"], for_eval=True)[0] == ["finetune.eval_phase=val"]
    with pytest.raises(ValueError, match="dataset='ade'"):
        expand_short_forms(["dataset=ade"])
    with pytest.raises(ValueError, match="did you mean"):
        semseg_config(["finetune.pretrained=imagenet"])
    assert main(["finetune", "semseg", "model=deeplabv3plus", "--print-config"]) == 0
    assert "model: DeepLabV3Plus" in capsys.readouterr().out


def test_data_with_its_own_scene_lists_uses_them_by_default(semseg_root, tmp_path):
    for path in (semseg_root, semseg_root / "scannet_frames_25k"):
        config = semseg_config(["dataset=scannet", f"dataset.path={path}", "dataset.size=[30,40]"])
        dataset = build_dataset(config, "val", train=False)
        assert f"1 scenes from {semseg_root / 'scannetv2_val.txt'}" in dataset.notes[0]
    assert scene_list_dir(tmp_path, "") == shipped_split_dir()  # data without lists: the shipped ones
    assert scene_list_dir(semseg_root, str(tmp_path)) == tmp_path  # dataset.split_dir wins


def test_default_imagenet_init_offline_is_a_one_line_error(semseg_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    assert main(["finetune", "semseg", *_small(semseg_root, tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("pri3d finetune: error: finetune.pretrain=imagenet: ")
    assert "Traceback" not in error and error.count("\n") == 1
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in error


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


@pytest.mark.slow
def test_smp_head_finetunes_and_evaluates(semseg_root, tmp_path):
    config = semseg_config(
        _small(
            semseg_root,
            tmp_path / "run",
            "model=deeplabv3plus",
            "init=scratch",
            "train.max_steps=2",
            "train.batch_size=2",
            "dataset.size=[32,48]",
        )
    )
    summary = finetune_semseg(config)
    assert summary["final"]["step"] == 2 and summary["model"]["name"] == "DeepLabV3Plus"
    report = evaluate_semseg(tmp_path / "run", [f"dataset.path={semseg_root}"])
    assert report["miou"] == pytest.approx(summary["final"]["miou"])
