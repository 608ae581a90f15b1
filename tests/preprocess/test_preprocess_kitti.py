"""`pri3d preprocess kitti` on a tiny analytic street (tests/kitti_street.py): pair ratios and pixel
mappings against an independent computation, the raw-drive / odometry frame offset, resume, a broken
drive, the lock and the command line; the bound that skips pairs never drops a point that can land in
frame j's image, and the pairs it skips are not kept by the exact computation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import kitti_street
import numpy as np
import pytest
import torch
from kitti_street import DRIVES, K2, camera2_to_world, depth_along, write_street

import pri3d.cli
from pri3d.geometry import invert_rigid, pixel_correspondences
from pri3d.io.kitti import MAPPING_NAME, calib_path, depth_path, read_kitti_depth, read_kitti_pairs
from pri3d.preprocess.kitti import DRIVE_REPORT_NAME, KittiOptions, preprocess_kitti
from pri3d.preprocess.kitti_overlap import match_points, overlap_ratio, point_blocks, reachable_blocks
from pri3d.preprocess.output_folder import OutputFolderError, output_lock


@pytest.fixture(scope="module")
def street(tmp_path_factory) -> Path:
    root = write_street(tmp_path_factory.mktemp("kitti") / "kitti")
    preprocess_kitti(root, progress=False)
    return root


def _copy(street: Path, tmp_path: Path) -> Path:
    shutil.copytree(street, tmp_path / "kitti")
    return tmp_path / "kitti"


def _true_pose(start: int, raw_frame: int) -> np.ndarray:
    return camera2_to_world(raw_frame)


def _expected_pairs(
    root: Path, pose_of=_true_pose, threshold=0.5, min_ratio=0.05, max_gap=100, drives=DRIVES
):
    """Every kept pair of the street by pri3d.geometry.pixel_correspondences (dense torch float64) and
    the street's camera 2 poses ``pose_of(start, raw_frame)``: {(drive, i, j): (ratio, mapping [M, 4])}."""
    expected = {}
    k = torch.from_numpy(K2)
    for _, drive, split, start, length in drives:
        frames = range(start, start + length)  # the frames with an odometry pose
        depth = {
            r: torch.from_numpy(read_kitti_depth(depth_path(root, split, drive, r))).double() for r in frames
        }
        for i in frames:
            for j in frames:
                if not 0 < j - i <= max_gap:
                    continue
                w2c_i = invert_rigid(torch.from_numpy(pose_of(start, i)))
                w2c_j = invert_rigid(torch.from_numpy(pose_of(start, j)))
                pos_i, pos_j = pixel_correspondences(depth[i], k, w2c_i, depth[j], k, w2c_j, threshold)
                matches = len(pos_i)
                ratio = matches / (int((depth[i] > 0).sum()) + int((depth[j] > 0).sum()) - matches)
                if ratio > min_ratio:
                    expected[(drive, i, j)] = (ratio, torch.cat((pos_i, pos_j), 1).numpy())
    return expected


def _stored_pairs(out: Path):
    stored = {}
    for pair in read_kitti_pairs(out / "pairs.txt"):
        mapping = np.load(out / pair.drive / MAPPING_NAME)
        rows = mapping[pair.first_row : pair.first_row + pair.num_matches]
        stored[(pair.drive, pair.frame_i, pair.frame_j)] = (pair.ratio, rows.astype(np.int64))
    return stored


def test_ratios_and_mappings_equal_an_independent_computation(street):
    stored = _stored_pairs(street / "preprocessed")
    expected = _expected_pairs(street)
    assert sorted(stored) == sorted(expected)
    assert len(stored) > 10
    for key, (ratio, mapping) in expected.items():
        assert stored[key][0] == pytest.approx(ratio, abs=5e-7)  # the list holds 6 decimals
        np.testing.assert_array_equal(stored[key][1], mapping)


