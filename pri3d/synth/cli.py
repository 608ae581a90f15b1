"""`pri3d synth <dataset>`: generated data written in each dataset's own on-disk formats.

Each dataset's generator has its own sub-command module providing ``add_parser(datasets)``.
"""

from __future__ import annotations

import argparse
import importlib

#: Modules that provide ``add_parser(datasets)``: one ``pri3d synth`` sub-command each.
DATASET_MODULES = (
    "pri3d.synth.scannet_cli",
    "pri3d.synth.megadepth_cli",
    "pri3d.synth.kitti_cli",
    "pri3d.synth.cityscapes_cli",
)


def register(subparsers) -> None:
    """Add ``synth`` (with one sub-command per dataset) to the ``pri3d`` command."""
    parser = subparsers.add_parser(
        "synth",
        help="generate data in a dataset's own formats (the embedded default data, no download)",
        description="Generate procedural scenes written exactly as each dataset distributes them; one "
        "sub-command per dataset. Re-running with the same options skips finished work.",
    )
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET")
    for name in DATASET_MODULES:
        importlib.import_module(name).add_parser(datasets)
    parser.set_defaults(run=lambda args: _print_help(parser))


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
