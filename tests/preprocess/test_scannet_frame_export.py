"""Frame export from .sens: files written, skipped frames, world points and chunk boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pri3d.geometry import backproject_depth, depth_to_world
from pri3d.io.chunk_boxes import read_chunk_boxes, write_chunk_boxes
from pri3d.io.images import read_depth_png
from pri3d.io.scannet import read_matrix_txt
from pri3d.io.sens import SensFormatError, SensReader, SensWriter
from pri3d.preprocess.frames import (
    MAX_CAMERA_DISTANCE,
    chunk_box,
    depth_rays,
    export_frames,
    pose_problem,
    world_points,
)
from pri3d.preprocess.overlap import voxel_downsample

H, W = 12, 16
K_DEPTH = np.array([[14.0, 0, 7.5], [0, 14.0, 5.5], [0, 0, 1]])


def _pose(k: int) -> np.ndarray:
    angle = 0.2 * k
    pose = np.eye(4)
    pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    pose[:3, 3] = [0.1 * k, -0.2, 1.0]
    return pose


def _write_sens(path, num_frames=7, depth_shift=1000.0, invalid=(2,), empty=(4,), poses=None):
    """A small scan; ``poses`` maps frame -> a pose to store instead of the default one."""
    rng = np.random.default_rng(0)
    depths, colors = [], []
    with SensWriter(
        path,
        sensor_name="test",
        intrinsic_color=K_DEPTH,
        intrinsic_depth=K_DEPTH,
        color_width=W,
        color_height=H,
        depth_width=W,
        depth_height=H,
        depth_shift=depth_shift,
    ) as sens:
        for k in range(num_frames):
            depth = rng.integers(500, 3000, size=(H, W)).astype(np.uint16)
            depth[0, :4] = 0  # some invalid pixels
            if k in empty:
                depth[:] = 0
            color = np.full((H, W, 3), 20 * k, np.uint8)
            pose = np.full((4, 4), -np.inf) if k in invalid else (poses or {}).get(k, _pose(k))
            sens.write_frame(pose.astype(np.float32), color, depth)
            depths.append(depth)
            colors.append(color)
    return depths


def test_export_writes_the_selected_frames_as_stored(tmp_path):
    sens_path = tmp_path / "scan.sens"
    depths = _write_sens(sens_path)
    out = tmp_path / "scene"
    result = export_frames(sens_path, out, frame_skip=2, voxel_size=0.05, chunk_margin=0.1)

    # frames 0, 2, 4, 6 are selected; 2 has an invalid pose, 4 no valid depth
    assert result.read == 4
    assert result.frames == [0, 6]
    assert result.skipped == {"invalid_pose": 1, "no_valid_depth": 1}
    assert sorted(p.name for p in (out / "color").iterdir()) == ["0.jpg", "6.jpg"]
    with SensReader(sens_path) as sens:
        stored = {frame.index: frame for frame in sens.frames()}
        header = sens.header
    for frame in (0, 6):
        assert (out / "color" / f"{frame}.jpg").read_bytes() == stored[frame].color_bytes  # no re-encode
        np.testing.assert_array_equal(read_depth_png(out / "depth" / f"{frame}.png"), depths[frame])
        pose = read_matrix_txt(out / "pose" / f"{frame}.txt")
        np.testing.assert_array_equal(pose.astype(np.float32), stored[frame].camera_to_world)
    np.testing.assert_array_equal(
        read_matrix_txt(out / "intrinsic" / "intrinsic_depth.txt"), header.intrinsic_depth
    )
    np.testing.assert_array_equal(
        read_matrix_txt(out / "intrinsic" / "intrinsic_color.txt"), header.intrinsic_color
    )
    assert (out / "intrinsic" / "extrinsic_depth.txt").is_file()

    # clouds and boxes follow geometry.depth_to_world on the stored depth and pose
    for cloud, box, frame in zip(result.clouds, result.boxes, result.frames):
        depth_m = torch.from_numpy(depths[frame].astype(np.float64) / 1000)
        points, valid = depth_to_world(
            depth_m,
            torch.from_numpy(K_DEPTH),
            torch.from_numpy(stored[frame].camera_to_world.astype(np.float64)),
        )
        expected = points[valid].numpy()
        np.testing.assert_allclose(cloud, voxel_downsample(expected), atol=1e-9)
        np.testing.assert_allclose(box[:3], expected.min(axis=0) - 0.1, atol=1e-9)
        np.testing.assert_allclose(box[3:], expected.max(axis=0) + 0.1, atol=1e-9)


def _scaled(pose: np.ndarray, factor: float) -> np.ndarray:
    pose = pose.copy()
    pose[:3, :3] *= factor
    return pose


def _moved(pose: np.ndarray, translation) -> np.ndarray:
    pose = pose.copy()
    pose[:3, 3] = translation
    return pose


@pytest.mark.parametrize(
    "pose, problem",
    [
        (np.full((4, 4), -np.inf), "not finite"),
        (np.zeros((4, 4)), "all zero"),
        (_scaled(_pose(1), 1.5), "not a rigid motion"),  # R Rᵀ = 2.25 I
        (_pose(1) @ np.diag([1.0, 1.0, -1.0, 1.0]), "not a rigid motion"),  # a mirror: det R = -1
        (np.vstack([_pose(1)[:3], [0.0, 0.0, 1.0, 1.0]]), "last row"),
        (_moved(_pose(1), [1e30, 0, 0]), "from the scene origin"),
        (_moved(_pose(1), [0, 0, 1.01 * MAX_CAMERA_DISTANCE]), "from the scene origin"),
    ],
)
def test_pose_problems_are_named(pose, problem):
    assert problem in pose_problem(pose)


def test_usable_poses_have_no_problem():
    assert pose_problem(np.eye(4)) is None
    assert pose_problem(_pose(3).astype(np.float32)) is None  # float32 rounding is no problem
    assert pose_problem(_moved(_pose(3), [0.0, 0.99 * MAX_CAMERA_DISTANCE, 0.0])) is None


def test_degenerate_frames_are_skipped_and_named(tmp_path):
    # One absurd translation used to fail the whole scene in the overlap step without naming the frame.
    sens_path = tmp_path / "scan.sens"
    poses = {1: np.zeros((4, 4)), 3: _scaled(_pose(3), 1.5), 5: _moved(_pose(5), [1e30, 0.0, 0.0])}
    _write_sens(sens_path, num_frames=8, invalid=(2,), empty=(4,), poses=poses)
    result = export_frames(sens_path, tmp_path / "scene", frame_skip=1)
    assert result.frames == [0, 6, 7]
    assert result.skipped == {"invalid_pose": 4, "no_valid_depth": 1}
    assert sorted(result.skipped_frames) == [1, 2, 3, 4, 5]
    assert result.skipped_frames[1] == "invalid_pose: all zero"
    assert result.skipped_frames[2].startswith("invalid_pose: not finite")
    assert result.skipped_frames[3].startswith("invalid_pose: not a rigid motion")
    assert result.skipped_frames[4] == "no_valid_depth: no depth pixel > 0"
    assert result.skipped_frames[5].startswith("invalid_pose: camera 1e+30 m from the scene origin")
    assert sorted(p.name for p in (tmp_path / "scene" / "pose").iterdir()) == ["0.txt", "6.txt", "7.txt"]


def test_depth_is_converted_to_millimetres(tmp_path):
    sens_path = tmp_path / "scan.sens"
    depths = _write_sens(sens_path, num_frames=2, depth_shift=4000.0, invalid=(), empty=())
    export_frames(sens_path, tmp_path / "scene", frame_skip=1)
    written = read_depth_png(tmp_path / "scene" / "depth" / "1.png")
    np.testing.assert_array_equal(written, np.round(depths[1] / 4).astype(np.uint16))


def test_truncated_sens_names_the_file_and_frame(tmp_path):
    sens_path = tmp_path / "scan.sens"
    _write_sens(sens_path, num_frames=7, invalid=(), empty=())
    data = sens_path.read_bytes()
    sens_path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(SensFormatError, match=r"scan\.sens: frame \d+ of 7"):
        export_frames(sens_path, tmp_path / "scene", frame_skip=1)


@pytest.mark.parametrize("skew", [0.0, 0.7])
def test_rays_and_world_points_match_geometry(skew):
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.5, 3, size=(H, W))
    depth[3, 4] = 0
    pose = _pose(3)
    intrinsic = np.eye(4, dtype=np.float32)
    intrinsic[:3, :3] = K_DEPTH
    intrinsic[0, 1] = skew

    class Header:
        depth_height, depth_width, intrinsic_depth = H, W, intrinsic

    rays = depth_rays(Header)
    k64 = torch.from_numpy(intrinsic.astype(np.float64))
    np.testing.assert_allclose(
        rays.T, backproject_depth(torch.ones(H, W, dtype=torch.float64), k64).reshape(-1, 3)
    )
    points = world_points(depth, rays, pose)
    expected, valid = depth_to_world(torch.from_numpy(depth), k64, torch.from_numpy(pose))
    np.testing.assert_allclose(points, expected[valid].numpy(), atol=1e-12)
    assert len(points) == H * W - 1


def test_chunk_box_and_its_file(tmp_path):
    points = np.array([[0.0, 1.0, 2.0], [1.0, -1.0, 2.5]])
    box = chunk_box(points, margin=0.1)
    np.testing.assert_allclose(box, [-0.1, -1.1, 1.9, 1.1, 1.1, 2.6])
    with pytest.raises(ValueError, match="chunk_box needs"):
        chunk_box(np.zeros((0, 3)))
    path = tmp_path / "chunk_boxes.txt"
    write_chunk_boxes(path, [0, 25], np.stack([box, box + 1]))
    boxes = read_chunk_boxes(path)
    assert list(boxes) == [0, 25]
    np.testing.assert_allclose(boxes[25], box + 1, atol=1e-4)
    path.write_text("0 1 2 3\n")
    with pytest.raises(ValueError, match=r"chunk_boxes\.txt:1: expected '<frame> minx"):
        read_chunk_boxes(path)
