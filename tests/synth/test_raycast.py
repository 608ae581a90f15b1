import numpy as np

from pri3d.synth.raycast import box_corners, intersect_box
from pri3d.synth.scene import rotate_z

CENTER, HALF, YAW = np.array([0.3, 5.0, -0.2]), np.array([1.0, 0.5, 0.7]), 0.4


def _cast(origin, dirs, zbuf=None):
    shape = dirs[0].shape
    zbuf = np.full(shape, np.inf) if zbuf is None else zbuf
    part, face = np.full(shape, -1), np.full(shape, -1)
    intersect_box(dirs, origin, CENTER, HALF, YAW, 7, zbuf, part, face)
    return zbuf, part, face


def test_hits_lie_on_the_entry_face_and_misses_never_enter_the_box():
    x, z = np.meshgrid(np.linspace(-0.5, 0.5, 41), np.linspace(-0.4, 0.4, 33))
    dirs = [x, np.ones_like(x), z]
    origin = np.zeros(3)
    zbuf, part, face = _cast(origin, dirs)
    world = origin + np.stack(dirs, -1) * np.where(part == 7, zbuf, 0.0)[..., None]
    local = rotate_z(world - CENTER, -YAW)[part == 7]
    axis, side = face[part == 7] // 2, np.where(face[part == 7] % 2 == 0, -1.0, 1.0)
    assert (part == 7).sum() > 100 and (part == -1).sum() > 100
    # float64 rounding of a few-metre hit point: 1e-12 is far above it and far below any box size
    np.testing.assert_allclose(
        np.take_along_axis(local, axis[:, None], 1)[:, 0], side * HALF[axis], atol=1e-12
    )
    assert (np.abs(local) <= HALF + 1e-12).all()
    # rays marked as misses have no sample inside the box
    miss = part == -1
    t = np.linspace(0.0, 10.0, 2001)
    samples = rotate_z(np.stack([d[miss] for d in dirs], -1)[:, None] * t[:, None] - CENTER, -YAW)
    assert not (np.abs(samples) < HALF).all(-1).any()


def test_nearer_buffer_entries_and_rays_from_inside_are_kept():
    dirs = [np.zeros((1, 2)), np.ones((1, 2)), np.zeros((1, 2))]
    zbuf, part, _ = _cast(np.array([0.3, 0.0, -0.2]), dirs, zbuf=np.array([[2.0, np.inf]]))
    # a ray along +y through the centre enters the yawed box through its -y face at y = 5 - 0.5 / cos(yaw)
    assert part.tolist() == [[-1, 7]] and zbuf[0, 0] == 2.0
    assert np.isclose(zbuf[0, 1], CENTER[1] - HALF[1] / np.cos(YAW), rtol=0, atol=1e-12)
    zbuf, part, _ = _cast(CENTER, dirs)
    assert (part == -1).all()  # from inside the box the entry lies behind the origin


def test_box_corners_are_the_rotated_extremes():
    corners = box_corners(CENTER[None], HALF[None], np.array([YAW]))[0]
    local = rotate_z(corners - CENTER, -YAW)
    np.testing.assert_allclose(np.abs(local), np.broadcast_to(HALF, (8, 3)), atol=1e-12)
    assert len({tuple(np.sign(v)) for v in local}) == 8
