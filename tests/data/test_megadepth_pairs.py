"""MegaDepth pre-training pairs and the ScanNet + MegaDepth mixture."""

from __future__ import annotations

import dataclasses
import shutil

import h5py
import numpy as np
import pytest
import torch
from megadepth_fixture import GRAYSCALE, copy_scene, write_tiny_scene
from PIL import Image

from pri3d.data.collate import collate_pairs
from pri3d.data.megadepth_pairs import MegaDepthPairs, crop_window
from pri3d.data.mixture_pairs import MixturePairs
from pri3d.data.pretrain_pairs import PairOptions, ScanNetPairs
from pri3d.geometry import invert_rigid, project_points, transform_points
from pri3d.io.colmap import colmap_to_pri3d_intrinsics, read_model
from pri3d.io.images import IMAGENET_MEAN, IMAGENET_STD
from pri3d.io.megadepth import read_depth, read_scene_info
from pri3d.preprocess.megadepth import preprocess_megadepth
from pri3d.synth.megadepth import MegaDepthSynthConfig, generate

OPTIONS = PairOptions(size=(32, 40), num_matches=64, augment=False, threshold=0.05)
KEYS = {
    "index", "scene", "frames", "match1", "match2", "match_valid",
    *(f"{key}{v}" for key in ("color", "depth", "intrinsics", "world_to_camera") for v in (1, 2)),
}  # fmt: skip


@pytest.fixture(scope="module")
def megadepth(tmp_path_factory):
    """Two preprocessed tiny scenes (the second a copy) and the first one's geometry."""
    root = tmp_path_factory.mktemp("megadepth_pairs")
    tiny = write_tiny_scene(root)
    copy_scene(root, "0001", "0002")
    preprocess_megadepth(root, progress=False)
    return root, tiny


def test_items_have_the_scannet_keys_and_shapes(megadepth):
    root, _ = megadepth
    pairs = MegaDepthPairs(root, OPTIONS, pairs_per_scene=10)
    assert len(pairs) == 20 and pairs.scenes_without_pairs == {}
    item = pairs[13]
    assert set(item) == KEYS and item["scene"] == "0002" and item["index"] == 13
    for v in (1, 2):
        assert item[f"color{v}"].shape == (3, 32, 40) and item[f"color{v}"].dtype == torch.float32
        assert item[f"depth{v}"].shape == (32, 40) and item[f"depth{v}"].dtype == torch.float32
        assert item[f"intrinsics{v}"].shape == (3, 3) and item[f"world_to_camera{v}"].shape == (4, 4)
        assert item[f"match{v}"].shape == (64, 2) and item[f"match{v}"].dtype == torch.int64
    assert item["match_valid"].all()  # a plane seen from overlapping views: plenty of matches
    assert all(stem.startswith("photo_") for stem in item["frames"])


def test_pairs_come_from_overlapping_images_and_are_fixed_per_seed_and_epoch(megadepth):
    root, _ = megadepth
    info = read_scene_info(root / "scene_info" / "0001.npz")
    pairs = MegaDepthPairs(root, OPTIONS, pairs_per_scene=200, min_overlap=0.7)
    drawn = pairs.pairs[0]
    assert (info.overlap_matrix[drawn[:, 0], drawn[:, 1]] >= 0.7).all()
    candidates = {tuple(p) for p in np.argwhere(info.overlap_matrix >= 0.7)}
    assert {tuple(p) for p in drawn.tolist()} == candidates  # with replacement, 200 draws cover them all
    again = MegaDepthPairs(root, OPTIONS, pairs_per_scene=200, min_overlap=0.7)
    np.testing.assert_array_equal(again.pairs, pairs.pairs)
    first = pairs.pairs.copy()
    pairs.set_epoch(1)
    assert not np.array_equal(pairs.pairs, first)
    pairs.set_epoch(0)
    np.testing.assert_array_equal(pairs.pairs, first)
    other_seed = MegaDepthPairs(
        root, dataclasses.replace(OPTIONS, seed=1), pairs_per_scene=200, min_overlap=0.7
    )
    assert not np.array_equal(other_seed.pairs, first)
    a, b = pairs[5], again[5]
    assert a["frames"] == b["frames"]
    for key in ("color1", "depth2", "intrinsics1", "match1", "match2"):
        assert torch.equal(a[key], b[key])


