"""Exact ray casting of box scenes: depth, colour, NYU40 labels and instances for one camera.

Each pixel's ray is intersected with the scene's boxes analytically (slab test in the part frame),
so depth is the true z-depth of the surface that the mesh tessellates. Conventions are those of
`pri3d.geometry`: pixel (row, col) centres at integer coordinates, ray of pixel (r, c) through
((c - cx) / fx, (r - cy) / fy, 1) in the camera frame (x right, y down, z forward), camera-to-world
poses. With that unnormalised direction the ray parameter *is* the z-depth.

The room's six slabs are handled in one pass as the exit from the interior box (the camera is always
inside the room); every other part is tested only over the image rectangle its projected corners
cover, so the cost grows with the covered area, not with parts × pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pri3d.synth.appearance import surface_color
from pri3d.synth.raycast import NEAR, box_corners, intersect_box
from pri3d.synth.scene import Scene, rotate_z


@dataclass
class RenderedView:
    """Per-pixel results at one resolution. Pixels that see nothing have depth 0 and part -1."""

    depth: np.ndarray  # [H, W] float64 metres (z-depth)
    part: np.ndarray  # [H, W] int64 part index, -1 = none
    face: np.ndarray  # [H, W] int64 face index (0..5)
    color: np.ndarray | None = None  # [H, W, 3] uint8 RGB
    label: np.ndarray | None = None  # [H, W] uint8 NYU40 id
    instance: np.ndarray | None = None  # [H, W] int64 object id + 1, 0 = none


def render(
    scene: Scene,
    intrinsics: np.ndarray,
    camera_to_world: np.ndarray,
    height: int,
    width: int,
    shade: bool = True,
) -> RenderedView:
    """Render one view of `scene` with 3×3 `intrinsics` at height × width.

    `shade=False` skips colours, labels and instances (depth only).
    """
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    rot = camera_to_world[:3, :3].astype(np.float64)
    origin = camera_to_world[:3, 3].astype(np.float64)
    cols = (np.arange(width) - cx) / fx
    rows = (np.arange(height) - cy) / fy
    # ray directions in the world frame, one [H, W] array per axis; z is 1 in the camera frame
    dirs = [rows[:, None] * rot[k, 1] + cols[None, :] * rot[k, 0] + rot[k, 2] for k in range(3)]

    zbuf, part_buf, face_buf = _room_exit(scene, dirs, origin)
    corners = box_corners(scene.centers, scene.halves, scene.yaws)
    for p in range(scene.num_parts):
        if p in scene.room_slabs:
            continue
        rect = _screen_rect(corners[p], rot, origin, fx, fy, cx, cy, height, width)
        if rect is None:
            continue
        window = (slice(rect[0], rect[1]), slice(rect[2], rect[3]))
        intersect_box(
            [d[window] for d in dirs],
            origin,
            scene.centers[p],
            scene.halves[p],
            scene.yaws[p],
            p,
            zbuf[window],
            part_buf[window],
            face_buf[window],
        )

    depth = np.where(part_buf >= 0, zbuf, 0.0)
    view = RenderedView(depth=depth, part=part_buf, face=face_buf)
    if shade:
        _shade(scene, view, dirs, origin)
    return view


def _room_exit(scene: Scene, dirs: list[np.ndarray], origin: np.ndarray):
    """Where rays from inside the room leave the interior box: z-buffer, part and face buffers."""
    shape = dirs[0].shape
    zbuf = np.full(shape, np.inf)
    part_buf = np.full(shape, -1, dtype=np.int64)
    face_buf = np.zeros(shape, dtype=np.int64)
    for axis in range(3):
        d = dirs[axis]
        with np.errstate(divide="ignore"):
            t_high = (scene.size[axis] - origin[axis]) / d
            t_low = -origin[axis] / d
        toward_high = d > 0
        t = np.where(toward_high, t_high, np.where(d < 0, t_low, np.inf))
        closer = t < zbuf
        zbuf[closer] = t[closer]
        # the high-side slab is seen through its -axis face, the low-side slab through its +axis face
        part_buf[closer] = np.where(toward_high, scene.room_slabs[axis, 1], scene.room_slabs[axis, 0])[closer]
        face_buf[closer] = np.where(toward_high, 2 * axis, 2 * axis + 1)[closer]
    return zbuf, part_buf, face_buf


def _screen_rect(
    corners: np.ndarray,
    rot: np.ndarray,
    origin: np.ndarray,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    height: int,
    width: int,
):
    """Pixel rectangle (r0, r1, c0, c1) that can see a box with world `corners` [8, 3], or None."""
    cam = (corners - origin) @ rot  # world -> camera: R^T (p - o), written as row vectors
    z = cam[:, 2]
    if (z <= NEAR).all():
        return None
    if (z <= NEAR).any():
        return 0, height, 0, width  # straddles the image plane: be conservative
    u = fx * cam[:, 0] / z + cx
    v = fy * cam[:, 1] / z + cy
    c0 = max(int(np.floor(u.min())) - 1, 0)
    c1 = min(int(np.ceil(u.max())) + 2, width)
    r0 = max(int(np.floor(v.min())) - 1, 0)
    r1 = min(int(np.ceil(v.max())) + 2, height)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def _shade(scene: Scene, view: RenderedView, dirs: list[np.ndarray], origin: np.ndarray) -> None:
    valid = view.part >= 0
    part = view.part[valid]
    world = origin + np.stack([d[valid] for d in dirs], -1) * view.depth[valid][:, None]
    local = rotate_z(world - scene.centers[part], -scene.yaws[part])
    rgb = surface_color(scene, part, view.face[valid], local)
    color = np.zeros((*view.depth.shape, 3), dtype=np.uint8)
    color[valid] = np.round(rgb * 255).astype(np.uint8)
    nyu40 = np.array([o.nyu40_id for o in scene.objects], dtype=np.uint8)
    label = np.zeros(view.depth.shape, dtype=np.uint8)
    instance = np.zeros(view.depth.shape, dtype=np.int64)
    object_ids = scene.object_ids[part]
    label[valid] = nyu40[object_ids]
    instance[valid] = object_ids + 1
    view.color, view.label, view.instance = color, label, instance
