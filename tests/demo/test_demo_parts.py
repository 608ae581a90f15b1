"""The demo's parts with known answers: the labelled share, PCA colouring, figures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pri3d.data.semseg import SemsegOptions, build_semseg_dataset
from pri3d.demo import figures
from pri3d.demo.study import ARMS, StudyConfig, labelled_frames, pretrain_jobs
from pri3d.engine.config import load_config
from pri3d.tasks.pretrain_config import PretrainRunConfig


def _frames(root, scene, count):
    for kind in ("color", "label"):
        (root / scene / kind).mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (8, 6), (i, 0, 0)).save(root / scene / "color" / f"{i * 20}.jpg")
        Image.fromarray(np.full((6, 8), 1, np.uint8)).save(root / scene / "label" / f"{i * 20}.png")


@pytest.mark.parametrize("depth", [False, True])
def test_pretrain_jobs_configure_each_arm(tmp_path, depth):
    study = StudyConfig(pretrain_steps=7, pretrain_batch=4, voxel_size=0.15, depth=depth)
    jobs = pretrain_jobs(tmp_path / "runs", tmp_path / "data", study)
    assert [job.meta["arm"] for job in jobs] == [arm.name for arm in ARMS]
    for arm, job in zip(ARMS, jobs):
        config = load_config(PretrainRunConfig, job.overrides)
        assert (config.pretrain.view_invariant, config.pretrain.geometric_prior) == (
            arm.view_invariant,
            arm.geometric_prior,
        )
        assert config.pretrain.depth is depth
        assert (config.train.max_steps, config.train.batch_size) == (7, 4)
        assert config.pretrain.voxel_size == 0.15 and config.optimizer.lr == 0.1 * 4 / 64


def test_labelled_frames_takes_the_share_of_every_train_scene(tmp_path):
    source = tmp_path / "frames"
    for scene in ("scene0000_00", "scene0001_00", "scene0002_00"):
        _frames(source, scene, 10)
    out = tmp_path / "labelled"
    summary = labelled_frames(source, out, ["scene0000_00", "scene0001_00"], ["scene0002_00"], 0.2)
    assert summary == {"path": str(out), "train_frames": 4, "val_frames": 10}
    # every 5th frame, starting in the middle of the first stride, in numeric (not string) order
    assert sorted(int(p.stem) for p in (out / "scene0000_00" / "color").glob("*.jpg")) == [40, 140]
    assert sorted(p.stem for p in (out / "scene0000_00" / "label").glob("*.png")) == ["140", "40"]
    assert (out / "scannetv2_train.txt").read_text().split() == ["scene0000_00", "scene0001_00"]
    train = build_semseg_dataset("ScanNet", out, "train", SemsegOptions(size=(6, 8)), split_dir=out)
    val = build_semseg_dataset("ScanNet", out, "val", SemsegOptions(size=(6, 8)), split_dir=out)
    assert len(train) == 4 and len(val) == 10


def test_pca_rgb_separates_directions_and_shares_a_basis():
    rng = np.random.default_rng(0)
    features = np.zeros((8, 4, 6))
    blocks = [
        (slice(0, 2), slice(0, 3)),
        (slice(0, 2), slice(3, 6)),
        (slice(2, 4), slice(0, 3)),
        (slice(2, 4), slice(3, 6)),
    ]
    for rows, cols in blocks:  # four feature vectors: they span three principal directions
        features[:, rows, cols] = rng.normal(size=(8, 1, 1))
    features += rng.normal(scale=1e-4, size=features.shape)
    rgb, basis = figures.pca_rgb(features)
    assert rgb.shape == (4, 6, 3) and rgb.min() >= 0 and rgb.max() <= 1
    colours = [rgb[rows, cols].reshape(-1, 3) for rows, cols in blocks]
    for block in colours:  # one colour per feature vector ...
        assert np.abs(block - block[0]).max() < 0.01
    for a in range(4):  # ... and different vectors get different colours
        for b in range(a + 1, 4):
            assert np.abs(colours[a][0] - colours[b][0]).max() > 0.2
    again, _ = figures.pca_rgb(features[:, ::-1].copy(), basis)  # same basis: rows flipped, colours flipped
    np.testing.assert_allclose(again, rgb[::-1], atol=1e-9)


def test_figures_write_pngs(tmp_path):
    image = np.zeros((12, 16, 3), np.uint8)
    pixels = np.array([[1, 2], [5, 6], [10, 3]])
    paths = [
        figures.correspondence_figure(image, image, pixels, pixels + 1, tmp_path / "c.png"),
        figures.miou_bar_figure({"scratch": [0.1, 0.12], "View": [0.15, 0.14]}, tmp_path / "m.png"),
        figures.training_curves_figure(
            {"View": (np.arange(3), np.array([3.0, 2.0, 1.0]))},
            {"scratch": [(np.arange(3), np.array([2.0, 1.0, 0.5])), (np.arange(2), np.array([2.0, 1.5]))]},
            tmp_path / "t.png",
        ),
        figures.feature_pca_figure(
            [image], {"View": [np.random.default_rng(0).normal(size=(4, 12, 16))]}, tmp_path / "p.png"
        ),
        figures.segmentation_figure([image], [image], {"scratch": [image]}, tmp_path / "s.png"),
    ]
    for path in paths:
        assert Image.open(path).size[0] > 100
