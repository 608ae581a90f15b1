"""`pri3d synth megadepth` writes MegaDepth's layout, and its model and depth agree with the geometry.

Checks go through pycolmap (COLMAP's own camera models and undistortion), not the generator's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest
from PIL import Image

from pri3d.cli import main
from pri3d.io.megadepth import is_mask, read_depth
from pri3d.synth.megadepth import (
    MODEL_FILES,
    MegaDepthSynthConfig,
    build_reconstruction,
    build_scene,
    generate,
    sample_tracks,
    undistort_normalized,
    world_to_camera,
)

CONFIG = MegaDepthSynthConfig(scenes=1, images=12, seed=5, max_size=96, points_per_image=30)
SCENE = "0000"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("megadepth")
    generate(out, CONFIG, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def model(root: Path) -> pycolmap.Reconstruction:
    return pycolmap.Reconstruction(root / "MegaDepth_v1_SfM" / SCENE / "sparse" / "manhattan" / "0")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cam_points(image: pycolmap.Image, xyz: np.ndarray) -> np.ndarray:
    """World points [M, 3] in the camera frame of `image` (COLMAP's cam_from_world)."""
    pose = image.cam_from_world().matrix()  # [3, 4]
    return xyz @ pose[:, :3].T + pose[:, 3]


def test_layout_names(root: Path, model: pycolmap.Reconstruction):
    sfm, dense = root / "MegaDepth_v1_SfM" / SCENE, root / "MegaDepth_v1" / SCENE / "dense0"
    assert sorted(p.name for p in root.iterdir()) == [
        "MegaDepth_v1",
        "MegaDepth_v1_SfM",
        "synth_settings.json",
    ]
    assert sorted(p.name for p in sfm.iterdir()) == ["images", "sparse"]
    assert sorted(p.name for p in (sfm / "sparse" / "manhattan" / "0").iterdir()) == sorted(MODEL_FILES)
    assert sorted(p.name for p in dense.iterdir()) == ["depths", "imgs"]
    names = sorted(image.name for image in model.images.values())
    assert len(names) == CONFIG.images
    assert all(name.endswith("_o.jpg") for name in names)
    assert sorted(p.name for p in (sfm / "images").iterdir()) == names
    assert sorted(p.name for p in (dense / "imgs").iterdir()) == names
    assert sorted(p.name for p in (dense / "depths").iterdir()) == sorted(
        n.replace(".jpg", ".h5") for n in names
    )
    settings = json.loads((root / "synth_settings.json").read_text())
    assert settings["images"] == CONFIG.images and settings["seed"] == CONFIG.seed


def test_model_round_trips_through_pycolmap(model: pycolmap.Reconstruction):
    spec = build_scene(CONFIG, 0)
    rng = np.random.default_rng([CONFIG.seed, 0, 1])  # the draws write_scene makes after build_scene
    tracks = sample_tracks(spec.landmark.scene, spec.photos, CONFIG.points_per_image, rng)
    expected = build_reconstruction(spec, tracks, rng)

    assert model.num_cameras() == model.num_images() == CONFIG.images  # one camera per image
    sizes = set()
    for i, photo in enumerate(spec.photos):
        camera, image = model.cameras[i + 1], model.images[i + 1]
        assert camera.model_name == photo.camera.model_name in ("RADIAL", "SIMPLE_RADIAL")
        assert (camera.width, camera.height) == (photo.camera.width, photo.camera.height)
        np.testing.assert_array_equal(camera.params, photo.camera.params)
        sizes.add((camera.width, camera.height))
        assert image.name == photo.name and image.camera_id == i + 1
        written = expected.images[i + 1]
        np.testing.assert_array_equal(image.cam_from_world().matrix(), written.cam_from_world().matrix())
        # COLMAP stores the rotation as a quaternion: a float64 round trip, exact to ~1e-15
        pose = world_to_camera(photo.camera_to_world, spec.sfm_units_per_metre)[:3]
        np.testing.assert_allclose(
            image.cam_from_world().matrix(), pose, rtol=0, atol=1e-12 * max(1, np.abs(pose).max())
        )
        np.testing.assert_array_equal([p.xy for p in image.points2D], [p.xy for p in written.points2D])
        assert [p.point3D_id for p in image.points2D] == [p.point3D_id for p in written.points2D]
        assert 0 < image.num_points3D < len(image.points2D)  # triangulated and untriangulated keypoints
    assert len(sizes) > 1 and any(w < h for w, h in sizes) and any(w > h for w, h in sizes)

    assert sorted(model.point3D_ids()) == list(range(1, len(tracks.xyz) + 1))
    for point_id, point in model.points3D.items():
        np.testing.assert_array_equal(point.xyz, tracks.xyz[point_id - 1] * spec.sfm_units_per_metre)
        np.testing.assert_array_equal(point.color, tracks.color[point_id - 1])
        elements = [(e.image_id, e.point2D_idx) for e in point.track.elements]
        assert elements == [(e.image_id, e.point2D_idx) for e in expected.points3D[point_id].track.elements]
        assert len(elements) >= 2 and len({image_id for image_id, _ in elements}) == len(elements)
        for image_id, idx in elements:
            assert model.images[image_id].points2D[idx].point3D_id == point_id


def test_keypoints_are_distorted_projections(model: pycolmap.Reconstruction):
    errors = []
    for point in model.points3D.values():
        for element in point.track.elements:
            image = model.images[element.image_id]
            cam = _cam_points(image, point.xyz[None])
            projected = model.cameras[image.camera_id].img_from_cam(cam)  # COLMAP's RADIAL model
            errors.append(np.abs(projected[0] - image.points2D[element.point2D_idx].xy).max())
    assert len(errors) > 100
    assert max(errors) < 1e-6  # pixels; float64 round-off is ~1e-12


def test_undistortion_inverts_colmaps_radial_model(model: pycolmap.Reconstruction):
    for camera in model.cameras.values():
        grid = np.stack(np.meshgrid(np.linspace(0, camera.width, 13), np.linspace(0, camera.height, 9)), -1)
        uv = grid.reshape(-1, 2)
        ours = undistort_normalized(camera, uv)
        # COLMAP's own inverse iterates to ~1e-10 in normalised units; ours is float64-exact
        np.testing.assert_allclose(ours, camera.cam_from_img(uv), rtol=0, atol=1e-9)
        back = camera.img_from_cam(np.concatenate([ours, np.ones((len(ours), 1))], 1))
        np.testing.assert_allclose(back, uv, rtol=0, atol=1e-9)


def _planar_inverse_depth(depth: np.ndarray, row: float, col: float) -> float | None:
    """Bilinear 1/depth at continuous (row, col) when the 4×4 pixels around it lie on one plane, else None.

    Under a pinhole camera 1/z of a plane is affine in the pixel position, so over one plane the
    bilinear interpolation of 1/z is exact.
    """
    r0, c0 = int(np.floor(row)), int(np.floor(col))
    if r0 < 1 or c0 < 1 or r0 + 3 > depth.shape[0] or c0 + 3 > depth.shape[1]:
        return None
    patch = depth[r0 - 1 : r0 + 3, c0 - 1 : c0 + 3].astype(np.float64)
    if not np.all(patch > 0):
        return None
    inverse = 1.0 / patch
    rows, cols = np.mgrid[0:4, 0:4]
    design = np.stack([rows.ravel(), cols.ravel(), np.ones(16)], 1)
    fit = np.linalg.lstsq(design, inverse.ravel(), rcond=None)[0]
    # float32 depth carries 6e-8 relative error: 4e-7 is 7 of those, far below any crease's kink
    if np.abs(design @ fit - inverse.ravel()).max() > 4e-7 * inverse.max():
        return None
    fr, fc = row - r0, col - c0
    square = inverse[1:3, 1:3]
    top = square[0, 0] * (1 - fc) + square[0, 1] * fc
    bottom = square[1, 0] * (1 - fc) + square[1, 1] * fc
    return top * (1 - fr) + bottom * fr


def test_dense_depth_is_the_undistorted_depth_of_the_points(root: Path, model: pycolmap.Reconstruction):
    spec = build_scene(CONFIG, 0)
    dense = root / "MegaDepth_v1" / SCENE / "dense0"
    compared = total = 0
    for image_id, image in model.images.items():
        if spec.photos[image_id - 1].depth_is_mask:
            continue
        camera = model.cameras[image.camera_id]
        pinhole = pycolmap.undistort_camera(pycolmap.UndistortCameraOptions(), camera)
        with h5py.File(dense / "depths" / image.name.replace(".jpg", ".h5"), "r") as f:
            depth = f["depth"][()]
        assert depth.dtype == np.float32 and depth.shape == (pinhole.height, pinhole.width)
        assert Image.open(dense / "imgs" / image.name).size == (pinhole.width, pinhole.height)
        assert (depth == 0).any() and (depth > 0).mean() > 0.2  # sky without depth, buildings with
        observed = [p for p in image.points2D if p.has_point3D()]
        xyz = np.array([model.points3D[p.point3D_id].xyz for p in observed])
        z = _cam_points(image, xyz)[:, 2]
        normalised = camera.cam_from_img(np.array([p.xy for p in observed]))  # COLMAP's undistortion
        uv = pinhole.img_from_cam(np.concatenate([normalised, np.ones((len(observed), 1))], 1))
        for (u, v), point_z in zip(uv, z):
            total += 1
            # COLMAP puts the centre of the top-left pixel at (0.5, 0.5), pri3d's row/col grid at (0, 0)
            inverse = _planar_inverse_depth(depth, v - 0.5, u - 0.5)
            if inverse is None:
                continue
            compared += 1
            assert 1.0 / inverse == pytest.approx(point_z, rel=1e-6)  # float32 depth: 6e-8 relative
    assert compared > 0.3 * total


def test_undistorting_with_colmap_reproduces_the_dense_cameras(root: Path, tmp_path: Path):
    """What preprocessing does: COLMAP's undistorter at the largest dense image size gives the depth's grid."""
    sfm, dense = root / "MegaDepth_v1_SfM" / SCENE, root / "MegaDepth_v1" / SCENE / "dense0"
    largest = max(max(Image.open(p).size) for p in (dense / "imgs").iterdir())
    pycolmap.undistort_images(
        tmp_path,
        sfm / "sparse" / "manhattan" / "0",
        sfm / "images",
        undistort_options=pycolmap.UndistortCameraOptions(max_image_size=largest),
    )
    undistorted = pycolmap.Reconstruction(tmp_path / "sparse")
    for image in undistorted.images.values():
        camera = undistorted.cameras[image.camera_id]
        with h5py.File(dense / "depths" / image.name.replace(".jpg", ".h5"), "r") as f:
            assert f["depth"].shape == (camera.height, camera.width)
        assert Image.open(tmp_path / "images" / image.name).size == (camera.width, camera.height)


def test_grayscale_photos_and_mask_depth_files(root: Path):
    spec = build_scene(CONFIG, 0)
    sfm, dense = root / "MegaDepth_v1_SfM" / SCENE, root / "MegaDepth_v1" / SCENE / "dense0"
    assert any(p.grayscale for p in spec.photos) and any(p.depth_is_mask for p in spec.photos)
    for photo in spec.photos:
        modes = {Image.open(sfm / "images" / photo.name).mode, Image.open(dense / "imgs" / photo.name).mode}
        assert modes == ({"L"} if photo.grayscale else {"RGB"})
        values = read_depth(dense / "depths" / photo.name.replace(".jpg", ".h5"), raw=True)
        assert is_mask(values) == photo.depth_is_mask  # the rule preprocessing applies
        if photo.depth_is_mask:
            assert (values == 1).any() and (values == 0).any()


def test_same_seed_same_bytes_and_resume(root: Path, tmp_path: Path):
    again = tmp_path / "again"
    generate(again, CONFIG, workers=1, progress=False)
    assert _files(again) == _files(root)

    assert generate(again, CONFIG, workers=1, progress=False)["generated"] == 0
    model_file = again / "MegaDepth_v1_SfM" / SCENE / "sparse" / "manhattan" / "0" / "images.bin"
    model_file.unlink()
    (again / "MegaDepth_v1_SfM" / SCENE).rename(again / "interrupted")  # as a move that did not finish
    assert generate(again, CONFIG, workers=1, progress=False)["generated"] == 1
    assert model_file.exists()

    other = MegaDepthSynthConfig(**{**CONFIG.__dict__, "max_size": 64})
    with pytest.raises(ValueError, match="max_size=96"):
        generate(again, other, workers=1, progress=False)


def test_command_line(tmp_path: Path, capsys):
    out = tmp_path / "md"
    args = ["synth", "megadepth", "--out", str(out), "--scenes", "2", "--images", "3", "--max-size", "48"]
    assert main([*args, "--workers", "2", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scenes"] == ["0000", "0001"] and summary["generated"] == 2
    assert [size["images"] for size in summary["models"].values()] == [3, 3]
    for scene in ("0000", "0001"):
        assert len(list((out / "MegaDepth_v1" / scene / "dense0" / "depths").iterdir())) == 3
    assert not (out / ".partial").exists()
    serial = tmp_path / "serial"
    generate(serial, MegaDepthSynthConfig(scenes=2, images=3, max_size=48), workers=1, progress=False)
    assert _files(serial) == _files(out)  # the output does not depend on the number of workers
