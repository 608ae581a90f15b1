"""`pri3d synth kitti`: KITTI's layouts, calibration/pose consistency through the files, sparse depth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pri3d.cli import main
from pri3d.data.semseg import CITYSCAPES19_LABEL_IDS, KITTISemseg, SemsegOptions
from pri3d.io.images import read_depth_png, read_label_png, read_rgb, write_depth_png
from pri3d.io.kitti import (
    calib_path,
    camera0_to_camera2,
    depth_path,
    drive_depth_folder,
    image_path,
    poses_path,
    read_calib,
    read_drive_table,
    read_kitti_depth,
    read_poses,
)
from pri3d.synth.kitti import KittiSynthConfig, build_drive, encode_depth, generate_kitti, kitti_calibration
from pri3d.synth.outdoor import BUILDING, CAR, ROAD, SKY, render, render_rays

CONFIG = KittiSynthConfig(drives=2, frames=14, size=(94, 310), semantic_frames=45)
# depth PNGs hold round(metres * 256): a stored value is within half a step of the true depth
QUANTUM = 1.0 / 512.0


@pytest.fixture(scope="module")
def kitti(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kitti")
    generate_kitti(out, CONFIG, workers=1, progress=False)
    return out


def dense_depth(config: KittiSynthConfig, index: int, raw_frame: int):
    """The generator's exact view (depth, labels) of camera 2 at a raw frame of drive `index`."""
    drive = build_drive(config, index)
    k = kitti_calibration(config.drive_table[index].sequence, config.size)["P2"][:, :3]
    return render(drive.scene, k, drive.camera2_to_street(raw_frame), *config.size, shade=False)


def test_layout_is_kittis(kitti: Path):
    table = read_drive_table(kitti)
    assert [(e.sequence, e.drive) for e in table] == [
        ("00", "2011_10_03_drive_0027"),
        ("01", "2011_10_03_drive_0042"),
    ]
    for index, entry in enumerate(table):
        assert entry.start > CONFIG.depth_margin  # every sequence starts inside its raw drive
        assert entry.end - entry.start + 1 == CONFIG.frames
        split = CONFIG.split_of(index)
        images = sorted(p.name for p in image_path(kitti, entry.sequence, 0).parent.iterdir())
        assert images == [f"{i:06d}.png" for i in range(CONFIG.frames)]
        assert read_rgb(image_path(kitti, entry.sequence, 3)).shape == (*CONFIG.size, 3)
        assert len(read_poses(poses_path(kitti, entry.sequence))) == CONFIG.frames
        times = (calib_path(kitti, entry.sequence).parent / "times.txt").read_text().split()
        assert len(times) == CONFIG.frames
        # depth files are named by raw frame, the first and last 5 raw frames have none
        depth_files = sorted(p.name for p in drive_depth_folder(kitti, split, entry.drive).iterdir())
        raw = range(CONFIG.depth_margin, entry.end + 1 - CONFIG.depth_margin)
        assert depth_files == [f"{r:010d}.png" for r in raw]
        assert read_depth_png(depth_path(kitti, split, entry.drive, raw[0])).dtype == np.uint16
    assert {CONFIG.split_of(0), CONFIG.split_of(1)} == {"train", "val"}
    for folder in ("image_2", "semantic"):
        names = sorted(p.name for p in (kitti / "data_semantics/training" / folder).iterdir())
        assert names == [f"{i:06d}_10.png" for i in range(45)]
    settings = json.loads((kitti / "synth_settings.json").read_text())
    assert [d["start"] for d in settings["drive_table"]] == [e.start for e in table]
    assert not (kitti / ".partial").exists()


def test_calibration_matches_kittis_conventions(kitti: Path):
    calib = read_calib(calib_path(kitti, "00"))
    k = calib["P0"][:, :3]
    for key in ("P1", "P2", "P3"):
        np.testing.assert_allclose(calib[key][:, :3], k, rtol=1e-12)
    # camera 2 is ~6 cm left of camera 0: P2[0, 3] = fx * t_x with t_x ~ +0.06 m
    t2 = camera0_to_camera2(calib["P2"])[:3, 3]
    assert 0.05 < t2[0] < 0.07 and calib["P2"][0, 3] > 0
    assert camera0_to_camera2(calib["P1"])[0, 3] == pytest.approx(-0.5372)
    rotation = calib["Tr"][:, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
    poses = read_poses(poses_path(kitti, "00"))
    np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-12)  # world = camera 0 at sequence frame 0
    # the car drives forward along camera 0's z at about 1 m per frame
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert ((steps > 0.8) & (steps < 1.2)).all()
    assert poses[-1, 2, 3] > 0.8 * (CONFIG.frames - 1)


