"""Frames of a ScanNet ``.sens`` scan: exported images, poses, intrinsics, clouds and chunk boxes.

One pass over the ``.sens`` stream (one frame in memory at a time) writes, for every
``frame_skip``-th frame with a usable pose (:func:`pose_problem`) and some valid depth, under a
scene folder:

* ``color/<frame>.jpg``: the JPEG bytes stored in the ``.sens``, written as they are (no re-encode);
* ``depth/<frame>.png``: uint16 depth in millimetres, 0 = invalid (as stored, converted only if the
  scan's ``depth_shift`` is not 1000);
* ``pose/<frame>.txt``: the 4×4 camera-to-world pose (float32 values as stored in the ``.sens``);

and once ``intrinsic/{intrinsic,extrinsic}_{color,depth}.txt`` (4×4). ``<frame>`` is the raw frame
number without padding (0, 25, 50, ...), as the original exporter named them.

For the overlap computation it keeps each frame's depth back-projected to world space and voxel
downsampled (:func:`pri3d.preprocess.overlap.voxel_downsample`), and for the geometric-prior crop it
computes each frame's chunk box (:func:`chunk_box`). Conventions (pixel centres, camera-to-world,
depth units) are those of :mod:`pri3d.geometry`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pri3d.io.images import write_depth_png, write_jpeg
from pri3d.io.scannet import write_matrix_txt
from pri3d.io.sens import SensHeader, SensReader
from pri3d.preprocess.overlap import VOXEL_SIZE, voxel_downsample

__all__ = [
    "CAMERA_FILES",
    "CHUNK_MARGIN",
    "MAX_CAMERA_DISTANCE",
    "RIGID_TOLERANCE",
    "SKIP_REASONS",
    "FrameExport",
    "chunk_box",
    "depth_rays",
    "export_frames",
    "pose_problem",
    "world_points",
]

#: Padding (metres) added on every side of a frame's chunk box.
CHUNK_MARGIN = 0.1

#: The camera matrices written once per scan, as ``intrinsic/<name>.txt``.
CAMERA_FILES = ("intrinsic_color", "extrinsic_color", "intrinsic_depth", "extrinsic_depth")

#: Reasons for not exporting a frame, as counted in :attr:`FrameExport.skipped`.
SKIP_REASONS = ("invalid_pose", "no_valid_depth")

#: Largest accepted distance (metres) of a camera from the scene origin. ScanNet's scenes are single
#: rooms, at most a few tens of metres across, so a camera a kilometre away is a corrupt pose. The
#: bound also keeps every point (camera + at most 65.5 m of uint16 depth) where float32 still resolves
#: 0.1 mm and inside the overlap's packable voxel range (±52 km at 5 cm, ±10 km at 1 cm voxels), which
#: one absurd translation otherwise overflows, failing its whole scene.
MAX_CAMERA_DISTANCE = 1e3

#: Largest accepted entry of |R Rᵀ - I|, |det R - 1| and |last row - [0, 0, 0, 1]|. Poses stored as
#: float32 are off by about 1e-7; 1e-3 moves a point 5 m away by at most 5 mm, a tenth of the 5 cm
#: overlap voxel, so anything beyond it is not a camera motion (a scaled, sheared or mirrored matrix).
RIGID_TOLERANCE = 1e-3


@dataclass
class FrameExport:
    """What :func:`export_frames` wrote and kept.

    frames: raw frame numbers exported, in file order. clouds: per exported frame, its voxel-
    downsampled world points [P_k, 3] float64. boxes: [F, 6] float64 chunk boxes (min xyz, max xyz).
    read: frames selected by ``frame_skip``; skipped: count per reason in :data:`SKIP_REASONS`;
    skipped_frames: raw frame number -> ``"<reason>: <what is wrong>"`` for each frame not exported.
    """

    frames: list[int] = field(default_factory=list)
    clouds: list[np.ndarray] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))
    read: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    skipped_frames: dict[int, str] = field(default_factory=dict)

    def skip(self, frame: int, reason: str, detail: str) -> None:
        """Count ``frame`` as not exported for ``reason`` (one of :data:`SKIP_REASONS`), saying why."""
        self.skipped[reason] += 1
        self.skipped_frames[frame] = f"{reason}: {detail}"


def pose_problem(camera_to_world: np.ndarray) -> str | None:
    """What makes a [4, 4] camera-to-world pose unusable, or None when it is a rigid camera motion.

    Refused: non-finite entries (ScanNet writes -inf where tracking was lost), an all-zero matrix,
    a rotation part that is not a rotation or a last row that is not [0, 0, 0, 1] (beyond
    :data:`RIGID_TOLERANCE`), and a camera farther than :data:`MAX_CAMERA_DISTANCE` from the origin.
    """
    pose = np.asarray(camera_to_world, dtype=np.float64)
    if not np.isfinite(pose).all():
        return "not finite (ScanNet writes -inf where tracking was lost)"
    if not pose.any():
        return "all zero"
    rotation = pose[:3, :3]
    orthogonality = float(np.abs(rotation @ rotation.T - np.eye(3)).max())
    determinant = float(np.linalg.det(rotation))
    # Written as "not within" so that NaN from overflowing float64 entries counts as a problem.
    if not (orthogonality <= RIGID_TOLERANCE and abs(determinant - 1) <= RIGID_TOLERANCE):
        return f"not a rigid motion: max |R Rᵀ - I| = {orthogonality:.3g}, det R = {determinant:.3g}"
    if np.abs(pose[3] - [0, 0, 0, 1]).max() > RIGID_TOLERANCE:
        return f"last row {pose[3].tolist()} is not [0, 0, 0, 1]"
    distance = float(np.linalg.norm(pose[:3, 3]))
    if distance > MAX_CAMERA_DISTANCE:
        return f"camera {distance:.3g} m from the scene origin, beyond {MAX_CAMERA_DISTANCE:g} m"
    return None


def depth_rays(header: SensHeader) -> np.ndarray:
    """Camera-space point at depth 1 m of every depth pixel, row-major: [3, H*W] float64.

    A pixel at depth z metres is ``z * ray`` (back-projection is linear in depth), so the rays are
    computed once per scan from the scan's depth intrinsics, with the conventions of
    :func:`pri3d.geometry.backproject_depth` (pixel centres at integer (row, col), skew K[0, 1]);
    tests check the two agree. NumPy here keeps torch (≈0.6 GB per process) out of the scene
    workers. Stored coordinate-major so that per-frame work runs over contiguous rows.
    """
    k = np.asarray(header.intrinsic_depth, dtype=np.float64)[:3, :3]
    rows, cols = np.divmod(
        np.arange(header.depth_height * header.depth_width, dtype=np.float64), header.depth_width
    )
    y = (rows - k[1, 2]) / k[1, 1]
    x = (cols - k[0, 2] - k[0, 1] * y) / k[0, 0]
    return np.stack([x, y, np.ones_like(x)])


def world_points(depth_m: np.ndarray, rays: np.ndarray, camera_to_world: np.ndarray) -> np.ndarray:
    """World points of a frame's valid depth pixels.

    Args:
        depth_m: [H, W] float metres, 0 (or non-finite) = invalid.
        rays: [3, H*W] from :func:`depth_rays`.
        camera_to_world: [4, 4] pose.
    Returns:
        [M, 3] float64 world points of the M valid pixels in row-major pixel order (a transposed
        view of a [3, M] array: column reductions are contiguous).
    """
    depth = np.asarray(depth_m, dtype=np.float64).reshape(-1)  # [H*W]
    valid = np.isfinite(depth) & (depth > 0)
    camera = rays[:, valid] * depth[valid]  # [3, M]
    pose = np.asarray(camera_to_world, dtype=np.float64)
    world = np.empty_like(camera)
    # Three fused rows instead of a matmul: no BLAS threads fighting the per-scene processes.
    for row in range(3):
        world[row] = (
            pose[row, 0] * camera[0] + pose[row, 1] * camera[1] + pose[row, 2] * camera[2] + pose[row, 3]
        )
    return world.T


def chunk_box(points: np.ndarray, margin: float = CHUNK_MARGIN) -> np.ndarray:
    """Axis-aligned box of a frame's world points, padded by ``margin`` metres on every side.

    The geometric-prior loss crops the scene point cloud to this box (the original's `chunk.py`). The
    original back-projected *all* pixels, so invalid zero depths put the camera centre inside
    every box, and rounded the box outward to whole metres: crops were often several times the
    visible volume. Using only valid pixels and a small margin keeps the crop to what the frame
    sees plus a band for depth noise and for voxels that straddle the surface.

    Args:
        points: [M, 3] world points, M >= 1.
    Returns:
        [6] float64 (min x, min y, min z, max x, max y, max z).
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"chunk_box needs [M >= 1, 3] points, got shape {list(points.shape)}")
    return np.concatenate([points.min(axis=0) - margin, points.max(axis=0) + margin])


