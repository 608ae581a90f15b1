"""``pri3d preprocess kitti``: KITTI pre-training pairs (:mod:`pri3d.preprocess.kitti`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pri3d.preprocess.kitti import REPORT_NAME, KittiOptions, preprocess_kitti, summary_lines


def _drive_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated drive names, got {text!r}")
    return names


def add_kitti_parser(datasets) -> None:
    """Add ``kitti`` to the ``preprocess`` sub-commands."""
    defaults = KittiOptions()
    parser = datasets.add_parser(
        "kitti",
        help="KITTI annotated depth + odometry poses -> overlapping frame pairs with pixel mappings",
        description="Score every pair of annotated-depth frames of each KITTI odometry drive that are at most "
        "--max-gap raw frames apart, as the original: frame i's depth warped into frame j through the "
        "odometry poses and camera 2's calibration, matches where frame j's depth agrees within "
        "--depth-threshold, ratio = matches / (valid_i + valid_j - matches). Pairs above --min-ratio are "
        "kept with their pixel mapping. Finished drives are checked and skipped on a re-run; a broken "
        "drive is reported and the others go on; a second run on the same --out is refused. See "
        "docs/data.md (KITTI) for the download, the layout and every output file.",
    )
    parser.add_argument("--root", required=True, type=Path, help="KITTI root (holds odometry/ and depth/)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: ROOT/preprocessed, where pre-training looks)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=max(1, min(8, os.cpu_count() or 1)),
        help="drives processed in parallel, one process each (default: CPU cores up to 8, here %(default)s)",
    )
    parser.add_argument(
        "--max-gap",
        type=int,
        default=defaults.max_gap,
        metavar="FRAMES",
        help="pair frames at most this many raw frames apart (default %(default)s)",
    )
    parser.add_argument(
        "--depth-threshold",
        type=float,
        default=defaults.depth_threshold,
        metavar="METRES",
        help="a warped point matches where frame j's depth is within this of its own (default %(default)s)",
    )
    parser.add_argument(
        "--min-ratio",
        type=float,
        default=defaults.min_ratio,
        metavar="R",
        help="keep pairs whose ratio matches / (valid_i + valid_j - matches) exceeds R (default %(default)s)",
    )
    parser.add_argument(
        "--drives",
        type=_drive_list,
        default=None,
        metavar="A,B,...",
        help="only these raw drives, e.g. 2011_09_30_drive_0028 (default: every odometry drive with depth)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    parser.set_defaults(run=run_kitti)


def run_kitti(args: argparse.Namespace) -> int:
    options = KittiOptions(
        max_gap=args.max_gap, depth_threshold=args.depth_threshold, min_ratio=args.min_ratio
    )
    out = args.out if args.out is not None else args.root / "preprocessed"
    report = preprocess_kitti(
        args.root, out, options, drives=args.drives, workers=args.workers, progress=not args.quiet
    )
    if not args.quiet:
        print("\n".join(summary_lines(report, out)))
    if report["failures"]:
        print(
            f"pri3d preprocess kitti: {len(report['failures'])} drive(s) failed; see {out / REPORT_NAME}",
            file=sys.stderr,
        )
        return 1
    return 0
