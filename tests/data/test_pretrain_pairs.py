"""Pre-training pairs: geometry of the sampled matches, determinism, voxel chunks, collate."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from pri3d.data.collate import collate_pairs
from pri3d.data.pretrain_pairs import PairOptions, ScanNetPairs
from pri3d.geometry import invert_rigid, project_points, transform_points
from pri3d.io.pairs import read_pair_list
from pri3d.models.pri3d import Pri3D

OPTIONS = PairOptions(size=(60, 80), num_matches=64, geometric_prior=True)


def test_pair_list_paths_are_relative_and_parse(pretrain_root):
    pairs = read_pair_list(pretrain_root / "splits" / "overlap30.txt")
    assert pairs and all(scene.startswith("scene") and a != b for scene, a, b, _ in pairs)


def test_matches_are_geometrically_consistent(pretrain_root):
    dataset = ScanNetPairs(pretrain_root, options=OPTIONS)
    sample = dataset[0]
    assert sample["color1"].shape == (3, 60, 80) and sample["depth1"].shape == (60, 80)
    valid = sample["match_valid"]
    assert valid.all()
    r1, c1 = sample["match1"][:, 0], sample["match1"][:, 1]
    z1 = sample["depth1"][r1, c1].double()
    # move view-1 pixels into view 2 and check they land on the sampled view-2 pixels
    k1, k2 = sample["intrinsics1"].double(), sample["intrinsics2"].double()
    cam1 = torch.stack([(c1 - k1[0, 2]) / k1[0, 0] * z1, (r1 - k1[1, 2]) / k1[1, 1] * z1, z1], -1)
    to2 = sample["world_to_camera2"].double() @ invert_rigid(sample["world_to_camera1"].double())
    rc, z2 = project_points(k2, transform_points(to2, cam1))
    assert torch.equal(torch.floor(rc + 0.5).long(), sample["match2"])
    r2, c2 = sample["match2"][:, 0], sample["match2"][:, 1]
    assert (z2 - sample["depth2"][r2, c2].double()).abs().max() < 0.05


def test_samples_depend_on_seed_epoch_and_index_only(pretrain_root):
    a = ScanNetPairs(pretrain_root, options=OPTIONS)
    b = ScanNetPairs(pretrain_root, options=OPTIONS)
    torch.manual_seed(123)  # the global RNG must not matter
    s1 = a[1]
    torch.manual_seed(456)
    s2 = b[1]
    for key in ("color1", "color2", "match1", "match2", "vp_voxel1", "vp_pixel2"):
        assert torch.equal(s1[key], s2[key]), key
    b.set_epoch(1)
    assert not torch.equal(s1["match1"], b[1]["match1"])


def test_voxel_chunks_and_voxel_pixel_matches(pretrain_root):
    sample = ScanNetPairs(pretrain_root, options=OPTIONS)[0]
    for v in (1, 2):
        voxels = sample[f"voxels{v}"]
        assert voxels.dtype == torch.int32 and len(torch.unique(voxels, dim=0)) == len(voxels)
        assert sample[f"voxel_colors{v}"].min() >= 0 and sample[f"voxel_colors{v}"].max() <= 1
        assert sample[f"vp_valid{v}"].all()
        # a matched voxel's centre projects onto its matched pixel at the sensor's depth
        centres = (voxels[sample[f"vp_voxel{v}"]].double() + 0.5) * OPTIONS.voxel_size
        cam = transform_points(sample[f"world_to_camera{v}"].double(), centres)
        rc, z = project_points(sample[f"intrinsics{v}"].double(), cam)
        assert torch.equal(torch.floor(rc + 0.5).long(), sample[f"vp_pixel{v}"])
        pix = sample[f"vp_pixel{v}"]
        assert (
            z - sample[f"depth{v}"][pix[:, 0], pix[:, 1]].double()
        ).abs().max() < OPTIONS.visibility_threshold


def _keys(voxels: torch.Tensor) -> torch.Tensor:
    """One int64 per voxel row, ordered as the rows are lexicographically."""
    shifted = voxels.long() + 2**20
    return (shifted[:, 0] << 42) | (shifted[:, 1] << 21) | shifted[:, 2]


@pytest.mark.parametrize("margin", [0.0, 0.1])
def test_frustum_crop_is_a_subset_of_the_box_that_keeps_every_voxel_pixel_match(pretrain_root, margin):
    box = ScanNetPairs(pretrain_root, options=OPTIONS)
    frustum = ScanNetPairs(
        pretrain_root,
        options=PairOptions(**{**vars(OPTIONS), "voxel_crop": "frustum", "frustum_margin": margin}),
    )
    kept = total = 0
    for index in range(0, len(box), len(box) // 4):
        a, b = box[index], frustum[index]
        for v in (1, 2):
            box_voxels, crop = a[f"voxels{v}"], b[f"voxels{v}"]
            box_keys, crop_keys = _keys(box_voxels), _keys(crop)
            assert torch.isin(crop_keys, box_keys).all()
            kept, total = kept + len(crop), total + len(box_voxels)
            # every box voxel whose centre rounds to a pixel of the image (with z > 0) is still there,
            # with its colour: the voxel-pixel matches, the 3D loss's positives, all survive
            centres = (box_voxels.double() + 0.5) * OPTIONS.voxel_size
            camera = transform_points(a[f"world_to_camera{v}"].double(), centres)
            rc, z = project_points(a[f"intrinsics{v}"].double(), camera)
            pixel = torch.floor(rc + 0.5)
            seen = (z > 0) & (pixel >= 0).all(1) & (pixel[:, 0] < 60) & (pixel[:, 1] < 80)
            row = torch.searchsorted(crop_keys, box_keys[seen])  # both tables are sorted
            assert torch.equal(crop_keys[row.clamp(max=len(crop) - 1)], box_keys[seen])
            assert torch.equal(b[f"voxel_colors{v}"][row], a[f"voxel_colors{v}"][seen])
            # the same matches are found and sampled, only their rows into the smaller table differ
            assert torch.equal(a[f"vp_valid{v}"], b[f"vp_valid{v}"]) and a[f"vp_valid{v}"].all()
            assert torch.equal(a[f"vp_pixel{v}"], b[f"vp_pixel{v}"])
            assert torch.equal(box_voxels[a[f"vp_voxel{v}"]], crop[b[f"vp_voxel{v}"]])
    assert kept < total  # the chunk boxes do hold voxels outside the view


def test_a_view_whose_frustum_misses_its_chunk_box_is_skipped_with_why(pretrain_root, tmp_path):
    copy = tmp_path / "pre"
    shutil.copytree(pretrain_root, copy)
    scene, frame, *_ = read_pair_list(copy / "splits" / "overlap30.txt")[0]
    pose_file = copy / scene / "pose" / f"{frame}.txt"
    camera_to_world = np.loadtxt(pose_file)
    camera_to_world[:3, 3] += 100 * camera_to_world[:3, 0]  # 100 m to the camera's right, box left behind
    np.savetxt(pose_file, camera_to_world)
    frustum = PairOptions(**{**vars(OPTIONS), "voxel_crop": "frustum"})
    sample = ScanNetPairs(copy, options=frustum)[0]
    assert (
        sample["skip"]
        == f"{scene} frame {frame}: no voxel of the frame's chunk box is inside its view frustum"
    )
    assert "skip" not in ScanNetPairs(copy, options=OPTIONS)[0]  # the box crop does not look at the view


def test_voxel_crop_options_are_checked():
    with pytest.raises(ValueError, match="voxel_crop='sphere'"):
        PairOptions(voxel_crop="sphere")
    with pytest.raises(ValueError, match=r"frustum_margin=-0\.1"):
        PairOptions(voxel_crop="frustum", frustum_margin=-0.1)


def test_collate_offsets_voxel_indices(pretrain_root):
    dataset = ScanNetPairs(pretrain_root, options=OPTIONS)
    samples = [dataset[0], dataset[1], {"skip": "broken.jpg: cannot read", "index": 2}]
    batch = collate_pairs(samples)
    assert batch["batch_size"] == 2 and batch["skipped"] == ["broken.jpg: cannot read"]
    assert batch["color1"].shape == (2, 3, 60, 80) and batch["match1"].shape == (2, 64, 2)
    n0 = len(samples[0]["voxels1"])
    assert batch["voxels1"].shape == (n0 + len(samples[1]["voxels1"]), 4)
    assert torch.equal(batch["voxels1"][batch["vp_voxel1"][1], 0], torch.ones(64, dtype=torch.int32))
    assert torch.equal(
        batch["voxels1"][batch["vp_voxel1"][1], 1:], samples[1]["voxels1"][samples[1]["vp_voxel1"]]
    )


def test_unreadable_frame_is_skipped_not_fatal(pretrain_root, tmp_path):
    copy = tmp_path / "pre"
    shutil.copytree(pretrain_root, copy)
    scene, frame, *_ = read_pair_list(copy / "splits" / "overlap30.txt")[0]
    (copy / scene / "color" / f"{frame}.jpg").write_bytes(b"not a jpeg")
    sample = ScanNetPairs(copy, options=OPTIONS)[0]
    assert "skip" in sample and f"{frame}" in sample["skip"]


def test_point_cloud_cache_keeps_scenes_within_its_budget(pretrain_root):
    pairs = read_pair_list(pretrain_root / "splits" / "overlap30.txt")
    first = {scene: index for index, (scene, *_) in reversed(list(enumerate(pairs)))}
    order = sorted(first)  # visit scene0000_00, scene0001_00, then both again
    assert len(order) == 2
    roomy = ScanNetPairs(pretrain_root, options=OPTIONS)
    tight = ScanNetPairs(pretrain_root, options=PairOptions(**{**vars(OPTIONS), "cloud_cache_mb": 1e-6}))
    for scene in [*order, *order]:
        a, b = roomy[first[scene]], tight[first[scene]]
        for key in ("voxels1", "voxel_colors2", "vp_voxel1", "vp_pixel2"):
            assert torch.equal(a[key], b[key]), key
    assert list(roomy._clouds) == order  # both scenes, least recently used first
    assert list(tight._clouds) == order[-1:]  # only the last one used


def _first_pair_of(scene: str, root) -> int:
    return next(
        i for i, (name, *_) in enumerate(read_pair_list(root / "splits" / "overlap30.txt")) if name == scene
    )


def test_a_scene_without_a_point_cloud_trains_the_2d_losses_only(pretrain_root, tmp_path):
    """Preprocessing skips the cloud of a scene without a mesh; its pairs must not kill the run."""
    copy = tmp_path / "pre"
    shutil.copytree(pretrain_root, copy)
    (copy / "pointcloud" / "scene0001_00.npz").unlink()
    dataset = ScanNetPairs(copy, options=OPTIONS)
    assert dataset.scenes_without_cloud == {"scene0001_00": 105}
    with_cloud = dataset[_first_pair_of("scene0000_00", copy)]
    without = dataset[_first_pair_of("scene0001_00", copy)]
    assert "skip" not in without and without["match_valid"].any()  # the 2D part is whole
    for v in (1, 2):
        assert without[f"voxels{v}"].shape == (0, 3) and without[f"voxel_colors{v}"].shape == (0, 3)
        assert without[f"vp_pixel{v}"].shape == (64, 2) and not without[f"vp_valid{v}"].any()

    for samples in ([with_cloud, without], [without, with_cloud]):
        batch = collate_pairs(samples)
        assert batch["batch_size"] == 2 and batch["counts"] == {"pairs_without_point_cloud": 1}
        for v in (1, 2):
            assert len(batch[f"voxels{v}"]) == len(with_cloud[f"voxels{v}"])
            assert batch[f"vp_voxel{v}"].max() < len(batch[f"voxels{v}"])  # every index is a real row
            assert batch[f"vp_valid{v}"].sum() == with_cloud[f"vp_valid{v}"].sum()

    # a micro-batch of such pairs alone still trains the 2D losses; its 3D loss is 0 with zero gradients
    alone = collate_pairs([without, without])
    assert alone["batch_size"] == 2 and not alone["skipped"] and alone["voxels1"].shape == (0, 4)
    assert alone["counts"] == {"pairs_without_point_cloud": 2}
    model = Pri3D("Res18UNet", geometric_prior=True, depth=True)
    losses = model(alone)
    assert losses["geo_loss"] == 0 and losses["view_loss"] > 0 and losses["depth_loss"] > 0
    losses["total_loss"].backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.backbone3d.parameters())
    assert model.backbone.encoder.conv1.weight.grad.abs().sum() > 0


def test_a_pair_list_without_any_point_cloud_is_refused_up_front(pretrain_root, tmp_path):
    copy = tmp_path / "pre"
    shutil.copytree(pretrain_root, copy)
    shutil.rmtree(copy / "pointcloud")
    with pytest.raises(
        FileNotFoundError, match=r"no scene .* has a point cloud in .*pointcloud.*geometric_prior=false"
    ):
        ScanNetPairs(copy, options=OPTIONS)
    assert ScanNetPairs(copy, options=PairOptions(size=(60, 80), num_matches=64))[0]["match_valid"].any()


def test_an_unreadable_point_cloud_skips_the_sample(pretrain_root, tmp_path):
    copy = tmp_path / "pre"
    shutil.copytree(pretrain_root, copy)
    cloud = copy / "pointcloud" / "scene0001_00.npz"
    cloud.write_bytes(cloud.read_bytes()[:5000])  # cut short, as by a full disk
    sample = ScanNetPairs(copy, options=OPTIONS)[_first_pair_of("scene0001_00", copy)]
    assert "skip" in sample and "scene0001_00.npz: not a readable point cloud .npz" in sample["skip"]
