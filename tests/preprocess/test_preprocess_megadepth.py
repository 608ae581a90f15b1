"""`pri3d preprocess megadepth`: undistortion, scene_info against direct computations, resuming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from megadepth_fixture import GRAYSCALE, MASK, NO_DEPTH, copy_scene, write_tiny_scene
from PIL import Image

from pri3d.cli import main
from pri3d.io.colmap import colmap_to_pri3d_intrinsics, colmap_xy_to_rowcol, read_model
from pri3d.io.megadepth import read_depth, read_scene_info
from pri3d.preprocess.megadepth import (
    REPORT_NAME,
    overlap_and_scale_ratio,
    preprocess_megadepth,
    principal_axis_angles,
)
from pri3d.preprocess.output_folder import output_lock
from pri3d.synth.megadepth import MegaDepthSynthConfig, generate


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny scene, preprocessed once; tests that change files copy it first."""
    root = tmp_path_factory.mktemp("megadepth")
    tiny = write_tiny_scene(root)
    report = preprocess_megadepth(root, progress=False)
    return root, tiny, report


def test_report_names_dropped_images_and_keeps_grayscale(prepared):
    root, tiny, report = prepared
    assert report["scenes"] == {"selected": 1, "done": 1, "skipped_existing": 0, "failed": 0}
    scene = report["per_scene"]["0001"]
    assert scene["dropped"] == {"mask_depth": [tiny.names[MASK]], "missing_depth": [tiny.names[NO_DEPTH]]}
    assert scene["grayscale_kept"] == [tiny.names[GRAYSCALE]]
    assert scene["max_image_size"] == max(max(c.width, c.height) for c in tiny.undistorted)
    assert json.loads((root / REPORT_NAME).read_text())["images"]["usable"] == 3
    info = read_scene_info(root / "scene_info" / "0001.npz")
    usable = [i for i in range(5) if i not in (MASK, NO_DEPTH)]
    assert np.flatnonzero(info.usable).tolist() == usable
    assert info.image_paths[GRAYSCALE] == f"Undistorted_SfM/0001/images/{tiny.names[GRAYSCALE]}"
    assert (
        info.depth_paths[MASK] == "" and info.depth_paths[0] == "MegaDepth_v1/0001/dense0/depths/photo_000.h5"
    )
    assert all((root / path).is_file() for path in info.image_paths)


def test_undistorted_keypoints_and_depths_agree_with_the_geometry(prepared):
    """Keypoints of the undistorted model are the 3D points' projections through the undistorted
    camera; the dense depth, read at a keypoint in pri3d's pixel convention, is the point's z."""
    root, tiny, _ = prepared
    model = read_model(root / "Undistorted_SfM" / "0001" / "sparse")
    checked = 0
    for i, image in enumerate(model.images):
        camera = tiny.undistorted[i]
        assert image.camera_model == "PINHOLE" and (image.width, image.height) == (
            camera.width,
            camera.height,
        )
        np.testing.assert_allclose(image.intrinsics, camera.calibration_matrix(), rtol=1e-12)
        pose = tiny.world_to_camera[i]
        np.testing.assert_allclose(image.world_to_camera, pose, atol=1e-12)
        xyz = model.point_xyz(image.point3D_ids) @ pose[:3, :3].T + pose[:3, 3]  # camera frame
        # COLMAP undistorts keypoints by inverting the distortion iteratively (to ~1e-10 of the
        # normalised coordinates): ~1e-8 px at these focal lengths, 1e-6 px leaves margin
        np.testing.assert_allclose(image.xy, camera.img_from_cam(xyz), atol=1e-6)
        if i in (MASK, NO_DEPTH):
            continue
        # 1/depth of a plane is affine in the pixel coordinates, so bilinear interpolation of 1/depth
        # at the keypoint's continuous (row, col) is exact up to float32 rounding of the stored depth
        inverse = 1 / read_depth(root / "MegaDepth_v1" / "0001" / "dense0" / "depths" / f"photo_{i:03d}.h5")
        rowcol = colmap_xy_to_rowcol(image.xy)
        inside = (rowcol >= 0).all(1) & (rowcol[:, 0] < camera.height - 1) & (rowcol[:, 1] < camera.width - 1)
        r0, c0 = np.floor(rowcol[inside]).astype(int).T
        fr, fc = (rowcol[inside] - np.floor(rowcol[inside])).T
        interpolated = (
            inverse[r0, c0] * (1 - fr) * (1 - fc)
            + inverse[r0, c0 + 1] * (1 - fr) * fc
            + inverse[r0 + 1, c0] * fr * (1 - fc)
            + inverse[r0 + 1, c0 + 1] * fr * fc
        )
        np.testing.assert_allclose(1 / interpolated, xyz[inside, 2], rtol=1e-6)
        # and pri3d's K (pixel centres at integers) projects the points to the same (row, col)
        K = colmap_to_pri3d_intrinsics(image.intrinsics)
        projected = xyz @ K.T
        np.testing.assert_allclose(projected[:, [1, 0]] / projected[:, 2:], rowcol, atol=1e-6)
        checked += inside.sum()
    assert checked > 200


