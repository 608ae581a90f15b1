"""`pri3d finetune insseg` and `pri3d eval insseg`: Mask R-CNN R50-FPN detection and instance segmentation.

    pri3d coco scannet --frames data/scannet_frames_25k --split train --out data/scannet_coco/scannet_train.coco.json
    pri3d finetune insseg dataset=scannet init=runs/pretrain dataset.path=data/scannet_frames_25k \\
        dataset.annotations=data/scannet_coco
    pri3d eval insseg checkpoint=runs/insseg --save-vis 8

The detector is torchvision's ``maskrcnn_resnet50_fpn`` built without weights; its ResNet-50 body is
loaded (strictly) from ``init=``: a Pri3D/pri3d checkpoint, a torchvision-layout export, MoCo, or
``imagenet`` (torchvision's ``IMAGENET1K_V1`` through torchvision's own loader). Images are
normalised with the ImageNet RGB mean/std the backbone was trained with; the original fine-tuned
torchvision-layout weights under Detectron2's caffe/BGR settings (its
``downstream/insseg/config/mask_rcnn_R_50_FPN_*.yaml``; see ``docs/deviations.md``), which is not
repeated.

Defaults are the original's Detectron2 ScanNet config (``mask_rcnn_R_50_FPN_ScanNet.yaml``): global
batch 16, SGD lr 0.0025 (momentum 0.9, weight decay 1e-4), 1000 warm-up steps, ×0.1 at 60k and 80k,
90k steps, FrozenBN, stem + res2 frozen, 32 RoIs per image, test score threshold 0.5, evaluation
every 10k steps. Input
sizes follow the data: evaluation at the images' own shorter side, training at 0.8–1.0 × that (the
original's 640–800 range around its 800 test size). A different ``train.batch_size`` scales the
learning rate linearly and the step counts inversely (Detectron2's rule for other GPU counts).
Detectron2 keys of the original's scripts (``SOLVER.BASE_LR=…``, ``MODEL.WEIGHTS=…``) are accepted.
The options, presets and those keys live in :mod:`pri3d.tasks.insseg_config`.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from pri3d.coco.evaluate import evaluate_detections, format_coco_table, percent, to_coco_results
from pri3d.data.insseg import CocoInstances, build_insseg_dataset, collate_insseg
from pri3d.engine import distributed
from pri3d.engine.checkpoint import latest_checkpoint, resolve_init, resolve_weights_path
from pri3d.engine.config import check_run_config, load_config, to_yaml
from pri3d.engine.distributed import DistEnv
from pri3d.engine.schedules import BNMomentumScheduler, build_optimizer
from pri3d.engine.trainer import Trainer, TrainingStopped
from pri3d.io.atomic import atomic_write, check_writable_folder
from pri3d.models.mask_rcnn import InstanceSegmenter, build_detector, finalise_backbone, initialise_body
from pri3d.tasks.insseg_config import (
    InssegFinetuneConfig,
    InssegRunConfig,
    InssegSchedulerConfig,
    check_config,
    expand_short_forms,
    input_sizes,
    insseg_config,
    scale_to_batch,
)
from pri3d.weights import load_strict, load_weights_file, require_task

__all__ = ["evaluate_insseg", "evaluate_model", "finetune_insseg", "warmup_multistep"]

REFERENCE = ("original README, Mask R-CNN R50-FPN AP50 bbox / mask, Pri3D View+Geo: ScanNet 44.5 / 35.8 "
             "(MoCoV2-supIN→SN 43.5 / 33.9), NYUv2 34.0 / 29.5 (31.1 / 27.2); COCO 60.6 / 57.5 (Pri3D View)")  # fmt: skip


# ------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate_model(
    model: InstanceSegmenter,
    dataset: CocoInstances,
    batch_size: int = 2,
    env: DistEnv | None = None,
    workers: int = 0,
) -> dict:
    """COCO box and mask metrics of ``model`` on ``dataset`` (:func:`pri3d.coco.evaluate.evaluate_detections`).

    Under DDP each rank predicts every world_size-th image, and the detections are gathered on every rank.
    Images that fail to load are counted in ``images_skipped``.
    """
    rank, world = (env.rank, env.world_size) if env is not None else (0, 1)
    shard = Subset(dataset, list(range(rank, len(dataset), world)))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers, collate_fn=collate_insseg)
    detections, skipped = [], []
    progress = tqdm(loader, desc="eval", unit="batch", leave=False, disable=rank != 0, dynamic_ncols=True)
    with torch.random.fork_rng(devices=[]):  # evaluation must not move the training RNG streams
        for batch in progress:
            skipped += batch["skipped"]
            if batch["batch_size"]:
                outputs = model.predict(batch["images"])
                detections += to_coco_results(outputs, batch["image_id"], dataset.category_ids)
    if world > 1 and dist.is_initialized():
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (detections, skipped))
        detections = [d for part, _ in gathered for d in part]
        skipped = [s for _, part in gathered for s in part]
    report = evaluate_detections(dataset.coco, detections)
    report.update(
        {
            "images": len(dataset) - len(skipped),
            "images_skipped": len(skipped),
            "skipped": skipped[:20],
            "detections": len(detections),
        }
    )
    return report


class _PeriodicEvaluation:
    """The Trainer's epoch-end hook: evaluate at the first epoch end after each ``eval_period`` steps and
    record every result in ``eval/<name>.json`` and the run's log."""

    def __init__(self, dataset: CocoInstances, config: InssegRunConfig, env: DistEnv) -> None:
        self.dataset, self.config, self.env = dataset, config, env
        self.dir = Path(config.train.log_dir) / "eval"
        self.last_step = 0

    def __call__(self, trainer: Trainer, epoch: int) -> None:
        period = self.config.finetune.eval_period
        if (
            period > 0
            and trainer.step // period > self.last_step // period
            and trainer.step < trainer.total_steps
        ):
            self.run(trainer, f"step{trainer.step:07d}")

    def run(self, trainer: Trainer, name: str) -> dict:
        step = self.last_step = trainer.step
        t0 = time.perf_counter()
        report = evaluate_model(
            trainer.model,
            self.dataset,
            self.config.finetune.eval_batch_size,
            self.env,
            self.config.train.workers,
        )
        report.update({"step": step, "seconds": round(time.perf_counter() - t0, 1)})
        if self.env.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.dir / f"{name}.json") as handle:
                handle.write(json.dumps(report, indent=1) + "\n")
            values = {
                f"val/{kind}_{n}": report[kind][n]
                for kind in ("bbox", "segm")
                for n in ("AP", "AP50", "AP75")
            }
            box, mask = report["bbox"], report["segm"]
            line = (
                f"eval {name} (step {step}): AP50 bbox {percent(box['AP50'])}, mask {percent(mask['AP50'])}; "
                f"AP bbox {percent(box['AP'])}, mask {percent(mask['AP'])}; {report['detections']} "
                f"detections on {report['images']} images"
            )
            trainer.logger.metrics(step, values)
            trainer.logger.info(line)
        return report


