"""`pri3d preprocess <dataset>`: offline data preparation.

``pri3d preprocess scannet --scans <ScanNet>/scans --out TARGET`` turns ScanNet's raw scans into
frames, overlapping pairs, labelled scene clouds and chunk boxes (:mod:`pri3d.preprocess.scannet`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pri3d.preprocess.kitti_cli import add_kitti_parser
from pri3d.preprocess.megadepth_cli import add_megadepth_parser
from pri3d.preprocess.scannet import REPORT_NAME, ScanNetOptions, preprocess_scannet
from pri3d.preprocess.summary import outcome_lines


def _scene_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated scene names, got {text!r}")
    return names


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def add_scannet_parser(datasets) -> None:
    """Add ``scannet`` to the ``preprocess`` sub-commands."""
    defaults = ScanNetOptions()
    parser = datasets.add_parser(
        "scannet",
        help="raw ScanNet scans -> frames, overlapping pairs, scene clouds, chunk boxes",
        description="Prepare ScanNet for pre-training from the raw scans as ScanNet distributes them: "
        "scans/<scene>/<scene>.sens (RGB-D stream), <scene>_vh_clean_2.ply, its segs.json and "
        "<scene>.aggregation.json, plus scannetv2-labels.combined.tsv. scannet_frames_25k (the "
        "fine-tuning data) is not enough. Finished scenes are checked and skipped on a re-run; a broken "
        "scene is reported and the others go on; a second run on the same --out is refused. See "
        "docs/data.md for every output file and for what happens to bad input.",
    )
    parser.add_argument("--scans", required=True, type=Path, help="ScanNet's raw scans/ folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder (TARGET of pre-training)")
    parser.add_argument(
        "--frame-skip",
        type=int,
        default=defaults.frame_skip,
        metavar="N",
        help="export every N-th frame of each scan; pairs are formed among these (default %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=_default_workers(),
        help="scenes processed in parallel, one process each (default: CPU cores up to 8, here %(default)s)",
    )
    parser.add_argument(
        "--scenes",
        type=_scene_list,
        default=None,
        metavar="A,B,...",
        help="only these scene folders (default: all in --scans)",
    )
    parser.add_argument(
        "--overlap-threshold",
        type=float,
        default=defaults.overlap_threshold,
        metavar="T",
        help="pairs whose overlap score is at least T go into splits/overlap<100*T>.txt "
        "(default %(default)s; per-scene overlap.txt files keep all scores, so a re-run with another "
        "T only rebuilds the list)",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="TSV",
        help="raw category -> NYU40 table (default: scannetv2-labels.combined.tsv in --scans or its parent)",
    )
    parser.add_argument(
        "--voxel-size",
        type=float,
        default=defaults.voxel_size,
        metavar="METRES",
        help="overlap clouds are downsampled to this voxel; points match within 1.5x it (default %(default)s)",
    )
    parser.add_argument(
        "--chunk-margin",
        type=float,
        default=defaults.chunk_margin,
        metavar="METRES",
        help="padding of each frame's chunk box around its valid points (default %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    parser.set_defaults(run=run_scannet)


def register(subparsers) -> None:
    """Add ``preprocess`` (with one sub-command per dataset) to the ``pri3d`` command."""
    parser = subparsers.add_parser(
        "preprocess",
        help="prepare datasets as downloaded for pre-training and fine-tuning",
        description="Offline data preparation; one sub-command per dataset.",
    )
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET")
    add_scannet_parser(datasets)
    add_kitti_parser(datasets)
    add_megadepth_parser(datasets)
    parser.set_defaults(run=lambda args: _print_help(parser))


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def summary_lines(report: dict, out: Path | None = None) -> list[str]:
    """A few lines a person reads at the end of a run (paths relative to ``out`` when given)."""
    scenes, frames, pairs = report["scenes"], report["frames"], report["pairs"]
    skipped = ", ".join(f"{count} {reason}" for reason, count in frames["skipped"].items()) or "none"
    lines = [
        f"scenes: {scenes['done']} done, {scenes['skipped_existing']} already done, {scenes['failed']} failed "
        f"(of {scenes['selected']})",
        f"frames: {frames['exported']} exported; skipped: {skipped}",
        f"pairs: {pairs['total']} scored, {pairs['at_threshold']} with overlap >= {pairs['threshold']}",
        f"pair list: {out / report['pair_list']['path'] if out else report['pair_list']['path']} "
        f"({report['pair_list']['pairs']} pairs from "
        f"{report['pair_list']['scenes']} scenes)",
    ]
    no_cloud = [
        name for name, s in report["per_scene"].items() if str(s.get("pointcloud", "")).startswith("skipped")
    ]
    if no_cloud:
        lines.append(f"point cloud skipped (no mesh) for: {', '.join(no_cloud)}")
    return lines + outcome_lines(report, "scene", out / REPORT_NAME if out else REPORT_NAME)


def run_scannet(args: argparse.Namespace) -> int:
    options = ScanNetOptions(
        frame_skip=args.frame_skip,
        overlap_threshold=args.overlap_threshold,
        voxel_size=args.voxel_size,
        chunk_margin=args.chunk_margin,
    )
    report = preprocess_scannet(
        args.scans,
        args.out,
        options,
        scenes=args.scenes,
        labels=args.labels,
        workers=args.workers,
        progress=not args.quiet,
    )
    if not args.quiet:
        print("\n".join(summary_lines(report, args.out)))
    if report["failures"]:
        print(
            f"pri3d preprocess scannet: {len(report['failures'])} scene(s) failed; see "
            f"{args.out / REPORT_NAME}",
            file=sys.stderr,
        )
        return 1
    return 0