def test_scene_info_matches_direct_computations(prepared):
    root, tiny, _ = prepared
    info = read_scene_info(root / "scene_info" / "0001.npz")
    in_model = np.sum(tiny.visible, axis=0) >= 2  # points seen by two images are triangulated
    observed = [np.flatnonzero(v & in_model) for v in tiny.visible]
    usable = info.usable
    nd = []
    for i, points in enumerate(observed):
        z = tiny.points[points] @ tiny.world_to_camera[i][2, :3] + tiny.world_to_camera[i][2, 3]
        nd.append(dict(zip(points, z / tiny.undistorted[i].mean_focal_length())))
    for i in range(5):
        ids, _, ndepth = info.observations(i)
        by_id = observed[i][np.argsort(tiny.point_ids[observed[i]])]
        assert ids.tolist() == tiny.point_ids[by_id].tolist()
        np.testing.assert_allclose(ndepth, [nd[i][p] for p in by_id], rtol=1e-12)
        for j in range(5):
            common = np.intersect1d(observed[i], observed[j])
            if i == j or not (usable[i] and usable[j]):
                assert info.overlap_matrix[i, j] == -1 and info.scale_ratio_matrix[i, j] == -1
                continue
            assert info.overlap_matrix[i, j] == len(common) / len(observed[i])
            ratios = [max(nd[i][p] / nd[j][p], nd[j][p] / nd[i][p]) for p in common]
            # the same quotient from z computed in another order: float64 noise only
            np.testing.assert_allclose(info.scale_ratio_matrix[i, j], min(ratios), rtol=1e-12)
        axis = tiny.world_to_camera[i][2, :3]
        for j in range(5):
            other = tiny.world_to_camera[j][2, :3]
            expected = np.degrees(np.arctan2(np.linalg.norm(np.cross(axis, other)), axis @ other))
            np.testing.assert_allclose(info.angles[i, j], expected, atol=1e-5)  # arccos near 1: ~1e-6 deg
    assert info.n_points3D == in_model.sum()