def test_a_match_maps_a_pixel_to_the_pixel_of_the_same_point(street):
    """Frame i's pixel at its stored depth lands on frame j's matched pixel (nearest pixel centre), and
    it is the surface frame j sees there: the street's exact depth along that position agrees."""
    out = street / "preprocessed"
    pairs = read_kitti_pairs(out / "pairs.txt")
    checked = 0
    for pair in pairs:
        split = next(s for _, d, s, *_ in DRIVES if d == pair.drive)
        mapping = np.load(out / pair.drive / MAPPING_NAME)[pair.first_row : pair.first_row + pair.num_matches]
        depth_i = read_kitti_depth(depth_path(street, split, pair.drive, pair.frame_i)).astype(np.float64)
        z = depth_i[mapping[:, 0], mapping[:, 1]]
        rays = np.stack(
            ((mapping[:, 1] - K2[0, 2]) / K2[0, 0], (mapping[:, 0] - K2[1, 2]) / K2[1, 1], np.ones(len(z)))
        )
        world = camera2_to_world(pair.frame_i) @ np.vstack((rays * z, np.ones(len(z))))
        camera_j = (np.linalg.inv(camera2_to_world(pair.frame_j)) @ world)[:3]
        position = np.stack(
            (
                K2[1, 1] * camera_j[1] / camera_j[2] + K2[1, 2],
                K2[0, 0] * camera_j[0] / camera_j[2] + K2[0, 2],
            ),
            -1,
        )
        np.testing.assert_array_equal(np.floor(position + 0.5).astype(np.int64), mapping[:, 2:])
        # Frame i's depth is rounded to 1/256 m, so the point is off the surface by at most 1/512 m along
        # ray i; rays i and j to one point differ by a few degrees here, so along ray j the point stays
        # within one rounding step (1/256 m), where a point of another surface would be metres away.
        surface = depth_along(pair.frame_j, position)
        assert np.abs(surface - camera_j[2]).max() <= 1 / 256
        checked += len(mapping)
    assert checked > 500


def test_raw_to_odometry_offset_is_honoured(street):
    report = json.loads((street / "preprocessed" / "preprocess_report.json").read_text())
    for _, drive, _, start, length in DRIVES:
        entry = report["per_drive"][drive]
        # one annotated frame before the sequence starts and one after it ends have no pose
        assert entry["frames_without_pose"] == [str(start - 1), str(start + length)]
        assert entry["frames_with_pose"] == length and entry["settings"]["start"] == start
    frames = {f for pair in read_kitti_pairs(street / "preprocessed" / "pairs.txt") for f in pair[2:4]}
    assert min(frames) == min(start for *_, start, _ in DRIVES)
    # The original read pose row r for raw frame r (the sequence's row r - start): that camera is
    # elsewhere on the street, and the pairs it finds are not these.
    confused = _expected_pairs(street, pose_of=lambda start, r: camera2_to_world(r + start))
    stored = _stored_pairs(street / "preprocessed")
    same = [key for key in set(confused) & set(stored) if np.array_equal(confused[key][1], stored[key][1])]
    assert sorted(confused) != sorted(stored) and not same


def test_mapping_file_is_a_numpy_array(street):
    report = json.loads((street / "preprocessed" / "preprocess_report.json").read_text())
    for _, drive, *_ in DRIVES:
        mapping = np.load(street / "preprocessed" / drive / MAPPING_NAME)
        assert mapping.dtype == np.int16 and mapping.shape == (report["per_drive"][drive]["matches"], 4)


def test_max_gap_and_min_ratio(street, tmp_path):
    report = preprocess_kitti(
        street, tmp_path / "out", KittiOptions(max_gap=2, min_ratio=0.08), progress=False
    )
    stored = _stored_pairs(tmp_path / "out")
    expected = _expected_pairs(street, min_ratio=0.08, max_gap=2)
    assert sorted(stored) == sorted(expected) and len(stored) > 0
    assert report["pairs"]["tested"] == sum(2 * length - 3 for *_, length in DRIVES)


def test_resume_skips_finished_drives_and_redoes_a_damaged_one(street, tmp_path):
    root = _copy(street, tmp_path)
    out = root / "preprocessed"
    first_drive, second_drive = DRIVES[0][1], DRIVES[1][1]
    before = (out / "pairs.txt").read_text()
    report = preprocess_kitti(root, progress=False)
    assert report["drives"]["skipped_existing"] == 2 and report["drives"]["done"] == 0
    with open(out / first_drive / MAPPING_NAME, "ab") as file:
        file.write(b"\0" * 8)  # a mapping that is not what the report recorded
    report = preprocess_kitti(root, progress=False)
    assert report["per_drive"][first_drive]["status"] == "done"
    assert report["per_drive"][second_drive]["status"] == "skipped_existing"
    size = report["per_drive"][first_drive]["file_bytes"][MAPPING_NAME]
    reason = f"{MAPPING_NAME} has {size + 8} bytes, its report says {size}"
    assert report["redone"] == [{"drive": first_drive, "reason": reason}]
    assert (out / "pairs.txt").read_text() == before
    (out / first_drive / DRIVE_REPORT_NAME).write_text("{")
    assert preprocess_kitti(root, progress=False)["redone"][0]["reason"].startswith(
        f"its {DRIVE_REPORT_NAME} is unreadable"
    )
    with pytest.raises(ValueError, match=r"was made with max_gap=100, this run asks max_gap=5"):
        preprocess_kitti(root, options=KittiOptions(max_gap=5), progress=False)


