"""`pri3d coco scannet|nyuv2`: COCO instance annotations for `pri3d finetune insseg`.

pri3d coco scannet --frames data/scannet_frames_25k --split train --out data/scannet_coco/scannet_train.coco.json
pri3d coco nyuv2 --root data/nyuv2 --split val --out data/nyuv2_coco/nyu_val.coco.json
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pri3d.coco.convert import MIN_AREA, convert_nyuv2, convert_scannet


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE.json",
        help="annotation file to write (a <FILE>.report.json beside it says what was left out)",
    )
    parser.add_argument(
        "--min-area",
        type=int,
        default=MIN_AREA,
        metavar="PIXELS",
        help="leave out masks with fewer pixels, at the files' resolution (default %(default)s, "
        "the original's; scale it with the image area for smaller frames)",
    )
    parser.add_argument(
        "--masks",
        choices=("rle", "polygon"),
        default="rle",
        help="rle: exact run-length masks (default); polygon: traced outlines, holes filled",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes reading frames (default %(default)s); the output does not depend on it",
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "coco",
        help="write COCO instance annotations from ScanNet / NYUv2 instance PNGs",
        description="Convert instance PNGs (label × 1000 + instance) to a COCO instances JSON: ScanNet's 18 "
        "classes (NYU40 without wall/floor) or NYUv2's 9; masks under --min-area pixels and frames without "
        "an object are left out; ids start at 1. The file is checked by loading it with pycocotools.",
    )
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET")
    scannet = datasets.add_parser(
        "scannet",
        help="scannet_frames_25k scenes of a split",
        description="Frames of the split's scenes: <scene>/color/<id>.jpg with "
        "<scene>/instance/<id>.png (16-bit NYU40 label × 1000 + instance).",
    )
    scannet.add_argument(
        "--frames",
        "--scannet-path",
        type=Path,
        required=True,
        metavar="DIR",
        help="scannet_frames_25k (or the folder above it)",
    )
    scannet.add_argument(
        "--split",
        "--phase",
        default="train",
        metavar="SPLIT",
        help="train, val, trainval or train1 … train80 (data-efficient lists); default %(default)s",
    )
    scannet.add_argument(
        "--split-dir",
        type=Path,
        metavar="DIR",
        help="folder with scannetv2_<split>.txt scene lists (default: the data's own, in "
        "scannet_frames_25k or the folder above it, else those shipped with pri3d)",
    )
    _common(scannet)
    scannet.set_defaults(run=run)
    nyu = datasets.add_parser(
        "nyuv2",
        help="NYUv2 in the original's folders",
        description="<root>/<split>/color/nyu_rgb_<id>.png, label/new_nyu_class13_<id>.png "
        "and instance/<id>.png (8-bit per-class instance index).",
    )
    nyu.add_argument(
        "--root", "--nyu-path", type=Path, required=True, metavar="DIR", help="folder holding train/ and val/"
    )
    nyu.add_argument(
        "--split", "--phase", default="train", choices=("train", "val"), help="default %(default)s"
    )
    _common(nyu)
    nyu.set_defaults(run=run)
    parser.set_defaults(run=lambda args: parser.print_help() or 2)


def run(args: argparse.Namespace) -> int:
    options = {"min_area": args.min_area, "mask_format": args.masks, "workers": args.workers}
    if args.dataset == "scannet":
        report = convert_scannet(args.frames, args.split, args.out, split_dir=args.split_dir, **options)
    else:
        report = convert_nyuv2(args.root, args.split, args.out, **options)
    print(report.summary())
    print("per class: " + ", ".join(f"{name} {count}" for name, count in report.per_category.items()))
    return 0
