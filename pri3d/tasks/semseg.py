"""`pri3d finetune semseg` and `pri3d eval semseg`: fine-tune and evaluate semantic segmentation.

    pri3d finetune semseg dataset=scannet model=unet backbone=Res50UNet init=runs/pretrain/checkpoints/step0001500.pth \\
        dataset.path=data/scannet_frames_25k [dataset.split=train20] [train.batch_size=8 ...]
    pri3d eval semseg checkpoint=runs/semseg dataset.path=data/scannet_frames_25k --save-vis 8

Defaults are the original UNet recipe (its ``downstream/semseg/unet/config/default.yaml`` and
``scripts/scannet.sh``): SGD lr 0.01 (momentum 0.9, dampening 0.1, no weight decay), poly 0.9 per
step, 80 epochs, batch 8, 240×320, label 0 ignored, BN-momentum decay. The
short forms ``dataset=``, ``model=``, ``backbone=``, ``init=``, ``dataset.split=`` (and ``checkpoint=``,
``out=`` for eval) expand to the original's keys plus per-dataset/per-model presets
(:mod:`pri3d.tasks.semseg_config`); explicit ``key=value`` overrides win.

Evaluation runs at the original's schedule (after epochs 1, 6, 11, … — the original's `epoch %
report_epoch == 0` with 0-based epochs) and always at the end of training. The **final** number is
the headline; the best scheduled number is reported only as ``best_on_val_model_selection`` because
picking it uses the evaluation data (it is what the original reported).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from pri3d.data.semseg import SegmentationFrames, SemsegOptions, build_semseg_dataset, collate_semseg
from pri3d.engine import distributed
from pri3d.engine.checkpoint import latest_checkpoint, resolve_init, resolve_weights_path
from pri3d.engine.config import check_run_config, load_config, to_yaml
from pri3d.engine.distributed import DistEnv
from pri3d.engine.schedules import BNMomentumScheduler, build_optimizer, build_scheduler
from pri3d.engine.trainer import Trainer, TrainingStopped
from pri3d.io.atomic import atomic_write, check_writable_folder
from pri3d.metrics import ConfusionMatrix, format_iou_table, iou_report
from pri3d.models.segmentation import SegmentationModel, SmpSegmenter, build_segmentation_model, initialise
from pri3d.tasks.semseg_config import SEMSEG_RULES, SemsegRunConfig, expand_short_forms, semseg_config
from pri3d.weights import load_strict, load_weights_file, require_task

__all__ = ["evaluate_model", "evaluate_semseg", "finetune_semseg"]


# ------------------------------------------------------------------------------------------------
# parts


def build_dataset(config: SemsegRunConfig, phase: str, train: bool) -> SegmentationFrames:
    d = config.dataset
    options = SemsegOptions(
        size=tuple(d.size),
        augment=d.augment,
        random_crop=d.random_crop,
        color_interpolation=d.color_interpolation,
        seed=config.train.seed,
    )
    return build_semseg_dataset(d.name, d.path, phase, options, split_dir=d.split_dir or None, train=train)


def _apply_head_recipe(trainer: Trainer, model: SegmentationModel, config: SemsegRunConfig) -> None:
    """Per-group learning rates and a constant BN momentum for the PSPNet/DeepLab recipes."""
    ft = config.finetune
    if ft.head_lr_mult != 1.0:
        encoder = model.backbone.encoder if not isinstance(model, SmpSegmenter) else model.encoder
        encoder_ids = {id(p) for p in encoder.parameters()}
        rest = [p for p in model.parameters() if id(p) not in encoder_ids]
        groups = [
            {"params": list(encoder.parameters())},
            {"params": rest, "lr": config.optimizer.lr * ft.head_lr_mult},
        ]
        trainer.optimizer = build_optimizer(groups, config.optimizer)
        trainer.scheduler = build_scheduler(
            trainer.optimizer, config.scheduler, trainer.steps_per_epoch, trainer.total_steps
        )
    if not ft.bn_schedule:
        trainer.bn_scheduler = BNMomentumScheduler.constant(trainer.model, ft.bn_momentum)


@torch.no_grad()
def evaluate_model(
    model: SegmentationModel,
    dataset: SegmentationFrames,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    env: DistEnv | None = None,
    workers: int = 0,
) -> dict:
    """Confusion matrix over ``dataset`` and both mIoU definitions (:func:`pri3d.metrics.iou_report`).

    Under DDP each rank evaluates every world_size-th frame and the matrices are summed. Frames that
    fail to load are counted in ``frames_skipped``. Restores the model's train/eval mode.
    """
    device = torch.device(device)
    rank, world = (env.rank, env.world_size) if env is not None else (0, 1)
    if dataset.full_resolution:
        batch_size = 1  # frames of different sizes
    shard = Subset(dataset, list(range(rank, len(dataset), world)))
    loader = DataLoader(
        shard, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_semseg
    )
    confusion = ConfusionMatrix(dataset.num_classes, ignore_index=0)
    was_training = model.training
    model.eval()
    skipped = 0
    # evaluation must not move the training RNG streams (exact resume)
    with torch.random.fork_rng(devices=[]):
        for batch in loader:
            skipped += len(batch["skipped"])
            if not batch["batch_size"]:
                continue
            label = batch["label"].to(device)
            logits = model.logits(batch["image"].to(device), label.shape[-2:])  # [B, K, H, W]
            confusion.update(logits.argmax(1), label)
    model.train(was_training)
    matrix = confusion.matrix.to(device)
    counts = torch.tensor([skipped, len(shard)], device=device)
    if world > 1 and dist.is_initialized():
        dist.all_reduce(matrix)
        dist.all_reduce(counts)
    report = iou_report(matrix.cpu(), dataset.class_names, ignore_index=0)
    report.update(
        {
            "frames": int(counts[1]) - int(counts[0]),
            "frames_skipped": int(counts[0]),
            "confusion_matrix": matrix.cpu().tolist(),
        }
    )
    return report


class _PeriodicEvaluation:
    """The Trainer's epoch-end hook: evaluate at the original's epochs and record every result in
    ``eval/<name>.json`` and the run's log."""

    def __init__(self, dataset: SegmentationFrames, config: SemsegRunConfig, env: DistEnv) -> None:
        self.dataset, self.config, self.env = dataset, config, env
        self.dir = Path(config.train.log_dir) / "eval"

    def __call__(self, trainer: Trainer, epoch: int) -> None:
        if (epoch - 1) % self.config.train.report_epoch == 0:  # 0-based epoch % report_epoch == 0
            self.run(trainer, f"epoch{epoch:03d}", epoch)

    def run(self, trainer: Trainer, name: str, epoch: float) -> dict:
        step = trainer.step
        t0 = time.perf_counter()
        report = evaluate_model(
            trainer.model,
            self.dataset,
            self.env.device,
            self.config.finetune.eval_batch_size,
            env=self.env,
            workers=self.config.train.workers,
        )
        report.update({"step": step, "epoch": epoch, "seconds": round(time.perf_counter() - t0, 1)})
        if self.env.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.dir / f"{name}.json") as handle:
                handle.write(json.dumps(report, indent=1) + "\n")
            values = {
                "val/miou": report["miou"],
                "val/miou_original": report["miou_original"],
                "val/pixel_accuracy": report["pixel_accuracy"],
                "epoch": epoch,
            }
            line = (
                f"eval {name} (step {step}): mIoU {100 * report['miou']:.2f} (standard), "
                f"{100 * report['miou_original']:.2f} (original definition), {report['frames']} frames"
            )
            trainer.logger.metrics(step, values)
            trainer.logger.info(line)
        return report


