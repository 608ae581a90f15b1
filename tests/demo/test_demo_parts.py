"""The demo's parts with known answers: the plans and their runs, the labelled share, PCA colouring, figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pri3d.data.semseg import SemsegOptions, build_semseg_dataset
from pri3d.demo import figures
from pri3d.demo.cli import FULL, GPU, QUICK, choose_plan
from pri3d.demo.study import (
    ARMS,
    MOCO_QUEUE,
    StudyConfig,
    finetune_jobs,
    labelled_frames,
    pretrain_jobs,
    probe_jobs,
    scratch_seeds,
)
from pri3d.engine.config import check_run_config, load_config
from pri3d.tasks.moco import check_bn_groups
from pri3d.tasks.moco_config import MOCO_RULES, MoCoRunConfig
from pri3d.tasks.pretrain_config import PretrainRunConfig
from pri3d.tasks.semseg_config import semseg_config


def _frames(root, scene, count):
    for kind in ("color", "label"):
        (root / scene / kind).mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (8, 6), (i, 0, 0)).save(root / scene / "color" / f"{i * 20}.jpg")
        Image.fromarray(np.full((6, 8), 1, np.uint8)).save(root / scene / "label" / f"{i * 20}.png")


@pytest.mark.parametrize(("depth", "voxel_crop"), [(False, "box"), (True, "frustum")])
def test_pretrain_jobs_configure_each_arm_and_seed(tmp_path, depth, voxel_crop):
    study = StudyConfig(
        pretrain_steps=7,
        pretrain_batch=4,
        voxel_size=0.15,
        voxel_crop=voxel_crop,
        depth=depth,
        pretrain_seeds=(0, 3),
        size=(48, 64),
    )
    jobs = pretrain_jobs(tmp_path / "runs", tmp_path / "data", study)
    assert sorted((job.meta["arm"], job.meta["seed"]) for job in jobs) == sorted(
        (arm.name, seed) for arm in ARMS for seed in (0, 3)
    )
    assert [job.meta["arm"] for job in jobs[:4]] == [
        "Geo",
        "Geo",
        "View+Geo",
        "View+Geo",
    ]  # the longest first
    assert len({job.log_dir for job in jobs}) == len(jobs)
    arms = {arm.name: arm for arm in ARMS}
    for job in jobs:
        arm = arms[job.meta["arm"]]
        if arm.method == "moco":
            assert job.kind == "moco"
            config = load_config(MoCoRunConfig, job.overrides)
            check_run_config(config, MOCO_RULES)
            check_bn_groups(config, world_size=1)  # two BatchNorm groups in a batch of 4
            assert (config.moco.arch, config.moco.pretrained, config.moco.queue_size) == (
                "resnet18",
                "scratch",
                MOCO_QUEUE,
            )
            assert config.dataset.path == str(tmp_path / "data") and config.dataset.frames == "first_of_pair"
            assert (config.dataset.resize, config.dataset.crop) == ([48, 64], 48)
        else:
            assert job.kind == "pretrain"
            config = load_config(PretrainRunConfig, job.overrides)
            assert (config.pretrain.view_invariant, config.pretrain.geometric_prior) == (
                arm.view_invariant,
                arm.geometric_prior,
            )
            assert config.pretrain.depth is depth and config.pretrain.voxel_size == 0.15
            assert config.pretrain.voxel_crop == voxel_crop
        # the same optimiser budget for every arm: steps, batch (frames or pairs), lr
        assert (config.train.max_steps, config.train.batch_size, config.optimizer.lr) == (7, 4, 0.1 * 4 / 64)
        assert config.train.seed == job.meta["seed"]


def test_finetune_and_probe_jobs_cover_every_pretraining_and_seed(tmp_path):
    runs = tmp_path / "runs"
    study = StudyConfig(pretrain_seeds=(0, 1), seeds=(0, 1))
    pretrain = {job.name: job for job in pretrain_jobs(runs, tmp_path / "data", study)}
    finetune = finetune_jobs(runs, tmp_path / "frames", tmp_path / "frames", study)
    assert scratch_seeds(study) == (0, 1, 2, 3)  # as many runs as a pre-trained arm: 2 x 2
    assert scratch_seeds(StudyConfig(pretrain_seeds=(0, 1, 2), seeds=(1, 3))) == (1, 3, 0, 2, 4, 5)
    scratch = [job for job in finetune if job.meta["init"] == "scratch"]
    assert [job.meta["seed"] for job in scratch] == [0, 1, 2, 3]
    assert all(job.after is None and "init=scratch" in job.overrides for job in scratch)
    for arm in ARMS:
        mine = [job for job in finetune if job.meta["init"] == arm.name]
        assert sorted((j.meta["pretrain_seed"], j.meta["seed"]) for j in mine) == [
            (0, 0),
            (0, 1),
            (1, 0),
            (1, 1),
        ]
        for job in mine:  # each starts from its own pre-training, after it
            source = pretrain[job.after]
            assert source.meta == {"arm": arm.name, "seed": job.meta["pretrain_seed"]}
            assert f"init={source.log_dir}" in job.overrides
            config = semseg_config([f"train.log_dir={job.log_dir}", *job.overrides])
            assert (
                config.train.seed == job.meta["seed"] and config.scheduler.max_epochs == study.finetune_epochs
            )
    assert len({job.log_dir for job in finetune}) == len(finetune) == 4 + 4 * len(ARMS)

    probes = probe_jobs(runs, tmp_path / "frames", study)
    assert sorted((job.meta["init"], job.meta["pretrain_seed"]) for job in probes) == sorted(
        (init, seed) for init in ("scratch", *(arm.name for arm in ARMS)) for seed in (0, 1)
    )
    for job in probes:
        assert job.kind == "probe" and job.options["seed"] == job.meta["pretrain_seed"]
        if job.meta["init"] == "scratch":
            assert job.after is None and job.options["init"] == "scratch"
        else:
            assert job.options["init"] == str(pretrain[job.after].log_dir)


def test_plans_follow_the_device_and_the_size_option():
    assert choose_plan(False, "cpu", None) is FULL and FULL.study.size == (60, 80)
    gpu = choose_plan(False, "cuda", None)
    assert gpu is GPU and gpu.study.size == gpu.synth.color_size == gpu.synth.depth_size == (240, 320)
    assert choose_plan(True, "cuda", None) is QUICK  # the smoke test stays small on a GPU
    sized = choose_plan(False, "cuda", (120, 160))
    assert sized.study.size == sized.synth.color_size == (120, 160) and sized.study.seeds == GPU.study.seeds
    for plan in (FULL, GPU, QUICK):  # the spread covers pre-training: two seeds or more per arm
        assert len(plan.study.pretrain_seeds) >= 2
    # the CPU plan's run count, the budget docs/benchmarks.md measures: 8 pre-trainings, 20 fine-tunings, 10 probes
    study = FULL.study
    assert len(pretrain_jobs(Path("r"), Path("d"), study)) == 8
    assert len(finetune_jobs(Path("r"), Path("f"), Path("f"), study)) == 20
    assert len(probe_jobs(Path("r"), Path("f"), study)) == 10


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
