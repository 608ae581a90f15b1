"""Synthetic pre-training batches for the benchmarks: a box room seen by two nearby cameras.

Each pair is built the way `pri3d.data.pretrain_pairs` builds a real one, from analytic geometry
instead of files: a room (floor, four walls, ceiling, two furniture boxes) is ray-cast into two
depth maps at ScanNet's depth intrinsics; 2D–2D matches are sampled with
`pri3d.geometry.sample_pixel_correspondences`; each view's voxel chunk is the room's surfaces
voxelised at 2 cm inside the bounding box of the view's back-projected depth, cut to the
`voxels` voxels nearest to the view's centre point (so the sparse network sees whole surfaces,
1–2 voxels thick, not scattered voxels), with 3D–2D matches from
`pri3d.geometry.voxel_pixel_correspondences`. Colours are random. The result goes through
`pri3d.data.collate.collate_pairs`, so the batch has exactly the trainer's format.
"""

from __future__ import annotations

import math

import torch

from pri3d.data.collate import collate_pairs
from pri3d.data.pretrain_pairs import sample_indices
from pri3d.geometry import (
    depth_to_world,
    invert_rigid,
    sample_pixel_correspondences,
    sparse_quantize,
    voxel_pixel_correspondences,
    voxelize,
)

VOXEL_SIZE = 0.02
ROOM_HEIGHT = 2.6


def intrinsics(height: int, width: int) -> torch.Tensor:
    """ScanNet's depth intrinsics (577.6 px at 640×480) scaled to H×W; [3, 3]."""
    f = 577.6 * width / 640
    return torch.tensor([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


def camera_to_world(position: torch.Tensor, yaw: float, pitch: float) -> torch.Tensor:
    """4×4 pose of a camera (x right, y down, z forward) at `position` (world z up)."""
    forward = torch.tensor(
        [math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)]
    )
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0]))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    pose = torch.eye(4)
    pose[:3, :3] = torch.stack([right, down, forward], dim=1)
    pose[:3, 3] = position
    return pose


def _box_entry(
    origin: torch.Tensor, rays: torch.Tensor, low: torch.Tensor, high: torch.Tensor
) -> torch.Tensor:
    """Ray parameter where rays [R, 3] from `origin` enter the box (inf where they miss)."""
    with torch.no_grad():
        t1 = (low - origin) / rays
        t2 = (high - origin) / rays
        near = torch.minimum(t1, t2).amax(dim=1)
        far = torch.maximum(t1, t2).amin(dim=1)
    return torch.where((near <= far) & (near > 0), near, torch.full_like(near, math.inf))


Box = tuple[torch.Tensor, torch.Tensor]  # (low corner [3], high corner [3]), metres


