"""Analytic ray casting against yawed boxes, shared by the indoor and the outdoor renderer.

A box is given by its world centre, its half extents along its own axes and a yaw about world z. Rays
start at one world origin; their directions come as three arrays (world x, y, z components) of one
shape, the shape of the buffers they update. Faces are numbered -x, +x, -y, +y, -z, +z (0..5) in
the box's own frame. Renderers that use camera-frame directions with z = 1 get z-depth as the ray
parameter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pri3d.synth.scene import rotate_z

#: Smallest ray parameter that counts as a hit (and nearest camera depth that bounds a box on screen).
NEAR = 1e-3
#: The 8 corners of the unit box [-1, 1]^3; corner index bits are x, y, z (bit set = +1).
CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)


def box_corners(centers: np.ndarray, halves: np.ndarray, yaws: np.ndarray) -> np.ndarray:
    """World corners [N, 8, 3] of boxes with centres [N, 3], half extents [N, 3] and yaws [N]."""
    return centers[:, None] + rotate_z(CORNERS[None] * halves[:, None], yaws[:, None])


def intersect_box(
    dirs: Sequence[np.ndarray],
    origin: np.ndarray,
    center: np.ndarray,
    half: np.ndarray,
    yaw: float,
    index: int,
    zbuf: np.ndarray,
    part: np.ndarray,
    face: np.ndarray,
) -> None:
    """Slab test of one box against rays from `origin` along `dirs` (world x, y, z arrays).

    Where a ray enters the box at a parameter in (NEAR, zbuf), writes that parameter to `zbuf`,
    `index` to `part` and the entry face to `face`, all in place (the buffers may be views of a
    window of larger images). A ray that starts inside the box does not see it.
    """
    c, s = np.cos(yaw), np.sin(yaw)
    local_dirs = (c * dirs[0] + s * dirs[1], -s * dirs[0] + c * dirs[1], dirs[2])  # world -> box frame
    o = rotate_z(origin - center, -yaw)
    t_near = t_far = None
    entry_axis = np.zeros(zbuf.shape, dtype=np.int64)
    for axis in range(3):
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / local_dirs[axis]
            t_a = (-half[axis] - o[axis]) * inv
            t_b = (half[axis] - o[axis]) * inv
        # fmin/fmax skip the nan of a ray parallel to a slab that starts on its plane
        t_min, t_max = np.fmin(t_a, t_b), np.fmax(t_a, t_b)
        if t_near is None:
            t_near, t_far = t_min, t_max
        else:
            later = t_min > t_near
            entry_axis[later] = axis
            t_near = np.where(later, t_min, t_near)
            t_far = np.fmin(t_far, t_max)
    hit = (t_near <= t_far) & (t_near > NEAR) & (t_near < zbuf)
    if not hit.any():
        return
    entry_dir = np.choose(entry_axis, local_dirs)
    zbuf[hit] = t_near[hit]
    part[hit] = index
    # moving along +axis a ray enters through the -axis face (even index)
    face[hit] = (2 * entry_axis + (entry_dir <= 0))[hit]
