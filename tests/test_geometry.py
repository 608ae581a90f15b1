"""Tests of pri3d.geometry on cameras whose answers are known analytically."""

from __future__ import annotations

import math

import pytest
import torch

from pri3d.geometry import (
    backproject_depth,
    depth_to_world,
    invert_rigid,
    pixel_correspondences,
    points_in_frustum,
    project_points,
    sample_pixel_correspondences,
    scale_intrinsics,
    sparse_quantize,
    transform_points,
    valid_depth,
    voxel_pixel_correspondences,
    voxelize,
)

H, W = 60, 80
FOCAL = 70.0
DTYPES = [torch.float32, torch.float64]


def intrinsics(h: int = H, w: int = W, focal: float = FOCAL, dtype=torch.float64) -> torch.Tensor:
    """Pinhole K with the principal point at the image centre (integer-centre convention)."""
    return torch.tensor([[focal, 0.0, (w - 1) / 2], [0.0, focal, (h - 1) / 2], [0.0, 0.0, 1.0]], dtype=dtype)


def rotation(axis: str, degrees: float) -> torch.Tensor:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    if axis == "x":
        m = [[1, 0, 0], [0, c, -s], [0, s, c]]
    elif axis == "y":
        m = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    else:
        m = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    return torch.tensor(m, dtype=torch.float64)


def rigid(R: torch.Tensor | None = None, t=(0.0, 0.0, 0.0)) -> torch.Tensor:
    T = torch.eye(4, dtype=torch.float64)
    if R is not None:
        T[:3, :3] = R
    T[:3, 3] = torch.tensor(t, dtype=torch.float64)
    return T


def render_plane(
    K: torch.Tensor, camera_to_world: torch.Tensor, normal, offset: float, h: int = H, w: int = W
) -> torch.Tensor:
    """Depth map of the world plane normal · X = offset (0 where the plane is behind the camera)."""
    K = K.double()
    camera_to_world = camera_to_world.double()
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    rays = torch.stack(
        ((cols - K[0, 2]) / K[0, 0], (rows - K[1, 2]) / K[1, 1], torch.ones_like(rows)), dim=-1
    )  # [H, W, 3] camera rays with z = 1
    n = torch.tensor(normal, dtype=torch.float64)
    centre = camera_to_world[:3, 3]
    directions = rays @ camera_to_world[:3, :3].T  # world
    depth = (offset - n @ centre) / (directions @ n)
    return torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.zeros_like(depth))


def as_set(pos1: torch.Tensor, pos2: torch.Tensor) -> set[tuple[int, int, int, int]]:
    return {tuple(row) for row in torch.cat((pos1, pos2), dim=1).tolist()}


# --- cameras -----------------------------------------------------------------------------------


def test_scale_intrinsics_scannet_depth_to_training_size():
    K = torch.tensor([[577.870605, 0.0, 319.5], [0.0, 577.870605, 239.5], [0.0, 0.0, 1.0]])
    K_small = scale_intrinsics(K.double(), (480, 640), (240, 320))
    expected = torch.tensor([[288.9353025, 0.0, 159.5], [0.0, 288.9353025, 119.5], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(K_small, expected.double(), rtol=0, atol=1e-9)
    # 4x4 and batched inputs keep their shape; the input is not modified.
    K4 = torch.eye(4).expand(2, 4, 4).clone()
    K4[:, :3, :3] = K
    out = scale_intrinsics(K4, (480, 640), (240, 320))
    assert out.shape == (2, 4, 4) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, :3, :3], expected.expand(2, 3, 3))
    assert out[0, 3, 3] == 1 and K4[0, 0, 0] == K[0, 0]


