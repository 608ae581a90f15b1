"""`pri3d synth scannet`: generate indoor scenes in ScanNet's formats."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pri3d.cli_types import image_size
from pri3d.synth.generate import SynthConfig, generate


def add_synth_options(parser: argparse.ArgumentParser) -> None:
    """Generator options shared by `synth` and `demo`."""
    d = SynthConfig()
    parser.add_argument("--scenes", type=int, default=d.scenes, help="number of scenes (default %(default)s)")
    parser.add_argument("--frames", type=int, default=d.frames, help="frames per scan (default %(default)s)")
    parser.add_argument(
        "--seed", type=int, default=d.seed, help="same seed, same bytes (default %(default)s)"
    )
    parser.add_argument(
        "--color-size",
        type=image_size,
        default=d.color_size,
        metavar="HxW",
        help=f"colour resolution, height x width; ScanNet's is 968x1296 (default {d.color_size[0]}x{d.color_size[1]})",
    )
    parser.add_argument(
        "--depth-size",
        type=image_size,
        default=d.depth_size,
        metavar="HxW",
        help=f"depth resolution, height x width; ScanNet's is 480x640 (default {d.depth_size[0]}x{d.depth_size[1]})",
    )
    parser.add_argument(
        "--frames-25k-every",
        type=int,
        default=d.frames_25k_every,
        metavar="N",
        help="export every Nth frame to scannet_frames_25k (default %(default)s)",
    )
    parser.add_argument(
        "--depth-noise",
        type=float,
        default=d.depth_noise,
        help="scale of the depth-sensor noise model, 0 = exact (default %(default)s)",
    )
    parser.add_argument(
        "--depth-holes",
        type=float,
        default=d.depth_holes,
        help="fraction of depth pixels dropped in blobs (default %(default)s)",
    )
    parser.add_argument(
        "--invalid-poses",
        type=float,
        default=d.invalid_pose_fraction,
        metavar="FRACTION",
        help="fraction of frames stored with a -inf pose, as failed tracking (default %(default)s)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of scenes listed in scannetv2_val.txt (default %(default)s)",
    )
    parser.add_argument(
        "--mesh-spacing",
        type=float,
        default=d.mesh_spacing,
        metavar="METRES",
        help="distance between mesh vertices (default %(default)s)",
    )
    parser.add_argument(
        "--class-looks",
        action="store_true",
        help="give each furniture class its own pattern and colour, varied per instance, as real furniture "
        "(default: every class draws from one pool, so colour never names the class)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="scenes generated in parallel (default %(default)s)"
    )


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    return SynthConfig(
        scenes=args.scenes,
        frames=args.frames,
        seed=args.seed,
        color_size=args.color_size,
        depth_size=args.depth_size,
        frames_25k_every=args.frames_25k_every,
        depth_noise=args.depth_noise,
        depth_holes=args.depth_holes,
        invalid_pose_fraction=args.invalid_poses,
        val_fraction=args.val_fraction,
        mesh_spacing=args.mesh_spacing,
        class_looks=args.class_looks,
    )


def add_parser(datasets) -> None:
    """Add ``scannet`` to the ``synth`` sub-commands."""
    parser = datasets.add_parser(
        "scannet",
        help="indoor RGB-D scans in ScanNet's formats (the embedded default pre-training data)",
        description="Generate procedural indoor RGB-D scans written exactly as ScanNet distributes them: "
        "raw scans (scans/<scene>/<scene>.sens, _vh_clean_2.ply, segs, aggregation), scannet_frames_25k, "
        "the label tsv and train/val scene lists. Re-running with the same options skips finished scenes.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    add_synth_options(parser)
    parser.add_argument("--preview", action="store_true", help="also draw OUT/preview.png (frames and mesh)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    summary = generate(args.out, config_from_args(args), workers=args.workers, progress=not args.quiet)
    if args.preview:
        from pri3d.synth.preview import write_preview

        summary["preview"] = str(write_preview(args.out, args.out / "preview.png"))
    print(json.dumps(summary, indent=2))
    return 0
