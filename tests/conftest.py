"""Shared fixtures: tiny generated scans and their preprocessed pre-training data."""

from __future__ import annotations

from pathlib import Path

import pytest

from pri3d.preprocess.scannet import ScanNetOptions, preprocess_scannet
from pri3d.synth.generate import SynthConfig, generate

TINY_SCANS = SynthConfig(
    scenes=2, frames=60, seed=1, color_size=(60, 80), depth_size=(60, 80), frames_25k_every=10,
    depth_noise=0.0, depth_holes=0.0, invalid_pose_fraction=0.0,
)  # fmt: skip


@pytest.fixture(scope="session")
def pretrain_root(tmp_path_factory) -> Path:
    """`pri3d preprocess scannet` output of two tiny generated scans (every 4th frame kept)."""
    base = tmp_path_factory.mktemp("pretrain_data")
    generate(base / "raw", TINY_SCANS, workers=1, progress=False)
    preprocess_scannet(base / "raw" / "scans", base / "pre", ScanNetOptions(frame_skip=4), progress=False)
    return base / "pre"


@pytest.fixture(scope="session")
def tiny_pretrain():
    """``tiny_pretrain(root, log_dir, *extra)``: overrides for a seconds-long Res18UNet pre-training."""

    def overrides(root: Path, log_dir: Path, *extra: str) -> list[str]:
        return [
            f"dataset.path={root}",
            f"train.log_dir={log_dir}",
            "dataset.size=[60,80]",
            "pretrain.backbone=Res18UNet",
            "pretrain.pretrained=scratch",
            "pretrain.sample_points=64",
            "pretrain.voxel_size=0.1",
            "train.batch_size=2",
            "train.workers=0",
            "train.threads=1",
            "logging.tensorboard=false",
            "train.report_batch=1",
            *extra,
        ]

    return overrides