# ------------------------------------------------------------------------------------------------
# fine-tuning


def finetune_semseg(config: SemsegRunConfig) -> dict:
    """Fine-tune (or resume) and evaluate; returns the summary also written to ``<log_dir>/results.json``.

    Keys: ``final`` (the headline: the last step's model; ``miou`` standard, ``miou_original`` the
    original's definition), ``schedule`` (results at the original's evaluation epochs),
    ``best_on_val_model_selection`` (the best scheduled result: selected on the evaluation data,
    which is what the original reported), ``checkpoint``, ``init`` (what was loaded from where).
    """
    check_run_config(config, SEMSEG_RULES)
    env = distributed.setup(config.train.device)
    try:
        if env.is_main:
            check_writable_folder(config.train.log_dir, "train.log_dir", ("checkpoints",))
        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        torch.manual_seed(config.train.seed)  # identical initialisation on every rank
        log_dir = Path(config.train.log_dir)
        train_set = build_dataset(config, config.train.phase, train=True)
        eval_set = build_dataset(config, config.finetune.eval_phase, train=False)
        model = build_segmentation_model(
            config.finetune.model, config.finetune.backbone, train_set.num_classes
        )
        resuming = latest_checkpoint(log_dir / "checkpoints") is not None
        init_report = None
        if not resuming:
            init = resolve_init(config.finetune.pretrain, "finetune.pretrain")
            init_report = initialise(model, init, config.finetune.strict_init)
        evaluation = _PeriodicEvaluation(eval_set, config, env)
        with Trainer(model, train_set, collate_semseg, config, env, on_epoch_end=evaluation) as trainer:
            _apply_head_recipe(trainer, model, config)
            if env.is_main:
                trainer.record_config()
                for note in train_set.notes + eval_set.notes:
                    trainer.logger.info(note)
                if init_report is not None:
                    trainer.logger.info("initialisation: " + init_report.summary())
                    with atomic_write(log_dir / "init_report.json") as handle:
                        handle.write(json.dumps(init_report.to_dict(), indent=1) + "\n")
            trainer.resume_if_possible()
            trainer.fit()
            final = evaluation.run(trainer, "final", round(trainer.step / trainer.steps_per_epoch, 3))
        checkpoint = latest_checkpoint(log_dir / "checkpoints")
        summary = _summarise(log_dir, final, checkpoint, config)
        if env.is_main:
            with atomic_write(log_dir / "results.json") as handle:
                handle.write(json.dumps(summary, indent=1) + "\n")
            print(format_iou_table(final), file=sys.stderr)
        return summary
    finally:
        distributed.teardown()


