"""Surface appearance anchored to the geometry.

The colour of a surface point depends only on where it is on which part (patterns are evaluated in
the part's own frame) and on a fixed ceiling light (Lambert shading, no specular term). Nothing
depends on the camera, so one 3D point has the same colour in every view, and mesh vertex colours
come from the very same function as the rendered frames.
"""

from __future__ import annotations

import numpy as np

from pri3d.synth.scene import FABRIC, PICTURE, PLAIN, STRIPES, TILES, WINDOW, WOOD, Scene, rotate_z

_FACE_NORMALS = np.array(
    [[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], dtype=np.float64
)


def value_noise(points: np.ndarray, seed: np.ndarray | int) -> np.ndarray:
    """Smooth lattice noise in [0, 1] at points [N, 3] (unit lattice spacing); seed scalar or [N]."""
    cell = np.floor(points)
    frac = points - cell
    fade = frac * frac * (3.0 - 2.0 * frac)
    base = cell.astype(np.int64)
    seed = np.asarray(seed, dtype=np.int64)
    out = np.zeros(len(points))
    for dx in (0, 1):
        wx = fade[:, 0] if dx else 1.0 - fade[:, 0]
        for dy in (0, 1):
            wy = fade[:, 1] if dy else 1.0 - fade[:, 1]
            for dz in (0, 1):
                wz = fade[:, 2] if dz else 1.0 - fade[:, 2]
                out += wx * wy * wz * _hash01(base[:, 0] + dx, base[:, 1] + dy, base[:, 2] + dz, seed)
    return out


def _hash01(x: np.ndarray, y: np.ndarray, z: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Integer lattice hash to [0, 1). Wrapping int64 arithmetic is intended."""
    with np.errstate(over="ignore"):
        h = x * 73856093 ^ y * 19349663 ^ z * 83492791 ^ seed * 2654435761
        h = (h ^ (h >> 13)) * 1274126177
        h = h ^ (h >> 16)
    return (h & 0xFFFFFF).astype(np.float64) / float(0x1000000)


def surface_color(scene: Scene, part: np.ndarray, face: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Colour in [0, 1] of surface points.

    Args:
        part: [N] part index of each point.
        face: [N] face index (0..5: -x, +x, -y, +y, -z, +z in the part frame).
        local: [N, 3] point in the part frame (metres).
    Returns:
        [N, 3] float64 RGB.
    """
    n = len(part)
    rgb = np.zeros((n, 3))
    if n == 0:
        return rgb
    materials = scene.materials
    mat_ids = scene.material_ids[part]
    pattern = np.array([m.pattern for m in materials])[mat_ids]
    base = np.array([m.base for m in materials])[mat_ids]
    accent = np.array([m.accent for m in materials])[mat_ids]
    scale = np.array([m.scale for m in materials])[mat_ids]
    seed = np.array([m.seed for m in materials], dtype=np.int64)[mat_ids]
    half = scene.halves[part]

    # tangent coordinates (u, v) on the face, v the vertical one where the face is vertical
    axis = face // 2
    tangent = np.array([[1, 2], [1, 2], [0, 2], [0, 2], [0, 1], [0, 1]])[face]
    u = np.take_along_axis(local, tangent[:, :1], 1)[:, 0]
    v = np.take_along_axis(local, tangent[:, 1:], 1)[:, 0]
    hu = np.take_along_axis(half, tangent[:, :1], 1)[:, 0]
    hv = np.take_along_axis(half, tangent[:, 1:], 1)[:, 0]

    grain = value_noise(local / scale[:, None] * 0.5 + 17.0, seed)

    mix = np.zeros(n)
    sel = pattern == PLAIN
    mix[sel] = 0.6 * grain[sel]
    sel = np.flatnonzero(pattern == WOOD)
    if len(sel):
        p, g = local[sel], grain[sel]
        along = np.where(axis[sel] == 0, p[:, 1], p[:, 0])  # rings run across the part's long faces
        mix[sel] = (
            0.5 + 0.5 * np.sin(2 * np.pi * (along + 0.3 * p[:, 2]) / (0.25 * scale[sel]) + 6.0 * g)
        ) ** 3
    sel = np.flatnonzero(pattern == TILES)
    if len(sel):
        su, sv = u[sel] / scale[sel], v[sel] / scale[sel]
        tile = (np.floor(su) + np.floor(sv)) % 2
        grout = (np.abs(su - np.round(su)) < 0.03) | (np.abs(sv - np.round(sv)) < 0.03)
        mix[sel] = np.where(grout, 1.0, 0.6 * tile + 0.2 * grain[sel])
    sel = np.flatnonzero(pattern == STRIPES)
    if len(sel):
        mix[sel] = 0.8 * (np.sin(2 * np.pi * u[sel] / scale[sel]) > 0.3) + 0.2 * grain[sel]
    sel = np.flatnonzero(pattern == FABRIC)
    if len(sel):
        mix[sel] = 0.3 * grain[sel] + 0.7 * value_noise(local[sel] * 40.0, seed[sel] + 1)
    rgb = base * (1 - mix[:, None]) + accent * mix[:, None]

    sel = pattern == PICTURE
    if sel.any():
        rgb[sel] = _picture(u[sel], v[sel], hu[sel], hv[sel], scale[sel], seed[sel])
    sel = pattern == WINDOW
    if sel.any():
        rgb[sel] = _window(u[sel], v[sel], hu[sel], hv[sel], base[sel], accent[sel])

    # view-independent shading from a ceiling light plus an ambient term
    yaw = scene.yaws[part]
    world_normal = rotate_z(_FACE_NORMALS[face], yaw)
    world = scene.centers[part] + rotate_z(local, yaw)
    to_light = scene.light_position() - world
    dist = np.linalg.norm(to_light, axis=1) + 1e-9
    lambert = np.clip(np.sum(world_normal * to_light, axis=1) / dist, 0.0, 1.0)
    shade = 0.45 + 0.55 * lambert / (1.0 + 0.05 * dist**2)
    return np.clip(rgb * shade[:, None], 0.0, 1.0)


def _picture(u, v, hu, hv, scale, seed) -> np.ndarray:
    """A colourful abstract image inside a dark frame."""
    c1 = value_noise(np.stack([u / scale, v / scale, np.zeros_like(u)], 1) + 3.0, seed + 5)
    c2 = value_noise(np.stack([u / scale, v / scale, np.ones_like(u)], 1) * 1.7, seed + 6)
    c3 = value_noise(np.stack([u / scale, v / scale, np.full_like(u, 2.0)], 1) * 0.7, seed + 7)
    img = np.stack([c1, c2, c3], 1)
    img = (img - 0.2) * 1.6
    frame = (np.abs(u) > hu - 0.03) | (np.abs(v) > hv - 0.03)
    return np.where(frame[:, None], np.array([0.15, 0.1, 0.08]), np.clip(img, 0, 1))


def _window(u, v, hu, hv, sky, frame_color) -> np.ndarray:
    """Bright sky seen through a framed window with mullions."""
    height = (v + hv) / (2 * hv + 1e-9)
    glass = sky * (0.85 + 0.25 * height[:, None])
    bars = (np.abs(u) < 0.02) | (np.abs(v) < 0.02) | (np.abs(u) > hu - 0.05) | (np.abs(v) > hv - 0.05)
    return np.clip(np.where(bars[:, None], frame_color, glass), 0, 1)
