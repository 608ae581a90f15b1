"""COLMAP models through pycolmap, MegaDepth depth files and scene_info in both layouts."""

from __future__ import annotations

import h5py
import numpy as np
import pycolmap
import pytest
from megadepth_fixture import write_tiny_scene

from pri3d.io.colmap import colmap_to_pri3d_intrinsics, colmap_xy_to_rowcol, pinhole_intrinsics, read_model
from pri3d.io.megadepth import (
    SceneInfo,
    is_mask,
    read_depth,
    read_scene_info,
    write_scene_info,
)


def _pinhole_model(folder, text: bool = False) -> dict:
    """A two-image PINHOLE / SIMPLE_PINHOLE model with known keypoints; returns what was put in."""
    reconstruction = pycolmap.Reconstruction()
    cameras = [
        pycolmap.Camera(model="PINHOLE", width=40, height=30, params=[50.0, 52.0, 20.5, 14.5], camera_id=1),
        pycolmap.Camera(model="SIMPLE_PINHOLE", width=36, height=24, params=[40.0, 18.0, 12.0], camera_id=2),
    ]
    poses = [np.eye(4), np.eye(4)]
    poses[1][:3, :3] = pycolmap.Rotation3d(np.array([0.0, 0.1, 0.0])).matrix()
    poses[1][:3, 3] = [-0.3, 0.05, 0.1]
    points = np.array([[0.1, 0.2, 4.0], [-0.3, 0.1, 5.0], [0.2, -0.2, 3.0]])
    keypoints = []
    for i, camera in enumerate(cameras):
        reconstruction.add_camera_with_trivial_rig(camera)
        xy = camera.img_from_cam(points @ poses[i][:3, :3].T + poses[i][:3, 3])
        xy = np.concatenate([xy, [[1.0, 1.0]]])  # a keypoint without a 3D point
        keypoints.append(xy)
        image = pycolmap.Image(name=f"im{i}.jpg", keypoints=xy, camera_id=i + 1, image_id=i + 1)
        reconstruction.add_image_with_trivial_frame(image, pycolmap.Rigid3d(poses[i][:3]))
    ids = []
    for p, xyz in enumerate(points):
        track = pycolmap.Track()
        track.add_element(1, p)
        track.add_element(2, p)
        ids.append(reconstruction.add_point3D(xyz, track))
        for image_id in (1, 2):
            reconstruction.image(image_id).set_point3D_for_point2D(p, ids[-1])
    folder.mkdir(parents=True, exist_ok=True)
    (reconstruction.write_text if text else reconstruction.write_binary)(folder)
    return {"cameras": cameras, "poses": poses, "points": points, "keypoints": keypoints, "ids": ids}


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_read_model_round_trips_what_pycolmap_wrote(tmp_path, text):
    made = _pinhole_model(tmp_path / "model", text)
    model = read_model(tmp_path / "model")
    assert [image.name for image in model.images] == ["im0.jpg", "im1.jpg"]
    assert model.images[0].camera_model == "PINHOLE" and model.images[1].camera_model == "SIMPLE_PINHOLE"
    np.testing.assert_allclose(model.images[0].intrinsics, [[50, 0, 20.5], [0, 52, 14.5], [0, 0, 1]])
    np.testing.assert_allclose(model.images[1].intrinsics, [[40, 0, 18], [0, 40, 12], [0, 0, 1]])
    for image, camera, pose, xy in zip(model.images, made["cameras"], made["poses"], made["keypoints"]):
        assert (image.width, image.height) == (camera.width, camera.height)
        # the text format stores 17 significant digits, quaternions renormalised: float64 noise
        np.testing.assert_allclose(image.world_to_camera, pose, atol=1e-12)
        assert image.point3D_ids.tolist() == made["ids"]  # the keypoint without a point is left out
        np.testing.assert_allclose(image.xy, xy[:3], atol=1e-12)
    np.testing.assert_allclose(model.point_xyz(np.array(made["ids"][::-1])), made["points"][::-1])


def test_read_model_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: COLMAP model folder not found"):
        read_model(tmp_path / "nowhere")
    _pinhole_model(tmp_path / "model")
    data = (tmp_path / "model" / "images.bin").read_bytes()
    (tmp_path / "model" / "images.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model: not a readable COLMAP model"):
        read_model(tmp_path / "model")