def _summarise(log_dir: Path, final: dict, checkpoint: Path | None, config: SemsegRunConfig) -> dict:
    schedule = []
    for path in sorted((log_dir / "eval").glob("epoch*.json")):
        r = json.loads(path.read_text())
        schedule.append({k: r[k] for k in ("epoch", "step", "miou", "miou_original")})
    best = max(schedule, key=lambda r: r["miou_original"], default=None)
    init_file = log_dir / "init_report.json"
    return {
        "final": {k: v for k, v in final.items() if k != "confusion_matrix"},
        "schedule": schedule,
        "best_on_val_model_selection": None
        if best is None
        else {
            **best,
            "note": "best scheduled evaluation, chosen on the evaluation data (the original's reported "
            "number; not a held-out estimate)",
        },
        "checkpoint": str(checkpoint) if checkpoint else None,
        "dataset": {
            "name": config.dataset.name,
            "train": config.train.phase,
            "eval": config.finetune.eval_phase,
        },
        "model": {
            "name": config.finetune.model,
            "backbone": config.finetune.backbone,
            "init": config.finetune.pretrain,
        },
        "init": json.loads(init_file.read_text()) if init_file.is_file() else None,
        "reference": "original README: ScanNet R50 UNet Pri3D View+Geo 61.7 mIoU (original definition, best-on-val)",
    }


# ------------------------------------------------------------------------------------------------
# evaluation of a saved checkpoint


