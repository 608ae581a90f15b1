"""`pri3d demo`: do 3D priors beat 2D-only contrastive pre-training? The paper's question end to end.

Stages: generate synthetic ScanNet-format scans (train and held-out val scenes); preprocess the
train scenes with the real `pri3d preprocess scannet`; check their geometry as pre-training uses
it; pre-train Res18UNet four ways on the same frames, each with several seeds (MoCo v2, 2D only, on
its ResNet-18 encoder; Pri3D's view-invariant loss, geometric prior, both; the depth loss with
--depth-loss); fine-tune semantic segmentation on a small labelled share of the train frames from
scratch and from each pre-trained model with the same recipe over several seeds, and probe each
frozen model linearly; evaluate both on the held-out scenes; write OUT/report.json, OUT/report.md and
figures. Re-running with the same --out resumes: finished stages and runs are read back.
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
from pri3d.demo.report import markdown, summarise
from pri3d.demo.study import (
    ARMS,
    StudyConfig,
    finetune_jobs,
    labelled_frames,
    pretrain_dir,
    pretrain_jobs,
    probe_jobs,
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


#: 15 rooms (10 train, 5 held-out val: every room type in both), 150 frames each at 60×80; the runs'
#: budgets keep the whole demo within 15 minutes on 2 CPU cores (docs/benchmarks.md).
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
#: On a GPU: the same rooms at the paper's 240×320, the budget the CPU demo had before MoCo and the
#: pre-training seeds joined it (120 pre-training steps; three fine-tuning seeds).
GPU = DemoPlan(
    replace(FULL.synth, color_size=(240, 320), depth_size=(240, 320)),
    StudyConfig(size=(240, 320), pretrain_steps=120, seeds=(0, 1, 2)),
)
#: A smoke test of every stage and arm (60×80 on any device).
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
        pretrain_steps=2,
        pretrain_batch=4,
        sample_points=256,
        finetune_epochs=2,
        finetune_batch=4,
        labelled_share=0.5,
        pretrain_seeds=(0, 1),
        seeds=(0,),
        probe_steps=50,
    ),
)
#: Runs sharing one GPU at once.
GPU_RUNS = 3
STAGES = ("generate scans", "preprocess", "check geometry", "pre-train, fine-tune, probe", "figures")


def choose_plan(quick: bool, device: str, size: tuple[int, int] | None) -> DemoPlan:
    """``--quick``'s plan, else the GPU's on cuda and the CPU's otherwise; ``size`` (``--size``)
    replaces the plan's image size for the rooms and every run."""
    plan = QUICK if quick else GPU if device == "cuda" else FULL
    if size is not None:
        plan = DemoPlan(replace(plan.synth, color_size=size, depth_size=size), replace(plan.study, size=size))
    return plan


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="do 3D priors beat 2D-only contrastive pre-training? pre-train, fine-tune, probe and compare "
        "on generated data (no download)",
        description="Generate synthetic ScanNet-format scans, preprocess them, pre-train Res18UNet with MoCo v2 "
        "(2D only), the view-invariant loss, the geometric prior and both, each with two seeds, fine-tune "
        "semantic segmentation from scratch and from each over several seeds, probe each frozen model "
        "linearly, and compare on held-out scenes. Writes OUT/report.json, OUT/report.md and OUT/figures/. "
        "Re-running with the same --out resumes.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("out/demo"), help="output folder (default %(default)s)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small run of every stage and arm for smoke tests (< 3 min)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: cuda when present; on cuda the demo runs at the paper's 240x320 unless --size says otherwise",
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
        help="optimizer steps of each pre-training (default: 30 on the CPU, 120 on a GPU, --quick 2)",
    )
    parser.add_argument(
        "--finetune-epochs", type=int, metavar="N", help="epochs of each fine-tuning (default: 10, --quick 2)"
    )
    parser.add_argument(
        "--size",
        type=partial(image_size, minimum=32),
        metavar="HxW",
        help="image size, height x width, of the rooms, the pre-training and the fine-tuning (default 60x80 on the "
        "CPU, the paper's 240x320 on a GPU; 240x320 takes 12-15 times as long, see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--depth-loss",
        action="store_true",
        help="add the depth loss to every Pri3D arm, as the paper (off by default: on this data it holds the "
        "pre-trained models back, see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--voxel-crop",
        default="box",
        choices=["box", "frustum"],
        help="the 3D network's voxels in the Geo arms: each view's chunk box, as the original (default), or only "
        "its voxels in the view frustum (pretrain.voxel_crop, see docs/deviations.md)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        print("pri3d demo: --device cuda, but PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    else:
        device = args.device
    plan = choose_plan(args.quick, device, args.size)
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
            "voxel_crop": args.voxel_crop,
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
        "pre-train, fine-tune, probe": lambda: _study(out, study),
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


def _study(out: Path, study: StudyConfig) -> dict:
    runs = out / "runs"
    frames = out / "finetune_data"
    jobs = (
        pretrain_jobs(runs, out / "pretrain_data", study)
        + probe_jobs(runs, frames, study)
        + finetune_jobs(runs, frames, frames, study)
    )

    def announce(job, result) -> None:
        if job.kind in ("pretrain", "moco"):
            print(f"  {job.name}: done in {result['seconds']:.0f} s", flush=True)
        else:
            miou = result["final"]["miou"] if job.kind == "finetune" else result["miou"]
            print(f"  {job.name}: val mIoU {100 * miou:.1f} ({result['seconds']:.0f} s)", flush=True)

    threads = 1 if study.device == "cpu" and study.parallel > 1 else 0
    results = run_jobs(jobs, study.parallel, threads, on_done=announce)
    finetuned: dict[str, list[dict]] = {}
    probed: dict[str, list[dict]] = {}
    for job in jobs:
        result = results[job.name]
        if job.kind == "finetune":
            final = result["final"]
            finetuned.setdefault(job.meta["init"], []).append(
                {
                    **job.meta,
                    "miou": final["miou"],
                    "miou_original": final["miou_original"],
                    "run": str(job.log_dir),
                }
            )
        elif job.kind == "probe":
            probed.setdefault(job.meta["init"], []).append(
                {**job.meta, "miou": result["miou"], "miou_original": result["miou_original"]}
            )
    seconds = {kind: [results[j.name]["seconds"] for j in jobs if j.kind == kind] for kind in _KINDS}
    return {
        "runs": str(runs),
        "table": summarise(finetuned, probed),
        "pretrain_seconds": {
            j.name: results[j.name]["seconds"] for j in jobs if j.kind in ("pretrain", "moco")
        },
        "mean_seconds": {kind: round(statistics.mean(v), 1) for kind, v in seconds.items() if v},
    }


_KINDS = ("pretrain", "moco", "finetune", "probe")


# ------------------------------------------------------------------------------------------------
# figures


def _figures(out: Path, data: Path, study: StudyConfig, report: dict) -> dict:
    folder = out / "figures"
    runs = out / "runs"
    rows = report[STAGES[3]]["table"]
    pretrain_curves = {
        f"{arm.name} seed {seed}": _curve(pretrain_dir(runs, arm.name, seed), "train/total_loss")
        for arm in ARMS
        for seed in study.pretrain_seeds
    }
    written = {
        "training_curves": figures.training_curves_figure(
            pretrain_curves,
            {
                row["init"]: [_curve(Path(r["run"]), "train/total_loss") for r in row["finetune"]["runs"]]
                for row in rows
            },
            folder / "training_curves.png",
        ),
        "miou_bars": figures.miou_bar_figure(
            {row["init"]: [r["miou"] for r in row["finetune"]["runs"]] for row in rows},
            folder / "miou.png",
            title="fine-tuned, held-out scenes: mean ± std over every run",
        ),
        "probe_bars": figures.miou_bar_figure(
            {row["init"]: [r["miou"] for r in row["probe"]["runs"]] for row in rows},
            folder / "probe.png",
            title="linear probe on frozen decoder features, held-out scenes",
        ),
    }
    written.update(_model_figures(out, study, rows, folder))
    return {name: str(path) for name, path in written.items()}


def _curve(log_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    records = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if key in r]
    return np.array([r["step"] for r in records]), np.array([r[key] for r in records])


@torch.no_grad()
def _model_figures(out: Path, study: StudyConfig, rows: list[dict], folder: Path) -> dict:
    """Decoder-feature PCA of each initialisation (what the probe reads; first pre-training seed) and
    segmentation overlays of each init's first fine-tuning run."""
    from pri3d.data.semseg import SemsegOptions, build_semseg_dataset
    from pri3d.demo.probe import decoder_features, frozen_decoder
    from pri3d.engine.checkpoint import latest_checkpoint, load_checkpoint
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

    seed = study.pretrain_seeds[0]
    features = {}
    for init in ("scratch", *(arm.name for arm in ARMS)):
        source = "scratch" if init == "scratch" else pretrain_dir(runs, init, seed)
        network = frozen_decoder(source, seed, val.num_classes)
        features["random init" if init == "scratch" else init] = [
            f.numpy() for f in decoder_features(network, images)
        ]
    pca = figures.feature_pca_figure(rgb, features, folder / "features_pca.png")

    palette = class_palette(val.num_classes)
    predictions = {}
    for row in rows:
        first = row["finetune"]["runs"][0]
        model = build_segmentation_model("Semantic2D", "Res18UNet", val.num_classes)
        model.load_state_dict(load_checkpoint(latest_checkpoint(Path(first["run"]) / "checkpoints"))["model"])
        model.eval()
        logits = model.logits(images, images.shape[-2:])
        predictions[f"{row['init']} ({100 * first['miou']:.0f}%)"] = [
            colorize(p, palette) for p in logits.argmax(1)
        ]
    truth = [colorize(s["label"], palette) for s in samples]
    overlays = figures.segmentation_figure(
        rgb,
        truth,
        predictions,
        folder / "segmentation.png",
        title="held-out scenes, the first run of each initialisation (val mIoU in brackets)",
    )
    return {"features_pca": pca, "segmentation": overlays}