def test_broken_drive_is_reported_and_skipped(street, tmp_path):
    root = _copy(street, tmp_path)
    sequence, drive, split, start, _ = DRIVES[0]
    calib_path(root, sequence).unlink()
    report = preprocess_kitti(root, tmp_path / "a", progress=False)
    assert report["drives"] == {"found": 2, "done": 1, "skipped_existing": 0, "failed": 1, "without_depth": 0}
    assert report["failures"][0]["drive"] == drive
    assert f"{sequence}/calib.txt: calibration file not found" in report["failures"][0]["reason"]
    assert all(pair.drive != drive for pair in read_kitti_pairs(tmp_path / "a" / "pairs.txt"))
    assert not (tmp_path / "a" / drive).exists() and not (tmp_path / "a" / f"{drive}.tmp").exists()

    shutil.copy(street / calib_path(street, sequence).relative_to(street), calib_path(root, sequence))
    depth_path(root, split, drive, start + 1).write_bytes(b"not a png")
    report = preprocess_kitti(root, tmp_path / "b", progress=False)
    assert report["failures"][0]["drive"] == drive
    assert f"{start + 1:010d}.png" in report["failures"][0]["reason"]


def test_second_run_on_one_folder_is_refused(street, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out), pytest.raises(OutputFolderError, match="in use by another pri3d preprocess run"):
        preprocess_kitti(street, out, progress=False)


def test_unknown_drive_and_missing_root(street, tmp_path):
    with pytest.raises(ValueError, match=r"--drives nope: not odometry drives of this data"):
        preprocess_kitti(street, tmp_path / "out", drives=["nope"], progress=False)
    with pytest.raises(FileNotFoundError, match=r"no odometry/ or depth/ folder"):
        preprocess_kitti(tmp_path, progress=False)


