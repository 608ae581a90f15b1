"""Frame-pair overlap: pri3d's exact vectorised method against the original's per-point KD-tree loop.

Generates one synthetic scan (``pri3d.synth``, ScanNet's formats), turns every kept frame into a
5 cm-downsampled world cloud, and computes the overlap matrix m[i, j] (the original's `compute_full_overlapping.py`) with

* ``pri3d``: :func:`pri3d.preprocess.overlap.overlap_matrix`;
* ``baseline, per point``: the original's loop: one cKDTree per frame i and a radius query
  (``query_ball_point``) per point of j in Python, for every ordered pair (i, j). Too slow to finish
  on a whole scan, so it runs on a random sample of ordered pairs and is extrapolated by the number
  of points queried (printed as such);
* ``baseline, per pair``: the same KD-trees with all points of j in one vectorised ``query`` per
  ordered pair (:func:`overlap_matrix_kdtree`): the scores of the original's definition for every
  pair, fast enough to run in full, and a stronger baseline than the original.

All three run on the same clouds (Open3D's downsampling rule, as the pipeline makes them).

It prints the time ratios, the agreement on which pairs pass the threshold, and optionally times
the whole ``pri3d preprocess scannet`` on a second scan. Example (the figures in docs/benchmarks.md)::

    PYTHONPATH=. python benchmarks/overlap.py --frames 500 --frame-skip 5 --pipeline-frames 300
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from pri3d.cli_types import image_size
from pri3d.io.sens import SensReader
from pri3d.preprocess.frames import depth_rays, world_points
from pri3d.preprocess.overlap import (
    VOXEL_SIZE,
    overlap_matrix,
    overlap_matrix_kdtree,
    pair_scores,
    voxel_downsample,
)
from pri3d.preprocess.scannet import ScanNetOptions, preprocess_scannet
from pri3d.synth.generate import SynthConfig, generate, scene_name

RADIUS = 1.5 * VOXEL_SIZE


def frame_clouds(sens_path: Path, frame_skip: int) -> list[np.ndarray]:
    """Voxel-downsampled world cloud of every kept frame with a valid pose, as the pipeline makes them."""
    clouds = []
    with SensReader(sens_path) as sens:
        rays = depth_rays(sens.header)
        for frame in sens.frames(step=frame_skip):
            if not frame.pose_valid:
                continue
            depth = frame.decode_depth() / sens.header.depth_shift
            points = world_points(depth, rays, frame.camera_to_world)
            if len(points):
                clouds.append(voxel_downsample(points, VOXEL_SIZE))
    return clouds


def per_point_loop(clouds: list[np.ndarray], pairs: np.ndarray) -> tuple[np.ndarray, float, int]:
    """The original's loop on the given ordered pairs (i, j): m[i, j], seconds, points queried."""
    trees: dict[int, cKDTree] = {}
    ratios = np.zeros(len(pairs))
    queried = 0
    start = time.perf_counter()
    for n, (i, j) in enumerate(pairs):
        tree = trees.get(i) or trees.setdefault(i, cKDTree(clouds[i]))
        hits = 0
        for point in clouds[j]:
            if tree.query_ball_point(point, RADIUS):
                hits += 1
        ratios[n] = hits / len(clouds[j])
        queried += len(clouds[j])
    return ratios, time.perf_counter() - start, queried


def best_of(repeats: int, fn, *args):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return result, min(times)


def agreement(scores_a: np.ndarray, scores_b: np.ndarray, threshold: float) -> tuple[float, int, int]:
    """Share of pairs on which both agree about passing, and the two pass counts."""
    pass_a, pass_b = scores_a >= threshold, scores_b >= threshold
    return float(np.mean(pass_a == pass_b)), int(pass_a.sum()), int(pass_b.sum())