def test_invert_rigid_and_transform_points_batched():
    T = torch.stack((rigid(rotation("x", 30) @ rotation("z", -50), (1.0, -2.0, 0.5)), rigid()))
    inverse = invert_rigid(T)
    torch.testing.assert_close(inverse @ T, torch.eye(4, dtype=torch.float64).expand(2, 4, 4))
    points = torch.randn(2, 7, 3, dtype=torch.float64)
    homogeneous = torch.cat((points, torch.ones(2, 7, 1, dtype=torch.float64)), dim=-1)
    torch.testing.assert_close(transform_points(T, points), (homogeneous @ T.transpose(1, 2))[..., :3])
    torch.testing.assert_close(transform_points(inverse, transform_points(T, points)), points)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backproject_fronto_parallel_plane(dtype):
    K = intrinsics(dtype=dtype)
    points = backproject_depth(torch.full((H, W), 2.0, dtype=dtype), K)
    assert points.shape == (H, W, 3) and points.dtype == dtype
    cols = torch.arange(W, dtype=torch.float64)
    rows = torch.arange(H, dtype=torch.float64)
    torch.testing.assert_close(points[..., 2], torch.full((H, W), 2.0, dtype=dtype))
    torch.testing.assert_close(points[..., 0], ((cols - 39.5) * 2 / FOCAL).expand(H, W).to(dtype))
    torch.testing.assert_close(points[..., 1], ((rows - 29.5) * 2 / FOCAL)[:, None].expand(H, W).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_backproject_project_round_trip_batched(dtype):
    gen = torch.Generator().manual_seed(0)
    depth = (0.5 + 4 * torch.rand(2, H, W, generator=gen)).to(dtype)
    K_other = scale_intrinsics(intrinsics(120, 160, 140.0), (120, 160), (H, W))
    K = torch.stack((intrinsics(dtype=dtype), K_other.to(dtype)))
    points = backproject_depth(depth, K.to(dtype))  # [2, H, W, 3]
    rowcol, z = project_points(K.to(dtype), points.flatten(1, 2))
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    grid = torch.stack((rows, cols), dim=-1).flatten(0, 1).to(dtype).expand(2, -1, -1)
    tol = 1e-3 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(rowcol, grid, rtol=0, atol=tol)
    torch.testing.assert_close(z, depth.flatten(1))


def test_depth_to_world_and_validity():
    depth = torch.full((H, W), 2.0, dtype=torch.float64)
    depth[3, 4] = 0.0
    depth[5, 6] = float("nan")
    depth[7, 8] = -1.0
    camera_to_world = rigid(rotation("y", 90), (1.0, 2.0, 3.0))
    world, valid = depth_to_world(depth, intrinsics(), camera_to_world)
    assert world.shape == (H, W, 3) and valid.shape == (H, W)
    assert valid.sum() == H * W - 3 and not valid[3, 4] and not valid[5, 6] and not valid[7, 8]
    # The principal ray at depth 2 (camera +z) ends at centre + 2·(world direction of +z) = +2 x.
    ray_end = world[29:31, 39:41].mean(dim=(0, 1))
    torch.testing.assert_close(ray_end, torch.tensor([3.0, 2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(world[3, 4], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert valid_depth(torch.tensor([0, 5], dtype=torch.int32)).tolist() == [False, True]


# --- pixel correspondences ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_identical_views_match_themselves(dtype):
    gen = torch.Generator().manual_seed(1)
    depth1 = (0.5 + 5 * torch.rand(H, W, generator=gen)).to(dtype)
    depth1[10:20, 30:35] = 0.0
    depth1[0, :] = float("nan")
    depth2 = depth1.clone()
    depth2[40:45, 60:70] = 0.0  # holes in view 2 only
    world_to_camera = invert_rigid(rigid(rotation("x", 17) @ rotation("y", -33), (0.3, -1.2, 2.5))).to(dtype)
    K = intrinsics(dtype=dtype)
    pos1, pos2 = pixel_correspondences(depth1, K, world_to_camera, depth2, K, world_to_camera)
    assert pos1.dtype == pos2.dtype == torch.int64
    assert torch.equal(pos1, pos2)
    expected = (valid_depth(depth1) & valid_depth(depth2)).nonzero()
    assert torch.equal(pos1, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pure_rotation_follows_homography(dtype):
    K = intrinsics()
    camera_to_world1 = rigid()
    camera_to_world2 = rigid(rotation("y", 6) @ rotation("x", -4))
    plane = ((0.1, -0.05, 1.0), 3.0)  # slightly slanted wall about 3 m ahead
    depth1 = render_plane(K, camera_to_world1, *plane)
    depth2 = render_plane(K, camera_to_world2, *plane)
    world_to_camera1, world_to_camera2 = invert_rigid(camera_to_world1), invert_rigid(camera_to_world2)
    pos1, pos2 = pixel_correspondences(
        depth1.to(dtype),
        K.to(dtype),
        world_to_camera1.to(dtype),
        depth2.to(dtype),
        K.to(dtype),
        world_to_camera2.to(dtype),
    )

    # Rotation about the centre: p2 ~ K R K^-1 p1 whatever the depth.
    homography = K @ (world_to_camera2[:3, :3] @ camera_to_world1[:3, :3]) @ torch.linalg.inv(K)
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pixels = torch.stack((cols, rows, torch.ones_like(rows)), dim=-1).double().reshape(-1, 3)
    mapped = pixels @ homography.T
    rowcol = torch.stack((mapped[:, 1], mapped[:, 0]), dim=-1) / mapped[:, 2:]
    nearest = torch.floor(rowcol + 0.5)
    inside = (nearest >= 0).all(dim=1) & (nearest[:, 0] < H) & (nearest[:, 1] < W)
    # Skip pixels within float32 noise of a rounding boundary.
    unambiguous = ((rowcol - torch.floor(rowcol) - 0.5).abs() > 1e-3).all(dim=1)
    expected = {
        (r, c, int(nearest[i, 0]), int(nearest[i, 1]))
        for i, (r, c) in enumerate(zip(rows.flatten().tolist(), cols.flatten().tolist()))
        if inside[i] and unambiguous[i]
    }
    found = as_set(pos1, pos2)
    assert expected <= found
    ambiguous = int((inside & ~unambiguous).sum())
    assert len(found) <= len(expected) + ambiguous
    assert len(expected) > H * W // 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_translated_camera_shifts_matches_and_rejects_occlusion(dtype):
    K = intrinsics(dtype=dtype)
    depth = torch.full((H, W), 2.0, dtype=dtype)
    world_to_camera1 = torch.eye(4, dtype=dtype)
    # Camera 2 is 0.2 m to the right: a point at depth 2 moves fx·0.2/2 = 7 px to the left.
    world_to_camera2 = invert_rigid(rigid(t=(0.2, 0.0, 0.0))).to(dtype)
    pos1, pos2 = pixel_correspondences(depth, K, world_to_camera1, depth, K, world_to_camera2)
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W - 7) + 7, indexing="ij")
    expected1 = torch.stack((rows, cols), dim=-1).reshape(-1, 2)
    assert torch.equal(pos1, expected1)
    assert torch.equal(pos2, expected1 - torch.tensor([0, 7]))

    # A nearer wall in view 2 hides the plane: no match, empty results (no exception).
    wall = torch.full((H, W), 1.5, dtype=dtype)
    none1, none2 = pixel_correspondences(depth, K, world_to_camera1, wall, K, world_to_camera2)
    assert none1.shape == none2.shape == (0, 2) and none1.dtype == torch.int64
    # Depth mismatch just inside / outside the threshold.
    near = pixel_correspondences(depth, K, world_to_camera1, depth + 0.04, K, world_to_camera2)[0]
    far = pixel_correspondences(depth, K, world_to_camera1, depth + 0.06, K, world_to_camera2)[0]
    assert len(near) == len(expected1) and len(far) == 0


def test_views_of_different_sizes():
    K1 = intrinsics()
    K2 = scale_intrinsics(K1, (H, W), (H // 2, W // 2))
    depth1 = torch.full((H, W), 2.0, dtype=torch.float64)
    depth2 = torch.full((H // 2, W // 2), 2.0, dtype=torch.float64)
    pose = invert_rigid(rigid(rotation("z", 10), (0.1, 0.2, 0.3)))
    pos1, pos2 = pixel_correspondences(depth1, K1, pose, depth2, K2, pose)
    # Same camera at half size: u2 = 0.5·u1 - 0.25, never on a rounding tie, always inside.
    assert len(pos1) == H * W
    assert torch.equal(pos2, torch.floor(pos1.double() * 0.5 + 0.25).long())
    back1, back2 = pixel_correspondences(depth2, K2, pose, depth1, K1, pose)
    assert len(back1) == (H // 2) * (W // 2)
    # Back: u1 = 2·u2 + 0.5, exactly on a rounding tie, so either neighbour is right.
    assert set((back2 - 2 * back1).flatten().tolist()) <= {0, 1}


@pytest.mark.parametrize("pixel_center", [0.0, 0.5])
def test_crop_offsets_match_full_images(pixel_center):
    K = intrinsics()
    world_to_camera1 = torch.eye(4, dtype=torch.float64)
    world_to_camera2 = invert_rigid(rigid(rotation("y", 3), (0.15, -0.05, 0.1)))
    plane = ((0.0, 0.2, 1.0), 2.5)
    depth1 = render_plane(K, invert_rigid(world_to_camera1), *plane)
    depth2 = render_plane(K, invert_rigid(world_to_camera2), *plane)
    full1, full2 = pixel_correspondences(depth1, K, world_to_camera1, depth2, K, world_to_camera2)

    # COLMAP convention: the same camera has its principal point 0.5 px further.
    K_crop = K.clone()
    K_crop[:2, 2] += pixel_center
    (r1, c1), (r2, c2), (h, w) = (5, 10), (8, 3), (40, 50)
    pos1, pos2 = pixel_correspondences(
        depth1[r1 : r1 + h, c1 : c1 + w],
        K_crop,
        world_to_camera1,
        depth2[r2 : r2 + h, c2 : c2 + w],
        K_crop,
        world_to_camera2,
        offset1=(r1, c1),
        offset2=torch.tensor([r2, c2]),
        pixel_center=pixel_center,
    )
    shift1, shift2 = torch.tensor([r1, c1]), torch.tensor([r2, c2])
    keep = (
        ((full1 - shift1) >= 0).all(1)
        & ((full1 - shift1) < torch.tensor([h, w])).all(1)
        & ((full2 - shift2) >= 0).all(1)
        & ((full2 - shift2) < torch.tensor([h, w])).all(1)
    )
    assert keep.sum() > 100
    assert torch.equal(pos1, full1[keep] - shift1)
    assert torch.equal(pos2, full2[keep] - shift2)


def test_points_behind_camera_two_are_rejected():
    K = intrinsics()
    depth = torch.full((H, W), 2.0, dtype=torch.float64)
    world_to_camera1 = torch.eye(4, dtype=torch.float64)
    turned = invert_rigid(rigid(rotation("y", 180)))
    # The mirrored projection lands inside the image and a huge threshold accepts any depth,
    # so only the z > 0 test can reject these points.
    pos1, _ = pixel_correspondences(depth, K, world_to_camera1, depth, K, turned, threshold=100.0)
    assert len(pos1) == 0
    control, _ = pixel_correspondences(depth, K, world_to_camera1, depth, K, world_to_camera1, threshold=100)
    assert len(control) == H * W


# --- batched sampler ---------------------------------------------------------------------------


def batch_of_pairs(h: int = H, w: int = W):
    """Three pairs: many matches (shifted view), 5 matches, no match. View 2 is half size."""
    K1 = intrinsics(h, w)
    K2 = scale_intrinsics(K1, (h, w), (h // 2, w // 2))
    world_to_camera1 = torch.eye(4, dtype=torch.float64).expand(3, 4, 4)
    world_to_camera2 = invert_rigid(rigid(rotation("y", 2), (0.2, 0.0, 0.0))).expand(3, 4, 4)
    depth1 = torch.full((3, h, w), 2.0, dtype=torch.float64)
    depth1[1] = 0.0
    depth1[1, h // 3, w // 3 : w // 3 + 5] = 2.0  # five valid pixels
    depth2 = render_plane(K2, invert_rigid(world_to_camera2[0]), (0.0, 0.0, 1.0), 2.0, h // 2, w // 2)
    depth2 = depth2.expand(3, -1, -1).clone()
    depth2[2] = 1.0  # nearer wall: pair 2 has no match
    return depth1, K1.expand(3, 3, 3), world_to_camera1, depth2, K2.expand(3, 3, 3), world_to_camera2


def test_sampler_shapes_validity_and_subset():
    pairs = batch_of_pairs()
    S = 256
    pos1, pos2, valid = sample_pixel_correspondences(*pairs, S, generator=torch.Generator().manual_seed(0))
    assert pos1.shape == pos2.shape == (3, S, 2) and valid.shape == (3, S)
    assert pos1.dtype == pos2.dtype == torch.int64 and valid.dtype == torch.bool
    assert valid[0].all() and valid[1].all() and not valid[2].any()
    assert not pos1[2].any() and not pos2[2].any()

    truth = [as_set(*pixel_correspondences(*(t[b] for t in pairs))) for b in range(3)]
    assert len(truth[0]) > S and len(truth[1]) == 5 and len(truth[2]) == 0
    sampled0 = as_set(pos1[0], pos2[0])
    assert len(sampled0) == S and sampled0 <= truth[0]  # without replacement
    sampled1 = [tuple(r) for r in torch.cat((pos1[1], pos2[1]), 1).tolist()]
    assert set(sampled1) == truth[1]  # with replacement: 256 draws from 5 cover all of them


def test_sampler_gives_the_full_match_set():
    h, w, focal = 6, 8, 8.0
    K = intrinsics(h, w, focal).expand(3, 3, 3)
    world_to_camera1 = torch.eye(4, dtype=torch.float64).expand(3, 4, 4)
    # Pair 0: identical views; pair 1: camera 2 shifted 2 px, 3 valid pixels; pair 2: occluded.
    world_to_camera2 = torch.stack((rigid(), rigid(t=(-0.5, 0.0, 0.0)), rigid()))
    depth1 = torch.full((3, h, w), 2.0, dtype=torch.float64)
    depth1[1] = 0.0
    depth1[1, 2, 3:6] = 2.0
    depth2 = depth1.clone()
    depth2[1] = 2.0
    depth2[2] = 1.0
    pairs = (depth1, K, world_to_camera1, depth2, K, world_to_camera2)
    # Pair 0 has exactly h·w matches: drawing h·w without replacement returns the whole set;
    # pair 1 draws h·w times from 3 matches, which covers them.
    generator = torch.Generator().manual_seed(3)
    pos1, pos2, valid = sample_pixel_correspondences(*pairs, h * w, generator=generator)
    for b in range(3):
        truth = as_set(*pixel_correspondences(*(t[b] for t in pairs)))
        assert as_set(pos1[b][valid[b]], pos2[b][valid[b]]) == truth
    assert valid[0].all() and valid[1].all() and not valid[2].any()
    assert as_set(pos1[1], pos2[1]) == {(2, c, 2, c - 2) for c in (3, 4, 5)}


def test_sampler_is_deterministic_with_a_seeded_generator():
    pairs = batch_of_pairs()
    first = sample_pixel_correspondences(*pairs, 64, generator=torch.Generator().manual_seed(7))
    again = sample_pixel_correspondences(*pairs, 64, generator=torch.Generator().manual_seed(7))
    other = sample_pixel_correspondences(*pairs, 64, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_sampler_float32_matches_unbatched():
    pairs = tuple(t.float() for t in batch_of_pairs())
    pos1, pos2, valid = sample_pixel_correspondences(*pairs, 32, generator=torch.Generator().manual_seed(0))
    truth = as_set(*pixel_correspondences(*(t[0] for t in pairs)))
    assert valid[0].all() and as_set(pos1[0], pos2[0]) <= truth


# --- voxels ------------------------------------------------------------------------------------


def test_voxelize_floors_negative_coordinates():
    points = torch.tensor([[-0.01, 0.01, 0.0], [-0.03, 0.039, -0.021]], dtype=torch.float64)
    coords = voxelize(points, 0.02)
    assert coords.dtype == torch.int64
    assert coords.tolist() == [[-1, 0, 0], [-2, 1, -2]]


def test_sparse_quantize_keeps_first_point_and_inverts():
    coords = torch.tensor([[1, 2, 3], [0, 0, 0], [1, 2, 3], [-1, 0, 0], [0, 0, 0], [1, 2, 3]])
    unique_coords, representative, inverse = sparse_quantize(coords)
    assert unique_coords.tolist() == [[-1, 0, 0], [0, 0, 0], [1, 2, 3]]
    assert representative.tolist() == [3, 1, 0]
    assert torch.equal(unique_coords[inverse], coords)
    assert torch.equal(coords[representative], unique_coords)
    empty = sparse_quantize(torch.zeros(0, 3, dtype=torch.long))
    assert [t.shape[0] for t in empty] == [0, 0, 0]


@pytest.mark.parametrize("columns", [3, 4])
def test_sparse_quantize_matches_row_unique(columns):
    coords = torch.randint(-40, 40, (5000, columns), generator=torch.Generator().manual_seed(columns))
    unique_coords, representative, inverse = sparse_quantize(coords)
    expected, expected_inverse = torch.unique(coords, dim=0, return_inverse=True)
    assert torch.equal(unique_coords, expected)
    assert torch.equal(inverse, expected_inverse)
    first = [min(i for i in range(len(coords)) if inverse[i] == v) for v in range(0, len(expected), 97)]
    assert representative[::97].tolist() == first
    huge = torch.tensor([[0, 0, 0], [2**40, 2**40, 2**40], [0, 0, 0]])  # keys would overflow int64
    assert sparse_quantize(huge)[0].tolist() == [[0, 0, 0], [2**40] * 3]


@pytest.mark.parametrize("dtype", DTYPES)
def test_voxel_pixel_correspondences_plane_behind_and_occluded(dtype):
    s = 0.02
    K = intrinsics(dtype=dtype)
    world_to_camera = torch.eye(4, dtype=dtype)  # camera frame = world frame
    # A grid of voxels on the plane z = (100 + 0.5)·s = 2.01 m, plus its mirror behind the camera.
    i, j = torch.meshgrid(torch.arange(-80, 80, 7), torch.arange(-60, 60, 7), indexing="ij")
    front = torch.stack((i.flatten(), j.flatten(), torch.full_like(i.flatten(), 100)), dim=-1)
    behind = front * torch.tensor([1, 1, -1]) - torch.tensor([0, 0, 1])  # centres at z = -2.01
    voxels = torch.cat((front, behind))
    depth = torch.full((H, W), 2.0, dtype=dtype)
    pixels, index = voxel_pixel_correspondences(voxels, s, depth, K, world_to_camera)

    centres = (front.double() + 0.5) * s
    u = FOCAL * centres[:, 0] / centres[:, 2] + 39.5
    v = FOCAL * centres[:, 1] / centres[:, 2] + 29.5
    expected = torch.stack((torch.floor(v + 0.5), torch.floor(u + 0.5)), dim=-1).long()
    inside = (expected >= 0).all(1) & (expected[:, 0] < H) & (expected[:, 1] < W)
    assert 0 < inside.sum() < len(front)
    assert torch.equal(index, inside.nonzero().squeeze(-1))  # behind-camera voxels all rejected
    assert torch.equal(pixels, expected[inside])

    # A surface 0.5 m nearer than the plane over the left half hides the voxels seen there.
    occluded = depth.clone()
    occluded[:, : W // 2] = 1.5
    pixels_occ, index_occ = voxel_pixel_correspondences(voxels, s, occluded, K, world_to_camera)
    assert torch.equal(index_occ, index[pixels[:, 1] >= W // 2])
    assert (pixels_occ[:, 1] >= W // 2).all()
    # A wider visibility threshold accepts them again; invalid depth never matches.
    assert len(voxel_pixel_correspondences(voxels, s, occluded, K, world_to_camera, 0.6)[1]) == len(index)
    assert len(voxel_pixel_correspondences(voxels, s, torch.zeros_like(depth), K, world_to_camera)[1]) == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_points_in_frustum_of_a_camera_looking_along_z(dtype):
    K = intrinsics(dtype=dtype)  # fx = fy = 70, the 60x80 image spans u in [-0.5, 79.5), v in [-0.5, 59.5)
    camera_to_world = rigid(t=(10.0, -1.0, 0.0)).to(dtype)  # the camera sits at (10, -1, 0), looking along +z
    world_to_camera = invert_rigid(camera_to_world)
    # At depth 2 m the image covers |x| < 40 px * 2 m / 70 px = 1.143 m and |y| < 30 * 2 / 70 = 0.857 m.
    camera_points = torch.tensor(
        [
            [0.0, 0.0, 2.0],  # on the axis
            [1.1, 0.0, 2.0],  # near the right edge
            [-1.1, 0.8, 2.0],  # near the bottom-left corner
            [1.2, 0.0, 2.0],  # 0.06 m right of the frustum
            [0.0, -0.9, 2.0],  # 0.04 m above it
            [0.0, 0.0, -2.0],  # behind the camera (its projection is the image centre)
            [0.0, 0.0, 0.0],  # the camera centre
            [1.3, 0.0, 2.0],  # 0.16 m right of the frustum
        ],
        dtype=dtype,
    )
    points = camera_points + camera_to_world[:3, 3]
    inside = points_in_frustum(points, K, world_to_camera, (H, W))
    assert inside.tolist() == [True, True, True, False, False, False, False, False]
    widened = points_in_frustum(points, K, world_to_camera, (H, W), margin=0.1)
    assert widened.tolist() == [True, True, True, True, True, False, False, False]
    with pytest.raises(ValueError, match="margin"):
        points_in_frustum(points, K, world_to_camera, (H, W), margin=-0.1)


def test_points_in_frustum_agrees_with_the_voxel_pixel_projection_test():
    """With margin 0 a voxel centre is inside exactly when it rounds to a pixel of the image."""
    K = intrinsics()
    world_to_camera = invert_rigid(rigid(rotation("y", 20.0), (0.3, 0.1, -0.5)))
    points = torch.rand(20000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 6 - 3
    rowcol, z = project_points(K, transform_points(world_to_camera, points))
    pixel = torch.floor(rowcol + 0.5)
    expected = (z > 0) & (pixel >= 0).all(1) & (pixel[:, 0] < H) & (pixel[:, 1] < W)
    assert 0 < expected.sum() < len(points)
    assert torch.equal(points_in_frustum(points, K, world_to_camera, (H, W)), expected)
