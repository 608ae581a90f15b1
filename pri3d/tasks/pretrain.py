"""`pri3d pretrain`: Pri3D pre-training from a config with the original's key names.

    pri3d pretrain dataset.path=data/scannet_pretrain pretrain.backbone=Res18UNet train.batch_size=8
    torchrun --nproc_per_node 8 -m pri3d.cli pretrain dataset.path=... train.batch_size=64

Re-running with the same `train.log_dir` resumes from its last checkpoint. The options and the checks
of their values live in :mod:`pri3d.tasks.pretrain_config`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pri3d.data.collate import collate_pairs
from pri3d.data.kitti_pairs import KITTIPairs
from pri3d.data.megadepth_pairs import MegaDepthPairs
from pri3d.data.mixture_pairs import MixturePairs
from pri3d.data.pretrain_pairs import PairOptions, ScanNetPairs
from pri3d.engine import distributed
from pri3d.engine.config import check_run_config, expand_overrides, load_config, to_yaml
from pri3d.engine.trainer import Trainer, TrainingStopped
from pri3d.io.atomic import check_writable_folder
from pri3d.models import sparse_conv_triton
from pri3d.models.pri3d import Pri3D
from pri3d.tasks.pretrain_config import PRETRAIN_RULES, RECIPES, PretrainRunConfig

PAIR_LISTS = {
    "train": "splits/overlap30.txt",
    "val": "splits/overlap30_val.txt",
    "trainval": "splits/overlap30_trainval.txt",
}


def build_dataset(config: PretrainRunConfig):
    """The pair dataset `dataset.name` selects; each yields the items `collate_pairs` batches."""
    builders = {
        "ScanNet": _scannet_pairs,
        "MegaDepth": _megadepth_pairs,
        "KITTI": _kitti_pairs,
        "Mixture": _mixture_pairs,
    }
    if config.dataset.name not in builders:
        raise ValueError(f"dataset.name={config.dataset.name!r}: expected one of {', '.join(builders)}")
    return builders[config.dataset.name](config)


def _pair_options(config: PretrainRunConfig) -> PairOptions:
    return PairOptions(
        size=tuple(config.dataset.size),
        num_matches=config.pretrain.sample_points,
        threshold=config.pretrain.thresh,
        geometric_prior=config.pretrain.geometric_prior,
        voxel_size=config.pretrain.voxel_size,
        voxel_crop=config.pretrain.voxel_crop,
        frustum_margin=config.pretrain.frustum_margin,
        seed=config.train.seed,
    )


def pair_list(config) -> str:
    """The ScanNet pair list ``train.phase`` names, relative to ``dataset.path`` (pre-training, MoCo)."""
    if config.train.phase not in PAIR_LISTS:
        raise ValueError(f"train.phase={config.train.phase!r}: expected one of {sorted(PAIR_LISTS)}")
    return PAIR_LISTS[config.train.phase]


def _scannet_pairs(config: PretrainRunConfig) -> ScanNetPairs:
    return ScanNetPairs(
        config.dataset.path,
        pair_list(config),
        _pair_options(config),
        pointcloud_dir=config.dataset.pointcloud_path or None,
    )


def _megadepth_pairs(config: PretrainRunConfig) -> MegaDepthPairs:
    return MegaDepthPairs(
        config.dataset.path,
        _pair_options(config),
        pairs_per_scene=config.dataset.pairs_per_scene,
        min_overlap=config.dataset.min_overlap,
    )


def _kitti_pairs(config: PretrainRunConfig) -> KITTIPairs:
    return KITTIPairs(config.dataset.path, _pair_options(config), resize=config.dataset.resize)


def _mixture_pairs(config: PretrainRunConfig) -> MixturePairs:
    if not config.dataset.megadepth_path:
        raise ValueError(
            "dataset.name=Mixture needs dataset.megadepth_path (the MegaDepth root; dataset.path is ScanNet's)"
        )
    return MixturePairs(
        config.dataset.path,
        config.dataset.megadepth_path,
        _pair_options(config),
        pair_list=pair_list(config),
        pointcloud_dir=config.dataset.pointcloud_path or None,
        pairs_per_scene=config.dataset.pairs_per_scene,
        min_overlap=config.dataset.min_overlap,
    )


def build_model(config: PretrainRunConfig) -> Pri3D:
    if config.pretrain.model != "Pri3D":
        raise ValueError(f"pretrain.model={config.pretrain.model!r}: only Pri3D exists")
    p = config.pretrain
    model = Pri3D(
        backbone=p.backbone,
        pretrained=p.pretrained,
        view_invariant=p.view_invariant,
        geometric_prior=p.geometric_prior,
        depth=p.depth,
        temperature=p.nceT,
    )
    if p.geometric_prior:
        model.backbone3d.backend = p.backend3d
    return model


def check_backend3d(config: PretrainRunConfig, device: torch.device) -> str:
    """The 3D network's path on ``device`` under ``pretrain.backend3d``; a ValueError naming the
    option where that path cannot run (e.g. ``triton`` without CUDA or spconv-triton)."""
    from pri3d.models.sparse_unet import resolve_backend  # spconv is optional (the sparse extra)

    try:
        return resolve_backend(config.pretrain.backend3d, device)
    except ValueError as error:
        raise ValueError(f"pretrain.backend3d={config.pretrain.backend3d}: {error}") from None


def warm_up_triton(model: Pri3D, config: PretrainRunConfig, env: distributed.DistEnv) -> None:
    """Point Triton's cache at ``<train.log_dir>/triton_cache`` (unless ``TRITON_CACHE_DIR`` is set)
    and fill it once: rank 0 compiles and autotunes the 3D network's kernels, then the other ranks
    load them from the cache instead of all autotuning at the first step."""
    sparse_conv_triton.use_cache_dir(Path(config.train.log_dir) / "triton_cache")
    for main_turn in (True, False):
        if env.is_main == main_turn:
            sparse_conv_triton.warm_up(model.backbone3d, env.device)
        if env.distributed:
            torch.distributed.barrier()


def pretrain(config: PretrainRunConfig) -> dict:
    """Run (or resume) pre-training; returns the last logged metrics."""
    check_run_config(config, PRETRAIN_RULES)
    env = distributed.setup(config.train.device)
    try:
        if env.is_main:
            check_writable_folder(config.train.log_dir, "train.log_dir", ("checkpoints",))
        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        torch.manual_seed(config.train.seed)  # identical initialisation on every rank
        path3d = check_backend3d(config, env.device) if config.pretrain.geometric_prior else None
        dataset = build_dataset(config)
        model = build_model(config)
        if path3d == "triton":
            warm_up_triton(model, config, env)
        with Trainer(model, dataset, collate_pairs, config, env) as trainer:
            trainer.record_config()
            if getattr(dataset, "scenes_without_cloud", None):
                missing = dataset.scenes_without_cloud
                trainer.logger.info(
                    f"{len(missing)} scene{'s have' if len(missing) > 1 else ' has'} no point cloud in "
                    f"{dataset.pointcloud_dir}; their {sum(missing.values())} of {len(dataset)} pairs train the 2D "
                    "losses only (train/pairs_without_point_cloud counts them): "
                    + ", ".join(f"{scene} ({count} pairs)" for scene, count in sorted(missing.items()))
                )
            trainer.resume_if_possible()
            return trainer.fit()
    finally:
        distributed.teardown()


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="Pri3D pre-training (view-invariant, geometric-prior and depth losses)",
        description="Pre-train a 2D backbone on prepared data (dataset.name=ScanNet, MegaDepth, KITTI or "
        "Mixture). Settings are key=value overrides with the original Pri3D's names, e.g. "
        "train.batch_size=64 pretrain.backbone=Res18UNet dataset.path=DIR. Defaults are the released ScanNet "
        "recipe; recipe=NAME first applies a released model's settings (" + ", ".join(RECIPES) + "), and "
        "explicit overrides win. Launch with torchrun for several processes.",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides, extras = expand_overrides(args.overrides, {"recipe": RECIPES}, {})
    if extras:
        raise ValueError(
            f"{', '.join(extras)}=: not an option of pri3d pretrain (train.log_dir sets the folder)"
        )
    config = load_config(PretrainRunConfig, overrides)
    if args.print_config:
        print(to_yaml(config))
        return 0
    try:
        pretrain(config)
    except TrainingStopped as error:
        print(f"pri3d pretrain: stopped: {error}", file=sys.stderr)
        return 3
    return 0