def ensure_scan(root: Path, frames: int, size: tuple[int, int], seed: int) -> Path:
    config = SynthConfig(scenes=1, frames=frames, seed=seed, color_size=size, depth_size=size)
    start = time.perf_counter()
    generate(root, config, workers=1, progress=False)
    print(f"scan: {frames} frames at {size[0]}x{size[1]} in {root} ({time.perf_counter() - start:.1f} s)")
    return root / "scans" / scene_name(0) / f"{scene_name(0)}.sens"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="where scans are generated (default: temp dir)"
    )
    parser.add_argument("--frames", type=int, default=500, help="frames of the overlap scan (default 500)")
    parser.add_argument(
        "--frame-skip", type=int, default=5, help="keep every n-th frame (default 5: 100 kept)"
    )
    parser.add_argument(
        "--size", type=image_size, default="240x320", help="colour and depth HEIGHTxWIDTH (default 240x320)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument(
        "--loop-pairs", type=int, default=150, help="ordered pairs the per-point loop runs on (default 150)"
    )
    parser.add_argument(
        "--pipeline-frames",
        type=int,
        default=0,
        help="also time `pri3d preprocess scannet --frame-skip 1` on a scan of this many frames (0 = skip)",
    )
    parser.add_argument("--workers", type=int, default=2, help="workers of the pipeline run (default 2)")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="pri3d-bench-overlap-"))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPU cores, python {platform.python_version()}")

    sens = ensure_scan(data / "overlap_scan", args.frames, args.size, args.seed)
    start = time.perf_counter()
    clouds = frame_clouds(sens, args.frame_skip)
    points = [len(c) for c in clouds]
    print(
        f"clouds: {len(clouds)} frames, {np.mean(points):.0f} points per frame after 5 cm downsampling "
        f"({time.perf_counter() - start:.1f} s to read and back-project)"
    )

    fast, fast_s = best_of(3, overlap_matrix, clouds)
    original, pair_s = best_of(1, overlap_matrix_kdtree, clouds)
    fast_scores = pair_scores(fast)[2]
    exact_diff = float(np.abs(fast - original).max())
    agree, fast_pass, original_pass = agreement(fast_scores, pair_scores(original)[2], args.threshold)

    num_frames = len(clouds)
    rng = np.random.default_rng(0)
    ordered = np.array([(i, j) for i in range(num_frames) for j in range(num_frames) if i != j])
    sample = ordered[rng.choice(len(ordered), size=min(args.loop_pairs, len(ordered)), replace=False)]
    loop_ratios, loop_s, loop_points = per_point_loop(clouds, sample)
    loop_diff = float(np.abs(loop_ratios - original[sample[:, 0], sample[:, 1]]).max())
    total_points = (num_frames - 1) * sum(len(c) for c in clouds)  # every point of j, for every i != j
    loop_total_s = loop_s / loop_points * total_points

    print()
    print(f"| method | time for {num_frames} frames | pri3d faster by |")
    print("|---|---|---|")
    print(f"| pri3d `overlap_matrix` (exact, vectorised) | {fast_s:.2f} s | 1× |")
    print(f"| baseline: cKDTree per pair, vectorised query | {pair_s:.1f} s | {pair_s / fast_s:.0f}× |")
    print(
        f"| baseline: cKDTree per pair, radius query per point in Python (the original's loop; "
        f"{len(sample)} of {len(ordered)} ordered pairs, extrapolated) | {loop_total_s:.0f} s "
        f"({loop_total_s / 60:.1f} min) | {loop_total_s / fast_s:.0f}× |"
    )
    print()
    print(f"- pri3d vs the per-pair KD-tree scores: max |m difference| = {exact_diff:.1e}")
    print(
        f"- pairs passing {args.threshold}: pri3d {fast_pass}, KD-tree baseline {original_pass} "
        f"of {len(fast_scores)}; agreement {100 * agree:.2f}% of pairs"
    )
    print(f"- per-point loop vs per-pair KD-tree on the loop's sample: max |m difference| = {loop_diff:.1e}")

    if args.pipeline_frames:
        root = data / "pipeline_scan"
        ensure_scan(root, args.pipeline_frames, args.size, args.seed + 1)
        target = data / "pipeline_out"
        shutil.rmtree(target, ignore_errors=True)  # a finished scene would be skipped, not timed
        start = time.perf_counter()
        report = preprocess_scannet(
            root / "scans", target, ScanNetOptions(frame_skip=1), workers=args.workers, progress=False
        )
        seconds = time.perf_counter() - start
        print(
            f"- `pri3d preprocess scannet --frame-skip 1` on a {args.pipeline_frames}-frame scan: {seconds:.1f} s "
            f"({report['frames']['exported']} frames exported, {report['pairs']['total']} pairs scored, "
            f"{report['pairs']['at_threshold']} >= 0.3) -> {target}"
        )


if __name__ == "__main__":
    main()
