"""`pri3d synth kitti`: generate driving sequences in KITTI's odometry, depth and semantics layouts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pri3d.cli_types import image_size
from pri3d.synth.kitti import KittiSynthConfig, generate_kitti


def add_parser(datasets) -> None:
    """Add ``kitti`` to the ``synth`` sub-commands."""
    d = KittiSynthConfig()
    parser = datasets.add_parser(
        "kitti",
        help="street drives in KITTI's odometry, annotated-depth and semantics formats",
        description="Generate procedural street drives written exactly as KITTI distributes them: odometry "
        "poses/<seq>.txt and sequences/<seq>/{calib.txt, times.txt, image_2/%06d.png}, raw-drive annotated "
        "depth depth/data_depth_annotated/{train,val}/<drive>_sync/proj_depth/groundtruth/image_02/%010d.png "
        "(uint16 metres x 256, sparse LiDAR scan lines) and data_semantics/training/{image_2,semantic} "
        "(Cityscapes label ids). Each odometry sequence starts at a non-zero raw frame of its drive "
        "(OUT/odometry_drives.txt). Re-running with the same options skips finished drives.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (the KITTI root)")
    parser.add_argument(
        "--drives",
        type=int,
        default=d.drives,
        help="drives, taken in order from KITTI's odometry drives 00, 01, 02, 04 .. 10 (default %(default)s)",
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=d.frames,
        help="odometry frames per drive, ~1 m apart (default %(default)s)",
    )
    parser.add_argument(
        "--size",
        type=image_size,
        default=d.size,
        metavar="HxW",
        help=f"image size, height x width; KITTI's is 375x1242 (default {d.size[0]}x{d.size[1]})",
    )
    parser.add_argument(
        "--seed", type=int, default=d.seed, help="same seed, same bytes (default %(default)s)"
    )
    parser.add_argument(
        "--semantic-frames",
        type=int,
        default=d.semantic_frames,
        metavar="N",
        help="street photos in data_semantics/training; the first 40 are KITTI semantics' val set "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--raw-start",
        type=int,
        default=d.raw_start,
        metavar="FRAME",
        help="raw frame of the first drive where its odometry sequence starts; drive k starts 7 k frames "
        f"later; must exceed the {d.depth_margin} frames without annotated depth (default %(default)s)",
    )
    parser.add_argument(
        "--val-every",
        type=int,
        default=d.val_every,
        metavar="N",
        help="every Nth drive (the Nth, 2Nth, ...) goes to the annotated-depth val split, the others to "
        "train; 0 puts all in train (default %(default)s)",
    )
    parser.add_argument(
        "--lidar-dropout",
        type=float,
        default=d.lidar_dropout,
        metavar="SHARE",
        help="share of scan-line points left without depth; lower gives denser depth maps and more "
        "frame pairs above preprocessing's overlap ratio (default %(default)s)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="processes rendering chunks of 8 frames (default %(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = KittiSynthConfig(
        drives=args.drives,
        frames=args.frames,
        size=args.size,
        seed=args.seed,
        semantic_frames=args.semantic_frames,
        raw_start=args.raw_start,
        val_every=args.val_every,
        lidar_dropout=args.lidar_dropout,
    )
    summary = generate_kitti(args.out, config, workers=args.workers, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0
