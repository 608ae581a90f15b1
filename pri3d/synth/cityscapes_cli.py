"""`pri3d synth cityscapes`: generate street photos with label ids in Cityscapes' layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pri3d.cli_types import image_size
from pri3d.synth.cityscapes import CityscapesSynthConfig, generate_cityscapes


def add_parser(datasets) -> None:
    """Add ``cityscapes`` to the ``synth`` sub-commands."""
    d = CityscapesSynthConfig()
    parser = datasets.add_parser(
        "cityscapes",
        help="street photos with label ids in Cityscapes' formats",
        description="Generate procedural street photos written as Cityscapes distributes them: "
        "leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png and "
        "gtFine/{train,val}/<city>/<same stem>_gtFine_labelIds.png (8-bit Cityscapes label ids). "
        "Re-running with the same options skips finished images.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (the Cityscapes root)")
    parser.add_argument("--train", type=int, default=d.train, help="train images (default %(default)s)")
    parser.add_argument("--val", type=int, default=d.val, help="val images (default %(default)s)")
    parser.add_argument(
        "--size",
        type=image_size,
        default=d.size,
        metavar="HxW",
        help=f"image size, height x width; Cityscapes' is 1024x2048 (default {d.size[0]}x{d.size[1]})",
    )
    parser.add_argument(
        "--seed", type=int, default=d.seed, help="same seed, same bytes (default %(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="images generated in parallel (default %(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = CityscapesSynthConfig(train=args.train, val=args.val, size=args.size, seed=args.seed)
    summary = generate_cityscapes(args.out, config, workers=args.workers, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0