def evaluate_semseg(
    checkpoint: str | Path,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    save_vis: int = 0,
    device: str = "auto",
) -> dict:
    """Evaluate a fine-tuned checkpoint; writes and returns the report (per-class IoU, both mIoUs).

    Args:
        checkpoint: a `pri3d finetune semseg` checkpoint or run folder, or a plain segmentation state
            dict (e.g. the original's `checkpoint_finetune.pth`; then say ``model=``/``backbone=``/``dataset=``).
        overrides: short forms and ``key=value`` overrides on top of the checkpoint's config (e.g.
            ``dataset.path=...``, ``dataset.split=val``).
        out: JSON report path (default: ``<checkpoint>.eval-<dataset>-<phase>.json`` beside it).
        save_vis: write this many image | ground truth | prediction PNGs into ``<out stem>-vis/``.

    The weights load strictly: a checkpoint that does not fit the model is an error.
    """
    path = resolve_weights_path(checkpoint, "checkpoint")
    state, extra = load_weights_file(path)
    require_task(path, state, extra, "semseg")  # another task's config would not merge into this one's
    items, _ = expand_short_forms(list(overrides or []), for_eval=True)
    base = extra.get("config") if isinstance(extra.get("config"), dict) else None
    config = load_config(SemsegRunConfig, items, base=base)
    if device != "auto":
        config.train.device = device
    if config.train.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {config.train.device!r}: expected auto, cpu or cuda")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if config.train.device == "auto" else config.train.device)
    dataset = build_dataset(config, config.finetune.eval_phase, train=False)
    model = build_segmentation_model(config.finetune.model, config.finetune.backbone, dataset.num_classes)
    load_strict(model, state, str(path))
    model.to(device)
    t0 = time.perf_counter()
    report = evaluate_model(
        model, dataset, device, config.finetune.eval_batch_size, workers=config.train.workers
    )
    report.update(
        {
            "checkpoint": str(path),
            "step": extra.get("step"),
            "seconds": round(time.perf_counter() - t0, 1),
            "dataset": {
                "name": config.dataset.name,
                "path": config.dataset.path,
                "phase": config.finetune.eval_phase,
            },
            "model": {"name": config.finetune.model, "backbone": config.finetune.backbone},
        }
    )
    out = (
        Path(out)
        if out
        else path.with_name(f"{path.name}.eval-{config.dataset.name}-{config.finetune.eval_phase}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if save_vis > 0:
        report["figures"] = [str(p) for p in _save_figures(model, dataset, device, save_vis, out)]
    with atomic_write(out) as handle:
        handle.write(json.dumps(report, indent=1) + "\n")
    report["report_path"] = str(out)
    return report


@torch.no_grad()
def _save_figures(
    model: SegmentationModel, dataset: SegmentationFrames, device, count: int, out: Path
) -> list[Path]:
    from pri3d.viz import save_segmentation_figure

    folder = out.with_name(out.stem + "-vis")
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int))
    model.eval()
    written = []
    for index in picks:
        sample = dataset[int(index)]
        if "skip" in sample:
            continue
        label = sample["label"]
        logits = model.logits(sample["image"][None].to(device), label.shape[-2:])  # [1, K, H, W]
        name = Path(dataset.name(int(index)))
        title = (
            f"{name.parent.parent.name}/{name.name}"
            if dataset.__class__.__name__ == "ScanNetSemseg"
            else name.name
        )
        written.append(
            save_segmentation_figure(
                folder / f"{int(index):05d}.png",
                sample["image"],
                label,
                logits[0].argmax(0).cpu(),
                dataset.class_names,
                title=title,
            )
        )
    return written


# ------------------------------------------------------------------------------------------------
# CLI (registered through pri3d.tasks.finetune_cli / eval_cli)


def register_finetune(subparsers) -> None:
    parser = subparsers.add_parser(
        "semseg",
        help="fine-tune semantic segmentation (UNet, PSPNet, DeepLabV3/V3+)",
        description="Fine-tune a segmentation network and evaluate it. Short forms: dataset=scannet|nyuv2|"
        "kitti|cityscapes, model=unet|pspnet|deeplabv3|deeplabv3plus, backbone=Res50UNet|Res18UNet, "
        "init=scratch|imagenet|PATH, dataset.split=train|train1…train80; any other key=value overrides "
        "the config (train.batch_size=8, dataset.path=DIR, ...). Defaults are the original recipe. "
        "Re-running with the same train.log_dir resumes.",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="short forms and config overrides")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(run=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    config = semseg_config(args.overrides)
    if args.print_config:
        print(to_yaml(config))
        return 0
    try:
        summary = finetune_semseg(config)
    except TrainingStopped as error:
        print(f"pri3d finetune semseg: stopped: {error}", file=sys.stderr)
        return 3
    final = summary["final"]
    print(
        f"final mIoU {100 * final['miou']:.2f} (standard) | {100 * final['miou_original']:.2f} (original "
        f"definition); results in {Path(config.train.log_dir) / 'results.json'}"
    )
    return 0


def register_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "semseg",
        help="evaluate a semantic-segmentation checkpoint (per-class IoU, mIoU)",
        description="Evaluate checkpoint=PATH (a file or a run folder) on the eval split (dataset.split=val). "
        "Other arguments are short forms or config overrides on top of the checkpoint's config, e.g. "
        "dataset.path=DIR. Writes a JSON report with per-class IoU and both mIoU definitions.",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="checkpoint=PATH, out=FILE, overrides"
    )
    parser.add_argument(
        "--save-vis",
        type=int,
        default=0,
        metavar="N",
        help="write N image | ground truth | prediction PNGs beside the report",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default %(default)s)")
    parser.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    _, extra = expand_short_forms(args.overrides, for_eval=True)
    if "checkpoint" not in extra:
        raise ValueError("checkpoint=PATH is required (a fine-tuned checkpoint file or run folder)")
    rest = [a for a in args.overrides if a.partition("=")[0] not in ("checkpoint", "out")]
    report = evaluate_semseg(
        extra["checkpoint"], rest, out=extra.get("out"), save_vis=args.save_vis, device=args.device
    )
    print(format_iou_table(report))
    print(f"report: {report['report_path']}")
    for figure in report.get("figures", []):
        print(f"figure: {figure}")
    return 0
