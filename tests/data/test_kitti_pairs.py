"""KITTIPairs on the analytic street (tests/kitti_street.py): crops around a stored match, cameras that
map the street's 3D points to the cropped (or resized) pixels, ScanNet-pair keys, determinism, skips."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from kitti_street import DRIVES, K2, H, W, camera2_to_world, depth_along, write_street

from pri3d.data.collate import collate_pairs
from pri3d.data.kitti_pairs import KITTIPairs
from pri3d.data.pretrain_pairs import PairOptions, ScanNetPairs
from pri3d.io.kitti import MAPPING_NAME, image_path, read_kitti_pairs
from pri3d.preprocess.kitti import preprocess_kitti

SIZE = (16, 32)
OPTIONS = PairOptions(size=SIZE, num_matches=64)


@pytest.fixture(scope="module")
def street(tmp_path_factory) -> Path:
    root = write_street(tmp_path_factory.mktemp("kitti") / "kitti")
    preprocess_kitti(root, progress=False)
    return root


def _offset(k: torch.Tensor) -> tuple[int, int]:
    """(top, left) of a crop from its principal point (the street's K2 is the full frame's)."""
    return round(K2[1, 2] - float(k[1, 2])), round(K2[0, 2] - float(k[0, 2]))


def test_items_have_scannet_pair_keys_and_collate(street, pretrain_root):
    dataset = KITTIPairs(street, OPTIONS)
    sample = dataset[0]
    scannet = ScanNetPairs(pretrain_root, options=PairOptions(size=SIZE, num_matches=64))[0]
    assert sorted(sample) == sorted(scannet)
    assert sample["scene"] == DRIVES[0][1] and sample["frames"] == (DRIVES[0][3], DRIVES[0][3] + 1)
    assert sample["color1"].shape == (3, *SIZE) and sample["depth2"].shape == SIZE
    assert sample["match1"].shape == (64, 2) and sample["match_valid"].dtype == torch.bool
    batch = collate_pairs([dataset[1], dataset[2]])
    assert batch["batch_size"] == 2 and batch["color1"].shape == (2, 3, *SIZE)


def test_crops_hold_a_stored_match_and_cameras_map_street_points_to_cropped_pixels(street):
    dataset = KITTIPairs(street, OPTIONS)
    pairs = read_kitti_pairs(street / "preprocessed" / "pairs.txt")
    matched = 0
    for index, pair in enumerate(pairs):
        sample = dataset[index]
        offsets = [_offset(sample[f"intrinsics{v}"]) for v in (1, 2)]
        # The windows are those centred (then shifted inside the image) on one stored match.
        mapping = np.load(street / "preprocessed" / pair.drive / MAPPING_NAME)[pair.first_row :][
            : pair.num_matches
        ]
        tops = np.clip(mapping[:, [0, 2]] - SIZE[0] // 2, 0, H - SIZE[0])
        lefts = np.clip(mapping[:, [1, 3]] - SIZE[1] // 2, 0, W - SIZE[1])
        windows = np.stack((tops[:, 0], lefts[:, 0], tops[:, 1], lefts[:, 1]), axis=1)
        assert (windows == np.array(offsets).ravel()).all(1).any()
        for v, frame in enumerate(pair[2:4], start=1):
            top, left = offsets[v - 1]
            # camera 2's pose, not camera 0's
            np.testing.assert_allclose(
                sample[f"world_to_camera{v}"].double().inverse().numpy(), camera2_to_world(frame), atol=1e-4
            )  # float32 poses ~1e-7 relative, positions up to ~30 m
            depth = sample[f"depth{v}"].double()
            rows, cols = torch.nonzero(depth > 0, as_tuple=True)
            assert len(rows)
            # a valid cropped pixel is the street's point at the full frame's pixel (row + top, col + left)
            full = np.stack((rows.numpy() + top, cols.numpy() + left), -1).astype(np.float64)
            np.testing.assert_allclose(
                depth[rows, cols].numpy(), depth_along(frame, full), atol=1 / 512 + 1e-6
            )
        # sampled matches: view 1's point projects (nearest pixel) onto view 2's matched pixel
        valid = sample["match_valid"]
        matched += int(valid.sum())
        p1, p2 = sample["match1"][valid].double(), sample["match2"][valid].double()
        k1, k2 = sample["intrinsics1"].double(), sample["intrinsics2"].double()
        z = sample["depth1"].double()[p1[:, 0].long(), p1[:, 1].long()]
        camera1 = torch.stack(
            ((p1[:, 1] - k1[0, 2]) / k1[0, 0] * z, (p1[:, 0] - k1[1, 2]) / k1[1, 1] * z, z), 1
        )
        moved = sample["world_to_camera2"].double() @ sample["world_to_camera1"].double().inverse()
        camera2 = camera1 @ moved[:3, :3].T + moved[:3, 3]
        projected = torch.stack(
            (
                k2[1, 1] * camera2[:, 1] / camera2[:, 2] + k2[1, 2],
                k2[0, 0] * camera2[:, 0] / camera2[:, 2] + k2[0, 2],
            ),
            1,
        )
        assert torch.equal(torch.floor(projected + 0.5), p2)
    assert matched > 100


def test_resize_keeps_cameras_exact_and_invalid_depth_zero(street):
    dataset = KITTIPairs(street, OPTIONS, resize=True)
    sample = dataset[0]
    pair = dataset.pairs[0]
    new_w = int(SIZE[0] * W / H)  # 53: torchvision's Resize(H) width
    sx, sy = new_w / W, SIZE[0] / H
    k = sample["intrinsics1"].double()
    np.testing.assert_allclose(
        k.numpy(),
        [
            [K2[0, 0] * sx, 0, (K2[0, 2] + 0.5) * sx - 0.5],
            [0, K2[1, 1] * sy, (K2[1, 2] + 0.5) * sy - 0.5],
            [0, 0, 1],
        ],
        rtol=1e-6,  # float32
    )
    # Nearest resampling: each pixel takes the full-resolution pixel holding its centre, zeros included.
    rows = np.floor((np.arange(SIZE[0]) + 0.5) / sy).astype(int)
    cols = np.floor((np.arange(SIZE[1]) + 0.5) / sx).astype(int)
    full = dataset._read_frame(pair.drive, pair.split, pair.frame_i)[1]
    np.testing.assert_array_equal(sample["depth1"].numpy(), full[np.ix_(rows, cols)])
    assert (sample["depth1"] == 0).any()
    # A street point seen at full-resolution pixel (R, C) projects with the resized camera to the
    # resized position of that pixel's centre, ((R + 0.5) * sy - 0.5, (C + 0.5) * sx - 0.5).
    full = (
        np.stack(np.meshgrid(np.arange(H), np.arange(W), indexing="ij"), -1).reshape(-1, 2).astype(np.float64)
    )
    z = depth_along(pair.frame_i, full)
    camera = np.stack(((full[:, 1] - K2[0, 2]) / K2[0, 0] * z, (full[:, 0] - K2[1, 2]) / K2[1, 1] * z, z), -1)
    world = camera @ camera2_to_world(pair.frame_i)[:3, :3].T + camera2_to_world(pair.frame_i)[:3, 3]
    w2c = sample["world_to_camera1"].double().numpy()
    seen = world @ w2c[:3, :3].T + w2c[:3, 3]
    k = k.numpy()
    projected = np.stack(
        (k[1, 1] * seen[:, 1] / seen[:, 2] + k[1, 2], k[0, 0] * seen[:, 0] / seen[:, 2] + k[0, 2]), -1
    )
    # float32 intrinsics and pose: ~1e-7 relative on positions of ~50 px and points of ~70 m
    np.testing.assert_allclose(projected, (full + 0.5) * [sy, sx] - 0.5, atol=1e-3)


def test_deterministic_per_seed_epoch_index(street):
    first, second = KITTIPairs(street, OPTIONS), KITTIPairs(street, OPTIONS)
    a, b = first[4], second[4]
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
    second.set_epoch(1)
    later = [second[i] for i in range(8)]
    earlier = [first[i] for i in range(8)]
    assert any(not torch.equal(x["match1"], y["match1"]) for x, y in zip(earlier, later))
    assert any(not torch.equal(x["intrinsics1"], y["intrinsics1"]) for x, y in zip(earlier, later))


def test_unreadable_frame_is_skipped(street, tmp_path):
    root = tmp_path / "kitti"
    shutil.copytree(street, root)
    dataset = KITTIPairs(root, OPTIONS)
    pair = dataset.pairs[0]
    image_path(root, DRIVES[0][0], pair.frame_i - DRIVES[0][3]).write_bytes(b"broken")
    sample = dataset[0]
    assert sample["index"] == 0 and "skip" in sample
    assert f"{pair.frame_i - DRIVES[0][3]:06d}.png" in sample["skip"]
    assert collate_pairs([sample, dataset[len(dataset) - 1]])["batch_size"] == 1


def test_geometric_prior_and_missing_pairs_are_refused(street, tmp_path):
    with pytest.raises(ValueError, match="KITTI has no point clouds"):
        KITTIPairs(street, PairOptions(geometric_prior=True))
    with pytest.raises(FileNotFoundError, match=r"pairs.txt: KITTI pair list not found"):
        KITTIPairs(tmp_path, OPTIONS)
