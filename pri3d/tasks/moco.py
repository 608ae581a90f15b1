"""`pri3d moco`: MoCo v2 pre-training on the frames of a ScanNet preprocessing output (the paper's baseline).

    pri3d moco dataset.path=data/scannet_pretrain
    pri3d moco dataset.path=data/scannet_pretrain dataset.extra_images=data/imagenet/train  # --imagenet --balanced
    torchrun --nproc_per_node 8 -m pri3d.cli moco dataset.path=... moco.bn_group_size=16

Defaults are the original's recipe (:mod:`pri3d.tasks.moco_config`); the method is
:mod:`pri3d.models.moco`, the data :mod:`pri3d.data.moco_frames`, the loop pri3d's
:class:`~pri3d.engine.trainer.Trainer` (accumulation, DDP, atomic checkpoints, exact resume: re-running
with the same ``train.log_dir`` resumes). Besides pri3d's checkpoints in ``<log_dir>/checkpoints/``,
each epoch end (every ``train.report_epoch``) and the run's end write ``checkpoint_<e>.pth.tar`` there in
upstream MoCo's layout: ``{"epoch", "arch", "step", "state_dict"}`` with ``module.encoder_q.*``,
``module.encoder_k.*``, ``module.queue``, ``module.queue_ptr``, which upstream's and the original
Pri3D's conversion scripts read. ``init=`` of `pri3d finetune` and `pri3d export` read both kinds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pri3d.data.moco_frames import MoCoFrameOptions, MoCoFrames, collate_views
from pri3d.engine import distributed
from pri3d.engine.config import ConfigError, check_run_config, load_config, to_yaml
from pri3d.engine.schedules import BNMomentumScheduler
from pri3d.engine.trainer import Trainer, TrainingStopped
from pri3d.io.atomic import atomic_write, check_writable_folder
from pri3d.models.moco import MoCo
from pri3d.tasks.moco_config import MOCO_RULES, MoCoRunConfig
from pri3d.tasks.pretrain import pair_list

__all__ = [
    "MoCoFiles",
    "build_dataset",
    "build_model",
    "check_bn_groups",
    "moco_pretrain",
    "write_moco_checkpoint",
]


def build_dataset(config: MoCoRunConfig) -> MoCoFrames:
    d = config.dataset
    options = MoCoFrameOptions(
        frames=d.frames,
        resize=tuple(d.resize),
        crop=d.crop,
        extra_images=d.extra_images,
        balanced=d.balanced,
        seed=config.train.seed,
    )
    return MoCoFrames(d.path, pair_list(config), options)


def build_model(config: MoCoRunConfig) -> MoCo:
    """The MoCo module, its encoders initialised as ``moco.pretrained`` says (``scratch``: at random)."""
    m = config.moco
    model = MoCo(
        arch=m.arch,
        dim=m.dim,
        mlp=m.mlp,
        queue_size=m.queue_size,
        momentum=m.momentum,
        temperature=m.temperature,
        bn_group_size=m.bn_group_size,
    )
    if m.pretrained != "scratch":
        model.load_backbone(m.pretrained)
    return model


def check_bn_groups(config: MoCoRunConfig, world_size: int) -> None:
    """Shuffle BN needs two BN groups or more in each rank's micro-batch: with one, keys and queries
    would share their statistics."""
    micro = config.train.batch_size // (world_size * config.optimizer.accumulate_step)
    if micro <= config.moco.bn_group_size:
        raise ConfigError(
            f"moco.bn_group_size={config.moco.bn_group_size}: each rank's micro-batch holds {micro} samples "
            f"(train.batch_size={config.train.batch_size} / {world_size} ranks / optimizer.accumulate_step="
            f"{config.optimizer.accumulate_step}), one BN group; shuffle BN needs two or more: set "
            f"moco.bn_group_size to {max(micro // 2, 1)} or less"
        )


def write_moco_checkpoint(model: MoCo, path: Path, epoch: int, step: int) -> Path:
    """Write ``model`` in upstream MoCo's checkpoint layout (``state_dict`` keyed ``module.*``), atomically."""
    state = {
        "epoch": epoch,
        "arch": model.arch,
        "step": step,
        "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)
    return path


class MoCoFiles:
    """Writes ``checkpoint_<e>.pth.tar`` (upstream's names: e is the 0-based epoch written at its end)
    on the main rank, keeping the newest ``train.keep_checkpoints`` of them when that is set."""

    def __init__(self, model: MoCo, config: MoCoRunConfig):
        self.model, self.config = model, config
        self.folder = Path(config.train.log_dir) / "checkpoints"

    def __call__(self, trainer: Trainer, epoch: int) -> None:  # the Trainer's epoch-end hook
        if epoch % self.config.train.report_epoch == 0:
            self.write(trainer, epoch - 1, epoch)

    def write(self, trainer: Trainer, index: int, epochs_done: int) -> None:
        if not trainer.env.is_main:
            return
        path = write_moco_checkpoint(
            self.model, self.folder / f"checkpoint_{index:04d}.pth.tar", epochs_done, trainer.step
        )
        trainer.logger.info(f"wrote {path} (MoCo layout)")
        keep = self.config.train.keep_checkpoints
        if keep > 0:
            for old in sorted(self.folder.glob("checkpoint_*.pth.tar"))[:-keep]:
                old.unlink()

    def write_last(self, trainer: Trainer) -> None:
        """The run's end: inside epoch e (train.max_steps) the file is checkpoint_<e> with its last step."""
        if trainer.batch_in_epoch:
            self.write(trainer, trainer.epoch, trainer.epoch)
        elif not (self.folder / f"checkpoint_{trainer.epoch - 1:04d}.pth.tar").is_file():
            self.write(trainer, trainer.epoch - 1, trainer.epoch)  # the epoch-end hook skipped it


def moco_pretrain(config: MoCoRunConfig) -> dict:
    """Run (or resume) MoCo v2 pre-training; returns the last logged metrics."""
    check_run_config(config, MOCO_RULES)
    env = distributed.setup(config.train.device)
    try:
        check_bn_groups(config, env.world_size)
        if env.is_main:
            check_writable_folder(config.train.log_dir, "train.log_dir", ("checkpoints",))
        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        torch.manual_seed(config.train.seed)  # identical initialisation (head, queue) on every rank
        dataset = build_dataset(config)
        model = build_model(config)
        files = MoCoFiles(model, config)
        with Trainer(
            model, dataset, collate_views, config, env, on_epoch_end=files, shuffle=not dataset.orders_epochs
        ) as trainer:
            # as upstream MoCo; the Trainer's default decays it as pre-training does
            trainer.bn_scheduler = BNMomentumScheduler.constant(model, config.optimizer.bn_momentum)
            trainer.optimizer.register_step_post_hook(lambda *_: model.end_step())
            trainer.record_config()
            trainer.logger.info(
                f"{len(dataset)} images per epoch: {len(dataset.frames)} ScanNet frames "
                f"({config.dataset.frames}), {len(dataset.extra)} from dataset.extra_images"
                + (", mixed 1:1" if dataset.orders_epochs else "")
            )
            trainer.resume_if_possible()
            metrics = trainer.fit()
            files.write_last(trainer)
            return metrics
    finally:
        distributed.teardown()


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "moco",
        help="MoCo v2 pre-training on ScanNet frames (the paper's 2D-only baseline)",
        description="Pre-train a torchvision ResNet with MoCo v2 on the frames of `pri3d preprocess scannet` "
        "output. Settings are key=value overrides (e.g. dataset.path=DIR moco.arch=resnet18 "
        "train.batch_size=64); defaults are the original's recipe. Launch with torchrun for several processes.",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(MoCoRunConfig, args.overrides)
    if args.print_config:
        print(to_yaml(config))
        return 0
    try:
        moco_pretrain(config)
    except TrainingStopped as error:
        print(f"pri3d moco: stopped: {error}", file=sys.stderr)
        return 3
    return 0