# ------------------------------------------------------------------------------------------------
# fine-tuning


def build_dataset(config: InssegRunConfig, phase: str, train: bool) -> CocoInstances:
    d = config.dataset
    return build_insseg_dataset(
        d.name, d.path, d.annotations, phase, train=train, flip=config.finetune.flip, seed=config.train.seed
    )


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters, normalisation layers without weight decay (Detectron2's WEIGHT_DECAY_NORM 0)."""
    norm, rest = [], []
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if parameter.requires_grad:
                (norm if isinstance(module, nn.modules.batchnorm._BatchNorm) else rest).append(parameter)
    groups = [{"params": rest, "weight_decay": weight_decay}]
    return groups + ([{"params": norm, "weight_decay": 0.0}] if norm else [])


def warmup_multistep(optimizer: torch.optim.Optimizer, scheduler: InssegSchedulerConfig):
    """Detectron2's WarmupMultiStepLR as a per-step LambdaLR: linear warm-up, ×lr_decay at each decay step."""
    warmup, factor = scheduler.warmup_steps, scheduler.warmup_factor
    milestones, gamma = list(scheduler.decay_steps), scheduler.lr_decay

    def multiplier(step: int) -> float:
        warm = factor + (1 - factor) * step / warmup if step < warmup else 1.0
        return warm * gamma ** bisect.bisect_right(milestones, step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def _build_detector(num_classes: int, finetune: InssegFinetuneConfig, sizes: dict) -> nn.Module:
    """The recipe's Mask R-CNN at the resolved input ``sizes`` (:func:`input_sizes`)."""
    return build_detector(
        num_classes,
        sizes["min_size_train"],
        sizes["max_size"],
        batch_size_per_image=finetune.batch_size_per_image,
        score_thresh=finetune.score_thresh_test,
        detections_per_image=finetune.detections_per_image,
        proposals_train=finetune.proposals_train,
        proposals_test=finetune.proposals_test,
    )


def _finalise_backbone(
    detector: nn.Module, finetune: InssegFinetuneConfig, env: DistEnv | None = None
) -> None:
    """The recipe's frozen stages and normalisation; trainable BatchNorm is synchronised under DDP on CUDA."""
    sync = env is not None and env.distributed and env.device.type == "cuda"
    finalise_backbone(detector, finetune.freeze_at, frozen_bn=finetune.norm == "frozen", sync_bn=sync)


def finetune_insseg(config: InssegRunConfig) -> dict:
    """Fine-tune (or resume) Mask R-CNN and evaluate; returns the summary written to ``<log_dir>/results.json``.

    Keys: ``final`` (the last step's box/mask metrics, per-class AP50), ``schedule`` (the periodic
    evaluations), ``checkpoint``, ``init`` (what was loaded from where), ``input_sizes``, ``reference``.
    """
    check_run_config(config)  # before scale_to_batch, which divides by train.batch_size
    env = distributed.setup(config.train.device)
    try:
        if env.is_main:
            check_writable_folder(config.train.log_dir, "train.log_dir", ("checkpoints",))
        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        torch.manual_seed(config.train.seed)  # identical initialisation on every rank
        config, scale_note = scale_to_batch(config)
        log_dir = Path(config.train.log_dir)
        train_set = build_dataset(config, config.train.phase, train=True)
        eval_set = build_dataset(config, config.finetune.eval_phase, train=False)
        if train_set.category_ids != eval_set.category_ids or train_set.class_names != eval_set.class_names:
            raise ValueError(
                f"{train_set.annotation_path} and {eval_set.annotation_path} have different categories"
            )
        sizes = input_sizes(config.finetune, train_set.image_size())
        if len(train_set) < config.train.batch_size:
            raise ValueError(
                f"train.batch_size={config.train.batch_size} is larger than the {len(train_set)} "
                f"training images of {train_set.annotation_path}"
            )
        # the resolved sizes go into the saved config, so evaluation resizes exactly as training did
        finetune = replace(
            config.finetune,
            min_size_train=list(sizes["min_size_train"]),
            min_size_test=sizes["min_size_test"],
            max_size=sizes["max_size"],
        )
        config = replace(config, finetune=finetune)
        detector = _build_detector(train_set.num_classes, config.finetune, sizes)
        resuming = latest_checkpoint(log_dir / "checkpoints") is not None
        init_report = None
        if not resuming:
            init = resolve_init(config.finetune.pretrain, "finetune.pretrain")
            init_report = initialise_body(detector, init)
        _finalise_backbone(detector, config.finetune, env)
        model = InstanceSegmenter(detector, sizes["min_size_train"], sizes["min_size_test"])
        evaluation = _PeriodicEvaluation(eval_set, config, env)
        with Trainer(model, train_set, collate_insseg, config, env, on_epoch_end=evaluation) as trainer:
            trainer.optimizer = build_optimizer(
                _param_groups(model, config.optimizer.weight_decay), config.optimizer
            )
            trainer.scheduler = warmup_multistep(trainer.optimizer, config.scheduler)
            # not the Trainer's default, which decays it as pre-training does
            trainer.bn_scheduler = BNMomentumScheduler.constant(model, config.optimizer.bn_momentum)
            if env.is_main:
                trainer.record_config()
                for note in [*train_set.notes, *eval_set.notes, scale_note]:
                    if note:
                        trainer.logger.info(note)
                trainer.logger.info(
                    f"input sizes: {sizes} (the training images are mostly {train_set.image_size()} H×W)"
                )
                if init_report is not None:
                    trainer.logger.info("initialisation: " + init_report.summary())
                    with atomic_write(log_dir / "init_report.json") as handle:
                        handle.write(json.dumps(init_report.to_dict(), indent=1) + "\n")
            if trainer.resume_if_possible():
                evaluation.last_step = trainer.step
            trainer.fit()
            final = evaluation.run(trainer, "final")
        summary = _summarise(log_dir, final, config, sizes)
        if env.is_main:
            with atomic_write(log_dir / "results.json") as handle:
                handle.write(json.dumps(summary, indent=1) + "\n")
            print(format_coco_table(final), file=sys.stderr)
        return summary
    finally:
        distributed.teardown()


def _summarise(log_dir: Path, final: dict, config: InssegRunConfig, sizes: dict) -> dict:
    schedule = []
    for path in sorted((log_dir / "eval").glob("step*.json")):
        r = json.loads(path.read_text())
        schedule.append(
            {
                "step": r["step"],
                **{f"{kind}_{n}": r[kind][n] for kind in ("bbox", "segm") for n in ("AP", "AP50", "AP75")},
            }
        )
    init_file = log_dir / "init_report.json"
    checkpoint = latest_checkpoint(log_dir / "checkpoints")
    return {
        "final": final,
        "schedule": schedule,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "dataset": {
            "name": config.dataset.name,
            "train": config.train.phase,
            "eval": config.finetune.eval_phase,
        },
        "model": {
            "name": "maskrcnn_resnet50_fpn",
            "init": config.finetune.pretrain,
            "norm": config.finetune.norm,
        },
        "input_sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
        "init": json.loads(init_file.read_text()) if init_file.is_file() else None,
        "reference": REFERENCE,
    }


# ------------------------------------------------------------------------------------------------
# evaluation of a saved checkpoint


def evaluate_insseg(
    checkpoint: str | Path,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    save_vis: int = 0,
    device: str = "auto",
) -> dict:
    """Evaluate a fine-tuned checkpoint; writes and returns the report (box/mask AP, per-class AP50).

    Args:
        checkpoint: a `pri3d finetune insseg` checkpoint or run folder, or a torchvision Mask R-CNN
            state dict (then say ``dataset=`` and ``dataset.path=``/``dataset.annotations=``).
        overrides: short forms and ``key=value`` overrides on top of the checkpoint's config.
        out: JSON report path (default: ``<checkpoint>.eval-<dataset>-<phase>.json`` beside it).
        save_vis: draw ground truth | prediction for this many images into ``<out stem>-vis/``.

    The weights load strictly: a checkpoint that does not fit the model (e.g. another class count)
    is an error.
    """
    path = resolve_weights_path(checkpoint, "checkpoint")
    state, extra = load_weights_file(path)
    require_task(path, state, extra, "insseg")  # another task's config would not merge into this one's
    state = {k.removeprefix("detector."): v for k, v in state.items()}
    items, _ = expand_short_forms(list(overrides or []), for_eval=True)
    base = extra.get("config") if isinstance(extra.get("config"), dict) else None
    config = load_config(InssegRunConfig, items, base=base)
    check_config(config)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    chosen = config.train.device if device == "auto" else device
    if chosen not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {chosen!r}: expected auto, cpu or cuda")
    run_device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if chosen == "auto" else chosen
    )
    dataset = build_dataset(config, config.finetune.eval_phase, train=False)
    sizes = input_sizes(config.finetune, dataset.image_size())
    detector = _build_detector(dataset.num_classes, config.finetune, sizes)
    _finalise_backbone(detector, config.finetune)
    load_strict(detector, state, str(path))
    model = InstanceSegmenter(detector, sizes["min_size_train"], sizes["min_size_test"]).to(run_device)
    t0 = time.perf_counter()
    report = evaluate_model(model, dataset, config.finetune.eval_batch_size, workers=config.train.workers)
    report.update(
        {
            "checkpoint": str(path),
            "step": extra.get("step"),
            "seconds": round(time.perf_counter() - t0, 1),
            "dataset": {
                "name": config.dataset.name,
                "annotations": str(dataset.annotation_path),
                "phase": config.finetune.eval_phase,
            },
            "input_sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
            "reference": REFERENCE,
        }
    )
    out = (
        Path(out)
        if out
        else path.with_name(f"{path.name}.eval-{config.dataset.name}-{config.finetune.eval_phase}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if save_vis > 0:
        report["figures"] = [
            str(p) for p in _save_figures(model, dataset, save_vis, out.with_name(out.stem + "-vis"))
        ]
    with atomic_write(out) as handle:
        handle.write(json.dumps(report, indent=1) + "\n")
    report["report_path"] = str(out)
    return report


def _save_figures(model: InstanceSegmenter, dataset: CocoInstances, count: int, folder: Path) -> list[Path]:
    from pri3d.coco.draw import save_instance_figure

    picks = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int))
    written = []
    for index in picks.tolist():
        sample = dataset[index]
        if "skip" in sample:
            continue
        output = model.predict([sample["image"]])[0]
        prediction = {
            "masks": output["masks"][:, 0].cpu() > 0.5,
            "boxes": output["boxes"].cpu(),
            "labels": output["labels"].cpu(),
            "scores": output["scores"].cpu(),
        }
        written.append(
            save_instance_figure(
                folder / f"{index:05d}.png",
                sample["image"],
                sample["target"],
                prediction,
                dataset.class_names,
                title=dataset.name(index),
            )
        )
    return written


# ------------------------------------------------------------------------------------------------
# CLI (registered through pri3d.tasks.finetune_cli / eval_cli)


def register_finetune(subparsers) -> None:
    parser = subparsers.add_parser(
        "insseg",
        help="fine-tune Mask R-CNN R50-FPN (detection + instance segmentation)",
        description="Fine-tune torchvision's Mask R-CNN R50-FPN, its ResNet-50 from init=, and evaluate it "
        "(COCO AP). Short forms: dataset=scannet|nyuv2|coco, init=scratch|imagenet|PATH, "
        "dataset.split=train|train20|…; any other key=value overrides the config (train.batch_size=4, "
        "dataset.annotations=DIR, ...), and the original's Detectron2 keys work (SOLVER.BASE_LR=0.0025, "
        "MODEL.WEIGHTS=PATH, ...). Defaults are the original recipe. Re-running with the same "
        "train.log_dir resumes.",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="short forms and config overrides")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(run=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    config = insseg_config(args.overrides)
    if args.print_config:
        print(to_yaml(config))
        return 0
    try:
        summary = finetune_insseg(config)
    except TrainingStopped as error:
        print(f"pri3d finetune insseg: stopped: {error}", file=sys.stderr)
        return 3
    final = summary["final"]
    print(
        f"final AP50 bbox {percent(final['bbox']['AP50'])} | mask {percent(final['segm']['AP50'])}; "
        f"results in {Path(config.train.log_dir) / 'results.json'}"
    )
    return 0


def register_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "insseg",
        help="evaluate a Mask R-CNN checkpoint (COCO box/mask AP, AP50, AP75, per-class AP50)",
        description="Evaluate checkpoint=PATH (a file or a run folder) on the eval split (dataset.split=val) "
        "with pycocotools. Other arguments are short forms or overrides on top of the checkpoint's config, "
        "e.g. dataset.path=DIR dataset.annotations=DIR. Writes a JSON report (fractions; the table prints ×100).",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="checkpoint=PATH, out=FILE, overrides"
    )
    parser.add_argument(
        "--save-vis",
        type=int,
        default=0,
        metavar="N",
        help="draw ground truth | predicted masks and boxes for N images beside the report",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default %(default)s)")
    parser.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    _, extra = expand_short_forms(args.overrides, for_eval=True)
    if "checkpoint" not in extra:
        raise ValueError("checkpoint=PATH is required (a fine-tuned checkpoint file or run folder)")
    rest = [a for a in args.overrides if a.partition("=")[0] not in ("checkpoint", "out")]
    report = evaluate_insseg(
        extra["checkpoint"], rest, out=extra.get("out"), save_vis=args.save_vis, device=args.device
    )
    print(format_coco_table(report))
    print(f"report: {report['report_path']}")
    for figure in report.get("figures", []):
        print(f"figure: {figure}")
    return 0
