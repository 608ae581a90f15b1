"""Configuration of `pri3d finetune semseg` / `pri3d eval semseg`: the run config, the per-dataset and
per-model presets behind the short forms, and their expansion.

Defaults are the original UNet recipe (its ``downstream/semseg/unet/config/default.yaml``); see
:mod:`pri3d.tasks.semseg`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pri3d.engine.config import (
    IMAGE_SIZE,
    TRAINING_RULES,
    DistributedConfig,
    LoggingConfig,
    OptimizerConfig,
    Rule,
    SchedulerConfig,
    TrainConfig,
    expand_overrides,
    load_config,
)

__all__ = [
    "DATASET_PRESETS",
    "MODEL_PRESETS",
    "SEMSEG_RULES",
    "FinetuneConfig",
    "SemsegDatasetConfig",
    "SemsegOptimizerConfig",
    "SemsegRunConfig",
    "SemsegSchedulerConfig",
    "SemsegTrainConfig",
    "expand_short_forms",
    "semseg_config",
]


@dataclass
class SemsegTrainConfig(TrainConfig):
    phase: str = "train"  # training split: train, trainval, train1 … train80 (ScanNet data-efficient lists)
    exp_name: str = "semseg"
    log_dir: str = "runs/semseg"
    batch_size: int = 8
    report_epoch: int = (
        5  # evaluate after epochs 1, 1+N, 1+2N, … (the original's schedule); checkpoint every N
    )


@dataclass
class SemsegOptimizerConfig(OptimizerConfig):
    lr: float = 0.01


@dataclass
class SemsegSchedulerConfig(SchedulerConfig):
    max_epochs: int = 80


@dataclass
class FinetuneConfig:
    model: str = "Semantic2D"  # Semantic2D (the UNet), PSPNet, DeepLabV3, DeepLabV3Plus
    pretrain: str = (
        "imagenet"  # scratch, imagenet, or a weights file (Pri3D/pri3d, torchvision, MoCo, export)
    )
    backbone: str = "Res50UNet"  # Res50UNet or Res18UNet (the smp heads use its ResNet)
    strict_init: bool = False  # require the init file to fill every weight of the model
    head_lr_mult: float = 1.0  # LR multiplier of everything but the encoder (PSPNet/DeepLab recipes: 10)
    bn_schedule: bool = True  # the original's BN-momentum decay 0.5 -> 0.001; false: constant bn_momentum
    bn_momentum: float = 0.1  # constant BatchNorm momentum when bn_schedule is false
    eval_phase: str = "val"  # split evaluated during and after training
    eval_batch_size: int = 8  # datasets evaluated at full resolution (KITTI) use 1


@dataclass
class SemsegDatasetConfig:
    name: str = "ScanNet"  # ScanNet, NYUv2, KITTI, Cityscapes
    path: str = "data/scannet_frames_25k"  # ScanNet: scannet_frames_25k (or the folder above it)
    size: list[int] = field(default_factory=lambda: [240, 320])  # (H, W)
    # ScanNet scene lists (scannetv2_<phase>.txt); empty = the data's own lists, else those shipped with pri3d
    split_dir: str = ""
    augment: bool = False  # ScanNet/NYUv2: flip + blur; KITTI/Cityscapes: rotation ±10° + flip
    random_crop: bool = False  # KITTI training: random `size` crops of the full-resolution image
    color_interpolation: str = "nearest"  # colour resize: nearest (the original UNet) or bilinear
    resize: bool = True  # unused (kept for the original's scripts)


@dataclass
class SemsegRunConfig:
    train: SemsegTrainConfig = field(default_factory=SemsegTrainConfig)
    optimizer: SemsegOptimizerConfig = field(default_factory=SemsegOptimizerConfig)
    scheduler: SemsegSchedulerConfig = field(default_factory=SemsegSchedulerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    dataset: SemsegDatasetConfig = field(default_factory=SemsegDatasetConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


#: Checked before any work (:func:`pri3d.engine.config.check_run_config`).
SEMSEG_RULES: dict[str, Rule] = {**TRAINING_RULES, "dataset.size": IMAGE_SIZE}

#: ``dataset=<short>`` -> overrides (the original's ``downstream/semseg/unet/scripts/*.sh``).
DATASET_PRESETS: dict[str, dict[str, object]] = {
    "scannet": {"dataset.name": "ScanNet", "dataset.path": "data/scannet_frames_25k"},
    "nyuv2": {"dataset.name": "NYUv2", "dataset.path": "data/nyuv2"},
    "kitti": {"dataset.name": "KITTI", "dataset.path": "data/kitti_semantics/training",
              "dataset.augment": True, "dataset.random_crop": True, "finetune.eval_batch_size": 1},
    "cityscapes": {"dataset.name": "Cityscapes", "dataset.path": "data/cityscapes",
                   "dataset.size": [180, 360], "dataset.augment": True},
}  # fmt: skip
_SMP_COMMON = {"train.batch_size": 16, "optimizer.weight_decay": 1e-4, "optimizer.sgd_dampening": 0.0,
               "finetune.bn_schedule": False, "dataset.augment": True, "dataset.color_interpolation": "bilinear"}  # fmt: skip
#: ``model=<short>`` -> overrides (the original PSPNet / DeepLab recipes, its
#: ``downstream/semseg/pspnet/config/scannet/scannet_pspnet50.yaml`` and ``deeplabv3/scripts/*.sh``).
MODEL_PRESETS: dict[str, dict[str, object]] = {
    "unet": {"finetune.model": "Semantic2D"},
    "pspnet": {"finetune.model": "PSPNet", **_SMP_COMMON, "scheduler.max_epochs": 50,
               "finetune.head_lr_mult": 10.0, "finetune.bn_momentum": 0.1, "train.report_epoch": 1},
    # DeepLab: backbone at 0.1 × 0.01, head at 0.01; 50,000 iterations of 16 ≈ 41 ScanNet epochs
    "deeplabv3": {"finetune.model": "DeepLabV3", **_SMP_COMMON, "optimizer.lr": 0.001,
                  "finetune.head_lr_mult": 10.0, "scheduler.max_epochs": 41, "finetune.bn_momentum": 0.01},
    "deeplabv3plus": {"finetune.model": "DeepLabV3Plus", **_SMP_COMMON, "optimizer.lr": 0.001,
                      "finetune.head_lr_mult": 10.0, "scheduler.max_epochs": 41, "finetune.bn_momentum": 0.01},
}  # fmt: skip


def expand_short_forms(items: list[str], for_eval: bool = False) -> tuple[list[str], dict[str, str]]:
    """The CLI's short forms -> config overrides; returns (overrides, ``checkpoint=``/``out=``).

    ``dataset=`` and ``model=`` add their presets (:data:`DATASET_PRESETS`, :data:`MODEL_PRESETS`)
    first, so explicit overrides win; ``backbone=`` -> ``finetune.backbone``, ``init=`` ->
    ``finetune.pretrain``, ``dataset.split=`` -> ``train.phase`` (``finetune.eval_phase`` when
    ``for_eval``). See :func:`pri3d.engine.config.expand_overrides`.
    """
    return expand_overrides(
        items,
        {"dataset": DATASET_PRESETS, "model": MODEL_PRESETS},
        {"backbone": "finetune.backbone", "init": "finetune.pretrain"},
        for_eval,
        eval_skip=("dataset.path",),
    )


def semseg_config(items: list[str], base: dict | None = None) -> SemsegRunConfig:
    """A :class:`SemsegRunConfig` from short forms and ``key=value`` overrides (see :func:`expand_short_forms`)."""
    overrides, extra = expand_short_forms(items)
    if extra:
        raise ValueError(f"{', '.join(extra)}= is an argument of `pri3d eval semseg`, not of fine-tuning")
    return load_config(SemsegRunConfig, overrides, base=base)
