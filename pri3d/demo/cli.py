"""`pri3d demo`: does the 3D prior help? The paper's question end to end on generated data.

Stages: generate synthetic ScanNet-format scans (train and held-out val scenes); preprocess the
train scenes with the real `pri3d preprocess scannet`; check their geometry as pre-training uses
it; pre-train Res18UNet from scratch three ways (view-invariant, geometric prior, both; the depth
loss with --depth-loss); fine-tune semantic segmentation on a small labelled share of the train
frames from scratch and from each pre-trained model with the same budget and several seeds;
evaluate on the held-out scenes; write OUT/report.json, OUT/report.md and figures. Re-running with
the same --out resumes: finished stages and runs are read back.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from pri3d.cli_types import image_size
from pri3d.demo import figures
from pri3d.demo.study import (
    ARMS,
    StudyConfig,
    finetune_dir,
    finetune_jobs,
    labelled_frames,
    pretrain_dir,
    pretrain_jobs,
    pretrain_lr,
    run_jobs,
)
from pri3d.geometry import invert_rigid, pixel_correspondences
from pri3d.io.sens import SensReader
from pri3d.preprocess.scannet import ScanNetOptions, preprocess_scannet
from pri3d.synth.generate import SynthConfig, generate, split_scenes
from pri3d.synth.preview import write_preview


@dataclass(frozen=True)
class DemoPlan:
    synth: SynthConfig
    study: StudyConfig


#: 15 rooms (10 train, 5 held-out val: every room type in both), 150 frames each at 60×80.
FULL = DemoPlan(
    SynthConfig(
        scenes=15,
        frames=150,
        seed=0,
        color_size=(60, 80),
        depth_size=(60, 80),
        frames_25k_every=5,
        val_fraction=1 / 3,
    ),
    StudyConfig(),
)
QUICK = DemoPlan(
    SynthConfig(
        scenes=4,
        frames=40,
        seed=0,
        color_size=(60, 80),
        depth_size=(60, 80),
        frames_25k_every=5,
        val_fraction=0.25,
    ),
    StudyConfig(
        size=(60, 80),
        pretrain_steps=3,
        pretrain_batch=4,
        sample_points=256,
        finetune_epochs=2,
        finetune_batch=4,
        labelled_share=0.5,
        seeds=(0, 1),
    ),
)
#: Runs sharing one GPU at once.
GPU_RUNS = 3
STAGES = ("generate scans", "preprocess", "check geometry", "pre-train and fine-tune", "figures")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="does the 3D prior help? pre-train, fine-tune and compare on generated data (no download)",
        description="Generate synthetic ScanNet-format scans, preprocess them, pre-train Res18UNet with the "
        "view-invariant loss, the geometric prior and both, fine-tune semantic segmentation from scratch and "
        "from each, and compare on held-out scenes over several seeds. Writes OUT/report.json, "
        "OUT/report.md and OUT/figures/. Re-running with the same --out resumes.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("out/demo"), help="output folder (default %(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="a small run for smoke tests (< 3 min)")
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when present"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes for generation and preprocessing, and for the runs: on the CPU that many "
        f"single-threaded runs side by side, on a GPU up to {GPU_RUNS} runs sharing it, with the rest as "
        "their data loaders' workers (default %(default)s)",
    )
    parser.add_argument(
        "--pretrain-steps",
        type=int,
        metavar="N",
        help="optimizer steps of each pre-training (default: 120, --quick 3); larger budgets need a GPU",
    )
    parser.add_argument(
        "--finetune-epochs", type=int, metavar="N", help="epochs of each fine-tuning (default: 10, --quick 2)"
    )
    parser.add_argument(
        "--size",
        type=partial(image_size, minimum=32),
        metavar="HxW",
        help="image size, height x width, of the rooms, the pre-training and the fine-tuning (default 60x80; the paper's "
        "240x320 takes 12-15 times as long and needs a GPU, see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--depth-loss",
        action="store_true",
        help="add the depth loss to every arm, as the paper (off by default: on this data it holds the "
        "pre-trained models back, see docs/benchmarks.md)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    if args.size is not None:
        plan = DemoPlan(
            replace(plan.synth, color_size=args.size, depth_size=args.size),
            replace(plan.study, size=args.size),
        )
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        print("pri3d demo: --device cuda, but PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    else:
        device = args.device
    for option, value in (
        ("--pretrain-steps", args.pretrain_steps),
        ("--finetune-epochs", args.finetune_epochs),
    ):
        if value is not None and value < 1:
            print(f"pri3d demo: {option} {value}: expected a positive number", file=sys.stderr)
            return 2
    budgets = {"pretrain_steps": args.pretrain_steps, "finetune_epochs": args.finetune_epochs}
    # On the CPU, `workers` single-threaded runs side by side, each loading its own data. A GPU is
    # shared by up to GPU_RUNS runs (one small run leaves it mostly idle), which split `workers`
    # between their pre-training data loaders.
    workers = max(args.workers, 1)
    parallel = workers if device == "cpu" else min(workers, GPU_RUNS)
    study = StudyConfig(
        **{
            **asdict(plan.study),
            **{k: v for k, v in budgets.items() if v is not None},
            "depth": args.depth_loss,
            "device": device,
            "parallel": parallel,
            "loader_workers": 1 if device == "cpu" else max(workers // parallel, 1),
        }
    )
    out: Path = args.out
    settings = {
        "quick": bool(args.quick),
        "synth": _plain(asdict(plan.synth)),
        "study": _plain({k: v for k, v in asdict(study).items() if k not in _RUNTIME}),
    }
    mismatch = _settings_mismatch(out / "demo_settings.json", settings)
    if mismatch:
        print(
            f"pri3d demo: {out} holds a demo run with other settings ({mismatch}); resuming would mix "
            f"them: use another --out or the same options",
            file=sys.stderr,
        )
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_settings.json").write_text(json.dumps(settings, indent=1) + "\n")
    data = out / "data"
    report: dict = {
        "config": {
            "quick": bool(args.quick),
            "device": device,
            "synth": _plain(asdict(plan.synth)),
            "study": _plain(asdict(study)),
        },
    }
    stages = {
        "generate scans": lambda: _generate(data, plan.synth, args.workers),
        "preprocess": lambda: _preprocess(data, out, plan.synth, study, args.workers),
        "check geometry": lambda: _check_geometry(data, out, plan.synth, study),
        "pre-train and fine-tune": lambda: _study(out, data, study),
        "figures": lambda: _figures(out, data, study, report),
    }
    start = time.perf_counter()
    for number, name in enumerate(STAGES, start=1):
        print(f"[{number}/{len(STAGES)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        report[name] = stages[name]()
        report[name]["seconds"] = round(time.perf_counter() - t0, 2)
        elapsed = time.perf_counter() - start
        print(
            f"[{number}/{len(STAGES)}] {name} done in {report[name]['seconds']:.1f} s "
            f"({elapsed:.0f} s so far)",
            flush=True,
        )
    report["seconds"] = round(time.perf_counter() - start, 2)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def _plain(value):
    return json.loads(json.dumps(value, default=str))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


#: Study fields that change where and how fast runs go, not their results: free to change on resume.
_RUNTIME = ("device", "parallel", "loader_workers")


def _settings_mismatch(path: Path, settings: dict) -> str:
    """The first setting that differs from those recorded in ``path`` ('' if none or no record)."""
    if not path.is_file():
        return ""
    recorded = json.loads(path.read_text())
    for group in ("quick", "synth", "study"):
        old, new = recorded.get(group), settings[group]
        if isinstance(new, dict) and isinstance(old, dict):
            for key in new:
                if old.get(key) != new[key]:
                    return f"{group}.{key}: {old.get(key)!r} before, {new[key]!r} now"
        elif old != new:
            return f"{group}: {old!r} before, {new!r} now"
    return ""


# ------------------------------------------------------------------------------------------------
# stages


def _generate(root: Path, config: SynthConfig, workers: int) -> dict:
    summary = generate(root, config, workers=workers, progress=True)
    return {"root": str(root), "train": summary["train"], "val": summary["val"]}


def _preprocess(raw: Path, out: Path, config: SynthConfig, study: StudyConfig, workers: int) -> dict:
    """Pre-training data from the train scenes only (pre-training never sees the held-out scenes),
    and the fine-tuning frames: the labelled share of every train scene, all frames of the val scenes."""
    train, val = split_scenes(config)
    report = preprocess_scannet(
        raw / "scans",
        out / "pretrain_data",
        ScanNetOptions(frame_skip=5),
        scenes=train,
        workers=workers,
        progress=True,
    )
    if report["failures"]:
        raise ValueError(f"preprocessing failed for {report['failures']}")
    labelled = labelled_frames(
        raw / "scannet_frames_25k", out / "finetune_data", train, val, study.labelled_share
    )
    return {
        "target": str(out / "pretrain_data"),
        "frames": report["frames"]["exported"],
        "pairs": report["pair_list"]["pairs"],
        "finetune_data": labelled,
    }


def _check_geometry(root: Path, out: Path, config: SynthConfig, study: StudyConfig) -> dict:
    """A preview, the matched share of frames 25 apart, and a figure of sampled correspondences."""
    result = {"preview": str(write_preview(root, out / "figures" / "scenes.png"))}
    result.update(_matched_share(root, config))
    result["correspondence_figure"] = str(_correspondence_figure(out, study))
    return result


def _matched_share(root: Path, config: SynthConfig, gap: int = 25, threshold: float = 0.05) -> dict:
    """For frames `gap` apart, the share of valid pixels that find a depth-consistent match."""
    train, _ = split_scenes(config)
    shares = []
    for scene in train:
        with SensReader(root / "scans" / scene / f"{scene}.sens") as sens:
            k = torch.from_numpy(sens.header.intrinsic_depth[:3, :3].astype(np.float64))
            frames = [
                (
                    torch.from_numpy(f.decode_depth().astype(np.float64) / sens.header.depth_shift),
                    invert_rigid(torch.from_numpy(f.camera_to_world.astype(np.float64))),
                )
                for f in sens.frames(step=gap)
                if f.pose_valid
            ]
        for (d1, w1), (d2, w2) in itertools.pairwise(frames):
            pos1, _ = pixel_correspondences(d1, k, w1, d2, k, w2, threshold)
            shares.append(len(pos1) / max(int((d1 > 0).sum()), 1))
    return {
        "pairs": len(shares),
        "frame_gap": gap,
        "threshold_m": threshold,
        "matched_share_median": round(float(np.median(shares)), 3) if shares else None,
        "matched_share_min": round(float(np.min(shares)), 3) if shares else None,
    }


def _correspondence_figure(out: Path, study: StudyConfig) -> Path:
    """Matches exactly as pre-training samples them, drawn on the unaugmented frames."""
    from PIL import Image

    from pri3d.data.pretrain_pairs import PairOptions, ScanNetPairs

    data = out / "pretrain_data"
    pairs = ScanNetPairs(
        data,
        "splits/overlap30.txt",
        PairOptions(size=study.size, num_matches=study.sample_points, geometric_prior=False),
    )
    # a pair of middling overlap: the views differ, the matches still cover much of the image
    index = len(pairs) // 2
    sample = pairs[index]
    valid = sample["match_valid"].numpy()
    h, w = study.size
    images = [
        np.asarray(
            Image.open(data / sample["scene"] / "color" / f"{frame}.jpg")
            .convert("RGB")
            .resize((w, h), Image.NEAREST)
        )
        for frame in sample["frames"]
    ]
    return figures.correspondence_figure(
        images[0],
        images[1],
        sample["match1"].numpy()[valid][:, ::-1],
        sample["match2"].numpy()[valid][:, ::-1],
        out / "figures" / "correspondences.png",
        title=f"{sample['scene']} frames {sample['frames'][0]} and {sample['frames'][1]}: "
        f"pixel matches from depth and camera poses (as pre-training samples them)",
    )


def _study(out: Path, data: Path, study: StudyConfig) -> dict:
    runs = out / "runs"
    frames = out / "finetune_data"
    jobs = pretrain_jobs(runs, out / "pretrain_data", study) + finetune_jobs(runs, frames, frames, study)

    def announce(job, result) -> None:
        if job.kind == "pretrain":
            print(f"  {job.name}: done in {result['seconds']:.0f} s", flush=True)
        else:
            print(
                f"  {job.name}: val mIoU {100 * result['final']['miou']:.1f} ({result['seconds']:.0f} s)",
                flush=True,
            )

    threads = 1 if study.device == "cpu" and study.parallel > 1 else 0
    results = run_jobs(jobs, study.parallel, threads, on_done=announce)
    table: dict[str, dict] = {}
    for job in jobs:
        if job.kind == "finetune":
            entry = table.setdefault(job.meta["init"], {"miou": [], "miou_original": [], "seeds": []})
            final = results[job.name]["final"]
            entry["miou"].append(final["miou"])
            entry["miou_original"].append(final["miou_original"])
            entry["seeds"].append(job.meta["seed"])
    return {
        "runs": str(runs),
        "table": summarise(table),
        "pretrain_seconds": {j.meta["arm"]: results[j.name]["seconds"] for j in jobs if j.kind == "pretrain"},
        "finetune_seconds_mean": round(
            statistics.mean(results[j.name]["seconds"] for j in jobs if j.kind == "finetune"), 1
        ),
    }


def summarise(table: dict[str, dict]) -> list[dict]:
    """Rows init | mean ± std | Δ vs scratch, and whether every seed beats scratch's best seed."""
    scratch = table["scratch"]["miou"]
    rows = []
    for init, entry in table.items():
        values = entry["miou"]
        row = {
            "init": init,
            "miou_mean": statistics.mean(values),
            "miou_std": statistics.pstdev(values),
            "miou_per_seed": values,
            "miou_original_mean": statistics.mean(entry["miou_original"]),
            "seeds": entry["seeds"],
        }
        if init != "scratch":
            row["delta_vs_scratch"] = row["miou_mean"] - statistics.mean(scratch)
            row["every_seed_beats_best_scratch"] = min(values) > max(scratch)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# figures


