"""Configuration of `pri3d pretrain`: the run config and the checks of its values.

Every key of the original Pri3D pre-training config keeps its name and meaning, so recipes and
scripts carry over; keys the original ignored are accepted and documented as unused. Defaults are the
released recipe; see :mod:`pri3d.tasks.pretrain`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pri3d.engine.config import (
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
    "PRETRAIN_RULES",
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


@dataclass
class PretrainDatasetConfig:
    name: str = "ScanNet"
    size: list[int] = field(default_factory=lambda: [240, 320])  # (H, W)
    path: str = "data/scannet_pretrain"  # output of `pri3d preprocess scannet`
    pointcloud_path: str = ""  # default: <path>/pointcloud
    chunk: bool = False  # unused: chunks are loaded when pretrain.geometric_prior is on


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
    "dataset.size": (
        lambda size: len(size) == 2 and all(side >= 1 for side in size),
        "[height, width], both integers ≥ 1",
    ),
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
}
