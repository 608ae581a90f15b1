"""A tiny generated `scannet_frames_25k` (3 scenes, 60×80) and its COCO annotations, shared by the insseg tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pri3d.coco.convert import convert_scannet
from pri3d.synth.generate import SynthConfig, generate

INSSEG_SCANS = SynthConfig(
    scenes=3, frames=40, color_size=(60, 80), depth_size=(60, 80), frames_25k_every=5, val_fraction=0.34,
    depth_noise=0, depth_holes=0, invalid_pose_fraction=0,
)  # fmt: skip
#: The original's 1000 pixels at 480×640, scaled to the 60×80 frames.
MIN_AREA = 16


@pytest.fixture(scope="session")
def insseg_root(tmp_path_factory) -> Path:
    """Root with `scannet_frames_25k/`, `scannetv2_train.txt` (2 scenes) and `scannetv2_val.txt` (1)."""
    root = tmp_path_factory.mktemp("insseg_data")
    generate(root, INSSEG_SCANS, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def coco_dir(insseg_root) -> Path:
    """`scannet_train.coco.json` and `scannet_val.coco.json` (RLE masks, MIN_AREA) of `insseg_root`."""
    out = insseg_root / "coco"
    for split in ("train", "val"):
        convert_scannet(
            insseg_root,
            split,
            out / f"scannet_{split}.coco.json",
            split_dir=insseg_root,
            min_area=MIN_AREA,
            progress=False,
        )
    return out