def _figures(out: Path, data: Path, study: StudyConfig, report: dict) -> dict:
    folder = out / "figures"
    runs = out / "runs"
    rows = report["pre-train and fine-tune"]["table"]
    written = {
        "training_curves": figures.training_curves_figure(
            {arm.name: _curve(pretrain_dir(runs, arm.name), "train/total_loss") for arm in ARMS},
            {
                row["init"]: [
                    _curve(finetune_dir(runs, row["init"], s), "train/total_loss") for s in row["seeds"]
                ]
                for row in rows
            },
            folder / "training_curves.png",
        ),
        "miou_bars": figures.miou_bar_figure(
            {row["init"]: row["miou_per_seed"] for row in rows}, folder / "miou.png"
        ),
    }
    written.update(_model_figures(out, data, study, rows, folder))
    return {name: str(path) for name, path in written.items()}


def _curve(log_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    records = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if key in r]
    return np.array([r["step"] for r in records]), np.array([r[key] for r in records])


@torch.no_grad()
def _model_figures(out: Path, data: Path, study: StudyConfig, rows: list[dict], folder: Path) -> dict:
    """Feature PCA of each pre-trained backbone and segmentation overlays of each init (first seed)."""
    from pri3d.data.semseg import SemsegOptions, build_semseg_dataset
    from pri3d.engine.checkpoint import latest_checkpoint, load_checkpoint
    from pri3d.export import load_backbone
    from pri3d.models.segmentation import build_segmentation_model
    from pri3d.viz import class_palette, colorize, denormalize

    runs = out / "runs"
    frames = out / "finetune_data"
    val = build_semseg_dataset(
        "ScanNet", frames, "val", SemsegOptions(size=study.size), split_dir=frames, train=False
    )
    picks = np.linspace(0, len(val) - 1, min(4, len(val))).round().astype(int)
    samples = [val[int(i)] for i in picks]
    images = torch.stack([s["image"] for s in samples])
    rgb = [denormalize(image) for image in images]

    features = {"random init": [f.numpy() for f in _features(None, images)]}
    for arm in ARMS:
        checkpoint = latest_checkpoint(pretrain_dir(runs, arm.name) / "checkpoints")
        features[arm.name] = [f.numpy() for f in _features(load_backbone(checkpoint, "Res18UNet"), images)]
    pca = figures.feature_pca_figure(rgb, features, folder / "features_pca.png")

    palette = class_palette(val.num_classes)
    predictions = {}
    for row in rows:
        run = finetune_dir(runs, row["init"], row["seeds"][0])
        model = build_segmentation_model("Semantic2D", "Res18UNet", val.num_classes)
        model.load_state_dict(load_checkpoint(latest_checkpoint(run / "checkpoints"))["model"])
        model.eval()
        logits = model.logits(images, images.shape[-2:])
        predictions[f"{row['init']} ({100 * row['miou_per_seed'][0]:.0f}%)"] = [
            colorize(p, palette) for p in logits.argmax(1)
        ]
    truth = [colorize(s["label"], palette) for s in samples]
    overlays = figures.segmentation_figure(
        rgb,
        truth,
        predictions,
        folder / "segmentation.png",
        title=f"held-out scenes, seed {rows[0]['seeds'][0]} of each initialisation (val mIoU in brackets)",
    )
    return {"features_pca": pca, "segmentation": overlays}


