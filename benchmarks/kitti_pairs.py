"""KITTI pair preprocessing: pri3d against the original's per-pair loop on the same frames.

The baseline is the original's algorithm (``kitti_process.py``, spec §3.8) re-implemented from its
description, with its stray ``break`` removed so that it scores every pair: per frame i its depth is
read, and per pair the calibration file is parsed again, frame j's depth read, frame i's valid pixels
back-projected, moved through four homogeneous 4x4 transforms (camera 2 -> camera 0 -> world ->
camera 0 -> camera 2, each inverse computed per pair), projected and compared with frame j's depth.
Two things differ from the original so that both sides must give identical results: positions round to
the nearest pixel (pri3d's convention; the original truncated) and poses are read at row raw frame -
start (the original used the raw frame). The script checks that both give the same pairs, ratios and
pixel mappings, then prints the speed-up, and how many pairs pri3d's bound
(:mod:`pri3d.preprocess.kitti_overlap`) rejects without matching their points.

Data: a drive of ``pri3d synth kitti`` at KITTI's 375x1242 (generated into --root unless it exists).

    OPENBLAS_NUM_THREADS=1 python benchmarks/kitti_pairs.py --root /tmp/kitti_bench --frames 120

One BLAS thread: preprocessing runs one process per drive, and the comparison is per core. CPU time
is printed beside wall time because it is less disturbed by other jobs on the machine; pri3d's times
are the fastest of ``--repeat`` runs (the loop runs once: it takes half a minute).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from pri3d.io.kitti import (
    calib_path,
    camera0_to_camera2,
    depth_path,
    poses_path,
    read_calib,
    read_drive_table,
    read_kitti_depth,
    read_kitti_pairs,
    read_poses,
)
from pri3d.preprocess.kitti import KittiOptions, find_drives, preprocess_kitti
from pri3d.preprocess.kitti_overlap import overlap_ratio, point_blocks, reachable_blocks
from pri3d.synth.kitti import KittiSynthConfig, generate_kitti


def original_loop(
    root: Path, drive, options: KittiOptions
) -> dict[tuple[int, int], tuple[float, np.ndarray]]:
    """{(i, j): (ratio, mapping [M, 4] (row_i, col_i, row_j, col_j))} of the kept pairs, pair by pair."""
    entry = drive.entry
    poses = read_poses(poses_path(root, entry.sequence))
    frames = [r for r in drive.frames if entry.start <= r <= entry.end and r - entry.start < len(poses)]
    kept = {}
    for position, frame_i in enumerate(frames):
        depth_i = read_kitti_depth(depth_path(root, drive.split, entry.drive, frame_i))
        for frame_j in frames[position + 1 :]:
            if frame_j - frame_i > options.max_gap:
                break
            p2 = read_calib(calib_path(root, entry.sequence))["P2"]
            k = p2[:, :3]
            camera0_to_2 = camera0_to_camera2(p2)
            depth_j = read_kitti_depth(depth_path(root, drive.split, entry.drive, frame_j))
            rows, cols = np.nonzero(depth_i > 0)
            z = depth_i[rows, cols].astype(np.float64)
            y_over_z = (rows - k[1, 2]) / k[1, 1]
            x_over_z = (cols - k[0, 2] - k[0, 1] * y_over_z) / k[0, 0]
            points = np.stack((x_over_z * z, y_over_z * z, z, np.ones_like(z)))  # [4, N] camera 2 (i)
            points = np.linalg.inv(camera0_to_2) @ points  # camera 0 (i)
            points = poses[frame_i - entry.start] @ points  # world
            points = np.linalg.inv(poses[frame_j - entry.start]) @ points  # camera 0 (j)
            points = camera0_to_2 @ points  # camera 2 (j)
            with np.errstate(divide="ignore", invalid="ignore"):
                u = k[0, 0] * (points[0] / points[2]) + k[0, 1] * (points[1] / points[2]) + k[0, 2]
                v = k[1, 1] * (points[1] / points[2]) + k[1, 2]
                col_j, row_j = np.floor(u + 0.5), np.floor(v + 0.5)
                inside = (points[2] > 0) & (row_j >= 0) & (row_j < depth_j.shape[0])
                inside &= (col_j >= 0) & (col_j < depth_j.shape[1])
            row_j, col_j = row_j[inside].astype(np.int64), col_j[inside].astype(np.int64)
            there = depth_j[row_j, col_j]
            ok = (there > 0) & (np.abs(points[2][inside] - there) < options.depth_threshold)
            matches = int(ok.sum())
            ratio = matches / (len(z) + int((depth_j > 0).sum()) - matches)
            if ratio > options.min_ratio:
                mapping = np.stack((rows[inside][ok], cols[inside][ok], row_j[ok], col_j[ok]), 1)
                kept[(frame_i, frame_j)] = (ratio, mapping)
    return kept


def posed_depths(root: Path, drive) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], np.ndarray]:
    """The drive's depth maps with a pose, each read once, their camera 2 -> world poses, and P2."""
    entry = drive.entry
    p2 = read_calib(calib_path(root, entry.sequence))["P2"]
    poses = read_poses(poses_path(root, entry.sequence))
    camera2_to_world = {
        r: poses[r - entry.start] @ np.linalg.inv(camera0_to_camera2(p2))
        for r in drive.frames
        if entry.start <= r <= entry.end and r - entry.start < len(poses)
    }
    depths = {r: read_kitti_depth(depth_path(root, drive.split, entry.drive, r)) for r in camera2_to_world}
    return depths, camera2_to_world, p2


