"""`pri3d synth megadepth`: generate landmark photos, COLMAP models and MVS depth in MegaDepth's layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pri3d.synth.megadepth import MegaDepthSynthConfig, generate


def add_parser(datasets) -> None:
    """Add ``megadepth`` to the ``synth`` sub-commands."""
    d = MegaDepthSynthConfig()
    parser = datasets.add_parser(
        "megadepth",
        help="landmark photos with COLMAP models and MVS depth in MegaDepth's formats",
        description="Generate outdoor landmark scenes written exactly as MegaDepth distributes them: "
        "MegaDepth_v1_SfM/<scene>/images/*.jpg (distorted photos, a few greyscale) with "
        "sparse/manhattan/0/{cameras,images,points3D}.bin (RADIAL / SIMPLE_RADIAL cameras, one per image, "
        "keypoints, tracks), and MegaDepth_v1/<scene>/dense0/{imgs/*.jpg, depths/*.h5} (undistorted images "
        "and their exact depth in SfM units, 0 = invalid; a few depth files are 0/1 masks). "
        "Re-running with the same options skips finished scenes.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (the MegaDepth root)")
    parser.add_argument("--scenes", type=int, default=d.scenes, help="number of scenes (default %(default)s)")
    parser.add_argument("--images", type=int, default=d.images, help="photos per scene (default %(default)s)")
    parser.add_argument(
        "--seed", type=int, default=d.seed, help="same seed, same bytes (default %(default)s)"
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=d.max_size,
        metavar="PX",
        help="longest side of the largest photos; photo sizes range from half of it to it, landscape and "
        "portrait (default %(default)s)",
    )
    parser.add_argument(
        "--points-per-image",
        type=int,
        default=d.points_per_image,
        metavar="N",
        help="3D points seeded on each photo's visible surfaces; those seen by 2+ photos are kept "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="scenes generated in parallel (default %(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = MegaDepthSynthConfig(
        scenes=args.scenes,
        images=args.images,
        seed=args.seed,
        max_size=args.max_size,
        points_per_image=args.points_per_image,
    )
    summary = generate(args.out, config, workers=args.workers, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0
