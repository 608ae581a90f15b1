"""KITTI file formats: round trips, the values KITTI's own files hold, and errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pri3d.io.kitti import (
    KITTI_ODOMETRY_DRIVES,
    DriveSequence,
    KittiPair,
    camera0_to_camera2,
    kitti_pair_line,
    read_calib,
    read_drive_table,
    read_kitti_depth,
    read_kitti_pairs,
    read_pair_mapping,
    read_poses,
    write_calib,
    write_drive_table,
    write_poses,
)

# The first lines of KITTI odometry sequence 00's calib.txt.
P2_LINE = (
    "P2: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 4.538225000000e+01 0.000000000000e+00 "
    "7.188560000000e+02 1.852157000000e+02 -1.130887000000e-01 0.000000000000e+00 0.000000000000e+00 "
    "1.000000000000e+00 3.779761000000e-03"
)


def _calib_text(p2_line: str = P2_LINE) -> str:
    zero = " ".join(["0"] * 12)
    return f"P0: {zero}\nP1: {zero}\n{p2_line}\nP3: {zero}\nTr: {zero}\n"


def test_calib_of_kitti_sequence_00(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(_calib_text())
    calib = read_calib(path)
    assert sorted(calib) == ["P0", "P1", "P2", "P3", "Tr"]
    assert calib["P2"].shape == (3, 4)
    assert calib["P2"][0, 0] == 718.856 and calib["P2"][1, 2] == 185.2157
    # camera 2 sits 6 cm to the left of camera 0: t = K2^-1 P2[:, 3] (KITTI's stereo rig)
    t = camera0_to_camera2(calib["P2"])[:3, 3]
    tz = 3.779761e-03
    np.testing.assert_allclose(
        t, [(45.38225 - 607.1928 * tz) / 718.856, (-0.1130887 - 185.2157 * tz) / 718.856, tz]
    )
    assert 0.059 < t[0] < 0.06


def test_calib_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    calib = {key: rng.normal(size=(3, 4)) for key in ("P0", "P1", "P2", "P3", "Tr")}
    write_calib(tmp_path / "calib.txt", calib)
    back = read_calib(tmp_path / "calib.txt")
    for key, matrix in calib.items():
        np.testing.assert_allclose(back[key], matrix, rtol=1e-12)  # written with 13 significant digits


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_calib_text(P2_LINE.rsplit(" ", 1)[0]), r"calib.txt:3: expected '<key>: <12 numbers>'.*11 numbers"),
        (_calib_text("P2 1 2 3"), r"calib.txt:3: expected '<key>: <12 numbers>'"),
        (_calib_text("P2: 1 2 3 4 5 6 7 8 9 10 11 x"), r"calib.txt:3:"),
        ("P0: " + " ".join(["0"] * 12) + "\n", r"calib.txt: no P1, P2, P3, Tr line"),
    ],
)
def test_bad_calib_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "calib.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_calib(path)


def test_missing_calib_and_poses_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"calib.txt: calibration file not found"):
        read_calib(tmp_path / "calib.txt")
    with pytest.raises(FileNotFoundError, match=r"08.txt: poses file not found"):
        read_poses(tmp_path / "08.txt")


def test_poses_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    poses = np.tile(np.eye(4), (5, 1, 1))
    poses[:, :3, :] = rng.normal(size=(5, 3, 4))
    write_poses(tmp_path / "00.txt", poses)
    back = read_poses(tmp_path / "00.txt")
    assert back.shape == (5, 4, 4)
    np.testing.assert_allclose(back, poses, rtol=1e-12)
    np.testing.assert_array_equal(back[:, 3], np.tile([0, 0, 0, 1.0], (5, 1)))

    lines = (tmp_path / "00.txt").read_text().splitlines()
    lines[2] = " ".join(lines[2].split()[:11])
    (tmp_path / "bad.txt").write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"bad.txt:3: expected 12 finite numbers"):
        read_poses(tmp_path / "bad.txt")
    lines[2] = "nan " * 12
    (tmp_path / "bad.txt").write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"bad.txt:3: expected 12 finite numbers"):
        read_poses(tmp_path / "bad.txt")


def test_annotated_depth_is_metres_times_256(tmp_path):
    stored = np.array([[0, 256, 1], [65535, 5120, 0]], dtype=np.uint16)
    Image.fromarray(stored).save(tmp_path / "0000000005.png")
    depth = read_kitti_depth(tmp_path / "0000000005.png")
    assert depth.dtype == np.float32
    np.testing.assert_array_equal(depth, stored.astype(np.float32) / 256)  # exact: /256 is a power of 2
    assert depth[0, 0] == 0 and depth[0, 1] == 1.0 and depth[1, 1] == 20.0


@pytest.mark.parametrize(
    "image",
    [np.full((3, 4), 7, dtype=np.uint8), np.zeros((3, 4, 3), dtype=np.uint8)],
    ids=["8-bit grey", "rgb"],
)
def test_depth_that_is_not_16_bit_is_refused(tmp_path, image):
    Image.fromarray(image).save(tmp_path / "0000000001.png")
    with pytest.raises(ValueError, match=r"0000000001.png: expected a 16-bit single-channel PNG"):
        read_kitti_depth(tmp_path / "0000000001.png")


def test_drive_table_default_is_kittis(tmp_path):
    table = read_drive_table(tmp_path)
    assert table == KITTI_ODOMETRY_DRIVES
    by_sequence = {entry.sequence: entry for entry in table}
    assert by_sequence["08"] == DriveSequence("08", "2011_09_30_drive_0028", 1100, 5170)
    assert by_sequence["00"].drive == "2011_10_03_drive_0027" and len(table) == 11


def test_drive_table_from_data(tmp_path):
    table = [DriveSequence("00", "2011_10_03_drive_0027", 7, 30), DriveSequence("08", "x_drive", 0, 4)]
    write_drive_table(tmp_path, table)
    assert read_drive_table(tmp_path) == tuple(table)
    # KITTI's readme writes the table as "08: 2011_09_30_drive_0028 001100 005170"
    (tmp_path / "odometry_drives.txt").write_text("08: 2011_09_30_drive_0028 001100 005170\n")
    assert read_drive_table(tmp_path) == (DriveSequence("08", "2011_09_30_drive_0028", 1100, 5170),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("00: a 1\n", r"odometry_drives.txt:1: expected '<seq>: <drive> <start> <end>'"),
        ("00: a 5 1\n", r"odometry_drives.txt:1: .*start must be <= end"),
        ("00: a 0 1\n01: a 0 3\n", r"drive a listed more than once"),
        ("\n", r"no drives listed"),
    ],
)
def test_bad_drive_table(tmp_path, text, message):
    (tmp_path / "odometry_drives.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_drive_table(tmp_path)


def test_pair_list_round_trip_and_errors(tmp_path):
    pairs = [
        KittiPair("2011_09_30_drive_0028", "train", 1100, 1150, 0.25, 0, 12),
        KittiPair("2011_09_30_drive_0028", "train", 1101, 1102, 0.5, 12, 3),
    ]
    path = tmp_path / "pairs.txt"
    path.write_text("".join(kitti_pair_line(pair) for pair in pairs) + "\n")
    assert read_kitti_pairs(path) == pairs
    path.write_text(kitti_pair_line(pairs[0]).replace("train", "test"))
    with pytest.raises(ValueError, match=r"pairs.txt:1: expected '<drive> <train\|val> <frame_i>"):
        read_kitti_pairs(path)
    path.write_text("a train 1 2 0.5 0\n")
    with pytest.raises(ValueError, match=r"pairs.txt:1: .*\(6 fields\)"):
        read_kitti_pairs(path)
    with pytest.raises(FileNotFoundError, match=r"run `pri3d preprocess kitti` first"):
        read_kitti_pairs(tmp_path / "none.txt")


def test_mapping_rows(tmp_path):
    mapping = np.arange(40, dtype=np.int16).reshape(10, 4)
    np.save(tmp_path / "mapping.npy", mapping)
    rows = read_pair_mapping(tmp_path / "mapping.npy", 3, 4)
    assert rows.dtype == np.int64
    np.testing.assert_array_equal(rows, mapping[3:7])
    with pytest.raises(ValueError, match=r"mapping.npy: rows 8..11 asked, the file has 10"):
        read_pair_mapping(tmp_path / "mapping.npy", 8, 4)