def bound_rejections(
    depths: dict[int, np.ndarray],
    camera2_to_world: dict[int, np.ndarray],
    p2: np.ndarray,
    options: KittiOptions,
) -> tuple[int, int]:
    """(pairs, pairs whose bound on the matches already gives ratio <= min_ratio) of the drive."""
    valid = {r: int((depth > 0).sum()) for r, depth in depths.items()}
    pairs = rejected = 0
    for frame_i, depth in depths.items():
        partners = [j for j in depths if 0 < j - frame_i <= options.max_gap]
        if not partners:
            continue
        blocks = point_blocks(depth, p2[:, :3])
        transforms = (
            np.stack([np.linalg.inv(camera2_to_world[j]) for j in partners]) @ camera2_to_world[frame_i]
        )
        reachable = reachable_blocks(blocks, p2[:, :3] @ transforms[:, :3], depth.shape)
        ratios = overlap_ratio(
            reachable.astype(np.int64) @ blocks.counts, valid[frame_i], [valid[j] for j in partners]
        )
        pairs += len(partners)
        rejected += int((ratios <= options.min_ratio).sum())
    return pairs, rejected


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", type=Path, required=True, help="KITTI root; generated here if it does not exist"
    )
    parser.add_argument("--frames", type=int, default=60, help="odometry frames of the generated drive")
    parser.add_argument("--size", type=int, nargs=2, default=(375, 1242), metavar=("H", "W"))
    parser.add_argument("--max-gap", type=int, default=100)
    parser.add_argument("--min-ratio", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=3, help="pri3d runs; the fastest is reported")
    args = parser.parse_args()
    if not args.root.exists():
        start = time.perf_counter()
        config = KittiSynthConfig(drives=1, frames=args.frames, size=tuple(args.size), semantic_frames=0)
        generate_kitti(args.root, config, workers=1, progress=False)
        print(
            f"generated {args.frames} frames at {args.size[0]}x{args.size[1]} in {time.perf_counter() - start:.1f} s"
        )
    options = KittiOptions(max_gap=args.max_gap, min_ratio=args.min_ratio)
    drive = find_drives(args.root, [read_drive_table(args.root)[0].drive])[0][0]

    pri3d_seconds = pri3d_cpu = float("inf")
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as out:
            start, cpu = time.perf_counter(), time.process_time()
            report = preprocess_kitti(
                args.root, out, options, drives=[drive.entry.drive], workers=1, progress=False
            )
            pri3d_seconds = min(pri3d_seconds, time.perf_counter() - start)
            pri3d_cpu = min(pri3d_cpu, time.process_time() - cpu)
            mapping = np.load(Path(out) / drive.entry.drive / "mapping.npy").astype(np.int64)
            ours = {
                (p.frame_i, p.frame_j): (p.ratio, mapping[p.first_row : p.first_row + p.num_matches])
                for p in read_kitti_pairs(Path(out) / "pairs.txt")
            }
    start, cpu = time.perf_counter(), time.process_time()
    theirs = original_loop(args.root, drive, options)
    loop_seconds, loop_cpu = time.perf_counter() - start, time.process_time() - cpu

    tested = report["pairs"]["tested"]
    same_pairs = sorted(ours) == sorted(theirs)
    max_ratio_error = max((abs(ours[key][0] - theirs[key][0]) for key in theirs if key in ours), default=0.0)
    same_mappings = same_pairs and all(np.array_equal(ours[key][1], theirs[key][1]) for key in theirs)
    points = report["per_drive"][drive.entry.drive]["frames_with_pose"]
    print(f"drive {drive.entry.drive}: {points} frames with a pose, {tested} pairs tested, {len(ours)} kept")
    cpu = time.process_time()
    depths, camera2_to_world, p2 = posed_depths(args.root, drive)
    print(f"decoding the {len(depths)} depth PNGs once: {time.process_time() - cpu:.2f} s CPU")
    pairs, rejected = bound_rejections(depths, camera2_to_world, p2, options)
    print(f"pairs rejected by pri3d's bound without matching their points: {rejected} of {pairs}")
    print(
        f"identical kept pairs: {same_pairs}; identical mappings: {same_mappings}; max |ratio diff| {max_ratio_error:.1e}"
    )
    for name, wall, cpu in (
        ("original per-pair loop", loop_seconds, loop_cpu),
        ("pri3d", pri3d_seconds, pri3d_cpu),
    ):
        print(f"{name}: {wall:.2f} s wall, {cpu:.2f} s CPU ({1000 * cpu / tested:.2f} ms CPU per pair)")
    print(f"speed-up: {loop_seconds / pri3d_seconds:.1f}x wall, {loop_cpu / pri3d_cpu:.1f}x CPU")


if __name__ == "__main__":
    main()