def _write_intrinsics(header: SensHeader, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in CAMERA_FILES:
        write_matrix_txt(folder / f"{name}.txt", getattr(header, name))


def export_frames(
    sens_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    frame_skip: int = 25,
    voxel_size: float = VOXEL_SIZE,
    chunk_margin: float = CHUNK_MARGIN,
) -> FrameExport:
    """Export every ``frame_skip``-th frame of a ``.sens`` scan into ``out_dir`` (see module doc).

    Frames whose pose is unusable (:func:`pose_problem`) are counted as ``invalid_pose``, frames
    without a single valid depth pixel as ``no_valid_depth``, and each is named with what is wrong
    in :attr:`FrameExport.skipped_frames`; neither is written. A corrupt or truncated file raises
    :class:`pri3d.io.sens.SensFormatError` naming the file and frame (files already written stay;
    callers write into a temporary folder).
    """
    if frame_skip < 1:
        raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
    out_dir = Path(out_dir)
    for sub in ("color", "depth", "pose"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    result = FrameExport()
    boxes = []
    with SensReader(sens_path) as sens:
        header = sens.header
        _write_intrinsics(header, out_dir / "intrinsic")
        rays = depth_rays(header)  # [H*W, 3]
        to_mm = 1000.0 / header.depth_shift
        for frame in sens.frames(step=frame_skip):
            result.read += 1
            problem = pose_problem(frame.camera_to_world)
            if problem is not None:
                result.skip(frame.index, "invalid_pose", problem)
                continue
            depth = frame.decode_depth()  # [H, W] uint16, 1/depth_shift m
            points = world_points(depth / header.depth_shift, rays, frame.camera_to_world)
            if len(points) == 0:
                result.skip(frame.index, "no_valid_depth", "no depth pixel > 0")
                continue
            name = str(frame.index)
            if header.color_compression == "jpeg":
                (out_dir / "color" / f"{name}.jpg").write_bytes(frame.color_bytes)
            else:  # not in ScanNet's releases; keep the layout by encoding once
                write_jpeg(out_dir / "color" / f"{name}.jpg", frame.decode_color(), quality=95)
            if to_mm != 1.0:
                depth = np.clip(np.round(depth * to_mm), 0, 65535).astype(np.uint16)
            # zlib level 1: at the default level, PNG encoding would be the slowest step of the export
            write_depth_png(out_dir / "depth" / f"{name}.png", depth, compress_level=1)
            write_matrix_txt(out_dir / "pose" / f"{name}.txt", frame.camera_to_world)
            result.frames.append(frame.index)
            result.clouds.append(voxel_downsample(points, voxel_size))
            boxes.append(chunk_box(points, chunk_margin))
    result.boxes = np.array(boxes).reshape(-1, 6)
    return result