def _features(backbone, images: torch.Tensor) -> list[torch.Tensor]:
    from pri3d.models.pri3d import PRETRAIN_CHANNELS
    from pri3d.models.registry import build_backbone

    if backbone is None:
        torch.manual_seed(0)
        backbone = build_backbone("Res18UNet", PRETRAIN_CHANNELS["Res18UNet"])
    backbone.eval()
    return list(backbone(images))


# ------------------------------------------------------------------------------------------------
# report


def markdown(report: dict) -> str:
    gen, pre, geo = report["generate scans"], report["preprocess"], report["check geometry"]
    study = report["pre-train and fine-tune"]
    config = report["config"]["study"]
    lines = [
        "# pri3d demo: does the 3D prior help?",
        "",
        f"- data: {len(gen['train'])} train + {len(gen['val'])} held-out val scenes "
        f"({report['config']['synth']['frames']} frames each, {config['size'][0]}×{config['size'][1]}) in `{gen['root']}`",
        f"- pre-training data (train scenes only): {pre['frames']} frames, {pre['pairs']} overlapping pairs",
        f"- frames {geo['frame_gap']} apart: median {geo['matched_share_median']} of valid pixels match "
        f"within {geo['threshold_m']} m ({geo['pairs']} pairs)",
        f"- pre-training: Res18UNet from scratch, {_count(config['pretrain_steps'], 'step')} of batch "
        f"{config['pretrain_batch']} (lr {pretrain_lr(config['pretrain_batch'])}), {config['sample_points']} "
        f"matches per pair, {config['voxel_size']} m voxels; "
        + ("depth loss in every arm" if config.get("depth") else "no depth loss (`--depth-loss` adds it)"),
        f"- fine-tuning: {config['labelled_share']:.0%} of each train scene's labelled frames, "
        f"{_count(config['finetune_epochs'], 'epoch')} of batch "
        f"{config['finetune_batch']}, same budget for every init; evaluated on the val scenes",
        "",
        "| init | val mIoU (mean ± std) | Δ vs scratch | per seed | every seed > best scratch seed |",
        "|---|---|---|---|---|",
    ]
    for row in study["table"]:
        delta = f"{100 * row['delta_vs_scratch']:+.1f}" if "delta_vs_scratch" in row else "–"
        beats = {True: "yes", False: "no"}.get(row.get("every_seed_beats_best_scratch"), "–")
        seeds = ", ".join(f"{100 * v:.1f}" for v in row["miou_per_seed"])
        lines.append(
            f"| {row['init']} | {100 * row['miou_mean']:.1f} ± {100 * row['miou_std']:.1f} | {delta} | "
            f"{seeds} | {beats} |"
        )
    lines += [
        "",
        f"Figures in `{Path(report['figures']['miou_bars']).parent}`: "
        + ", ".join(f"`{Path(p).name}`" for k, p in report["figures"].items() if k != "seconds")
        + f", `{Path(geo['correspondence_figure']).name}`, `{Path(geo['preview']).name}`.",
        "",
        f"Total time {report['seconds']:.0f} s on {report['config']['device']}.",
        "",
    ]
    return "\n".join(lines)
