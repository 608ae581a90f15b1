"""Pre-training sample loading: milliseconds per pair in one process, with and without the geometric prior,
and voxels per view under the original's chunk-box crop and the optional view-frustum crop.

Generates synthetic scans (``pri3d.synth``, ScanNet's formats), preprocesses them with the real
``pri3d preprocess scannet`` and times ``ScanNetPairs[i]`` over the pair list in its order of a
shuffled epoch: images, depths, pixel matches and, with the geometric prior, each view's voxel chunk
of the scene cloud with its voxel-pixel matches. This is the work each DataLoader worker does per
pair. The 3D network's cost grows with its input voxels, so voxels per view measure the 3D work
each crop (``PairOptions.voxel_crop``) leaves; ``--time-3d N`` also times that work: MinkUNet34C
(pri3d's torch path, PyTorch's default threads) forward + backward on both views of each of the first
N pairs of the same order, the same pairs for every crop. Examples (the figures in
docs/benchmarks.md; the first with the pipeline's sizes of ``pri3d demo``)::

    PYTHONPATH=. python benchmarks/pair_loading.py --scenes 4 --frames 150 --size 60x80 --voxel-size 0.12
    PYTHONPATH=. python benchmarks/pair_loading.py --scenes 4 --frames 150 --size 60x80 --voxel-size 0.02 \
        --pairs 20 --time-3d 20
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
from pri3d.data.collate import collate_pairs
from pri3d.data.pretrain_pairs import PairOptions, ScanNetPairs
from pri3d.models.sparse_unet import MinkUNet34C
from pri3d.preprocess.scannet import ScanNetOptions, preprocess_scannet
from pri3d.synth.generate import SynthConfig, generate


def time_pairs(data: Path, options: PairOptions, count: int) -> tuple[float, float, list[dict]]:
    """Milliseconds per pair and mean voxels per view (0 without the geometric prior) over ``count``
    pairs of a shuffled epoch (after one warm-up pass), and the samples in that order."""
    pairs = ScanNetPairs(data, "splits/overlap30.txt", options)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))[:count].tolist()
    for index in order[:8]:  # warm-up: point clouds and chunk boxes of the first scenes
        pairs[index]
    voxels, samples = 0, []
    start = time.perf_counter()
    for index in order:
        sample = pairs[index]
        if "skip" in sample:
            raise RuntimeError(sample["skip"])
        voxels += sum(len(sample.get(f"voxels{v}", ())) for v in (1, 2))
        samples.append(sample)
    return 1000 * (time.perf_counter() - start) / len(order), voxels / (2 * len(order)), samples


def time_3d(network: MinkUNet34C, samples: list[dict]) -> float:
    """Seconds per pair of the 3D network's forward + backward on both views of each sample (one
    sparse tensor per view, as in a batch of one pair), after one warm-up pair."""
    batches = [collate_pairs([sample]) for sample in samples]
    seconds = 0.0
    for number, batch in enumerate([batches[0], *batches]):
        start = time.perf_counter()
        for v in (1, 2):
            network(batch[f"voxels{v}"], batch[f"voxel_colors{v}"]).sum().backward()
        if number:
            seconds += time.perf_counter() - start
        network.zero_grad(set_to_none=True)
    return seconds / len(samples)


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
    parser.add_argument(
        "--frustum-margins",
        type=float,
        nargs="*",
        default=[0.0, PairOptions.frustum_margin],
        metavar="M",
        help="metres; one frustum-crop run per margin",
    )
    parser.add_argument(
        "--time-3d",
        type=int,
        default=0,
        metavar="N",
        help="also time the 3D network's forward + backward on the first N pairs of each crop",
    )
    args = parser.parse_args()
    if args.time_3d > args.pairs:
        parser.error(f"--time-3d {args.time_3d}: at most --pairs ({args.pairs}) pairs are loaded")
    network_threads = torch.get_num_threads()
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
        shared = {"size": size, "num_matches": args.matches, "voxel_size": args.voxel_size}
        modes = [
            ("pixel matches only", PairOptions(**shared)),
            (
                f"geometric prior ({args.voxel_size} m voxels), box crop",
                PairOptions(**shared, geometric_prior=True),
            ),
        ]
        for margin in args.frustum_margins:
            frustum = PairOptions(**shared, geometric_prior=True, voxel_crop="frustum", frustum_margin=margin)
            modes.append((f"geometric prior, frustum crop with a {margin} m margin", frustum))
        torch.manual_seed(0)
        network = MinkUNet34C(backend="torch")
        for mode, options in modes:
            ms, voxels, samples = time_pairs(root / "data", options, args.pairs)
            line = f"{mode}: {ms:.1f} ms per pair"
            if options.voxel_crop == "box" and options.geometric_prior:
                box_voxels = voxels
            if options.geometric_prior:
                line += (
                    f", {voxels:.0f} voxels per view ({100 * voxels / box_voxels:.0f} % of the box crop's)"
                )
                if args.time_3d:
                    torch.set_num_threads(network_threads)
                    seconds = time_3d(network, samples[: args.time_3d])
                    torch.set_num_threads(1)
                    if options.voxel_crop == "box":
                        box_seconds = seconds
                    line += (
                        f"; 3D network forward + backward {seconds:.3f} s per pair on {network_threads} "
                        f"threads ({100 * seconds / box_seconds:.0f} % of the box crop's)"
                    )
            print(line)


if __name__ == "__main__":
    main()
