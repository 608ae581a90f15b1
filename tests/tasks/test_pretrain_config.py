"""The pre-training run config: the original's key names and the released recipe's defaults."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch

from pri3d.cli import main
from pri3d.data.pretrain_pairs import VOXEL_CROPS
from pri3d.engine.config import ConfigError, check_run_config, load_config, to_dict
from pri3d.engine.distributed import DistEnv
from pri3d.tasks import pretrain as pretrain_task
from pri3d.tasks.pretrain import build_dataset
from pri3d.tasks.pretrain_config import PRETRAIN_RULES, PretrainRunConfig

#: Every key and default of a pre-training run, as checkpoints and config.yaml record them: recipes,
#: scripts and `pri3d eval`'s recognition of a pre-training checkpoint depend on them.
RELEASED_RECIPE = {
    "train": {
        "phase": "train", "is_train": True, "exp_name": "pri3d", "log_dir": "runs/pretrain", "batch_size": 64,
        "report_batch": 10, "report_epoch": 1, "workers": 2, "write_result": False, "max_steps": 0,
        "checkpoint_every": 500, "keep_checkpoints": 0, "seed": 0, "device": "auto", "bf16": False,
        "channels_last": False, "max_bad_samples": 50, "threads": 0,
    },
    "optimizer": {
        "optimizer": "SGD", "lr": 0.1, "sgd_momentum": 0.9, "sgd_dampening": 0.1, "adam_beta1": 0.9,
        "adam_beta2": 0.999, "weight_decay": 0.0, "bn_momentum": 0.02, "accumulate_step": 1,
    },
    "scheduler": {
        "scheduler": "PolyLR", "max_epochs": 5, "decay_epochs": [80, 120, 160], "lr_decay": 0.1, "step_size": 80,
        "poly_power": 0.9,
    },
    "distributed": {"num_gpus": 1},
    "pretrain": {
        "model": "Pri3D", "nceT": 0.4, "npos": 2.0, "backbone": "Res50UNet", "weights": "", "pretrained": "imagenet",
        "depth": True, "save_feature": False, "view_invariant": True, "geometric_prior": True,
        "sample_points": 1024, "thresh": 0.05, "voxel_size": 0.02, "voxel_crop": "box", "frustum_margin": 0.1,
        "backend3d": "auto",
    },
    "dataset": {
        "name": "ScanNet", "size": [240, 320], "path": "data/scannet_pretrain", "pointcloud_path": "", "chunk": False,
        "megadepth_path": "", "pairs_per_scene": 4000, "min_overlap": 0.3, "resize": False,
    },
    "logging": {"tensorboard": True, "wandb": "disabled", "wandb_project": "pri3d"},
}  # fmt: skip


def test_defaults_are_the_released_recipe_under_the_original_key_names():
    resolved = to_dict(load_config(PretrainRunConfig, []))
    assert resolved == RELEASED_RECIPE
    for section, keys in RELEASED_RECIPE.items():  # the order config.yaml lists them in
        assert list(resolved[section]) == list(keys), section
    assert list(resolved) == list(RELEASED_RECIPE)


def test_voxel_crop_reaches_the_pairs_and_bad_values_are_refused(pretrain_root):
    config = load_config(
        PretrainRunConfig,
        [f"dataset.path={pretrain_root}", "pretrain.voxel_crop=frustum", "pretrain.frustum_margin=0.3"],
    )
    check_run_config(config, PRETRAIN_RULES)
    options = build_dataset(config).options
    assert (options.voxel_crop, options.frustum_margin) == ("frustum", 0.3)
    for crop in VOXEL_CROPS:  # the rule's list is the data module's, written out to keep this module light
        check_run_config(load_config(PretrainRunConfig, [f"pretrain.voxel_crop={crop}"]), PRETRAIN_RULES)
    for override, message in (
        ("pretrain.voxel_crop=sphere", "pretrain.voxel_crop=sphere: expected box or frustum"),
        ("pretrain.frustum_margin=-0.1", "pretrain.frustum_margin=-0.1: expected metres"),
    ):
        with pytest.raises(ConfigError, match=message):
            check_run_config(load_config(PretrainRunConfig, [override]), PRETRAIN_RULES)


def test_a_recipe_applies_the_released_models_settings_and_explicit_overrides_win(monkeypatch, capsys):
    """`recipe=megadepth` is the model zoo's MDViewBS64LR001EP5IM180RN50; `recipe=kitti` its KITTI models."""
    resolved = []
    monkeypatch.setattr(pretrain_task, "pretrain", resolved.append)
    assert main(["pretrain", "recipe=megadepth", "optimizer.lr=0.02"]) == 0
    assert main(["pretrain", "recipe=kitti180"]) == 0
    megadepth, kitti = resolved
    assert (megadepth.dataset.name, megadepth.dataset.size, megadepth.optimizer.lr) == (
        "MegaDepth",
        [180, 360],
        0.02,
    )
    assert (
        not megadepth.pretrain.geometric_prior
        and megadepth.pretrain.view_invariant
        and megadepth.pretrain.depth
    )
    assert (kitti.dataset.name, kitti.dataset.size, kitti.scheduler.max_epochs) == ("KITTI", [180, 360], 10)
    assert main(["pretrain", "recipe=nyu"]) == 1
    assert (
        "recipe='nyu': expected one of scannet, megadepth, kitti, kitti180, mixture"
        in capsys.readouterr().err
    )