def _warp(depth: np.ndarray, k: np.ndarray, camera2_i_to_camera2_j: np.ndarray):
    """Pixels (rows, cols) of valid depth and their camera-2 points [M, 3] in frame j."""
    rows, cols = np.nonzero(depth > 0)
    z = depth[rows, cols]
    points = np.stack([(cols - k[0, 2]) / k[0, 0] * z, (rows - k[1, 2]) / k[1, 1] * z, z], 1)
    return rows, cols, points @ camera2_i_to_camera2_j[:3, :3].T + camera2_i_to_camera2_j[:3, 3]


@pytest.mark.parametrize("index", [0, 1])
def test_depth_warped_through_the_files_lands_on_the_next_frames_surfaces(kitti: Path, index: int):
    entry = CONFIG.drive_table[index]
    split = CONFIG.split_of(index)
    calib = read_calib(calib_path(kitti, entry.sequence))
    k = calib["P2"][:, :3]
    cam0_to_cam2 = camera0_to_camera2(calib["P2"])
    poses = read_poses(poses_path(kitti, entry.sequence))  # row = SEQUENCE frame
    raw_i, raw_j = entry.start + 1, entry.start + 3
    # the stored depth at its pixels, replaced by the generator's exact depth there, so that the check
    # tests the calibration and poses to float precision rather than the PNG's quantisation
    stored = read_kitti_depth(depth_path(kitti, split, entry.drive, raw_i))
    exact = dense_depth(CONFIG, index, raw_i).depth
    depth = np.where(stored > 0, exact, 0.0)

    def chain(pose_i, pose_j):
        # camera 2 (i) -> camera 0 (i) -> world -> camera 0 (j) -> camera 2 (j)
        return cam0_to_cam2 @ np.linalg.inv(pose_j) @ pose_i @ np.linalg.inv(cam0_to_cam2)

    _, _, points = _warp(depth, k, chain(poses[raw_i - entry.start], poses[raw_j - entry.start]))
    ahead = points[:, 2] > 0.5
    rays = points[ahead] / points[ahead, 2:3]
    inside = (np.abs(rays[:, 0] * k[0, 0] + k[0, 2] - (CONFIG.size[1] - 1) / 2) < CONFIG.size[1] / 2) & (
        np.abs(rays[:, 1] * k[1, 1] + k[1, 2] - (CONFIG.size[0] - 1) / 2) < CONFIG.size[0] / 2
    )
    drive = build_drive(CONFIG, index)
    seen = render_rays(drive.scene, drive.camera2_to_street(raw_j), rays[inside][None], shade=False).depth[0]
    z = points[ahead][inside, 2]
    assert len(z) > 100
    # every warped point is a surface point: frame j's ray through it hits it, or something nearer
    # (occlusion); float64 geometry and 13-digit file values agree to ~1e-9 of the distance
    assert (seen > 0).all()
    assert (seen <= z * (1 + 1e-7)).all()
    visible = np.abs(seen - z) <= 1e-7 * z
    assert visible.mean() > 0.8
    # raw frame numbers used as pose rows (the original's confusion) read other frames' poses, or run
    # past the end of the poses file
    if raw_j < len(poses):
        _, _, wrong = _warp(depth, k, chain(poses[raw_i], poses[raw_j]))
        wrong = wrong[wrong[:, 2] > 0.5]
        found = render_rays(
            drive.scene, drive.camera2_to_street(raw_j), (wrong / wrong[:, 2:3])[None], shade=False
        )
        assert (np.abs(found.depth[0] - wrong[:, 2]) <= 1e-7 * wrong[:, 2]).mean() < 0.05
    else:
        with pytest.raises(IndexError):
            chain(poses[raw_i], poses[raw_j])


def test_depth_png_encoding_round_trips(tmp_path: Path):
    depth = np.array([[0.0, 1.0, 2.5 + 1 / 256], [79.99, 0.001, 255.0]])
    encoded = encode_depth(depth)
    assert encoded.dtype == np.uint16 and encoded[0, 0] == 0 and encoded[0, 1] == 256
    write_depth_png(tmp_path / "d.png", encoded)
    decoded = read_kitti_depth(tmp_path / "d.png")
    np.testing.assert_array_equal(decoded * 256, encoded)
    np.testing.assert_allclose(decoded, depth, atol=QUANTUM + 1e-6)