def render_depth(
    room: Box, boxes: list[Box], pose: torch.Tensor, k: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Depth [H, W] (metres along the camera z axis) of the inside of box `room` with furniture
    `boxes`, seen from camera-to-world `pose` (inside the room)."""
    h, w = size
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    camera_rays = torch.stack(
        [(cols - k[0, 2]) / k[0, 0], (rows - k[1, 2]) / k[1, 1], torch.ones_like(rows)], -1
    )
    rays = camera_rays.reshape(-1, 3) @ pose[:3, :3].T  # [R, 3]; t along a ray = camera z
    origin = pose[:3, 3]
    exits = torch.where(
        rays > 0, (room[1] - origin) / rays, (room[0] - origin) / rays
    )  # inside the room: leave it
    depth = torch.where(rays != 0, exits, torch.full_like(exits, math.inf)).amin(dim=1)
    for low, high in boxes:
        depth = torch.minimum(depth, _box_entry(origin, rays, low, high))
    return depth.reshape(h, w)


def surface_voxels(room: Box, boxes: list[Box], generator: torch.Generator) -> torch.Tensor:
    """Voxels [V, 3] int64 (2 cm) of the room's six faces and the boxes' faces, points 1 cm apart
    with ±3 mm noise: like a scan, a surface is one voxel thick, two where it runs close to a
    voxel boundary."""
    step = VOXEL_SIZE / 2

    def face(origin: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a = torch.arange(0.0, float(u.norm()) + 1e-6, step)
        b = torch.arange(0.0, float(v.norm()) + 1e-6, step)
        grid_a, grid_b = torch.meshgrid(a, b, indexing="ij")
        return origin + grid_a.reshape(-1, 1) * (u / u.norm()) + grid_b.reshape(-1, 1) * (v / v.norm())

    def cuboid(low: torch.Tensor, high: torch.Tensor) -> list[torch.Tensor]:
        ex, ey, ez = torch.diag(high - low)
        return [
            face(low, ex, ey),
            face(low + ez, ex, ey),
            face(low, ex, ez),
            face(low + ey, ex, ez),
            face(low, ey, ez),
            face(low + ex, ey, ez),
        ]

    faces = []
    for low, high in [room, *boxes]:
        faces += cuboid(low, high)
    points = torch.cat(faces)
    points = points + (torch.rand(points.shape, generator=generator) - 0.5) * 0.006
    return torch.unique(voxelize(points, VOXEL_SIZE), dim=0)


def pair_sample(
    index: int, size: tuple[int, int], num_matches: int, voxels: int, geometric_prior: bool
) -> dict:
    """One pair in `ScanNetPairs`' item format (seeded by `index`)."""
    gen = torch.Generator().manual_seed(1000 + index)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(1, generator=gen))

    # faces at random positions relative to the voxel grid, as in a real scan
    origin = torch.rand(3, generator=gen) * VOXEL_SIZE
    room = (origin, origin + torch.tensor([uniform(4.5, 6.0), uniform(4.0, 5.0), ROOM_HEIGHT]))
    corners = [(uniform(2.5, 3.5), uniform(0.3, 1.5)), (uniform(0.3, 1.0), uniform(2.5, 3.0))]
    boxes = []
    for x, y in corners:
        low = origin + torch.tensor([x, y, 0.0])
        boxes.append((low, low + torch.tensor([uniform(0.6, 1.2), uniform(0.5, 1.0), uniform(0.4, 0.9)])))
    k = intrinsics(*size)
    position = origin + torch.tensor([uniform(0.8, 1.5), uniform(0.8, 1.5), uniform(1.3, 1.6)])
    yaw, pitch = uniform(0.3, 0.9), uniform(-0.45, -0.3)
    poses = [
        camera_to_world(position, yaw, pitch),
        camera_to_world(
            position + torch.tensor([uniform(0.1, 0.3), uniform(-0.2, 0.2), 0.0]),
            yaw + uniform(-0.15, 0.15),
            pitch + uniform(-0.05, 0.05),
        ),
    ]
    sample: dict = {"index": index, "scene": f"room{index:04d}", "frames": (0, 1)}
    for v, pose in enumerate(poses, start=1):
        depth = render_depth(room, boxes, pose, k, size)
        sample[f"color{v}"] = torch.randn(3, *size, generator=gen)
        sample[f"depth{v}"] = depth
        sample[f"intrinsics{v}"] = k
        sample[f"world_to_camera{v}"] = invert_rigid(pose)
    pos1, pos2, valid = sample_pixel_correspondences(
        sample["depth1"][None],
        k[None],
        sample["world_to_camera1"][None],
        sample["depth2"][None],
        k[None],
        sample["world_to_camera2"][None],
        num_matches,
        generator=gen,
    )
    sample["match1"], sample["match2"], sample["match_valid"] = pos1[0], pos2[0], valid[0]
    if geometric_prior:
        scene = surface_voxels(room, boxes, gen)  # [S, 3]
        for v, pose in enumerate(poses, start=1):
            points, valid = depth_to_world(sample[f"depth{v}"], k, pose)
            points = points[valid]  # [M, 3] world
            low, high = points.amin(0) - 0.1, points.amax(0) + 0.1
            centres = (scene.float() + 0.5) * VOXEL_SIZE
            inside = ((centres >= low) & (centres <= high)).all(dim=1)
            chunk = scene[inside]
            centre = points.median(dim=0).values
            nearest = ((centres[inside] - centre) ** 2).sum(1).argsort()[:voxels]
            chunk, _, _ = sparse_quantize(chunk[nearest])
            pixels, voxel_index = voxel_pixel_correspondences(
                chunk, VOXEL_SIZE, sample[f"depth{v}"], k, sample[f"world_to_camera{v}"]
            )
            pick, pick_valid = sample_indices(len(voxel_index), num_matches, gen)
            sample[f"voxels{v}"] = chunk.to(torch.int32)
            sample[f"voxel_colors{v}"] = torch.rand(chunk.shape[0], 3, generator=gen)
            sample[f"vp_pixel{v}"] = (
                pixels[pick] if len(pixels) else torch.zeros(num_matches, 2, dtype=torch.int64)
            )
            sample[f"vp_voxel{v}"] = (
                voxel_index[pick] if len(pixels) else torch.zeros(num_matches, dtype=torch.int64)
            )
            sample[f"vp_valid{v}"] = pick_valid
    return sample


def pair_batch(
    batch_size: int,
    size: tuple[int, int] = (240, 320),
    num_matches: int = 1024,
    voxels: int = 35000,
    geometric_prior: bool = True,
    first_index: int = 0,
) -> dict:
    """A collated batch of `batch_size` synthetic pairs (see the module docstring)."""
    samples = [
        pair_sample(first_index + i, size, num_matches, voxels, geometric_prior) for i in range(batch_size)
    ]
    return collate_pairs(samples)


def batch_summary(batch: dict) -> str:
    """Matches and voxels per view, for the benchmark's report."""
    parts = [f"2D matches valid {batch['match_valid'].float().mean():.0%}"]
    if "voxels1" in batch:
        b = batch["batch_size"]
        voxels = (batch["voxels1"].shape[0] + batch["voxels2"].shape[0]) / (2 * b)
        parts.append(f"{voxels:,.0f} voxels per view")
        parts.append(f"3D matches valid {batch['vp_valid1'].float().mean():.0%}")
    return ", ".join(parts)
