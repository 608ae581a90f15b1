"""KITTI from the download layout to KITTI and Cityscapes numbers, as a user runs it: `pri3d synth kitti`
-> `pri3d preprocess kitti` -> `pri3d pretrain recipe=kitti` -> `pri3d finetune semseg dataset=kitti|cityscapes
init=<run>` -> `pri3d eval semseg`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pri3d.cli import main
from pri3d.engine.checkpoint import latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.slow

FINETUNE = ["backbone=Res18UNet", "train.batch_size=4", "scheduler.max_epochs=1", "train.workers=0",
            "train.threads=2", "logging.tensorboard=false"]  # fmt: skip


@pytest.fixture(scope="module")
def kitti(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kitti")
    synth = ["synth", "kitti", "--out", str(root), "--drives", "2", "--frames", "16", "--size", "94x310"]
    assert main([*synth, "--semantic-frames", "44", "--lidar-dropout", "0", "--workers", "2", "--quiet"]) == 0
    assert main(["preprocess", "kitti", "--root", str(root), "--workers", "1", "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def kitti_run(kitti, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("kitti_run")
    args = [
        "pretrain", "recipe=kitti", f"dataset.path={kitti}", f"train.log_dir={run}", "pretrain.backbone=Res18UNet",
        "pretrain.pretrained=scratch", "dataset.size=[48,64]", "pretrain.sample_points=64", "train.batch_size=4",
        "optimizer.lr=0.05", "train.max_steps=24", "train.workers=0", "train.threads=2", "train.report_batch=1",
        "logging.tensorboard=false",
    ]  # fmt: skip
    assert main(args) == 0
    return run


def test_kitti_pretraining_trains_the_view_and_depth_losses(kitti_run):
    config = load_checkpoint(latest_checkpoint(kitti_run / "checkpoints"))["config"]
    assert config["dataset"]["name"] == "KITTI" and config["scheduler"]["max_epochs"] == 10
    lines = [json.loads(line) for line in (kitti_run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train/total_loss"] for m in lines]
    assert len(losses) == 24 and all("train/view_loss" in m and "train/depth_loss" in m for m in lines)
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.1, losses


def _finetune_and_eval(args: list[str], run: Path, kitti_run: Path, frames: int) -> None:
    assert main(["finetune", "semseg", *args, f"init={kitti_run}", *FINETUNE, f"train.log_dir={run}"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["init"]["source"].startswith(str(kitti_run))
    assert not [key for key in results["init"]["missing"] if "encoder" in key]
    assert main(["eval", "semseg", f"checkpoint={run}", f"out={run / 'eval.json'}"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["miou"] == pytest.approx(results["final"]["miou"]) and report["frames"] == frames


def test_kitti_semantics_fine_tunes_and_evaluates_from_the_kitti_model(kitti, kitti_run, tmp_path):
    """KITTI semantics: the first 40 sorted frames are val, evaluated at full resolution (94×310 here)."""
    args = ["dataset=kitti", f"dataset.path={kitti / 'data_semantics' / 'training'}", "dataset.size=[48,64]"]
    _finetune_and_eval(args, tmp_path / "kitti_semseg", kitti_run, frames=40)


def test_cityscapes_fine_tunes_and_evaluates_from_the_kitti_model(kitti_run, tmp_path):
    cityscapes = tmp_path / "cityscapes"
    args = ["synth", "cityscapes", "--out", str(cityscapes), "--train", "8", "--val", "3", "--size", "48x96"]
    assert main([*args, "--quiet"]) == 0
    finetune = ["dataset=cityscapes", f"dataset.path={cityscapes}", "dataset.size=[48,96]"]
    _finetune_and_eval(finetune, tmp_path / "cityscapes_semseg", kitti_run, frames=3)