def test_distorted_cameras_have_no_pinhole_intrinsics(tmp_path):
    write_tiny_scene(tmp_path, images=2, points=40)
    model = read_model(tmp_path / "MegaDepth_v1_SfM" / "0001" / "sparse" / "manhattan" / "0")
    assert {image.camera_model for image in model.images} == {"RADIAL"}
    assert all(image.intrinsics is None for image in model.images)
    assert pinhole_intrinsics("OPENCV", np.zeros(8)) is None


def test_colmap_pixel_convention_becomes_integer_centres():
    """A point on the axis of a camera with cx = W/2 is at the image centre: COLMAP x = W/2, i.e.
    between pixels W/2 - 1 and W/2 for an even W, which is pri3d's col (W - 1)/2."""
    K = np.array([[50.0, 0, 20.0], [0, 50.0, 15.0], [0, 0, 1]])  # W = 40, H = 30
    pri3d_K = colmap_to_pri3d_intrinsics(K)
    np.testing.assert_array_equal(pri3d_K[:2, 2], [19.5, 14.5])
    np.testing.assert_array_equal(colmap_xy_to_rowcol(np.array([[20.0, 15.0]])), [[14.5, 19.5]])
    # the top-left pixel's centre in COLMAP (0.5, 0.5) is pri3d's pixel (0, 0)
    np.testing.assert_array_equal(colmap_xy_to_rowcol(np.array([0.5, 0.5])), [0.0, 0.0])
    assert K[0, 2] == 20.0  # the input is not modified


def _write_h5(path, values, name="depth"):
    with h5py.File(path, "w") as file:
        file[name] = values


def test_read_depth_windows_and_invalid_values(tmp_path):
    depth = np.arange(1, 13, dtype=np.float32).reshape(3, 4) / 7
    depth[0, 0], depth[1, 1], depth[2, 2] = np.nan, -2.0, np.inf
    _write_h5(tmp_path / "d.h5", depth)
    read = read_depth(tmp_path / "d.h5")
    assert read.dtype == np.float32 and read.shape == (3, 4)
    expected = depth.copy()
    expected[0, 0] = expected[1, 1] = expected[2, 2] = 0
    np.testing.assert_array_equal(read, expected)
    np.testing.assert_array_equal(read_depth(tmp_path / "d.h5", window=(1, 2, 5, 5)), expected[1:, 2:])
    assert np.isnan(read_depth(tmp_path / "d.h5", raw=True)[0, 0])
    np.testing.assert_array_equal(read_depth(tmp_path / "d.h5", shape=(3, 4)), expected)
    with pytest.raises(ValueError, match=r"d\.h5: depth map is \(3, 4\) \(H, W\), its image \(4, 3\)"):
        read_depth(tmp_path / "d.h5", window=(0, 0, 2, 2), shape=(4, 3))
    with pytest.raises(ValueError, match=r"d\.h5: depth window \(-1, 0, 2, 2\) starts outside the map"):
        read_depth(tmp_path / "d.h5", window=(-1, 0, 2, 2))


def test_depth_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing.h5: depth file not found"):
        read_depth(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match=r"text.h5: not a readable HDF5 file"):
        read_depth(tmp_path / "text.h5")
    _write_h5(tmp_path / "other.h5", np.ones((2, 2)), name="disparity")
    with pytest.raises(
        ValueError, match=r"other.h5: expected a non-empty 2-D dataset /depth, found datasets \['disparity'\]"
    ):
        read_depth(tmp_path / "other.h5")
    _write_h5(tmp_path / "cube.h5", np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=r"cube.h5: .* found shape \(2, 2, 2\)"):
        read_depth(tmp_path / "cube.h5", shape=(2, 2))


def test_masks_are_told_from_depth_by_their_values():
    rng = np.random.default_rng(0)
    depth = rng.uniform(2, 30, (6, 8)).astype(np.float32)
    depth[:2] = 0
    assert not is_mask(depth)
    assert is_mask((depth > 5).astype(np.float32))  # 0/1 float mask
    assert is_mask(np.zeros((6, 8), np.float32))  # no depth at all
    assert is_mask(rng.integers(0, 3, (6, 8)).astype(np.uint8))  # integer data
    assert not is_mask(np.where(depth > 0, np.round(depth) + 0.25, np.nan))  # NaNs ignored


