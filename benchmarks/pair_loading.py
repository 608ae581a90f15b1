"""Pre-training sample loading: milliseconds per pair in one process, with and without the geometric prior.

Generates synthetic scans (``pri3d.synth``, ScanNet's formats), preprocesses them with the real
``pri3d preprocess scannet`` and times ``ScanNetPairs[i]`` over the pair list in its order of a
shuffled epoch: images, depths, pixel matches and, with the geometric prior, each view's voxel chunk
of the scene cloud with its voxel-pixel matches. This is the work each DataLoader worker does per
pair. Example (the figures in docs/benchmarks.md; the pipeline's sizes of ``pri3d demo``)::

    PYTHONPATH=. python benchmarks/pair_loading.py --scenes 4 --frames 150 --size 60x80 --voxel-size 0.12
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from pri3d.cli_types import image_size
from pri3d.data.pretrain_pairs import PairOptions, ScanNetPairs
from pri3d.preprocess.scannet import ScanNetOptions, preprocess_scannet
from pri3d.synth.generate import SynthConfig, generate


def time_pairs(data: Path, options: PairOptions, count: int) -> float:
    """Milliseconds per pair over ``count`` pairs of a shuffled epoch (after one warm-up pass)."""
    pairs = ScanNetPairs(data, "splits/overlap30.txt", options)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))[:count].tolist()
    for index in order[:8]:  # warm-up: point clouds and chunk boxes of the first scenes
        pairs[index]
    start = time.perf_counter()
    for index in order:
        sample = pairs[index]
        if "skip" in sample:
            raise RuntimeError(sample["skip"])
    return 1000 * (time.perf_counter() - start) / len(order)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=150, help="frames per generated scan")
    parser.add_argument("--size", type=image_size, default="60x80", metavar="HxW")
    parser.add_argument("--voxel-size", type=float, default=0.12)
    parser.add_argument("--matches", type=int, default=512, help="matches per pair")
    parser.add_argument("--pairs", type=int, default=200, help="pairs timed per mode")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        size = tuple(args.size)
        generate(
            root / "raw",
            SynthConfig(
                scenes=args.scenes,
                frames=args.frames,
                seed=0,
                color_size=size,
                depth_size=size,
                val_fraction=0.0,
            ),
        )
        report = preprocess_scannet(root / "raw" / "scans", root / "data", ScanNetOptions(frame_skip=5))
        print(
            f"{report['frames']['exported']} frames, {report['pair_list']['pairs']} pairs; "
            f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, one thread"
        )
        for geometric in (False, True):
            options = PairOptions(
                size=size, num_matches=args.matches, geometric_prior=geometric, voxel_size=args.voxel_size
            )
            ms = time_pairs(root / "data", options, args.pairs)
            mode = (
                f"with the geometric prior ({args.voxel_size} m voxels)"
                if geometric
                else "pixel matches only"
            )
            print(f"{mode}: {ms:.1f} ms per pair")


if __name__ == "__main__":
    main()
