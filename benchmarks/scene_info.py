"""MegaDepth scene_info matrices: pri3d's vectorised computation against the original's pairwise loop.

The original's ``preprocess_scene.py`` (D2-Net, used by Pri3D) keeps per image a set of observed 3D
point ids and a dict id -> normalised depth, and for every image pair i < j intersects the two sets
in Python (overlap = |common| / |points of i|, both directions) and takes the minimum over the
common points of max(nd_i / nd_j, nd_j / nd_i) (the scale ratio): O(N² · |obs|) per scene.
:func:`original_matrices` re-implements that loop from its description;
:func:`pri3d.preprocess.megadepth.overlap_and_scale_ratio` is pri3d's (every image pair within
each 3D point's track, expanded per track length: a bincount gives the |common| counts, a minimum
reduction the scale ratios).

Both run on one synthetic COLMAP-like observation table: N images along a walk, 3D points seen by
a window of neighbouring images, track lengths geometric (mean ``--mean-track``, at least 2, a long
tail capped at ``--max-track``) as SfM tracks are, about ``points × mean track / N`` observations
per image, and a few images unusable (no depth), as in MegaDepth. The script checks that the two
pairs of matrices are identical (array_equal, no tolerance) and prints the times and the speed-up.

    PYTHONPATH=. python benchmarks/scene_info.py --images 500
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from pri3d.preprocess.megadepth import overlap_and_scale_ratio


def observation_table(images: int, points: int, mean_track: float, max_track: int, seed: int):
    """(indptr [N + 1], ids [nnz], ndepth [nnz], usable [N]) of a synthetic scene."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(1 + rng.geometric(1 / (mean_track - 1), points), min(max_track, images))
    centres = rng.integers(0, images, points)
    rows, ids = [], []
    for point, (length, centre) in enumerate(zip(lengths, centres)):
        window = np.arange(centre, centre + 2 * length) % images  # nearby images along the walk
        rows.append(rng.choice(window, length, replace=False))
        ids.append(np.full(length, 10 * point + 1))  # COLMAP ids are not dense
    rows, ids = np.concatenate(rows), np.concatenate(ids)
    order = np.lexsort((ids, rows))
    rows, ids = rows[order], ids[order]
    indptr = np.searchsorted(rows, np.arange(images + 1))
    depth_scale = rng.uniform(0.5, 2.0, images)[rows]  # images at different distances
    ndepth = depth_scale * rng.uniform(0.8, 1.25, len(ids))
    usable = rng.uniform(size=images) > 0.05
    return indptr, ids, ndepth, usable


def original_matrices(indptr, ids, ndepth, usable):
    """The original's pairwise loop with Python sets and dicts (re-implemented from its description)."""
    n = len(indptr) - 1
    point_sets, ndepth_dicts = [], []
    for i in range(n):
        rows = slice(indptr[i], indptr[i + 1])
        ndepth_dicts.append(dict(zip(ids[rows].tolist(), ndepth[rows].tolist())))
        point_sets.append(set(ndepth_dicts[-1]))
    overlap, scale = -np.ones((n, n)), -np.ones((n, n))
    for idx1 in range(n):
        if not usable[idx1]:
            continue
        for idx2 in range(idx1 + 1, n):
            if not usable[idx2]:
                continue
            matches = point_sets[idx1] & point_sets[idx2]
            overlap[idx1, idx2] = len(matches) / len(point_sets[idx1]) if point_sets[idx1] else 0.0
            overlap[idx2, idx1] = len(matches) / len(point_sets[idx2]) if point_sets[idx2] else 0.0
            if not matches:
                continue
            nd1 = np.array([ndepth_dicts[idx1][m] for m in matches])
            nd2 = np.array([ndepth_dicts[idx2][m] for m in matches])
            scale[idx1, idx2] = scale[idx2, idx1] = np.min(np.maximum(nd1 / nd2, nd2 / nd1))
    return overlap, scale


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--points", type=int, default=150_000, help="3D points of the scene")
    parser.add_argument("--mean-track", type=float, default=6.0, help="mean images per 3D point")
    parser.add_argument("--max-track", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="pri3d's time is the best of these")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    indptr, ids, ndepth, usable = observation_table(
        args.images, args.points, args.mean_track, args.max_track, args.seed
    )
    lengths = np.bincount(np.unique(ids, return_inverse=True)[1])
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}; {args.images} images "
        f"({usable.sum()} usable), {len(lengths)} points, {len(ids)} observations "
        f"({len(ids) / args.images:.0f} per image), track length mean {lengths.mean():.2f}, max {lengths.max()}"
    )
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        overlap, scale = overlap_and_scale_ratio(indptr, ids, ndepth, usable)
        times.append(time.perf_counter() - start)
    pri3d_time = min(times)
    start = time.perf_counter()
    expected_overlap, expected_scale = original_matrices(indptr, ids, ndepth, usable)
    original_time = time.perf_counter() - start
    identical = np.array_equal(overlap, expected_overlap) and np.array_equal(scale, expected_scale)
    print(f"original pairwise loop: {original_time:.2f} s")
    print(f"pri3d vectorised:       {pri3d_time:.3f} s (best of {args.repeats})")
    print(f"speed-up: {original_time / pri3d_time:.0f}x; matrices identical: {identical}")
    print(
        f"pairs with overlap >= 0.3: {(overlap >= 0.3).sum()} ordered; "
        f"with a scale ratio: {(scale > 0).sum() // 2} unordered"
    )
    if not identical:
        raise SystemExit("the matrices differ")


if __name__ == "__main__":
    main()