def _scene_info(rng, n=4) -> SceneInfo:
    counts = rng.integers(0, 6, n)
    nnz = int(counts.sum())
    ids = np.concatenate([np.sort(rng.choice(50, c, replace=False)) for c in counts]).astype(np.int64)
    return SceneInfo(
        image_paths=np.array([f"Undistorted_SfM/s/images/{i}.jpg" for i in range(n)]),
        depth_paths=np.array(["MegaDepth_v1/s/dense0/depths/0.h5", "", *[f"d{i}.h5" for i in range(2, n)]]),
        intrinsics=rng.normal(size=(n, 3, 3)),
        poses=rng.normal(size=(n, 4, 4)),
        overlap_matrix=rng.uniform(size=(n, n)),
        scale_ratio_matrix=rng.uniform(1, 2, (n, n)),
        angles=rng.uniform(0, 180, (n, n)),
        n_points3D=50,
        points3D_indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        points3D_ids=ids,
        points3D_xy=rng.uniform(0, 100, (nnz, 2)),
        points3D_ndepth=rng.uniform(0.01, 1, nnz),
    )


def _assert_same(a: SceneInfo, b: SceneInfo) -> None:
    for field in SceneInfo.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_scene_info_round_trips_without_pickle(tmp_path):
    info = _scene_info(np.random.default_rng(1))
    write_scene_info(tmp_path / "s.npz", info)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as npz:  # plain arrays only
        assert all(npz[key].dtype != object for key in npz.files)
    back = read_scene_info(tmp_path / "s.npz")
    _assert_same(info, back)
    assert back.usable.tolist() == [True, False, True, True]
    ids, xy, nd = back.observations(2)
    rows = slice(info.points3D_indptr[2], info.points3D_indptr[3])
    np.testing.assert_array_equal(ids, info.points3D_ids[rows])
    np.testing.assert_array_equal(xy, info.points3D_xy[rows])
    np.testing.assert_array_equal(nd, info.points3D_ndepth[rows])


def test_the_originals_pickled_scene_info_is_read(tmp_path):
    """The original's layout: object arrays of per-image dicts and None for missing depth."""
    info = _scene_info(np.random.default_rng(2))
    to_2d, to_nd = np.empty(info.num_images, object), np.empty(info.num_images, object)
    for i in range(info.num_images):
        ids, xy, nd = info.observations(i)
        order = np.random.default_rng(i).permutation(len(ids))  # dict order is not id order
        to_2d[i] = {int(ids[k]): list(xy[k]) for k in order}
        to_nd[i] = {int(ids[k]): float(nd[k]) for k in order}
    depth_paths = np.array([p or None for p in info.depth_paths], dtype=object)
    np.savez(
        tmp_path / "legacy.npz",
        image_paths=np.array(list(info.image_paths), dtype=object),
        depth_paths=depth_paths,
        intrinsics=info.intrinsics,
        poses=info.poses,
        overlap_matrix=info.overlap_matrix,
        scale_ratio_matrix=info.scale_ratio_matrix,
        angles=info.angles,
        n_points3D=info.n_points3D,
        points3D_id_to_2D=to_2d,
        points3D_id_to_ndepth=to_nd,
    )
    _assert_same(info, read_scene_info(tmp_path / "legacy.npz"))


def test_scene_info_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"none.npz: scene_info file not found"):
        read_scene_info(tmp_path / "none.npz")
    info = _scene_info(np.random.default_rng(3))
    write_scene_info(tmp_path / "s.npz", info)
    data = (tmp_path / "s.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.npz: (not a readable|damaged) .npz file"):
        read_scene_info(tmp_path / "cut.npz")
    np.savez(tmp_path / "partial.npz", image_paths=info.image_paths)
    with pytest.raises(ValueError, match=r"partial.npz: scene_info lacks depth_paths, intrinsics"):
        read_scene_info(tmp_path / "partial.npz")
    info.points3D_xy = info.points3D_xy[:-1]
    with pytest.raises(ValueError, match=r"bad.npz: points3D_xy has shape \[\d+, 2\], expected"):
        write_scene_info(tmp_path / "bad.npz", info)
    assert not (tmp_path / "bad.npz").exists()
