"""A tiny generated `scannet_frames_25k` (3 scenes, 60×80) shared by the semantic-segmentation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pri3d.synth.generate import SynthConfig, generate

SEMSEG_SCANS = SynthConfig(
    scenes=3, frames=40, color_size=(60, 80), depth_size=(60, 80), frames_25k_every=5, val_fraction=0.34,
    depth_noise=0, depth_holes=0, invalid_pose_fraction=0,
)  # fmt: skip


@pytest.fixture(scope="session")
def semseg_root(tmp_path_factory) -> Path:
    """Root with `scannet_frames_25k/`, `scannetv2_train.txt` (2 scenes) and `scannetv2_val.txt` (1)."""
    root = tmp_path_factory.mktemp("semseg_data")
    generate(root, SEMSEG_SCANS, workers=1, progress=False)
    return root
