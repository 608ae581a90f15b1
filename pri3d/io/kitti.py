"""KITTI files: odometry calibration and poses, annotated depth, the drive table, and the pair files
that `pri3d preprocess kitti` writes.

KITTI as downloaded, under one root (see docs/data.md)::

    odometry/data_odometry_velodyne/dataset/poses/<seq>.txt          camera-0-to-world, 3x4 per line
    odometry/data_odometry_color/dataset/sequences/<seq>/calib.txt   P0: .. P3: (3x4), Tr: (3x4)
    odometry/data_odometry_color/dataset/sequences/<seq>/image_2/<%06d>.png
    depth/data_depth_annotated/{train,val}/<drive>_sync/proj_depth/groundtruth/image_02/<%010d>.png

Odometry files are indexed by **sequence** frame, depth files by **raw-drive** frame; sequence frame 0
is raw frame ``start`` of its drive (:class:`DriveSequence`). Camera 0 is the rectified left grey
camera, in whose frame the poses are given; camera 2 (``image_2``, the depth maps) is the rectified
left colour camera. ``P2 = K2 [I | t]`` with ``t = K2^-1 P2[:, 3]``, so a point X in camera 0 is
``X + t`` in camera 2 (:func:`camera0_to_camera2`).

Pixel and depth conventions are those of :mod:`pri3d.geometry` (pixel (row, col), depth in metres,
0 = invalid).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pri3d.io.images import read_depth_png
from pri3d.io.text_table import expect_line, table_lines

__all__ = [
    "CALIB_KEYS",
    "DRIVE_TABLE_NAME",
    "KITTI_ODOMETRY_DRIVES",
    "MAPPING_NAME",
    "PAIRS_NAME",
    "DriveSequence",
    "KittiPair",
    "calib_path",
    "camera0_to_camera2",
    "depth_path",
    "drive_depth_folder",
    "image_path",
    "kitti_pair_line",
    "poses_path",
    "read_calib",
    "read_drive_table",
    "read_kitti_depth",
    "read_kitti_pairs",
    "read_pair_mapping",
    "read_poses",
    "write_calib",
    "write_drive_table",
    "write_poses",
]

CALIB_KEYS = ("P0", "P1", "P2", "P3", "Tr")
DEPTH_SPLITS = ("train", "val")
#: The drive table a dataset may carry at its root (generated data does); KITTI's own readme format.
DRIVE_TABLE_NAME = "odometry_drives.txt"
#: Per drive folder of the preprocessing output: the pair list and the stacked pixel mappings.
PAIRS_NAME = "pairs.txt"
MAPPING_NAME = "mapping.npy"


class DriveSequence(NamedTuple):
    """An odometry sequence: raw frames ``start..end`` (inclusive) of ``drive`` are its frames 0..end-start."""

    sequence: str  # "00".."10"
    drive: str  # "2011_10_03_drive_0027" (the depth folder is "<drive>_sync")
    start: int
    end: int


# The KITTI odometry devkit's readme, "Nr. Sequence name Start End".
KITTI_ODOMETRY_DRIVES = (
    DriveSequence("00", "2011_10_03_drive_0027", 0, 4540),
    DriveSequence("01", "2011_10_03_drive_0042", 0, 1100),
    DriveSequence("02", "2011_10_03_drive_0034", 0, 4660),
    DriveSequence("03", "2011_09_26_drive_0067", 0, 800),
    DriveSequence("04", "2011_09_30_drive_0016", 0, 270),
    DriveSequence("05", "2011_09_30_drive_0018", 0, 2760),
    DriveSequence("06", "2011_09_30_drive_0020", 0, 1100),
    DriveSequence("07", "2011_09_30_drive_0027", 0, 1100),
    DriveSequence("08", "2011_09_30_drive_0028", 1100, 5170),
    DriveSequence("09", "2011_09_30_drive_0033", 0, 1590),
    DriveSequence("10", "2011_09_30_drive_0034", 0, 1200),
)  # fmt: skip


# --- paths ----------------------------------------------------------------------------------------


def poses_path(root: str | os.PathLike[str], sequence: str) -> Path:
    return Path(root) / "odometry/data_odometry_velodyne/dataset/poses" / f"{sequence}.txt"


def _sequence_folder(root: str | os.PathLike[str], sequence: str) -> Path:
    return Path(root) / "odometry/data_odometry_color/dataset/sequences" / sequence


def calib_path(root: str | os.PathLike[str], sequence: str) -> Path:
    return _sequence_folder(root, sequence) / "calib.txt"


def image_path(root: str | os.PathLike[str], sequence: str, sequence_frame: int) -> Path:
    """Colour image of camera 2 at a **sequence** frame index."""
    return _sequence_folder(root, sequence) / "image_2" / f"{sequence_frame:06d}.png"


def drive_depth_folder(root: str | os.PathLike[str], split: str, drive: str) -> Path:
    if split not in DEPTH_SPLITS:
        raise ValueError(f"annotated-depth split must be one of {DEPTH_SPLITS}, got {split!r}")
    return Path(root) / "depth/data_depth_annotated" / split / f"{drive}_sync/proj_depth/groundtruth/image_02"


def depth_path(root: str | os.PathLike[str], split: str, drive: str, raw_frame: int) -> Path:
    """Annotated depth of camera 2 at a **raw-drive** frame index."""
    return drive_depth_folder(root, split, drive) / f"{raw_frame:010d}.png"


# --- calibration, poses, depth --------------------------------------------------------------------


def read_calib(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """``calib.txt`` of an odometry sequence -> {"P0".."P3", "Tr": float64 [3, 4]}.

    Each line is ``<key>: <12 numbers>`` (row-major 3x4). Raises FileNotFoundError for a missing file
    and ValueError naming the file and line for a malformed line, or naming a missing key.
    """
    calib = {}
    for number, line in table_lines(path, "calibration file not found"):
        key, colon, values = line.partition(":")
        with expect_line(path, number, "'<key>: <12 numbers>' (a 3x4 matrix)", got=line):
            if not colon:
                raise ValueError("no '<key>:'")
            numbers = [float(value) for value in values.split()]
            if len(numbers) != 12:
                raise ValueError(f"{len(numbers)} numbers")
        calib[key.strip()] = np.array(numbers, dtype=np.float64).reshape(3, 4)
    missing = [key for key in CALIB_KEYS if key not in calib]
    if missing:
        raise ValueError(
            f"{path}: no {', '.join(missing)} line (a KITTI odometry calib.txt has {CALIB_KEYS})"
        )
    return calib


def camera0_to_camera2(P2: np.ndarray) -> np.ndarray:
    """4x4 rigid transform from rectified camera 0 to camera 2: [I | K2^-1 P2[:, 3]]."""
    transform = np.eye(4)
    transform[:3, 3] = np.linalg.solve(P2[:3, :3], P2[:, 3])
    return transform


def write_calib(path: str | os.PathLike[str], calib: dict[str, np.ndarray]) -> None:
    """Write ``calib.txt`` (keys in the order given, each a [3, 4] matrix), as KITTI does."""
    lines = []
    for key, matrix in calib.items():
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.shape != (3, 4):
            raise ValueError(f"{path}: {key} must be a 3x4 matrix, got shape {matrix.shape}")
        lines.append(f"{key}: " + " ".join(f"{value:.12e}" for value in matrix.ravel()) + "\n")
    Path(path).write_text("".join(lines))


def read_poses(path: str | os.PathLike[str]) -> np.ndarray:
    """An odometry poses file -> float64 [n, 4, 4] camera-0-to-world, row k = sequence frame k.

    Raises FileNotFoundError for a missing file and ValueError naming the file and line for a line
    that is not 12 finite numbers.
    """
    rows = []
    expected = "12 finite numbers (a 3x4 camera-0-to-world matrix)"
    for number, line in table_lines(path, "poses file not found"):
        with expect_line(path, number, expected, got=line[:80]):
            values = [float(field) for field in line.split()]
            if len(values) != 12:
                raise ValueError(f"{len(values)} numbers")
            if not np.isfinite(values).all():
                raise ValueError("a number is not finite")
        rows.append(values)
    poses = np.zeros((len(rows), 4, 4))
    poses[:, :3, :] = np.array(rows, dtype=np.float64).reshape(-1, 3, 4)
    poses[:, 3, 3] = 1.0
    return poses


def write_poses(path: str | os.PathLike[str], camera0_to_world: np.ndarray) -> None:
    """Write [n, 4, 4] (or [n, 3, 4]) camera-0-to-world poses, one 3x4 row-major matrix per line."""
    poses = np.asarray(camera0_to_world, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"{path}: poses must be [n, 4, 4] or [n, 3, 4], got shape {poses.shape}")
    lines = [" ".join(f"{value:.12e}" for value in pose[:3].ravel()) + "\n" for pose in poses]
    Path(path).write_text("".join(lines))


def read_kitti_depth(path: str | os.PathLike[str]) -> np.ndarray:
    """Annotated depth PNG (uint16, metres x 256, 0 = no measurement) -> float32 [H, W] metres, 0 invalid.

    An 8-bit, colour or non-PNG file is refused with an error naming the file.
    """
    return read_depth_png(path).astype(np.float32) / np.float32(256.0)


# --- the drive table ------------------------------------------------------------------------------


def read_drive_table(root: str | os.PathLike[str]) -> tuple[DriveSequence, ...]:
    """The drive <-> sequence table of the data under ``root``.

    ``root/odometry_drives.txt`` when present (generated data writes one; lines as in KITTI's readme,
    ``<seq>: <drive> <start> <end>``), else KITTI's own table (:data:`KITTI_ODOMETRY_DRIVES`).
    """
    path = Path(root) / DRIVE_TABLE_NAME
    if not path.is_file():
        return KITTI_ODOMETRY_DRIVES
    table = []
    for number, line in table_lines(path, "drive table not found"):
        fields = line.replace(":", " ").split()
        with expect_line(path, number, "'<seq>: <drive> <start> <end>'", got=line):
            if len(fields) != 4:
                raise ValueError(f"{len(fields)} fields")
            entry = DriveSequence(fields[0], fields[1], int(fields[2]), int(fields[3]))
            if not 0 <= entry.start <= entry.end:
                raise ValueError("start must be <= end, both >= 0")
        table.append(entry)
    for field in ("sequence", "drive"):
        names = [getattr(entry, field) for entry in table]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"{path}: {field} {', '.join(repeated)} listed more than once")
    if not table:
        raise ValueError(f"{path}: no drives listed")
    return tuple(table)


def write_drive_table(root: str | os.PathLike[str], table: list[DriveSequence]) -> Path:
    """Write ``root/odometry_drives.txt`` (read back by :func:`read_drive_table`)."""
    path = Path(root) / DRIVE_TABLE_NAME
    path.write_text("".join(f"{e.sequence}: {e.drive} {e.start:06d} {e.end:06d}\n" for e in table))
    return path


# --- pair list and pixel mappings -----------------------------------------------------------------


class KittiPair(NamedTuple):
    """One overlapping frame pair of a drive, as listed in ``pairs.txt``.

    Frames are raw-drive indices (those of the depth files); the pair's pixel mapping is rows
    ``first_row .. first_row + num_matches - 1`` of the drive's ``mapping.npy``.
    """

    drive: str
    split: str  # the annotated-depth split holding the drive, "train" or "val"
    frame_i: int
    frame_j: int
    ratio: float
    first_row: int
    num_matches: int


def kitti_pair_line(pair: KittiPair) -> str:
    """``<drive> <split> <frame_i> <frame_j> <ratio> <first_row> <num_matches>`` with a newline."""
    drive, split, i, j, ratio, first, count = pair
    return f"{drive} {split} {i} {j} {ratio:.6f} {first} {count}\n"


def read_kitti_pairs(path: str | os.PathLike[str]) -> list[KittiPair]:
    """Every pair of a ``pairs.txt`` in file order (blank lines ignored).

    Raises FileNotFoundError for a missing file and ValueError naming the file and line otherwise.
    """
    pairs = []
    missing = "KITTI pair list not found (run `pri3d preprocess kitti` first)"
    expected = "'<drive> <train|val> <frame_i> <frame_j> <ratio> <first_row> <num_matches>'"
    for number, line in table_lines(path, missing):
        fields = line.split()
        with expect_line(path, number, expected):
            if len(fields) != 7:
                raise ValueError(f"{len(fields)} fields")
            drive, split, i, j, ratio, first, count = fields
            pair = KittiPair(drive, split, int(i), int(j), float(ratio), int(first), int(count))
            if split not in DEPTH_SPLITS or min(pair.frame_i, pair.first_row) < 0 or pair.num_matches < 1:
                raise ValueError("bad split, negative index or no matches")
        pairs.append(pair)
    return pairs


def read_pair_mapping(path: str | os.PathLike[str], first_row: int, num_matches: int) -> np.ndarray:
    """Rows of a drive's ``mapping.npy``: int64 [M, 4] (row_i, col_i, row_j, col_j), memory-mapped."""
    mapping = np.load(path, mmap_mode="r")
    if mapping.ndim != 2 or mapping.shape[1] != 4:
        raise ValueError(f"{path}: expected an [N, 4] pixel mapping, got shape {list(mapping.shape)}")
    if first_row + num_matches > len(mapping):
        raise ValueError(
            f"{path}: rows {first_row}..{first_row + num_matches - 1} asked, the file has {len(mapping)} "
            "(written by another run than the pair list?)"
        )
    return np.asarray(mapping[first_row : first_row + num_matches], dtype=np.int64)
