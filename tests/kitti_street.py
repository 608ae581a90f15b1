"""A tiny street in KITTI's download layout, with depth known analytically, for the KITTI tests.

The street is four planes in the world frame (y down): the road y = 1.65, walls x = -6 and x = 7,
and an end wall z = 70. Camera 0 of raw frame r sits at ``z = 0.9 r + 0.03 r²`` (speed grows, so a
pose read at the wrong index is a different camera), turning 0.6° per frame about y. Camera 2 is
camera 0 moved by ``CAM2_OFFSET`` (KITTI's colour camera sits 6 cm to the left of the grey one) with
intrinsics ``K2``. Depth is exact along each pixel centre's ray, quantised to 1/256 m as KITTI stores
it, and kept on a random 30 % of the pixels (sparse like projected LiDAR).

Each drive's odometry sequence starts at raw frame ``start`` > 0, and annotated depth exists for a
frame before the sequence and one after it, which have no pose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pri3d.io.kitti import (
    DriveSequence,
    calib_path,
    camera0_to_camera2,
    depth_path,
    image_path,
    poses_path,
    write_calib,
    write_drive_table,
    write_poses,
)

H, W = 24, 80
K2 = np.array([[40.0, 0.0, 39.3], [0.0, 40.0, 11.6], [0.0, 0.0, 1.0]])
CAM2_OFFSET = np.array([0.06, -0.002, 0.004])  # camera 0 -> camera 2 translation, metres
# (sequence, drive, split, raw start, sequence length)
DRIVES = (
    ("00", "2011_10_03_drive_0027", "train", 3, 8),
    ("05", "2011_09_30_drive_0018", "val", 2, 6),
)
PLANES = ((1, 1.65), (0, -6.0), (0, 7.0), (2, 70.0))  # (axis, offset): points with p[axis] == offset


def camera0_to_world(raw_frame: int) -> np.ndarray:
    angle = np.deg2rad(0.6) * raw_frame
    pose = np.eye(4)
    pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    pose[:3, 3] = [0.0, 0.0, 0.9 * raw_frame + 0.03 * raw_frame**2]
    return pose


def P2() -> np.ndarray:
    return K2 @ np.concatenate((np.eye(3), CAM2_OFFSET[:, None]), axis=1)


def camera2_to_world(raw_frame: int) -> np.ndarray:
    return camera0_to_world(raw_frame) @ np.linalg.inv(camera0_to_camera2(P2()))


def depth_along(raw_frame: int, rowcol: np.ndarray) -> np.ndarray:
    """Exact camera-2 depth (z) of the street at continuous (row, col) positions [..., 2]."""
    pose = camera2_to_world(raw_frame)
    rays = np.stack(
        (
            (rowcol[..., 1] - K2[0, 2]) / K2[0, 0],
            (rowcol[..., 0] - K2[1, 2]) / K2[1, 1],
            np.ones(rowcol.shape[:-1]),
        ),
        axis=-1,
    )  # camera 2, z = 1: the ray parameter is the depth
    directions = rays @ pose[:3, :3].T
    origin = pose[:3, 3]
    depth = np.full(rowcol.shape[:-1], np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis, offset in PLANES:
            t = (offset - origin[axis]) / directions[..., axis]
            depth = np.where((t > 0) & (t < depth), t, depth)
    return depth


def depth_png_values(raw_frame: int, seed: int) -> np.ndarray:
    """uint16 [H, W] metres x 256 of a frame, on a random 30 % of the pixels, 0 elsewhere."""
    rows, cols = np.mgrid[0:H, 0:W]
    depth = depth_along(raw_frame, np.stack((rows, cols), axis=-1).astype(np.float64))
    keep = np.random.default_rng(seed).random((H, W)) < 0.3
    return np.where(keep & (depth < 200), np.round(depth * 256), 0).astype(np.uint16)


def write_street(root: Path) -> Path:
    """Write the street's drives under ``root`` (odometry, annotated depth, drive table); return root."""
    table = []
    for seq_index, (sequence, drive, split, start, length) in enumerate(DRIVES):
        end = start + length - 1
        table.append(DriveSequence(sequence, drive, start, end))
        poses_path(root, sequence).parent.mkdir(parents=True, exist_ok=True)
        write_poses(
            poses_path(root, sequence), np.stack([camera0_to_world(r) for r in range(start, end + 1)])
        )
        image_path(root, sequence, 0).parent.mkdir(parents=True, exist_ok=True)
        k0 = np.concatenate((K2, np.zeros((3, 1))), axis=1)
        write_calib(calib_path(root, sequence), {"P0": k0, "P1": k0, "P2": P2(), "P3": P2(), "Tr": k0})
        for raw in range(start - 1, end + 2):  # one annotated frame before and one after the sequence
            path = depth_path(root, split, drive, raw)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(depth_png_values(raw, seed=100 * seq_index + raw)).save(path)
            if start <= raw <= end:
                rng = np.random.default_rng(raw)
                Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
                    image_path(root, sequence, raw - start)
                )
    write_drive_table(root, table)
    return root
