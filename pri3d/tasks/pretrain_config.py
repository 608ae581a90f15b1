"""Configuration of `pri3d pretrain`: the run config and the checks of its values.

Every key of the original Pri3D pre-training config keeps its name and meaning, so recipes and
scripts carry over; keys the original ignored are accepted and documented as unused. Defaults are the
released recipe; see :mod:`pri3d.tasks.pretrain`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pri3d.engine.config import (
    IMAGE_SIZE,
    POSITIVE,
    TRAINING_RULES,
    DistributedConfig,
    LoggingConfig,
    OptimizerConfig,
    Rule,
    SchedulerConfig,
    TrainConfig,
    integer_at_least,
)

__all__ = [
    "DATASETS",
    "PRETRAIN_RULES",
    "RECIPES",
    "PretrainConfig",
    "PretrainDatasetConfig",
    "PretrainRunConfig",
    "PretrainTrainConfig",
]


@dataclass
class PretrainTrainConfig(TrainConfig):
    phase: str = "train"  # pair list: train -> splits/overlap30.txt, val -> overlap30_val.txt
    exp_name: str = "pri3d"
    log_dir: str = "runs/pretrain"
    batch_size: int = 64


@dataclass
class PretrainConfig:
    model: str = "Pri3D"
    nceT: float = 0.4  # InfoNCE temperature (both losses)
    npos: float = 2.0  # unused
    backbone: str = "Res50UNet"  # Res50UNet or Res18UNet
    weights: str = ""  # unused
    pretrained: str = "imagenet"  # imagenet, scratch, or a path to torchvision ResNet weights
    depth: bool = True  # auxiliary depth-prediction loss
    save_feature: bool = False  # unused
    view_invariant: bool = True  # pixel <-> pixel InfoNCE across the two views
    geometric_prior: bool = True  # pixel <-> voxel InfoNCE against the 3D network
    sample_points: int = 1024  # correspondences sampled per pair (and per view for the 3D loss)
    thresh: float = 0.05  # metres: depth agreement for pixel <-> pixel matches
    voxel_size: float = 0.02  # metres: voxels of the 3D network's input (the original's 2 cm)
    # box: each view's chunk box, as the original; frustum: only the box's voxels inside the view
    # frustum, its sides moved out by frustum_margin metres (fewer 3D voxels; docs/deviations.md)
    voxel_crop: str = "box"
    frustum_margin: float = 0.1
    # the 3D network's sparse convolutions: auto, torch, spconv or triton (pri3d.models.sparse_unet)
    backend3d: str = "auto"


#: The pre-training data `dataset.name` selects (docs/data.md describes each layout).
DATASETS = ("ScanNet", "MegaDepth", "KITTI", "Mixture")


@dataclass
class PretrainDatasetConfig:
    name: str = "ScanNet"  # ScanNet, MegaDepth, KITTI, or Mixture (ScanNet + MegaDepth)
    size: list[int] = field(default_factory=lambda: [240, 320])  # (H, W)
    # ScanNet and Mixture: output of `pri3d preprocess scannet`; MegaDepth and KITTI: the dataset's root
    path: str = "data/scannet_pretrain"
    pointcloud_path: str = ""  # default: <path>/pointcloud
    chunk: bool = False  # unused: chunks are loaded when pretrain.geometric_prior is on
    megadepth_path: str = ""  # Mixture: the MegaDepth root (dataset.path is ScanNet's)
    pairs_per_scene: int = 4000  # MegaDepth: pairs drawn per scene and epoch, with replacement
    min_overlap: float = 0.3  # MegaDepth: a pair's directional overlap (scene_info) is at least this
    resize: bool = False  # KITTI: resize to dataset.size instead of cropping around a stored match


@dataclass
class PretrainRunConfig:
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    dataset: PretrainDatasetConfig = field(default_factory=PretrainDatasetConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


#: The training keys and pre-training's own, checked by :func:`pri3d.engine.config.check_run_config`.
PRETRAIN_RULES: dict[str, Rule] = {
    **TRAINING_RULES,
    "dataset.size": IMAGE_SIZE,
    "dataset.name": (lambda name: name in DATASETS, ", ".join(DATASETS)),
    "dataset.pairs_per_scene": integer_at_least(1),
    "dataset.min_overlap": (lambda overlap: 0 <= overlap <= 1, "a fraction in [0, 1]"),
    "pretrain.nceT": POSITIVE,
    "pretrain.sample_points": integer_at_least(1),
    "pretrain.thresh": POSITIVE,
    "pretrain.voxel_size": POSITIVE,
    # pri3d.data.pretrain_pairs.VOXEL_CROPS, not imported: this module stays free of torch
    "pretrain.voxel_crop": (lambda crop: crop in ("box", "frustum"), "box or frustum"),
    "pretrain.frustum_margin": (
        lambda metres: math.isfinite(metres) and metres >= 0,
        "metres, a finite number ≥ 0",
    ),
    # pri3d.models.sparse_unet.BACKENDS; whether the choice runs on the device is checked at start
    "pretrain.backend3d": (
        lambda backend: backend in ("auto", "torch", "spconv", "triton"),
        "auto, torch, spconv or triton",
    ),
}


#: ``recipe=<name>`` -> overrides applied before the explicit ones: the settings of the original's released
#: models (its model zoo's names: ``MDViewBS64LR001EP5IM180RN50``, ``KITTIViewBS64LR001EP10IM240RN50`` and
#: ``…IM180RN50``), which differ from its shipped scripts (spec §1.3). ``scannet`` is the default config.
RECIPES: dict[str, dict[str, object]] = {
    "scannet": {"dataset.name": "ScanNet"},
    "megadepth": {"dataset.name": "MegaDepth", "dataset.path": "data/megadepth", "dataset.size": [180, 360],
                  "optimizer.lr": 0.01, "pretrain.geometric_prior": False},
    "kitti": {"dataset.name": "KITTI", "dataset.path": "data/kitti", "optimizer.lr": 0.01,
              "scheduler.max_epochs": 10, "pretrain.geometric_prior": False},
    "kitti180": {"dataset.name": "KITTI", "dataset.path": "data/kitti", "dataset.size": [180, 360],
                 "optimizer.lr": 0.01, "scheduler.max_epochs": 10, "pretrain.geometric_prior": False},
    "mixture": {"dataset.name": "Mixture", "dataset.path": "data/scannet_pretrain",
                "dataset.megadepth_path": "data/megadepth"},
}  # fmt: skip
