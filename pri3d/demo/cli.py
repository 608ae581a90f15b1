"""`pri3d demo`: the pipeline end to end on the embedded default data.

Stages run today: generate synthetic ScanNet-format scans, preprocess them with the real
`pri3d preprocess scannet`, draw a preview, and check the data's geometry the way pre-training uses
it (pixel correspondences between views of the same scan).
Each stage prints its progress; results go to OUT/report.json and OUT/report.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from pri3d.geometry import invert_rigid, pixel_correspondences
from pri3d.io.sens import SensReader
from pri3d.preprocess.scannet import ScanNetOptions, preprocess_scannet
from pri3d.synth.generate import SynthConfig, generate, split_scenes
from pri3d.synth.preview import write_preview

FULL = SynthConfig(
    scenes=6, frames=150, seed=0, color_size=(96, 128), depth_size=(96, 128), frames_25k_every=10
)
QUICK = SynthConfig(
    scenes=3, frames=60, seed=0, color_size=(60, 80), depth_size=(60, 80), frames_25k_every=10
)
# Pre-training on the CPU at demo scale: Res18UNet from scratch, all three losses, 5 cm voxels.
PRETRAIN_FULL = ["train.max_steps=60", "train.batch_size=4"]
PRETRAIN_QUICK = ["train.max_steps=4", "train.batch_size=2"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the pipeline end to end on generated data (no download needed)",
        description="Generate synthetic ScanNet-format scans, preprocess them, preview them, check their "
        "geometry as pre-training uses it, and pre-train a small backbone on them. Writes OUT/report.json, "
        "OUT/report.md and OUT/preview.png.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("out/demo"), help="output folder (default %(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run for smoke tests (~30 s)")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes (default %(default)s)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = QUICK if args.quick else FULL
    out: Path = args.out
    data = out / "data"
    report: dict = {"config": {"quick": bool(args.quick), "scenes": config.scenes, "frames": config.frames}}
    stages = [
        ("generate scans", lambda: _generate(data, config, args.workers)),
        ("preprocess", lambda: _preprocess(data, out / "pretrain_data", args.workers)),
        ("preview", lambda: {"figure": str(write_preview(data, out / "preview.png"))}),
        ("pixel correspondences", lambda: _correspondence_check(data, config)),
        (
            "pretrain",
            lambda: _pretrain(out, config, PRETRAIN_QUICK if args.quick else PRETRAIN_FULL, args.workers),
        ),
    ]
    start = time.perf_counter()
    for number, (name, stage) in enumerate(stages, start=1):
        print(f"[{number}/{len(stages)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        report[name] = stage()
        report[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"[{number}/{len(stages)}] {name} done in {report[name]['seconds']:.1f} s", flush=True)
    report["seconds"] = round(time.perf_counter() - start, 2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    print(_markdown(report))
    return 0


def _generate(root: Path, config: SynthConfig, workers: int) -> dict:
    summary = generate(root, config, workers=workers, progress=True)
    return {
        "root": str(root),
        "generated": summary["generated"],
        "train": summary["train"],
        "val": summary["val"],
    }


def _preprocess(raw: Path, target: Path, workers: int) -> dict:
    report = preprocess_scannet(
        raw / "scans", target, ScanNetOptions(frame_skip=5), workers=workers, progress=True
    )
    if report["failures"]:
        raise ValueError(f"preprocessing failed for {report['failures']}")
    return {
        "target": str(target),
        "frames": report["frames"]["exported"],
        "pairs": report["pair_list"]["pairs"],
    }


def _pretrain(out: Path, config: SynthConfig, budget: list[str], workers: int) -> dict:
    from pri3d.engine.config import PretrainRunConfig, load_config
    from pri3d.tasks.pretrain import pretrain

    overrides = [
        f"dataset.path={out / 'pretrain_data'}", f"train.log_dir={out / 'pretrain'}",
        f"dataset.size=[{config.depth_size[0]},{config.depth_size[1]}]", "pretrain.backbone=Res18UNet",
        "pretrain.pretrained=scratch", "pretrain.sample_points=256", "pretrain.voxel_size=0.05",
        f"train.workers={min(workers, 2)}", "train.report_batch=2", "logging.tensorboard=false", *budget,
    ]  # fmt: skip
    metrics = pretrain(load_config(PretrainRunConfig, overrides))
    lines = (out / "pretrain" / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    return {
        "log_dir": str(out / "pretrain"),
        "steps": json.loads(lines[-1])["step"],
        "first_total_loss": round(first["train/total_loss"], 4),
        "last_total_loss": round(metrics["train/total_loss"], 4),
        "pairs_per_s": round(metrics["train/pairs_per_s"], 2),
    }


def _correspondence_check(root: Path, config: SynthConfig, gap: int = 25, threshold: float = 0.05) -> dict:
    """For frames `gap` apart, the share of valid pixels that find a depth-consistent match."""
    train, _ = split_scenes(config)
    shares = []
    for scene in train:
        with SensReader(root / "scans" / scene / f"{scene}.sens") as sens:
            k = torch.from_numpy(sens.header.intrinsic_depth[:3, :3].astype(np.float64))
            frames = [
                (torch.from_numpy(f.decode_depth().astype(np.float64) / sens.header.depth_shift),
                 invert_rigid(torch.from_numpy(f.camera_to_world.astype(np.float64))))
                for f in sens.frames(step=gap) if f.pose_valid
            ]  # fmt: skip
        for (d1, w1), (d2, w2) in itertools.pairwise(frames):
            pos1, _ = pixel_correspondences(d1, k, w1, d2, k, w2, threshold)
            shares.append(len(pos1) / max(int((d1 > 0).sum()), 1))
    return {
        "pairs": len(shares),
        "frame_gap": gap,
        "threshold_m": threshold,
        "matched_share_median": round(float(np.median(shares)), 3) if shares else None,
        "matched_share_min": round(float(np.min(shares)), 3) if shares else None,
        "matched_share_max": round(float(np.max(shares)), 3) if shares else None,
    }


def _markdown(report: dict) -> str:
    gen = report["generate scans"]
    corr = report["pixel correspondences"]
    return (
        "# pri3d demo\n\n"
        f"- data: {len(gen['train'])} train + {len(gen['val'])} val scenes in `{gen['root']}` "
        f"({report['config']['frames']} frames each)\n"
        f"- preprocessed for pre-training: `{report['preprocess']['target']}` "
        f"({report['preprocess']['frames']} frames, {report['preprocess']['pairs']} overlapping pairs)\n"
        f"- preview: `{report['preview']['figure']}`\n"
        f"- frames {corr['frame_gap']} apart: median {corr['matched_share_median']} of valid pixels match "
        f"within {corr['threshold_m']} m (min {corr['matched_share_min']}, max {corr['matched_share_max']}, "
        f"{corr['pairs']} pairs)\n"
        f"- pre-training (Res18UNet, view + geometric prior + depth, from scratch): total loss "
        f"{report['pretrain']['first_total_loss']} -> {report['pretrain']['last_total_loss']}, "
        f"{report['pretrain']['pairs_per_s']} pairs/s, log in `{report['pretrain']['log_dir']}`\n"
        f"- total time: {report['seconds']:.1f} s\n"
    )