def test_crops_contain_the_central_match_and_the_cameras_see_it_there(megadepth):
    """The central 3D point projects, through each crop's intrinsics and pose, to its keypoint minus
    the crop offset, inside the crop; colour and depth are the photo's pixels at that offset."""
    root, tiny = megadepth
    pairs = MegaDepthPairs(root, OPTIONS, pairs_per_scene=12)
    for index in range(12):
        scene, i, j = pairs.pair(index)
        point_id, center_i, center_j = pairs.central_match(index)
        item = pairs[index]
        xyz = torch.from_numpy(tiny.points[np.flatnonzero(tiny.point_ids == point_id)]).to(torch.float64)
        for v, k, center in ((1, i, center_i), (2, j, center_j)):
            K_full = colmap_to_pri3d_intrinsics(
                read_scene_info(root / "scene_info" / "0001.npz").intrinsics[k]
            )
            left, top = np.round(K_full[:2, 2] - item[f"intrinsics{v}"][:2, 2].double().numpy()).astype(int)
            pixel = np.floor(center + 0.5) - (top, left)
            assert 0 <= pixel[0] < 32 and 0 <= pixel[1] < 40
            rowcol, _ = project_points(
                item[f"intrinsics{v}"].double(), transform_points(item[f"world_to_camera{v}"].double(), xyz)
            )
            # float32 intrinsics and pose of a ~6-unit-away camera: ~1e-5 px
            np.testing.assert_allclose(rowcol[0].numpy(), center - (top, left), atol=1e-3)
            depth = read_depth(root / f"MegaDepth_v1/0001/dense0/depths/photo_{k:03d}.h5")
            assert torch.equal(item[f"depth{v}"], torch.from_numpy(depth[top : top + 32, left : left + 40]))
            with Image.open(root / f"Undistorted_SfM/0001/images/photo_{k:03d}.jpg") as image:
                photo = (
                    np.asarray(image.convert("RGB"), dtype=np.float32)[top : top + 32, left : left + 40] / 255
                )
            expected = (photo - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
            np.testing.assert_allclose(item[f"color{v}"].permute(1, 2, 0).numpy(), expected, atol=1e-6)
        assert scene.name == "0001"


def test_matches_are_depth_consistent_pixels_of_the_two_crops(megadepth):
    root, _ = megadepth
    item = MegaDepthPairs(root, OPTIONS, pairs_per_scene=4)[2]
    valid = item["match_valid"]
    rows, cols = item["match1"][valid].T
    z = item["depth1"][rows, cols].double()
    K1, K2 = item["intrinsics1"].double(), item["intrinsics2"].double()
    camera1 = torch.stack(((cols - K1[0, 2]) / K1[0, 0] * z, (rows - K1[1, 2]) / K1[1, 1] * z, z), -1)
    one_to_two = item["world_to_camera2"].double() @ invert_rigid(item["world_to_camera1"].double())
    rowcol, _ = project_points(K2, transform_points(one_to_two, camera1))
    assert (torch.floor(rowcol + 0.5).long() == item["match2"][valid]).all()


def test_crop_window_keeps_the_center_inside():
    assert crop_window(np.array([50.2, 60.7]), (100, 200), (32, 40)) == (34, 41)
    assert crop_window(np.array([3.0, 198.9]), (100, 200), (32, 40)) == (0, 160)  # clamped inward
    assert crop_window(np.array([10.0, 10.0]), (20, 30), (32, 40)) == (0, 0)  # larger than the photo
    for row in np.linspace(-0.5, 99.4, 37):
        top, _ = crop_window(np.array([row, 5.0]), (100, 200), (32, 40))
        assert top <= np.floor(row + 0.5) < top + 32


def test_grayscale_photos_become_rgb_and_small_photos_are_padded(megadepth, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(megadepth[0], root)
    photo = root / f"Undistorted_SfM/0001/images/photo_{GRAYSCALE:03d}.jpg"
    with Image.open(photo) as image:
        gray = image.convert("L")  # as the original's COLMAP left grayscale photos (it crashed on them)
    gray.save(photo)
    with Image.open(photo) as image:
        assert image.mode == "L"
        gray = np.asarray(image, dtype=np.float32)  # as JPEG stored it
    pairs = MegaDepthPairs(
        root, dataclasses.replace(OPTIONS, size=(70, 120)), pairs_per_scene=40, scenes=["0001"]
    )
    index = next(index for index in range(40) if GRAYSCALE in pairs.pair(index)[1:])
    item = pairs[index]
    v = 1 + pairs.pair(index)[1:].index(GRAYSCALE)
    height, width = gray.shape  # smaller than the 70 x 120 crop
    rgb = (
        item[f"color{v}"] * torch.tensor(IMAGENET_STD)[:, None, None]
        + torch.tensor(IMAGENET_MEAN)[:, None, None]
    )
    assert rgb.shape == (3, 70, 120)
    expected = torch.from_numpy(gray / 255)
    for channel in rgb:  # float32 normalisation and back: ~1e-7
        torch.testing.assert_close(channel[:height, :width], expected, atol=1e-6, rtol=0)
    assert rgb[:, height:].abs().max() < 1e-6 and rgb[:, :, width:].abs().max() < 1e-6  # black padding
    assert (item[f"depth{v}"][height:] == 0).all() and (item[f"depth{v}"][:, width:] == 0).all()
    assert (item[f"depth{v}"][:height, :width] > 0).all()
    valid = item["match_valid"]
    assert valid.any()
    assert (item[f"match{v}"][valid][:, 0] < height).all() and (item[f"match{v}"][valid][:, 1] < width).all()


def test_unreadable_samples_are_skipped_with_a_reason(megadepth, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(megadepth[0], root)
    pairs = MegaDepthPairs(root, OPTIONS, pairs_per_scene=4, scenes=["0002"])
    _, i, _ = pairs.pair(0)
    (root / pairs.scenes[0].image_paths[i]).write_bytes(b"not a jpeg")
    item = pairs[0]
    assert set(item) == {"skip", "index"} and item["index"] == 0
    assert item["skip"].startswith("0002 photos photo_") and "cannot identify image file" in item["skip"]
    pairs = MegaDepthPairs(root, OPTIONS, pairs_per_scene=4, scenes=["0001"])  # photos intact
    _, k, _ = pairs.pair(0)
    depth_file = root / pairs.scenes[0].depth_paths[k]
    with h5py.File(depth_file, "w") as file:
        file["depth"] = np.ones((3, 5), np.float32) * 0.5  # not its image's size
    assert f"{depth_file.name}: depth map is (3, 5) (H, W), its image (" in pairs[0]["skip"]


def test_bad_settings_are_refused(megadepth, tmp_path):
    root, _ = megadepth
    with pytest.raises(ValueError, match="MegaDepth has no point clouds"):
        MegaDepthPairs(root, dataclasses.replace(OPTIONS, geometric_prior=True))
    with pytest.raises(ValueError, match=r"no scene has an image pair with overlap >= 1\.0"):
        MegaDepthPairs(root, OPTIONS, min_overlap=1.0, scenes=["0001"])
    with pytest.raises(FileNotFoundError, match="scene_info: not found"):
        MegaDepthPairs(tmp_path, OPTIONS)
    with pytest.raises(ValueError, match="pairs_per_scene=0"):
        MegaDepthPairs(root, OPTIONS, pairs_per_scene=0)


@pytest.mark.parametrize("geometric_prior", [False, True], ids=["view", "view+geo"])
def test_mixture_yields_both_and_collates(megadepth, pretrain_root, geometric_prior):
    options = PairOptions(size=(60, 80), num_matches=32, geometric_prior=geometric_prior, voxel_size=0.1)
    mixture = MixturePairs(pretrain_root, megadepth[0], options, pairs_per_scene=3)
    scannet = ScanNetPairs(pretrain_root, options=options)
    assert len(mixture) == len(scannet) + 6
    first, last = mixture[0], mixture[len(mixture) - 1]
    assert set(last) == set(first)  # the same keys from both sources
    assert last["index"] == len(mixture) - 1 and last["scene"] == "0002"
    assert torch.equal(first["color1"], scannet[0]["color1"])
    batch = collate_pairs([first, last, mixture[len(scannet)]])
    assert batch["batch_size"] == 3 and batch["color1"].shape == (3, 3, 60, 80)
    if geometric_prior:
        assert not last["vp_valid1"].any() and len(last["voxels2"]) == 0
        assert batch["counts"] == {"pairs_without_point_cloud": 2}
        assert batch["vp_valid1"][0].any() and not batch["vp_valid1"][1:].any()
    drawn = mixture.megadepth.pairs.copy()
    mixture.set_epoch(3)
    assert mixture.scannet.epoch == 3 and not np.array_equal(mixture.megadepth.pairs, drawn)


def test_generated_megadepth_pairs_see_their_central_point(tmp_path):
    """On `pri3d synth megadepth` data: the central 3D point (from the SfM model) projects through
    each crop's camera into the crop, and most pairs find matches."""
    generate(
        tmp_path, MegaDepthSynthConfig(scenes=1, images=8, max_size=64, points_per_image=30), progress=False
    )
    preprocess_megadepth(tmp_path, progress=False)
    model = read_model(tmp_path / "MegaDepth_v1_SfM" / "0000" / "sparse" / "manhattan" / "0")
    pairs = MegaDepthPairs(tmp_path, dataclasses.replace(OPTIONS, size=(24, 32)), pairs_per_scene=8)
    matched = 0
    for index in range(8):
        point_id, *centers = pairs.central_match(index)
        item = pairs[index]
        xyz = torch.from_numpy(model.point_xyz(np.array([point_id]))).double()
        for v, center in zip((1, 2), centers):
            rowcol, _ = project_points(
                item[f"intrinsics{v}"].double(), transform_points(item[f"world_to_camera{v}"].double(), xyz)
            )
            pixel = torch.floor(rowcol[0] + 0.5)
            assert 0 <= pixel[0] < 24 and 0 <= pixel[1] < 32
            # float32 crop intrinsics and pose: about 3e-6 px on this data; 1e-3 allows larger SfM scales
            offset = center - rowcol[0].numpy()
            np.testing.assert_allclose(offset, np.round(offset), atol=1e-3)
        matched += bool(item["match_valid"].any())
    assert matched >= 6
