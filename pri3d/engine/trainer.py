"""The training loop: gradient accumulation, DDP, bf16/channels_last, checkpoints and exact resume.

The model is any module whose forward takes a collated batch and returns a dict of scalar losses
with `total_loss`. A batch also carries `batch_size` (usable samples, 0 when none), `skipped` (why
the others failed to load) and optionally `counts`: named counters (e.g. pairs that train only some
losses) that are added up over the run and logged as `train/<name>`. One optimizer step consumes one
global batch (`train.batch_size` samples), split over ranks and accumulation micro-batches by
`GlobalBatchSampler`. After every optimizer step the LR scheduler and the BN-momentum schedule
advance (as the original).

The run's log stays open after `fit()`, so that the runner's last words (a final evaluation) go to
the same `train.log` and `metrics.jsonl`; use the Trainer as a context manager (`with Trainer(...) as
trainer:`), which closes the log on leaving the block however it is left, or call `close()`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import NoReturn

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from pri3d.engine.checkpoint import (
    CheckpointDiskFull,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    remove_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pri3d.engine.config import check_run_config, to_dict, to_yaml
from pri3d.engine.distributed import DistEnv, all_ranks_true
from pri3d.engine.logger import RunLogger
from pri3d.engine.sampler import GlobalBatchSampler
from pri3d.engine.schedules import BNMomentumScheduler, build_optimizer, build_scheduler
from pri3d.io.atomic import atomic_write, check_writable_folder


class TrainingStopped(RuntimeError):
    """The run cannot go on (non-finite loss, too many bad samples); the message says why."""


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        collate_fn,
        config,
        env: DistEnv,
        on_epoch_end: Callable[[Trainer, int], None] | None = None,
        shuffle: bool = True,  # False: a dataset that orders each epoch in set_epoch is read in order
    ):
        self.config = config
        self.on_epoch_end = on_epoch_end  # called on every rank after each epoch's checkpoint (validation)
        self.env = env
        self.dataset = dataset
        self.log_dir = Path(config.train.log_dir)
        self.checkpoint_dir = self.log_dir / "checkpoints"
        check_run_config(config)
        train = config.train
        self.accumulate = config.optimizer.accumulate_step
        self.sampler = GlobalBatchSampler(
            len(dataset),
            train.batch_size,
            rank=env.rank,
            world_size=env.world_size,
            accumulate=self.accumulate,
            seed=train.seed,
            shuffle=shuffle,
        )
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=train.workers,
            collate_fn=collate_fn,
            pin_memory=env.device.type == "cuda",
        )
        self.model = model.to(env.device)
        if train.channels_last:
            # 4-D (2D conv) tensors only: Module.to(memory_format=channels_last) raises on the 3D
            # network's 5-D kernels
            for tensor in [*self.model.parameters(), *self.model.buffers()]:
                if tensor.dim() == 4:
                    tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model.parameters(), config.optimizer)
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.scheduler = build_scheduler(
            self.optimizer, config.scheduler, self.steps_per_epoch, self.total_steps
        )
        self.bn_scheduler = BNMomentumScheduler(self.model)
        self.ddp = (
            DistributedDataParallel(
                self.model, device_ids=[env.local_rank] if env.device.type == "cuda" else None
            )
            if env.distributed
            else self.model
        )
        if env.is_main:  # for callers that did not check (the runners do): a named error, not a traceback
            check_writable_folder(self.log_dir, "train.log_dir", ("checkpoints",))
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.samples_skipped = 0
        self.steps_trained = 0  # optimizer steps that had at least one usable sample
        self.counts: dict[str, int] = {}  # the batches' `counts`, over the run (resumes included)
        # before the log opens: nothing after it may raise, or the log would be left open
        leftovers = remove_temporaries(self.checkpoint_dir) if env.is_main else []
        self.logger = RunLogger(
            self.log_dir,
            enabled=env.is_main,
            name=train.exp_name,
            config=to_dict(config),
            tensorboard=config.logging.tensorboard,
            wandb_mode=config.logging.wandb,
            wandb_project=config.logging.wandb_project,
        )
        if leftovers:
            self.logger.info(
                "removed unfinished checkpoint files: " + ", ".join(path.name for path in leftovers)
            )

    def record_config(self) -> None:
        """Write the run's config to ``<log_dir>/config.yaml`` and into its log (the main rank's)."""
        if not self.env.is_main:
            return
        text = to_yaml(self.config)
        with atomic_write(self.log_dir / "config.yaml") as handle:
            handle.write(text)
        self.logger.info("config:\n" + text)

    def close(self) -> None:
        """Close the run's log (text, metrics, TensorBoard, Weights & Biases)."""
        self.logger.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        if self.config.train.max_steps > 0:  # the run's length, however many epochs it spans
            return self.config.train.max_steps
        return self.config.scheduler.max_epochs * self.steps_per_epoch

    def resume_if_possible(self) -> bool:
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return False
        state = load_checkpoint(path)
        if "optimizer" not in state:
            raise ValueError(
                f"{path} is a finished run's weights without optimizer state (`pri3d demo` keeps its "
                "runs that way): it can initialise a new run (init=...) but not resume this one; "
                "choose another train.log_dir"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.bn_scheduler.load_state_dict(state["bn_scheduler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.samples_skipped = state.get("samples_skipped", 0)
        self.steps_trained = state.get("steps_trained", self.step)  # older checkpoints did not count
        self.counts = state.get("counts", {})
        set_rng_state(state["rng"])
        self.logger.info(
            f"resumed from {path} at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})"
        )
        return True

    def save(self, name: str) -> None:
        if not self.env.is_main:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "bn_scheduler": self.bn_scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "samples_skipped": self.samples_skipped,
            "steps_trained": self.steps_trained,
            "counts": self.counts,
            "config": to_dict(self.config),
            "rng": rng_state(),
        }
        try:
            save_checkpoint(self.checkpoint_dir, name, state)
        except CheckpointDiskFull as error:
            self._stop(str(error))
        if self.config.train.keep_checkpoints > 0:
            prune_checkpoints(self.checkpoint_dir, self.config.train.keep_checkpoints)

    # ------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until `total_steps`; returns the last logged metrics. The log stays open (see `close`)."""
        train = self.config.train
        self.logger.info(
            f"training {self.total_steps} steps ({self.steps_per_epoch} per epoch), global batch {train.batch_size} "
            f"= {self.env.world_size} rank(s) × {self.accumulate} accumulation × {self.sampler.micro}, "
            f"device {self.env.device}"
        )
        progress = _progress(self.total_steps, self.step, self.env.is_main)
        meters: dict[str, float] = {}
        counted = 0
        last: dict = {}
        consecutive_bad: list[str] = []
        timer = time.perf_counter()
        data_time = 0.0
        pairs = 0
        trained_in_step = False
        while self.step < self.total_steps:
            self.dataset.set_epoch(self.epoch)
            self.sampler.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
            self.model.train()
            micro = 0
            data_start = time.perf_counter()
            for batch in self.loader:
                data_time += time.perf_counter() - data_start
                consecutive_bad = self._track_bad_samples(batch, consecutive_bad)
                if all_ranks_true(batch["batch_size"] > 0, self.env):
                    losses = self._forward_backward(batch)
                    for key, value in losses.items():
                        meters[key] = meters.get(key, 0.0) + value
                    counted += 1
                    pairs += batch["batch_size"] * self.env.world_size
                    trained_in_step = True
                    for name, count in batch.get("counts", {}).items():
                        self.counts[name] = self.counts.get(name, 0) + count
                micro += 1
                if micro % self.accumulate == 0:
                    self._optimizer_step()
                    self.steps_trained += trained_in_step
                    trained_in_step = False
                    self.batch_in_epoch += 1
                    progress.update(1)
                    if self.step % train.report_batch == 0 or self.step == self.total_steps:
                        elapsed = time.perf_counter() - timer
                        last = {f"train/{k}": v / max(counted, 1) for k, v in meters.items()}
                        last.update(
                            {
                                "train/lr": self.optimizer.param_groups[0]["lr"],
                                "train/pairs_per_s": pairs / elapsed,
                                "train/data_time_share": data_time / elapsed,
                                "train/samples_skipped": self.samples_skipped,
                                "epoch": self.epoch,
                                **{f"train/{name}": count for name, count in self.counts.items()},
                            }
                        )
                        self.logger.metrics(self.step, last)
                        self.logger.info(_format(self.step, self.total_steps, last))
                        progress.set_postfix(
                            loss=f"{last.get('train/total_loss', float('nan')):.3f}",
                            pairs_s=f"{last['train/pairs_per_s']:.1f}",
                        )
                        meters, counted, pairs, data_time, timer = {}, 0, 0, 0.0, time.perf_counter()
                    # before the first usable sample there is nothing worth keeping, and a run that
                    # ends up training nothing must leave no weights that look like a result
                    if (
                        train.checkpoint_every
                        and self.step % train.checkpoint_every == 0
                        and self.steps_trained
                    ):
                        self.save(f"step{self.step:07d}.pth")
                    if self.step >= self.total_steps:
                        break
                data_start = time.perf_counter()
            else:
                if not self.steps_trained:  # the next epoch reads the same files: stop, do not loop on
                    self._stop_untrained(f"epoch {self.epoch + 1} ended", consecutive_bad)
                self.epoch += 1
                self.batch_in_epoch = 0
                if self.epoch % train.report_epoch == 0:
                    self.save(f"epoch{self.epoch:03d}.pth")
                if self.on_epoch_end is not None:
                    self.on_epoch_end(self, self.epoch)
                continue
            break
        progress.close()
        if not self.steps_trained:
            self._stop_untrained("the run ended", consecutive_bad)
        self.save(f"step{self.step:07d}.pth")
        self.logger.info(
            f"done: {self.step} steps ({self.steps_trained} with usable samples), {self.samples_skipped} samples "
            f"skipped; checkpoints in {self.checkpoint_dir}"
        )
        return last

    def _forward_backward(self, batch: dict) -> dict[str, float]:
        batch = _to_device(batch, self.env.device, self.config.train.channels_last)
        autocast = (
            torch.autocast(device_type=self.env.device.type, dtype=torch.bfloat16)
            if self.config.train.bf16
            else nullcontext()
        )
        # the forward updates BatchNorm statistics: keep them to undo a forward that goes non-finite
        buffers = [buffer.clone() for buffer in self.model.buffers()]
        with autocast:
            losses = self.ddp(batch)
        total = losses["total_loss"]
        if not all_ranks_true(bool(torch.isfinite(total).item()), self.env):
            with torch.no_grad():
                for buffer, before in zip(self.model.buffers(), buffers):
                    buffer.copy_(before)
            self.save(f"nonfinite-step{self.step:07d}.pth")  # weights and statistics of the last good step
            values = {k: float(v.detach()) for k, v in losses.items()}
            self._stop(
                f"non-finite loss at step {self.step} ({values}); the last good state is saved in "
                f"{self.checkpoint_dir}; lower optimizer.lr or check the data"
            )
        (total / self.accumulate).backward()
        return {k: float(v.detach()) for k, v in losses.items()}

    def _optimizer_step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.bn_scheduler.step()
        self.step += 1

    def _track_bad_samples(self, batch: dict, consecutive: list[str]) -> list[str]:
        if not batch["skipped"]:
            return [] if batch["batch_size"] else consecutive
        self.samples_skipped += len(batch["skipped"])
        for reason in batch["skipped"]:
            self.logger.info(f"skipped sample: {reason}")
        consecutive = (consecutive + batch["skipped"]) if batch["batch_size"] == 0 else list(batch["skipped"])
        if len(consecutive) >= self.config.train.max_bad_samples:
            self._stop(
                f"{len(consecutive)} samples in a row failed to load (train.max_bad_samples="
                f"{self.config.train.max_bad_samples}):\n  " + "\n  ".join(consecutive)
            )
        return consecutive

    def _stop_untrained(self, when: str, reasons: list[str]) -> NoReturn:
        """Stop a run that has not trained on one sample (``reasons``: the latest skip reasons)."""
        self._stop(
            f"{when} with no usable sample in {self.step} steps ({self.samples_skipped} samples skipped): "
            f"nothing was trained and no checkpoint is written; each skipped sample's reason is in "
            f"{self.log_dir / 'train.log'}" + "".join(f"\n  {reason}" for reason in reasons[:5])
        )

    def _stop(self, reason: str) -> NoReturn:
        """Write the reason to the run's log too (stderr may be lost), and stop."""
        self.logger.info(f"stopped: {reason}")
        raise TrainingStopped(reason)


def _to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.dim() == 4:
                value = value.contiguous(memory_format=torch.channels_last)
        moved[key] = value
    return moved


def _format(step: int, total: int, metrics: dict) -> str:
    parts = [f"step {step}/{total}"]
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isnan(value):
            parts.append(f"{key.removeprefix('train/')} {value:.4g}")
    return " | ".join(parts)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, unit="step", desc="train", disable=not enabled, dynamic_ncols=True
    )