def test_command_line_with_worker_processes(street, tmp_path, capsys):
    root = _copy(street, tmp_path)
    shutil.rmtree(root / "preprocessed")
    drive = DRIVES[1][1]
    code = pri3d.cli.main(
        ["preprocess", "kitti", "--root", str(root), "--workers", "2", "--drives", f"{DRIVES[0][1]},{drive}"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "drives: 2 done, 0 already done, 0 failed" in printed and "pairs:" in printed
    made, reference = _stored_pairs(root / "preprocessed"), _stored_pairs(street / "preprocessed")
    assert sorted(made) == sorted(reference)
    for key, (ratio, mapping) in reference.items():
        assert made[key][0] == ratio
        np.testing.assert_array_equal(made[key][1], mapping)
    calib_path(root, DRIVES[1][0]).unlink()
    shutil.rmtree(root / "preprocessed" / drive)
    assert pri3d.cli.main(["preprocess", "kitti", "--root", str(root), "--quiet"]) == 1
    assert "1 drive(s) failed" in capsys.readouterr().err


# --- the bound that skips pairs -------------------------------------------------------------------


def _lands_in_image(points: np.ndarray, projection: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool [N]: in front of camera j with its nearest pixel in the image, in float64 without casts."""
    projected = projection @ points
    with np.errstate(divide="ignore", invalid="ignore"):
        col, row = np.floor(projected[:2] / projected[2] + 0.5)
    return (projected[2] > 0) & (col >= 0) & (col < shape[1]) & (row >= 0) & (row < shape[0])


def _reached_points(blocks, projection: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool [N]: the points of the blocks the bound keeps for this partner."""
    return np.repeat(reachable_blocks(blocks, projection[None], shape)[0], blocks.counts)


def test_bound_keeps_every_point_that_lands_in_the_image():
    """Random scenes and camera motions (forward, backward, sideways, turned): every point whose nearest
    pixel is in frame j's image, in front of it, is in a block the bound keeps; match_points finds
    exactly these points when frame j's depth is valid everywhere and the threshold is infinite."""
    rng = np.random.default_rng(7)
    shape, k = (40, 90), np.array([[45.0, 0.3, 44.7], [0.0, 47.0, 19.2], [0.0, 0.0, 1.0]])
    anywhere = np.ones(shape, dtype=np.float32)
    partly, all_kept = 0, 0
    for _ in range(60):
        depth = np.exp(rng.uniform(np.log(0.3), np.log(200.0), shape)) * (rng.random(shape) < 0.3)
        blocks = point_blocks(depth.astype(np.float32), k)
        for size in (0.01, 0.1, 1.0, 1.0, 1.0):  # small motions keep every block, large ones drop some
            axis = rng.normal(size=3)
            rotation = torch.linalg.matrix_exp(
                torch.tensor(np.cross(np.eye(3), axis / np.linalg.norm(axis) * rng.uniform(0, 0.8 * size)))
            ).numpy()
            projection = k @ np.concatenate((rotation, rng.normal(0, 15 * size, (3, 1))), axis=1)
            lands = _lands_in_image(blocks.points, projection, shape)
            reached = _reached_points(blocks, projection, shape)
            assert not (lands & ~reached).any()
            np.testing.assert_array_equal(match_points(blocks.points, projection, anywhere, np.inf)[0], lands)
            partly += reached.sum() < len(reached)
            all_kept += reached.all()
    assert partly > 50 and all_kept > 10  # both the pruning and the keeping are exercised


@pytest.mark.parametrize(
    ("where", "reached"),
    [
        ("inside the left edge by 1e-6 px", True),
        ("outside the left edge by 0.01 px", False),
        ("inside the bottom edge by 1e-6 px", True),
        ("outside the bottom edge by 0.01 px", False),
        ("1 mm in front of camera j", True),
        ("1 mm behind camera j", False),
    ],
)
def test_bound_at_the_image_edges_and_the_camera_plane(where, reached):
    """One point, one block; camera j is camera i moved so that the point lands just inside or just
    outside frame j's image (nearest pixel col 0 starts at u = -0.5, the last row ends at v = H - 0.5)."""
    height, width, k = 24, 80, K2  # K2's principal point (39.3, 11.6)
    depth = np.zeros((height, width), dtype=np.float32)
    depth[12, 50] = 8.0
    blocks = point_blocks(depth, k)
    x, y, z = blocks.points[:3, 0]
    shift = np.zeros(3)  # camera j = camera i translated by `shift`
    if "left" in where:
        u = -0.5 + (1e-6 if reached else -0.01)
        shift[0] = x - (u - k[0, 2]) * z / k[0, 0]
    elif "bottom" in where:
        v = height - 0.5 + (-1e-6 if reached else 0.01)
        shift[1] = y - (v - k[1, 2]) * z / k[1, 1]
    else:  # the point at depth +-1 mm, on the ray of pixel (12, 40)
        z_j = 1e-3 if reached else -1e-3
        shift = np.array([x, y, z]) - z_j * np.array([(40 - k[0, 2]) / k[0, 0], (12 - k[1, 2]) / k[1, 1], 1])
    projection = k @ np.concatenate((np.eye(3), -shift[:, None]), axis=1)
    assert _lands_in_image(blocks.points, projection, (height, width))[0] == reached
    assert _reached_points(blocks, projection, (height, width))[0] == reached


def test_a_frame_without_valid_depth_has_no_blocks_and_no_matches():
    blocks = point_blocks(np.zeros((24, 80), dtype=np.float32), K2)
    assert blocks.points.shape == (4, 0) and len(blocks.counts) == 0
    projection = K2 @ np.eye(3, 4)
    assert reachable_blocks(blocks, projection[None], (24, 80)).shape == (1, 0)
    assert match_points(blocks.points, projection, np.ones((24, 80), np.float32), 0.5)[0].shape == (0,)


def test_pairs_the_bound_skips_are_not_kept(tmp_path, monkeypatch):
    """A longer drive of the street (30 frames, up to 60 m apart): the bound rejects some pairs and must
    keep the others, and the stored pairs equal the independent computation over every pair."""
    long_drive = (("00", "2011_10_03_drive_0027", "train", 3, 30),)
    monkeypatch.setattr(kitti_street, "DRIVES", long_drive)
    root = write_street(tmp_path / "kitti")
    preprocess_kitti(root, progress=False)
    stored, expected = _stored_pairs(root / "preprocessed"), _expected_pairs(root, drives=long_drive)
    assert sorted(stored) == sorted(expected)
    for key, (ratio, mapping) in expected.items():
        assert stored[key][0] == pytest.approx(ratio, abs=5e-7)
        np.testing.assert_array_equal(stored[key][1], mapping)

    _, drive, split, start, length = long_drive[0]
    depth = {r: read_kitti_depth(depth_path(root, split, drive, r)) for r in range(start, start + length)}
    valid = {r: int((d > 0).sum()) for r, d in depth.items()}
    rejected = []
    for i in depth:
        blocks = point_blocks(depth[i], K2)
        for j in range(i + 1, start + length):
            projection = K2 @ (np.linalg.inv(camera2_to_world(j)) @ camera2_to_world(i))[:3]
            bound = _reached_points(blocks, projection, depth[i].shape).sum()
            matches = match_points(blocks.points, projection, depth[j], 0.5)[0].sum()
            assert bound >= matches
            if overlap_ratio(bound, valid[i], valid[j]) <= 0.05:
                rejected.append((drive, i, j))
    assert len(rejected) > 20 and len(expected) > 20 and not set(rejected) & set(expected)