@pytest.mark.parametrize("index", [0, 1])
def test_depth_is_sparse_lidar_within_range_and_never_on_sky(kitti: Path, index: int):
    entry = CONFIG.drive_table[index]
    split = CONFIG.split_of(index)
    for raw in (CONFIG.depth_margin, entry.start + 2, entry.end - CONFIG.depth_margin):
        stored = read_kitti_depth(depth_path(kitti, split, entry.drive, raw))
        view = dense_depth(CONFIG, index, raw)
        valid = stored > 0
        assert 0.02 < valid.mean() < 0.12, valid.mean()  # docs/data.md states 2-12 %
        assert stored.max() <= CONFIG.lidar_range_m + QUANTUM
        assert not (valid & (view.label == SKY)).any()
        np.testing.assert_allclose(stored[valid], view.depth[valid], atol=QUANTUM + 1e-6)
        # scan lines one pixel thick: a point rarely has another directly below it
        assert (valid[1:] & valid[:-1]).sum() < 0.25 * valid.sum()
        assert not valid[: int(0.2 * CONFIG.size[0])].any()  # nothing above the top beam (+2 degrees)


def test_semantics_load_through_kittisemseg(kitti: Path):
    root = kitti / "data_semantics/training"
    val = KITTISemseg(root, "val", SemsegOptions())
    train = KITTISemseg(root, "train", SemsegOptions(size=(64, 128)))
    assert (len(val), len(train)) == (40, 5)
    ids = np.unique(np.concatenate([read_label_png(p).ravel() for p in (root / "semantic").iterdir()]))
    assert {ROAD, BUILDING, CAR, SKY} <= set(ids.tolist())
    assert set(ids.tolist()) <= set(CITYSCAPES19_LABEL_IDS)  # every pixel has a training class
    sample = val[0]
    assert sample["label"].shape == CONFIG.size
    train_ids = {CITYSCAPES19_LABEL_IDS.index(i) + 1 for i in (ROAD, BUILDING, CAR)}
    assert train_ids <= set(
        np.unique(np.concatenate([val[i]["label"].numpy().ravel() for i in range(5)])).tolist()
    )
    assert train[0]["image"].shape == (3, 64, 128)


def test_generation_is_deterministic_and_resumes(tmp_path: Path):
    config = KittiSynthConfig(drives=1, frames=12, size=(24, 80), semantic_frames=2, seed=3)
    first, second = tmp_path / "a", tmp_path / "b"
    generate_kitti(first, config, progress=False)
    generate_kitti(second, config, workers=2, progress=False)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) > 20
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # a finished drive is skipped; a drive whose poses file (written last) is missing is redone
    assert generate_kitti(first, config, progress=False)["drives"][0]["generated"] is False
    poses_path(first, "00").unlink()
    summary = generate_kitti(first, config, progress=False)
    assert summary["drives"][0]["generated"] is True
    assert poses_path(first, "00").read_bytes() == poses_path(second, "00").read_bytes()
    # more drives: the first is kept where it is, the second goes to val
    more = KittiSynthConfig(drives=2, frames=12, size=(24, 80), semantic_frames=2, seed=3)
    summary = generate_kitti(first, more, progress=False)
    assert [(d["generated"], d["split"]) for d in summary["drives"]] == [(False, "train"), (True, "val")]
    assert not (first / "depth/data_depth_annotated/val/2011_10_03_drive_0027_sync").exists()
    with pytest.raises(ValueError, match="frames=12"):
        generate_kitti(first, KittiSynthConfig(drives=1, frames=13, size=(24, 80), seed=3), progress=False)


def test_cli_writes_kitti_and_reports_bad_options(tmp_path: Path, capsys):
    out = tmp_path / "kitti"
    args = ["synth", "kitti", "--out", str(out), "--drives", "1", "--frames", "12", "--size", "24x80"]
    assert main([*args, "--semantic-frames", "0", "--workers", "1", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["drives"][0]["drive"] == "2011_10_03_drive_0027" and summary["drives"][0]["start"] == 10
    assert poses_path(out, "00").is_file()
    assert main(["synth", "kitti", "--out", str(tmp_path / "x"), "--raw-start", "3"]) == 1
    assert "raw_start=3" in capsys.readouterr().err
