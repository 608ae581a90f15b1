"""Configuration of `pri3d finetune insseg` / `pri3d eval insseg`: the run config, dataset presets,
Detectron2 key names, checks, the linear batch-scaling rule and the input sizes.

Defaults are the original's Detectron2 ScanNet config (its
``downstream/insseg/config/mask_rcnn_R_50_FPN_ScanNet.yaml``); see :mod:`pri3d.tasks.insseg`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from pri3d.engine.config import (
    DistributedConfig,
    LoggingConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainConfig,
    expand_overrides,
    load_config,
    override_value,
)

__all__ = [
    "DATASET_PRESETS",
    "DETECTRON2_KEYS",
    "InssegDatasetConfig",
    "InssegFinetuneConfig",
    "InssegOptimizerConfig",
    "InssegRunConfig",
    "InssegSchedulerConfig",
    "InssegTrainConfig",
    "check_config",
    "expand_short_forms",
    "input_sizes",
    "insseg_config",
    "scale_to_batch",
]


@dataclass
class InssegTrainConfig(TrainConfig):
    exp_name: str = "insseg"
    log_dir: str = "runs/insseg"  # OUTPUT_DIR
    batch_size: int = 16  # SOLVER.IMS_PER_BATCH: global, split over ranks and accumulation steps
    report_batch: int = 20
    report_epoch: int = 1_000_000  # epoch-end checkpoints off: checkpoints every checkpoint_every steps
    max_steps: int = 90_000  # SOLVER.MAX_ITER (scaled with train.batch_size, see scheduler.auto_scale)
    checkpoint_every: int = 5000  # SOLVER.CHECKPOINT_PERIOD


@dataclass
class InssegOptimizerConfig(OptimizerConfig):
    lr: float = 0.0025  # SOLVER.BASE_LR of the ScanNet/NYU configs (COCO: 0.02)
    sgd_dampening: float = 0.0
    weight_decay: float = 1e-4  # not applied to normalisation layers (Detectron2's WEIGHT_DECAY_NORM 0)
    bn_momentum: float = 0.1  # momentum of trainable BatchNorm (finetune.norm=bn)


@dataclass
class InssegSchedulerConfig(SchedulerConfig):
    scheduler: str = "MultiStepLR"  # Detectron2's WarmupMultiStepLR (the only schedule here)
    max_epochs: int = 0  # unused: train.max_steps sets the length
    decay_steps: list[int] = field(default_factory=lambda: [60_000, 80_000])  # SOLVER.STEPS
    lr_decay: float = 0.1  # SOLVER.GAMMA
    warmup_steps: int = 1000  # SOLVER.WARMUP_ITERS: lr rises linearly from warmup_factor × lr
    warmup_factor: float = 0.001
    reference_batch_size: int = 16  # the recipe's global batch
    # train.batch_size b ≠ reference_batch_size r: lr × b/r; max, decay, warm-up, checkpoint, eval steps × r/b
    auto_scale: bool = True


@dataclass
class InssegFinetuneConfig:
    pretrain: str = "imagenet"  # MODEL.WEIGHTS: scratch, imagenet, or a weights file / run folder
    norm: str = "frozen"  # frozen: FrozenBN (ScanNet/NYU configs); bn: trainable (SyncBN under DDP on CUDA)
    freeze_at: int = 2  # MODEL.BACKBONE.FREEZE_AT: 0 none, 1 stem, 2 stem + res2, … 5 whole ResNet
    batch_size_per_image: int = 32  # MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    proposals_train: int = 1000  # MODEL.RPN.POST_NMS_TOPK_TRAIN (Base-RCNN-FPN; torchvision's default: 2000)
    proposals_test: int = 1000  # MODEL.RPN.POST_NMS_TOPK_TEST: boxes the RoI heads score per test image
    score_thresh_test: float = 0.5  # MODEL.ROI_HEADS.SCORE_THRESH_TEST (Detectron2's default: 0.05)
    detections_per_image: int = 100  # TEST.DETECTIONS_PER_IMAGE
    min_size_train: list[int] = field(default_factory=list)  # empty: the data's shorter side × 0.8 … 1.0
    min_size_test: int = 0  # 0: the data's shorter side (no resizing)
    max_size: int = 0  # 0: the data's longer side
    flip: bool = True  # horizontal flip in training
    eval_phase: str = "val"
    eval_period: int = 10_000  # TEST.EVAL_PERIOD in steps (at the next epoch end); 0: only at the end
    eval_batch_size: int = 2


@dataclass
class InssegDatasetConfig:
    name: str = "ScanNet"  # ScanNet, NYUv2, COCO
    path: str = "data/scannet_frames_25k"  # DATASETS.IMAGE_PATH: the image root
    # DATASETS.ANNOTATION_PATH: a folder of the original's <name>_<phase> JSON files, or one file
    annotations: str = "data/scannet_coco"


@dataclass
class InssegRunConfig:
    train: InssegTrainConfig = field(default_factory=InssegTrainConfig)
    optimizer: InssegOptimizerConfig = field(default_factory=InssegOptimizerConfig)
    scheduler: InssegSchedulerConfig = field(default_factory=InssegSchedulerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    finetune: InssegFinetuneConfig = field(default_factory=InssegFinetuneConfig)
    dataset: InssegDatasetConfig = field(default_factory=InssegDatasetConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


_COCO_SIZES = list(range(640, 801, 32))
#: ``dataset=<short>`` -> overrides: the original's per-dataset configs
#: (``downstream/insseg/config/mask_rcnn_R_50_FPN_{ScanNet,NYU,COCO}.yaml``).
DATASET_PRESETS: dict[str, dict[str, object]] = {
    "scannet": {"dataset.name": "ScanNet", "dataset.path": "data/scannet_frames_25k",
                "dataset.annotations": "data/scannet_coco"},
    # the NYU config's IMS_PER_BATCH 2 (its 8-GPU script cannot run it; one GPU with 2 images can)
    "nyuv2": {"dataset.name": "NYUv2", "dataset.path": "data/nyuv2", "dataset.annotations": "data/nyuv2_coco",
              "train.batch_size": 2, "scheduler.reference_batch_size": 2, "finetune.eval_period": 5000},
    "coco": {"dataset.name": "COCO", "dataset.path": "data/coco", "dataset.annotations": "",
             "train.phase": "train2017", "finetune.eval_phase": "val2017", "optimizer.lr": 0.02,
             "finetune.norm": "bn", "finetune.freeze_at": 0, "finetune.batch_size_per_image": 512,
             "finetune.score_thresh_test": 0.05, "finetune.min_size_train": _COCO_SIZES,
             "finetune.min_size_test": 800, "finetune.max_size": 1333},
}  # fmt: skip

#: Detectron2 keys of the original's configs and scripts -> pri3d keys.
DETECTRON2_KEYS = {
    "MODEL.WEIGHTS": "finetune.pretrain", "OUTPUT_DIR": "train.log_dir",
    "DATASETS.ANNOTATION_PATH": "dataset.annotations", "DATASETS.IMAGE_PATH": "dataset.path",
    "SOLVER.IMS_PER_BATCH": "train.batch_size", "SOLVER.BASE_LR": "optimizer.lr",
    "SOLVER.MAX_ITER": "train.max_steps", "SOLVER.STEPS": "scheduler.decay_steps",
    "SOLVER.GAMMA": "scheduler.lr_decay", "SOLVER.WARMUP_ITERS": "scheduler.warmup_steps",
    "SOLVER.WARMUP_FACTOR": "scheduler.warmup_factor", "SOLVER.MOMENTUM": "optimizer.sgd_momentum",
    "SOLVER.WEIGHT_DECAY": "optimizer.weight_decay", "SOLVER.CHECKPOINT_PERIOD": "train.checkpoint_every",
    "TEST.EVAL_PERIOD": "finetune.eval_period", "TEST.DETECTIONS_PER_IMAGE": "finetune.detections_per_image",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": "finetune.batch_size_per_image",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": "finetune.score_thresh_test",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": "finetune.proposals_train", "MODEL.RPN.POST_NMS_TOPK_TEST": "finetune.proposals_test",
    "MODEL.BACKBONE.FREEZE_AT": "finetune.freeze_at", "INPUT.MIN_SIZE_TRAIN": "finetune.min_size_train",
    "INPUT.MIN_SIZE_TEST": "finetune.min_size_test", "INPUT.MAX_SIZE_TEST": "finetune.max_size",
    "SEED": "train.seed", "DATALOADER.NUM_WORKERS": "train.workers",
}  # fmt: skip


def expand_short_forms(items: list[str], for_eval: bool = False) -> tuple[list[str], dict[str, str]]:
    """CLI short forms and Detectron2 keys -> config overrides; returns (overrides, ``checkpoint=``/``out=``).

    ``dataset=`` adds its preset first (explicit overrides win); ``init=`` -> ``finetune.pretrain``;
    ``dataset.split=`` -> ``train.phase`` (``finetune.eval_phase`` when ``for_eval``); Detectron2 keys
    map through :data:`DETECTRON2_KEYS` (``SOLVER.STEPS=(60000,80000)`` is read as a list). See
    :func:`pri3d.engine.config.expand_overrides`.
    """
    translated = []
    for item in items:
        key, sep, value = item.partition("=")
        if sep and key in DETECTRON2_KEYS:
            item = f"{key}={value.replace('(', '[').replace(')', ']').replace(',]', ']')}"
        translated.append(item)
    return expand_overrides(
        translated,
        {"dataset": DATASET_PRESETS},
        {"init": "finetune.pretrain", **DETECTRON2_KEYS},
        for_eval,
        eval_skip=("dataset.path", "dataset.annotations"),
    )


def insseg_config(items: list[str], base: dict | None = None) -> InssegRunConfig:
    """An :class:`InssegRunConfig` from short forms, Detectron2 keys and ``key=value`` overrides."""
    overrides, extra = expand_short_forms(items)
    if extra:
        raise ValueError(f"{', '.join(extra)}= is an argument of `pri3d eval insseg`, not of fine-tuning")
    config = load_config(InssegRunConfig, overrides, base=base)
    check_config(config)
    return config


def check_config(config: InssegRunConfig) -> None:
    """Raise ValueError naming the first option whose value the recipe cannot run."""
    ft, sched = config.finetune, config.scheduler
    checks = (
        ("finetune.norm", ft.norm, ft.norm in ("frozen", "bn"), "frozen or bn"),
        ("finetune.freeze_at", ft.freeze_at, 0 <= ft.freeze_at <= 5, "0 … 5"),
        (
            "scheduler.scheduler",
            sched.scheduler,
            sched.scheduler == "MultiStepLR",
            "MultiStepLR (Detectron2's warm-up + steps)",
        ),
        (
            "scheduler.decay_steps",
            sched.decay_steps,
            sched.decay_steps == sorted(sched.decay_steps),
            "increasing step numbers",
        ),
        ("train.max_steps", config.train.max_steps, config.train.max_steps > 0, "a positive number of steps"),
        (
            "finetune.min_size_train",
            ft.min_size_train,
            all(s > 0 for s in ft.min_size_train),
            "positive sizes (or [] for the data's)",
        ),
    )
    for key, value, ok, expected in checks:
        if not ok:
            raise ValueError(f"{key}={override_value(value)}: expected {expected}")
    if ft.pretrain == "scratch" and ft.norm == "frozen":
        raise ValueError(
            "finetune.pretrain=scratch with finetune.norm=frozen would freeze the identity statistics "
            "of untrained BatchNorm layers (nothing normalises, training diverges); add "
            "finetune.norm=bn finetune.freeze_at=0"
        )


def scale_to_batch(config: InssegRunConfig) -> tuple[InssegRunConfig, str | None]:
    """Apply the linear scaling rule when ``train.batch_size`` differs from the recipe's; returns the
    config to run and a line describing what changed (None when nothing did)."""
    batch, reference = config.train.batch_size, config.scheduler.reference_batch_size
    if not config.scheduler.auto_scale or batch == reference:
        return config, None
    factor = batch / reference

    def steps(value: int) -> int:
        return max(1, round(value / factor)) if value > 0 else value

    train = replace(
        config.train,
        max_steps=steps(config.train.max_steps),
        checkpoint_every=steps(config.train.checkpoint_every),
    )
    scheduler = replace(
        config.scheduler,
        decay_steps=[steps(s) for s in config.scheduler.decay_steps],
        warmup_steps=steps(config.scheduler.warmup_steps),
        auto_scale=False,
        reference_batch_size=batch,
    )
    optimizer = replace(config.optimizer, lr=config.optimizer.lr * factor)
    finetune = replace(config.finetune, eval_period=steps(config.finetune.eval_period))
    scaled = replace(config, train=train, scheduler=scheduler, optimizer=optimizer, finetune=finetune)
    note = (
        f"batch {batch} instead of the recipe's {reference} (scheduler.auto_scale): lr {config.optimizer.lr:g} "
        f"-> {optimizer.lr:g}, steps {config.train.max_steps} -> {train.max_steps}, decay at "
        f"{scheduler.decay_steps}, warm-up {scheduler.warmup_steps}, eval every {finetune.eval_period}"
    )
    return scaled, note


def input_sizes(finetune: InssegFinetuneConfig, data_size: tuple[int, int]) -> dict[str, object]:
    """min_size_train (tuple), min_size_test, max_size: the configured ones, or from the data's (H, W)."""
    short, long = min(data_size), max(data_size)
    test = finetune.min_size_test or short
    train = tuple(finetune.min_size_train) or tuple(
        sorted({round(test * s / 800) for s in range(640, 801, 32)})
    )
    largest = max(*train, test)
    max_size = finetune.max_size or math.ceil(long * largest / short)
    return {"min_size_train": train, "min_size_test": test, "max_size": max_size}
