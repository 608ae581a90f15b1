"""Configuration of `pri3d moco`: the run config and the checks of its values.

Defaults are the original's MoCo v2 baseline (its ``pretrain/moco/scripts/train.sh``, spec §7):
ResNet-50 from torchvision's ImageNet weights ("MoCoV2-supIN→SN"), SGD lr 0.03 momentum 0.9 weight decay
1e-4, batch 256, 100 epochs, cosine schedule, temperature 0.2, queue 65,536, momentum 0.999, MLP
head, aug-plus crops of 224 from frames resized to 240×320. See :mod:`pri3d.tasks.moco`.
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

__all__ = ["MOCO_RULES", "MoCoConfig", "MoCoDatasetConfig", "MoCoRunConfig", "MoCoTrainConfig"]

# pri3d.models.moco.ARCHS and pri3d.data.moco_frames.FRAME_CHOICES, not imported: this module stays free of torch
_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
_FRAMES = ("first_of_pair", "each_once")


@dataclass
class MoCoTrainConfig(TrainConfig):
    phase: str = "train"  # pair list: train -> splits/overlap30.txt, val -> overlap30_val.txt
    exp_name: str = "moco"
    log_dir: str = "runs/moco"
    batch_size: int = 256


@dataclass
class MoCoConfig:
    arch: str = "resnet50"  # torchvision ResNet: resnet18, resnet34, resnet50, resnet101, resnet152
    pretrained: str = "imagenet"  # imagenet (the original's supIN->SN baseline), scratch, or a weights file
    dim: int = 128  # output of the projection head
    mlp: bool = True  # 2-layer MLP head (MoCo v2); false: one linear layer (MoCo v1)
    queue_size: int = 65536  # negatives
    momentum: float = 0.999  # key encoder: k <- m k + (1 - m) q after every optimizer step
    temperature: float = 0.2
    # shuffle BN: BatchNorm statistics over groups of at most this many samples, the keys' groups shuffled;
    # each rank's micro-batch must hold two groups or more (the original: 256 / 8 GPUs = 32 per group)
    bn_group_size: int = 32


@dataclass
class MoCoDatasetConfig:
    path: str = "data/scannet_pretrain"  # output of `pri3d preprocess scannet`
    frames: str = (
        "first_of_pair"  # first_of_pair (the original: a frame once per pair it starts) or each_once
    )
    resize: list[int] = field(default_factory=lambda: [240, 320])  # (H, W) of frames before the crops
    crop: int = 224  # side of the square aug-plus crops
    extra_images: str = ""  # a folder of other images to mix in (the original's --imagenet)
    balanced: bool = True  # with extra_images: 1:1 with ScanNet frames, the smaller source oversampled


def _moco_optimizer() -> OptimizerConfig:
    # bn_momentum: constant, PyTorch's default as upstream MoCo (not pre-training's decaying schedule)
    return OptimizerConfig(lr=0.03, sgd_momentum=0.9, sgd_dampening=0.0, weight_decay=1e-4, bn_momentum=0.1)


def _moco_scheduler() -> SchedulerConfig:
    return SchedulerConfig(scheduler="CosineLR", max_epochs=100)


@dataclass
class MoCoRunConfig:
    train: MoCoTrainConfig = field(default_factory=MoCoTrainConfig)
    optimizer: OptimizerConfig = field(default_factory=_moco_optimizer)
    scheduler: SchedulerConfig = field(default_factory=_moco_scheduler)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    moco: MoCoConfig = field(default_factory=MoCoConfig)
    dataset: MoCoDatasetConfig = field(default_factory=MoCoDatasetConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


#: The training keys and MoCo's own, checked by :func:`pri3d.engine.config.check_run_config`.
MOCO_RULES: dict[str, Rule] = {
    **TRAINING_RULES,
    "moco.arch": (lambda arch: arch in _ARCHS, ", ".join(_ARCHS)),
    "moco.dim": integer_at_least(1),
    "moco.queue_size": integer_at_least(1),
    "moco.momentum": (lambda m: 0 <= m < 1, "a number in [0, 1)"),
    "moco.temperature": POSITIVE,
    "moco.bn_group_size": integer_at_least(1),
    "optimizer.bn_momentum": (lambda m: math.isfinite(m) and 0 < m <= 1, "a number in (0, 1]"),
    "dataset.frames": (lambda frames: frames in _FRAMES, ", ".join(_FRAMES)),
    "dataset.resize": IMAGE_SIZE,
    "dataset.crop": integer_at_least(1),
}
