"""MegaDepth from the download layout to a Cityscapes number, as a user runs it: `pri3d synth megadepth`
-> `pri3d preprocess megadepth` -> `pri3d pretrain recipe=megadepth` (and `recipe=mixture` with ScanNet)
-> `pri3d finetune semseg dataset=cityscapes init=<run>` -> `pri3d eval semseg`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pri3d.cli import main
from pri3d.engine.checkpoint import latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.slow

#: Seconds-long Res18UNet pre-training on 48×64 crops.
TINY = [
    "pretrain.backbone=Res18UNet",
    "pretrain.pretrained=scratch",
    "dataset.size=[48,64]",
    "pretrain.sample_points=64",
    "train.batch_size=4",
    "train.workers=0",
    "train.threads=2",
    "train.report_batch=1",
    "logging.tensorboard=false",
]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def megadepth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("megadepth")
    synth = ["synth", "megadepth", "--out", str(root), "--scenes", "2", "--images", "14", "--max-size", "112"]
    assert main([*synth, "--workers", "1", "--quiet"]) == 0
    assert main(["preprocess", "megadepth", "--root", str(root), "--workers", "1", "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    args = ["synth", "cityscapes", "--out", str(root), "--train", "8", "--val", "3", "--size", "48x96"]
    assert main([*args, "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def megadepth_run(megadepth, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("md_run")
    args = ["pretrain", "recipe=megadepth", f"dataset.path={megadepth}", f"train.log_dir={run}", *TINY]
    assert main([*args, "dataset.pairs_per_scene=16", "optimizer.lr=0.05", "train.max_steps=24"]) == 0
    return run


def test_megadepth_pretraining_trains_the_view_and_depth_losses(megadepth_run):
    config = load_checkpoint(latest_checkpoint(megadepth_run / "checkpoints"))["config"]
    assert config["dataset"]["name"] == "MegaDepth" and not config["pretrain"]["geometric_prior"]
    lines = _metrics(megadepth_run)
    losses = [m["train/total_loss"] for m in lines]
    assert len(losses) == 24 and all("train/view_loss" in m and "train/geo_loss" not in m for m in lines)
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.1, losses


def test_cityscapes_fine_tunes_and_evaluates_from_the_megadepth_model(megadepth_run, cityscapes, tmp_path):
    run = tmp_path / "cityscapes"
    finetune = [
        "finetune", "semseg", "dataset=cityscapes", f"dataset.path={cityscapes}", f"init={megadepth_run}",
        "backbone=Res18UNet", "dataset.size=[48,96]", "train.batch_size=4", "scheduler.max_epochs=2",
        "train.report_epoch=1", "train.workers=0", "train.threads=2", "logging.tensorboard=false",
        f"train.log_dir={run}",
    ]  # fmt: skip
    assert main(finetune) == 0
    results = json.loads((run / "results.json").read_text())
    init = results["init"]
    assert init["source"].startswith(str(megadepth_run)) and not [
        k for k in init["missing"] if "encoder" in k
    ]
    assert 0 <= results["final"]["miou"] <= 1
    assert main(["eval", "semseg", f"checkpoint={run}", f"out={tmp_path / 'eval.json'}"]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["miou"] == pytest.approx(results["final"]["miou"]) and report["frames"] == 3


def test_mixture_trains_scannet_with_the_geometric_prior_and_megadepth_without(
    pretrain_root, megadepth, tmp_path
):
    run = tmp_path / "mixture"
    args = [
        "pretrain", "recipe=mixture", f"dataset.path={pretrain_root}", f"dataset.megadepth_path={megadepth}",
        f"train.log_dir={run}", *TINY, "pretrain.voxel_size=0.1", "dataset.pairs_per_scene=40",
        "train.max_steps=4",
    ]  # fmt: skip
    assert main(args) == 0
    lines = _metrics(run)
    assert len(lines) == 4 and all(np.isfinite(m["train/geo_loss"]) for m in lines)
    # MegaDepth pairs have no point cloud: they train the 2D losses and are counted as such, even in a
    # micro-batch without any ScanNet pair; none is skipped
    assert lines[-1]["train/pairs_without_point_cloud"] > 0
    assert "0 samples skipped" in (run / "train.log").read_text()