def _pairwise(indptr, ids, nd, usable):
    """The original's loop over image pairs with Python sets and dicts (a small independent check)."""
    n = len(indptr) - 1
    sets = [dict(zip(ids[indptr[i] : indptr[i + 1]], nd[indptr[i] : indptr[i + 1]])) for i in range(n)]
    overlap, scale = -np.ones((n, n)), -np.ones((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            if not (usable[i] and usable[j]):
                continue
            common = set(sets[i]) & set(sets[j])
            overlap[i, j] = len(common) / len(sets[i]) if sets[i] else 0.0
            overlap[j, i] = len(common) / len(sets[j]) if sets[j] else 0.0
            if common:
                a = np.array([sets[i][p] for p in common])
                b = np.array([sets[j][p] for p in common])
                scale[i, j] = scale[j, i] = np.min(np.maximum(a / b, b / a))
    return overlap, scale


def test_vectorised_matrices_equal_the_pairwise_loop_bit_for_bit():
    rng = np.random.default_rng(5)
    n, points = 30, 400
    lengths = np.minimum(rng.geometric(0.25, points) + 1, n)  # tracks of 2..n images, some long
    rows, cols = [], []
    for p, length in enumerate(lengths):
        rows += list(rng.choice(n, length, replace=False))
        cols += [p] * length
    rows, ids = np.array(rows), np.array(cols) * 7 + 3  # ids need not be dense
    keep = rows != 0  # image 0 observes nothing: overlap 0 from it, never a division by zero
    order = np.lexsort((ids[keep], rows[keep]))
    rows, ids = rows[keep][order], ids[keep][order]
    indptr = np.searchsorted(rows, np.arange(n + 1))
    nd = rng.uniform(0.01, 2.0, len(ids))
    usable = rng.uniform(size=n) > 0.2
    usable[0] = True
    overlap, scale = overlap_and_scale_ratio(indptr, ids, nd, usable)
    expected_overlap, expected_scale = _pairwise(indptr, ids, nd, usable)
    np.testing.assert_array_equal(overlap, expected_overlap)
    np.testing.assert_array_equal(scale, expected_scale)
    assert (overlap[0][usable] <= 0).all() and (scale > 0).sum() > n


def test_angles_of_known_rotations():
    poses = np.tile(np.eye(4), (3, 1, 1))
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    poses[1, :3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]  # 30 degrees about y
    poses[2, :3, :3] = np.diag([1, -1, -1])  # looking backwards
    np.testing.assert_allclose(
        principal_axis_angles(poses), [[0, 30, 180], [30, 0, 150], [180, 150, 0]], atol=1e-6
    )


def _copy_root(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    return copy


def test_resume_skips_finished_scenes_and_redoes_damaged_ones(prepared, tmp_path):
    root = _copy_root(prepared[0], tmp_path)
    copy_scene(root, "0001", "0002")
    copy_scene(root, "0001", "0003")
    first = preprocess_megadepth(root, scenes=["0002", "0003"], progress=False)
    assert first["scenes"]["done"] == 2
    again = preprocess_megadepth(root, progress=False)
    assert again["scenes"] == {"selected": 3, "done": 0, "skipped_existing": 3, "failed": 0}
    npz_before = (root / "scene_info" / "0001.npz").read_bytes()
    # damage: a lost undistorted image, a truncated scene_info, an interrupted scene (no report)
    (root / "Undistorted_SfM" / "0001" / "images" / "photo_004.jpg").unlink()
    data = (root / "scene_info" / "0002.npz").read_bytes()
    (root / "scene_info" / "0002.npz").write_bytes(data[:100])
    (root / "scene_info" / "0003.json").unlink()
    redo = preprocess_megadepth(root, progress=False)
    assert redo["scenes"] == {"selected": 3, "done": 3, "skipped_existing": 0, "failed": 0}
    reasons = {entry["scene"]: entry["reason"] for entry in redo["redone"]}
    assert "1 undistorted images are missing (e.g. photo_004.jpg)" in reasons["0001"]
    assert "scene_info/0002.npz is missing or not the" in reasons["0002"]
    assert reasons["0003"] == "a previous run stopped inside this scene"
    assert (root / "scene_info" / "0001.npz").read_bytes() == npz_before
    assert (root / "Undistorted_SfM" / "0001" / "images" / "photo_004.jpg").is_file()
    assert not list((root / "Undistorted_SfM").glob("*.tmp"))


def test_broken_scenes_are_reported_and_others_finish(prepared, tmp_path, capsys):
    root = _copy_root(prepared[0], tmp_path)
    for name in ("0002", "0003"):
        copy_scene(root, "0001", name)
    images_bin = root / "MegaDepth_v1_SfM" / "0002" / "sparse" / "manhattan" / "0" / "images.bin"
    images_bin.write_bytes(images_bin.read_bytes()[:200])
    shutil.rmtree(root / "Undistorted_SfM" / "0001")
    shutil.copytree(root / "MegaDepth_v1_SfM" / "0001", root / "Undistorted_SfM" / "0001")  # not pri3d's
    code = main(["preprocess", "megadepth", "--root", str(root), "--workers", "2"])
    assert code == 1
    report = json.loads((root / REPORT_NAME).read_text())
    failures = {f["scene"]: f["reason"] for f in report["failures"]}
    assert "not a readable COLMAP model" in failures["0002"]
    assert "was not written by pri3d preprocess megadepth" in failures["0001"]
    assert report["per_scene"]["0003"]["status"] == "done"
    assert (
        not (root / "Undistorted_SfM" / "0002").exists() and not (root / "scene_info" / "0002.npz").exists()
    )
    out = capsys.readouterr()
    assert "FAILED 0002: ValueError:" in out.out and "2 scene(s) failed" in out.err


def test_a_second_run_on_the_same_root_is_refused(prepared, tmp_path):
    root = _copy_root(prepared[0], tmp_path)
    with output_lock(root), pytest.raises(ValueError, match="is in use by another pri3d preprocess run"):
        preprocess_megadepth(root, progress=False)


def test_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="MegaDepth_v1: not found; --root must hold"):
        preprocess_megadepth(tmp_path, progress=False)
    (tmp_path / "MegaDepth_v1" / "0001" / "dense0" / "imgs").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no <scene>/dense0/imgs for scenes \['nope'\]"):
        preprocess_megadepth(tmp_path, scenes=["nope"], progress=False)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """`pri3d synth megadepth` output (one small scene), preprocessed."""
    root = tmp_path_factory.mktemp("synth_megadepth")
    config = MegaDepthSynthConfig(scenes=1, images=10, max_size=64, points_per_image=30)
    generate(root, config, workers=1, progress=False)
    return root, preprocess_megadepth(root, progress=False)


def test_generated_scene_overlap_equals_a_direct_count_on_its_tracks(generated):
    root, report = generated
    assert report["scenes"]["done"] == 1 and report["images"]["dropped"]["depth_size_differs"] == 0
    info = read_scene_info(root / "scene_info" / "0000.npz")
    source = pycolmap.Reconstruction(root / "MegaDepth_v1_SfM" / "0000" / "sparse" / "manhattan" / "0")
    image_ids = {image.name: image_id for image_id, image in source.images.items()}
    index = {image_ids[Path(path).name]: i for i, path in enumerate(info.image_paths)}
    seen = [set() for _ in info.image_paths]  # from the tracks of the 3D points, not the images' keypoints
    for point_id, point in source.points3D.items():
        for element in point.track.elements:
            seen[index[element.image_id]].add(point_id)
    usable = info.usable
    assert usable.sum() >= 8
    for i in range(len(seen)):
        for j in range(len(seen)):
            expected = len(seen[i] & seen[j]) / len(seen[i]) if usable[i] and usable[j] and i != j else -1.0
            assert info.overlap_matrix[i, j] == expected
    # the undistorted photos are the generator's dense images, pixel grid for pixel grid
    for path in info.image_paths:
        with (
            Image.open(root / path) as undistorted,
            Image.open(root / "MegaDepth_v1" / "0000" / "dense0" / "imgs" / Path(path).name) as dense,
        ):
            assert undistorted.size == dense.size
