"""``pri3d preprocess megadepth --root DIR``: undistortion and scene_info (:mod:`pri3d.preprocess.megadepth`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pri3d.preprocess.megadepth import REPORT_NAME, preprocess_megadepth
from pri3d.preprocess.summary import outcome_lines


def _scene_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated scene names, got {text!r}")
    return names


def add_megadepth_parser(datasets) -> None:
    """Add ``megadepth`` to the ``preprocess`` sub-commands."""
    parser = datasets.add_parser(
        "megadepth",
        help="MegaDepth download -> undistorted images and models, scene_info/<scene>.npz",
        description="Prepare MegaDepth for pre-training from the MegaDepth v1 and SfM downloads under "
        "--root (MegaDepth_v1/<scene>/dense0/{imgs,depths}, MegaDepth_v1_SfM/<scene>/{images,sparse/"
        "manhattan/0}). Each scene is undistorted with COLMAP's algorithm (pycolmap) into "
        "Undistorted_SfM/<scene>/ and described in scene_info/<scene>.npz (pair overlaps, scale ratios, "
        "observations). Finished scenes are checked and skipped on a re-run; a broken scene is reported "
        "and the others go on; a second run on the same --root is refused. See docs/data.md.",
    )
    parser.add_argument("--root", required=True, type=Path, help="the MegaDepth root; outputs go there too")
    parser.add_argument(
        "--workers",
        type=int,
        default=max(1, min(8, os.cpu_count() or 1)),
        help="scenes processed in parallel, one process each (default: CPU cores up to 8, here %(default)s)",
    )
    parser.add_argument(
        "--scenes",
        type=_scene_list,
        default=None,
        metavar="A,B,...",
        help="only these scenes (default: every MegaDepth_v1/<scene> with dense0/imgs)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    parser.set_defaults(run=run_megadepth)


def summary_lines(report: dict, root: Path) -> list[str]:
    """A few lines a person reads at the end of a run."""
    scenes, images = report["scenes"], report["images"]
    dropped = ", ".join(f"{count} {reason}" for reason, count in images["dropped"].items() if count) or "none"
    lines = [
        f"scenes: {scenes['done']} done, {scenes['skipped_existing']} already done, {scenes['failed']} failed "
        f"(of {scenes['selected']})",
        f"images: {images['usable']} usable of {images['total']}; dropped: {dropped}; "
        f"{images['grayscale_kept']} grayscale kept",
    ]
    return lines + outcome_lines(report, "scene", root / REPORT_NAME)


def run_megadepth(args: argparse.Namespace) -> int:
    report = preprocess_megadepth(
        args.root, scenes=args.scenes, workers=args.workers, progress=not args.quiet
    )
    if not args.quiet:
        print("\n".join(summary_lines(report, args.root)))
    if report["failures"]:
        print(
            f"pri3d preprocess megadepth: {len(report['failures'])} scene(s) failed; see {args.root / REPORT_NAME}",
            file=sys.stderr,
        )
        return 1
    return 0
