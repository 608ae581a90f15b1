"""The demo's experiment: pre-train four ways and fine-tune each against scratch, over seeds.

The arms are MoCo v2 (2D-only contrastive learning on the same frames, the paper's baseline) and
Pri3D's view-invariant loss, geometric prior and both. Each arm is pre-trained with every
pre-training seed; each pre-trained model is fine-tuned with every fine-tuning seed and, frozen,
read by a linear probe (:mod:`pri3d.demo.probe`); scratch is fine-tuned with as many seeds as a
pre-trained arm has fine-tunings, and probed with each pre-training seed's random initialisation.

Every run is a real `pri3d pretrain` / `pri3d moco` / `pri3d finetune semseg` run (or a probe) with
its own log folder under ``OUT/runs``; they are scheduled on a pool of processes (on the CPU two
single-threaded processes use two cores better than one two-threaded process at these image sizes).
A run that finished before (its ``done.json`` exists) is not repeated, so an interrupted demo
resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ARMS",
    "Arm",
    "Job",
    "StudyConfig",
    "finetune_jobs",
    "labelled_frames",
    "pretrain_jobs",
    "probe_jobs",
    "run_jobs",
    "scratch_seeds",
]


@dataclass(frozen=True)
class Arm:
    """One pre-training variant: MoCo v2 (``method="moco"``) or Pri3D with the chosen losses (the
    paper's rows View, Geo, View + Geo)."""

    name: str
    method: str  # "moco" or "pri3d"
    view_invariant: bool = False
    geometric_prior: bool = False


MOCO = Arm("MoCo", "moco")
ARMS = (
    MOCO,
    Arm("View", "pri3d", view_invariant=True),
    Arm("Geo", "pri3d", geometric_prior=True),
    Arm("View+Geo", "pri3d", view_invariant=True, geometric_prior=True),
)
#: MoCo's negatives: a small queue, about half the distinct frames of the demo's pre-training data
#: (289), so that few of them are other crops of the query's own frame.
MOCO_QUEUE = 128


@dataclass
class StudyConfig:
    """Budgets of the runs (the same for every arm and seed).

    The defaults are the full `pri3d demo`'s on the CPU; `pri3d.demo.cli` holds the GPU and
    ``--quick`` plans.
    """

    size: tuple[int, int] = (60, 80)  # (H, W) of every image
    pretrain_steps: int = 30  # optimizer steps of each pre-training (the schedule ends at the last)
    pretrain_batch: int = 8  # pairs (Pri3D) or frames (MoCo) per step
    sample_points: int = 512  # matches per pair
    voxel_size: float = 0.12  # metres: the 3D network's voxels
    voxel_crop: str = "box"  # the 3D network's input: each view's chunk box (the original's) or its frustum
    depth: bool = False  # add the depth loss to every Pri3D arm (the paper's recipe; see docs/deviations.md)
    finetune_epochs: int = 10
    finetune_batch: int = 8
    labelled_share: float = 0.2  # share of each train scene's frames_25k frames with labels
    pretrain_seeds: tuple[int, ...] = (0, 1)  # each arm is pre-trained once per seed
    seeds: tuple[int, ...] = (0, 1)  # fine-tuning seeds of each pre-trained model
    probe_steps: int = 200  # Adam steps of each linear probe
    device: str = "cpu"
    parallel: int = 2  # processes running at once
    loader_workers: int = 1  # DataLoader workers of each pre-training run
    extra_pretrain: list[str] = field(default_factory=list)  # further `key=value` overrides
    extra_finetune: list[str] = field(default_factory=list)


@dataclass
class Job:
    """One run: ``kind`` is pretrain, moco, finetune or probe; ``after`` names the job whose output it
    needs; ``options`` are a probe's arguments (the other kinds take ``overrides``)."""

    name: str
    kind: str
    log_dir: Path
    overrides: list[str]
    after: str | None = None
    meta: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    @property
    def done_file(self) -> Path:
        return self.log_dir / "done.json"


def pretrain_dir(runs: Path, arm: str, seed: int) -> Path:
    """Log folder of an arm's pre-training run with ``seed``."""
    return runs / f"pretrain_{_slug(arm)}_seed{seed}"


def finetune_dir(runs: Path, init: str, seed: int, pretrain_seed: int | None = None) -> Path:
    """Log folder of the fine-tuning run with ``seed`` from scratch, or from an arm's pre-training
    with ``pretrain_seed``."""
    pre = "" if pretrain_seed is None else f"_pre{pretrain_seed}"
    return runs / f"finetune_{_slug(init)}{pre}_seed{seed}"


def probe_dir(runs: Path, init: str, seed: int) -> Path:
    """Log folder of the linear probe of scratch's initialisation or an arm's pre-training, ``seed``."""
    return runs / f"probe_{_slug(init)}_seed{seed}"


def _slug(name: str) -> str:
    return name.lower().replace("+", "_")


def pretrain_lr(batch: int) -> float:
    """The released recipe's lr 0.1 is for a global batch of 64; smaller batches scale it linearly.

    At the demo's batch of 8, lr 0.1 left the fine-tuned models clearly worse than with the scaled
    0.0125 (see docs/benchmarks.md, "Does the 3D prior help?"). MoCo takes the same lr: the same
    optimiser budget as the Pri3D arms (its own recipe, 0.03 at batch 256, would give 0.0009).
    """
    return 0.1 * batch / 64


def scratch_seeds(config: StudyConfig) -> tuple[int, ...]:
    """Scratch's fine-tuning seeds: the fine-tuning seeds, then the next unused integers, as many as a
    pre-trained arm has fine-tunings (pre-training seeds × fine-tuning seeds), so that every row of
    the table averages as many runs."""
    wanted = len(config.pretrain_seeds) * len(config.seeds)
    others = (k for k in itertools.count() if k not in config.seeds)
    return tuple(itertools.islice(itertools.chain(config.seeds, others), wanted))


def _pri3d_overrides(arm: Arm, data: Path, seed: int, config: StudyConfig) -> list[str]:
    h, w = config.size
    return [
        f"dataset.path={data}",
        f"dataset.size=[{h},{w}]",
        "pretrain.backbone=Res18UNet",
        "pretrain.pretrained=scratch",
        f"pretrain.view_invariant={str(arm.view_invariant).lower()}",
        f"pretrain.geometric_prior={str(arm.geometric_prior).lower()}",
        f"pretrain.depth={str(config.depth).lower()}",
        f"pretrain.sample_points={config.sample_points}",
        f"pretrain.voxel_size={config.voxel_size}",
        f"pretrain.voxel_crop={config.voxel_crop}",
        *_pretrain_run_overrides(seed, config, config.loader_workers),
        *config.extra_pretrain,
    ]


def _moco_overrides(data: Path, seed: int, config: StudyConfig) -> list[str]:
    """MoCo v2 on the frames of the same pairs (the first frame of each, the original's choice), with
    the Pri3D arms' steps, batch and lr: ResNet-18 (Res18UNet's encoder) from scratch, aug-plus crops
    of the demo's height from frames at the demo's size, two BatchNorm groups per batch."""
    h, w = config.size
    return [
        f"dataset.path={data}",
        f"dataset.resize=[{h},{w}]",
        f"dataset.crop={min(h, w)}",
        "moco.arch=resnet18",
        "moco.pretrained=scratch",
        f"moco.queue_size={MOCO_QUEUE}",
        f"moco.bn_group_size={max(config.pretrain_batch // 2, 1)}",
        # on the CPU no loader process: MoCo's small frames load in less time than one takes to start
        *_pretrain_run_overrides(seed, config, 0 if config.device == "cpu" else config.loader_workers),
    ]


def _pretrain_run_overrides(seed: int, config: StudyConfig, workers: int) -> list[str]:
    """The run settings every arm's pre-training shares: batch, lr, length, seed, logging, device."""
    return [
        f"train.batch_size={config.pretrain_batch}",
        f"optimizer.lr={pretrain_lr(config.pretrain_batch)}",
        f"train.max_steps={config.pretrain_steps}",
        f"train.seed={seed}",
        "train.checkpoint_every=0",
        "train.report_batch=5",
        f"train.workers={workers}",
        f"train.device={config.device}",
        "logging.tensorboard=false",
    ]


def pretrain_jobs(runs: Path, data: Path, config: StudyConfig) -> list[Job]:
    """Every arm's pre-training with every pre-training seed on ``data`` (`pri3d preprocess scannet`
    output): ``pretrain_steps`` steps each, over as many epochs of its pair list as they take.

    The Pri3D arms with the geometric prior come first: they take the longest, so starting them
    first keeps the pool busy to the end."""
    jobs = []
    for arm in sorted(ARMS, key=lambda a: not a.geometric_prior):
        for seed in config.pretrain_seeds:
            if arm.method == "moco":
                kind, overrides = "moco", _moco_overrides(data, seed, config)
            else:
                kind, overrides = "pretrain", _pri3d_overrides(arm, data, seed, config)
            jobs.append(
                Job(
                    f"pretrain {arm.name} seed {seed}",
                    kind,
                    pretrain_dir(runs, arm.name, seed),
                    overrides,
                    meta={"arm": arm.name, "seed": seed},
                )
            )
    return jobs


def labelled_frames(frames_root: Path, out: Path, train: list[str], val: list[str], share: float) -> dict:
    """A ``scannet_frames_25k``-layout folder for fine-tuning: ``share`` of every train scene's frames
    (evenly spaced) and all frames of the val scenes, with ``scannetv2_{train,val}.txt`` lists.

    Taking the share from every train scene (rather than, as the original's ``train20`` list, the
    first scenes holding 20 % of the images) keeps every room type, and so every class, in the
    labelled set of a small generated dataset.
    """
    step = max(round(1 / share), 1)
    counts = {}
    for scene in [*train, *val]:
        colors = sorted((frames_root / scene / "color").glob("*.jpg"), key=lambda p: int(p.stem))
        keep = colors[step // 2 :: step] if scene in train else colors
        for color in keep:
            for kind, suffix in (("color", ".jpg"), ("label", ".png")):
                target = out / scene / kind / f"{color.stem}{suffix}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(frames_root / scene / kind / f"{color.stem}{suffix}", target)
        counts[scene] = len(keep)
    (out / "scannetv2_train.txt").write_text("".join(f"{s}\n" for s in train))
    (out / "scannetv2_val.txt").write_text("".join(f"{s}\n" for s in val))
    return {
        "path": str(out),
        "train_frames": sum(counts[s] for s in train),
        "val_frames": sum(counts[s] for s in val),
    }


def finetune_jobs(runs: Path, frames: Path, split_dir: Path, config: StudyConfig) -> list[Job]:
    """Scratch with each of `scratch_seeds`, and every arm's pre-training (each pre-training seed) with
    each fine-tuning seed: the same recipe and budget for all."""
    inits: list[tuple[str, int | None, str, str | None, int]] = [
        ("scratch", None, "scratch", None, seed) for seed in scratch_seeds(config)
    ]
    for arm in ARMS:
        for pre in config.pretrain_seeds:
            after = f"pretrain {arm.name} seed {pre}"
            source = str(pretrain_dir(runs, arm.name, pre))
            inits += [(arm.name, pre, source, after, seed) for seed in config.seeds]
    jobs = []
    for name, pre, init, after, seed in inits:
        runs_as = "" if pre is None else f" pre-trained with seed {pre},"
        jobs.append(
            Job(
                f"fine-tune {name}{runs_as} seed {seed}",
                "finetune",
                finetune_dir(runs, name, seed, pre),
                _finetune_overrides(init, frames, split_dir, seed, config),
                after=after,
                meta={"init": name, "pretrain_seed": pre, "seed": seed},
            )
        )
    return jobs


def _finetune_overrides(
    init: str, frames: Path, split_dir: Path, seed: int, config: StudyConfig
) -> list[str]:
    h, w = config.size
    return [
        "dataset=scannet",
        "model=unet",
        "backbone=Res18UNet",
        f"init={init}",
        f"dataset.path={frames}",
        f"dataset.split_dir={split_dir}",
        f"dataset.size=[{h},{w}]",
        "train.phase=train",
        f"train.batch_size={config.finetune_batch}",
        f"scheduler.max_epochs={config.finetune_epochs}",
        f"train.seed={seed}",
        "train.report_batch=5",
        "train.report_epoch=100000",
        "train.checkpoint_every=0",
        "train.workers=0",
        f"train.device={config.device}",
        "finetune.eval_batch_size=16",
        "logging.tensorboard=false",
        *config.extra_finetune,
    ]


def probe_jobs(runs: Path, frames: Path, config: StudyConfig) -> list[Job]:
    """A linear probe (:mod:`pri3d.demo.probe`) of every pre-training, and of scratch's random
    initialisation under each pre-training seed (the one that seed's pre-trainings start from)."""
    jobs = []
    for init in ("scratch", *(arm.name for arm in ARMS)):
        for seed in config.pretrain_seeds:
            source = "scratch" if init == "scratch" else str(pretrain_dir(runs, init, seed))
            jobs.append(
                Job(
                    f"probe {init} seed {seed}",
                    "probe",
                    probe_dir(runs, init, seed),
                    [],
                    after=None if init == "scratch" else f"pretrain {init} seed {seed}",
                    meta={"init": init, "pretrain_seed": seed},
                    options={
                        "init": source,
                        "seed": seed,
                        "frames": str(frames),
                        "size": list(config.size),
                        "steps": config.probe_steps,
                        "device": config.device,
                    },
                )
            )
    return jobs


def _execute(kind: str, log_dir: str, overrides: list[str], options: dict, threads: int) -> dict:
    """Runs in a worker process: one run, its console output to a file."""
    import torch

    from pri3d.engine.checkpoint import drop_optimizer_state, latest_checkpoint

    log = Path(log_dir)
    log.mkdir(parents=True, exist_ok=True)
    if latest_checkpoint(log / "checkpoints") is None:
        # a run stopped before its first checkpoint (the demo's runs write only their last) starts
        # over at step 0: the metrics of the attempt cut short would repeat those steps in the curves
        (log / "metrics.jsonl").unlink(missing_ok=True)
    if threads > 0:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    with open(log / "console.txt", "a", buffering=1) as console:
        sys.stdout = sys.stderr = console
        if kind == "pretrain":
            from pri3d.engine.config import load_config
            from pri3d.tasks.pretrain import pretrain
            from pri3d.tasks.pretrain_config import PretrainRunConfig

            metrics = pretrain(load_config(PretrainRunConfig, [f"train.log_dir={log}", *overrides]))
            result = {"last_metrics": metrics}
        elif kind == "moco":
            from pri3d.engine.config import load_config
            from pri3d.tasks.moco import moco_pretrain
            from pri3d.tasks.moco_config import MoCoRunConfig

            metrics = moco_pretrain(load_config(MoCoRunConfig, [f"train.log_dir={log}", *overrides]))
            result = {"last_metrics": metrics}
        elif kind == "probe":
            from pri3d.demo.probe import probe_initialisation

            result = probe_initialisation(**options)
        else:
            from pri3d.tasks.semseg import finetune_semseg
            from pri3d.tasks.semseg_config import semseg_config

            result = finetune_semseg(semseg_config([f"train.log_dir={log}", *overrides]))
    result["seconds"] = round(time.perf_counter() - start, 2)
    (log / "done.json").write_text(json.dumps(result, indent=1) + "\n")
    if kind != "probe":
        # a finished run is never resumed: its optimizer state would only double the run's size on disk
        drop_optimizer_state(latest_checkpoint(log / "checkpoints"))
    return result


def run_jobs(
    jobs: list[Job],
    parallel: int,
    threads: int,
    on_done: Callable[[Job, dict], None] | None = None,
    heartbeat_s: float = 30.0,
    execute: Callable[[str, str, list[str], dict, int], dict] = _execute,
) -> dict[str, dict]:
    """Run ``jobs`` (respecting ``after``) on ``parallel`` processes; results by job name.

    Finished jobs (``done.json`` present) are read back, not rerun. Progress lines name what
    finished, what runs (with its step) and an ETA from the measured time of each kind of job.
    Leaving by an exception (Ctrl-C, SIGTERM through `pri3d.cli`, a failed run, ``on_done``)
    ends the runs in flight: they never write ``done.json``, so the next call redoes them.
    ``execute(kind, log_dir, overrides, options, threads)`` runs one job in a worker process;
    spawned workers import it by name, so it must be a module-level function.
    """
    results: dict[str, dict] = {}
    for job in jobs:
        if job.done_file.is_file():
            results[job.name] = json.loads(job.done_file.read_text())
    pending = [job for job in jobs if job.name not in results]
    if not pending:
        return results
    seconds: dict[str, list[float]] = {}
    running: dict[Future, tuple[Job, float]] = {}
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    others = set(multiprocessing.active_children())
    with ProcessPoolExecutor(max_workers=parallel, mp_context=context, initializer=_run_process_init) as pool:
        try:
            while pending or running:
                for job in [j for j in pending if j.after is None or j.after in results]:
                    if len(running) >= parallel:
                        break
                    pending.remove(job)
                    future = pool.submit(
                        execute, job.kind, str(job.log_dir), job.overrides, job.options, threads
                    )
                    running[future] = (job, time.perf_counter())
                if not running:
                    missing = sorted({j.after for j in pending})
                    raise RuntimeError(f"runs wait for runs that are not scheduled: {missing}")
                status = ", ".join(_running_status(job) for job, _ in running.values())
                print(
                    f"  [{len(results)}/{len(jobs)} runs done, {time.perf_counter() - start:.0f} s] "
                    f"running: {status} | ETA {_eta(pending, running, seconds, parallel)}",
                    flush=True,
                )
                finished, _ = wait(running, timeout=heartbeat_s, return_when=FIRST_COMPLETED)
                for future in finished:
                    job, began = running.pop(future)
                    try:
                        result = future.result()
                    except Exception as error:
                        raise RuntimeError(
                            f"{job.name} failed (log: {job.log_dir / 'console.txt'}): {error}"
                        ) from error
                    results[job.name] = result
                    seconds.setdefault(job.kind, []).append(time.perf_counter() - began)
                    if on_done is not None:
                        on_done(job, result)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            # leaving the block waits for the runs in flight, which (unless a terminal's Ctrl-C
            # reached them too) go on to their end: stop them first. The executor offers no public
            # handle on its processes; they are this process's children started since it was made.
            _stop([p for p in multiprocessing.active_children() if p not in others])
            raise
    return results


def _run_process_init() -> None:
    """In each process that executes runs: SIGTERM ends the process's children (a run's DataLoader
    workers) with it. A DataLoader worker notices that its parent ended only if it was already
    running when it did; one still starting would wait for work forever."""
    signal.signal(signal.SIGTERM, _end_with_children)


def _end_with_children(signum: int, frame: object) -> None:
    for child in multiprocessing.active_children():
        child.terminate()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _stop(processes: list[multiprocessing.process.BaseProcess], grace_s: float = 10.0) -> None:
    """End ``processes`` (SIGTERM, then SIGKILL for any still alive after ``grace_s``) and reap them."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(deadline - time.monotonic(), 0.0))
        if process.is_alive():
            process.kill()
            process.join()


def _running_status(job: Job) -> str:
    metrics = job.log_dir / "metrics.jsonl"
    step = "starting"
    if metrics.is_file():
        lines = metrics.read_text().splitlines()
        if lines:
            step = f"step {json.loads(lines[-1]).get('step', '?')}"
    return f"{job.name} ({step})"


def _eta(pending: list[Job], running: dict, seconds: dict[str, list[float]], parallel: int) -> str:
    known = {kind: sum(v) / len(v) for kind, v in seconds.items()}
    if not known:
        return "after the first run"
    fallback = max(known.values())
    left = sum(known.get(job.kind, fallback) for job in pending)
    for job, began in running.values():
        left += max(known.get(job.kind, fallback) - (time.perf_counter() - began), 0.0)
    minutes = left / max(parallel, 1) / 60
    return f"~{math.ceil(minutes)} min" if minutes >= 1 else "< 1 min"