def test_an_unknown_dataset_name_is_refused_naming_the_choices():
    with pytest.raises(
        ConfigError, match=r"dataset\.name=Matterport: expected ScanNet, MegaDepth, KITTI, Mixture"
    ):
        check_run_config(load_config(PretrainRunConfig, ["dataset.name=Matterport"]), PRETRAIN_RULES)


def test_backend3d_reaches_the_3d_network_and_a_path_that_cannot_run_is_refused(tmp_path):
    """`pretrain.backend3d` sets the 3D network's backend; `triton` on a CPU run stops with the option's
    name before any data is read (dataset.path does not exist), and an unknown name is refused."""
    pytest.importorskip("spconv.pytorch")
    config = load_config(PretrainRunConfig, ["pretrain.backend3d=torch", "pretrain.pretrained=scratch"])
    assert pretrain_task.build_model(config).backbone3d.backend == "torch"
    config = load_config(
        PretrainRunConfig,
        [
            "pretrain.backend3d=triton",
            "train.device=cpu",
            f"train.log_dir={tmp_path}",
            "dataset.path=missing",
        ],
    )
    with pytest.raises(ValueError, match=r"^pretrain\.backend3d=triton: backend='triton' needs cuda tensors"):
        pretrain_task.pretrain(config)
    with pytest.raises(
        ConfigError, match=r"pretrain\.backend3d=minkowski: expected auto, torch, spconv or triton"
    ):
        check_run_config(load_config(PretrainRunConfig, ["pretrain.backend3d=minkowski"]), PRETRAIN_RULES)


@pytest.mark.parametrize("rank", [0, 1])
def test_triton_warm_up_runs_on_rank_0_first_into_the_run_folder(monkeypatch, tmp_path, rank):
    """Rank 0 warms Triton's cache while the others wait at a barrier, then they warm from it."""
    events = []
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.setattr(
        pretrain_task.sparse_conv_triton, "warm_up", lambda net, device: events.append("warm")
    )
    monkeypatch.setattr(pretrain_task.torch.distributed, "barrier", lambda: events.append("barrier"))
    config = load_config(PretrainRunConfig, [f"train.log_dir={tmp_path}"])
    env = DistEnv(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
    pretrain_task.warm_up_triton(SimpleNamespace(backbone3d=None), config, env)
    assert events == (["warm", "barrier", "barrier"] if rank == 0 else ["barrier", "warm", "barrier"])
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path.resolve() / "triton_cache")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pretraining_on_the_triton_path_fills_the_run_folders_cache(
    monkeypatch, pretrain_root, tiny_pretrain, tmp_path
):
    """A short CUDA run with `pretrain.backend3d=triton`: Triton compiles into <train.log_dir>/triton_cache
    (the warm-up) and the run trains all three losses to finite values."""
    pytest.importorskip("spconv_triton.pytorch")
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    overrides = tiny_pretrain(
        pretrain_root, tmp_path / "run", "pretrain.backend3d=triton", "train.device=cuda", "train.max_steps=2"
    )
    metrics = pretrain_task.pretrain(load_config(PretrainRunConfig, overrides))
    assert any((tmp_path / "run" / "triton_cache").iterdir())
    assert all(
        math.isfinite(metrics[key]) for key in ("train/geo_loss", "train/view_loss", "train/depth_loss")
    )
