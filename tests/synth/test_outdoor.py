"""Outdoor ray casting against analytic answers and an independent per-pixel intersection."""

import numpy as np
import pytest

from pri3d.synth.outdoor import (
    BUILDING,
    CAR,
    POLE,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    GroundBands,
    OutdoorScene,
    pinhole_rays,
    render,
    render_rays,
)
from pri3d.synth.scene import rotate_z

H, W = 48, 64
K = np.array([[40.0, 0.0, 31.5], [0.0, 40.0, 23.5], [0.0, 0.0, 1.0]])
CAMERA_HEIGHT = 1.65
# float64 ray casting: hits agree with analytic values to ~1e-12 of the distances involved (<= 1e4 m)
TOL = 1e-8


def looking_along_x(x: float = 0.0, y: float = 0.0, height: float = CAMERA_HEIGHT, yaw: float = 0.0):
    """Camera-to-world of a level camera at (x, y, height) looking along world +x rotated by yaw."""
    # camera x (right) = world -y, camera y (down) = world -z, camera z (forward) = world +x
    rot = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    c, s = np.cos(yaw), np.sin(yaw)
    pose = np.eye(4)
    pose[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ rot
    pose[:3, 3] = (x, y, height)
    return pose


def make_scene(centers, half_sizes, yaw=None, labels=None, ground=None) -> OutdoorScene:
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    n = len(centers)
    return OutdoorScene(
        centers=centers,
        half_sizes=np.asarray(half_sizes, dtype=np.float64).reshape(-1, 3),
        yaw=np.zeros(n) if yaw is None else np.asarray(yaw, dtype=np.float64),
        label_ids=np.full(n, BUILDING, np.uint8) if labels is None else np.asarray(labels, np.uint8),
        colors=np.full((n, 3), 0.6),
        seeds=np.arange(n, dtype=np.int64),
        ground_label=GroundBands() if ground is None else ground,
    )


def world_points(view, pose):
    rays = pinhole_rays(K, H, W)
    return pose[:3, 3] + (rays @ pose[:3, :3].T) * view.depth[..., None]


def test_pinhole_rays_reproject_to_their_pixels():
    rays = pinhole_rays(K, H, W)
    assert rays.shape == (H, W, 3)
    np.testing.assert_array_equal(rays[..., 2], 1.0)
    projected = rays @ K.T  # z = 1, so (u, v, 1)
    cols, rows = np.meshgrid(np.arange(W), np.arange(H))
    np.testing.assert_allclose(projected[..., 0], cols, atol=1e-12)
    np.testing.assert_allclose(projected[..., 1], rows, atol=1e-12)


def test_ground_depth_and_sky_match_the_analytic_horizon():
    scene = make_scene(np.zeros((0, 3)), np.zeros((0, 3)))
    view = render(scene, K, looking_along_x(), H, W)
    rows = np.arange(H)
    below = rows > K[1, 2]  # the horizon of a level camera is the row cy
    # a level camera: the ray of row r descends (r - cy) / fy metres per metre of depth
    expected = CAMERA_HEIGHT * K[1, 1] / (rows[below] - K[1, 2])
    np.testing.assert_allclose(view.depth[below], np.repeat(expected[:, None], W, 1), rtol=TOL)
    assert (view.part[below] == -1).all()
    assert (view.depth[~below] == 0).all() and (view.label[~below] == SKY).all()
    assert (view.part[~below] == -2).all()
    assert view.color.dtype == np.uint8 and view.color.shape == (H, W, 3)


def test_ground_labels_follow_the_bands():
    bands = GroundBands(limits=(3.5, 6.0), labels=(ROAD, SIDEWALK), outside=TERRAIN)
    xy = np.array([[0.0, 0.0], [5.0, -3.4], [1.0, 3.6], [2.0, -5.9], [0.0, 6.1], [9.0, -40.0]])
    np.testing.assert_array_equal(bands(xy), [ROAD, ROAD, SIDEWALK, SIDEWALK, TERRAIN, TERRAIN])
    scene = make_scene(np.zeros((0, 3)), np.zeros((0, 3)), ground=bands)
    view = render(scene, K, looking_along_x(), H, W)
    points = world_points(view, looking_along_x())
    ground = view.part == -1
    np.testing.assert_array_equal(view.label[ground], bands(points[ground][:, :2]))
    with pytest.raises(ValueError, match="increasing"):
        GroundBands(limits=(6.0, 3.5), labels=(ROAD, SIDEWALK))


def test_depth_of_a_facing_box_face_is_its_distance():
    # a wall 12.3 m ahead (no image row sees the ground exactly at its foot), filling the upper image
    scene = make_scene([[13.3, 0.0, 10.0]], [[1.0, 30.0, 10.0]])
    view = render(scene, K, looking_along_x(), H, W)
    on_box = view.part == 0
    # every ray above the horizon meets the wall before the ground; below, the ground is hit first
    # where it is nearer than 12.3 m: row r has ground depth CAMERA_HEIGHT * fy / (r - cy)
    rows = np.arange(H)
    ground_nearer = (rows > K[1, 2]) & (CAMERA_HEIGHT * K[1, 1] / np.maximum(rows - K[1, 2], 1e-9) < 12.3)
    np.testing.assert_array_equal(on_box, np.repeat(~ground_nearer[:, None], W, 1))
    np.testing.assert_allclose(view.depth[on_box], 12.3, rtol=TOL)
    assert (view.label[on_box] == BUILDING).all()


def test_box_behind_the_camera_is_not_drawn():
    scene = make_scene([[-6.0, 0.0, 3.0]], [[2.0, 2.0, 3.0]])
    view = render(scene, K, looking_along_x(), H, W)
    assert (view.part != 0).all()
    reference = render(make_scene(np.zeros((0, 3)), np.zeros((0, 3))), K, looking_along_x(), H, W)
    np.testing.assert_array_equal(view.depth, reference.depth)


def brute_force_depth(scene: OutdoorScene, pose: np.ndarray, rays: np.ndarray):
    """Nearest hit per pixel by testing every face plane of every box against every ray, and the plane z=0."""
    dirs = rays.reshape(-1, 3) @ pose[:3, :3].T
    origin = pose[:3, 3]
    best = np.full(len(dirs), np.inf)
    part = np.full(len(dirs), -2)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -origin[2] / dirs[:, 2]
    ground = t > 1e-3
    best[ground], part[ground] = t[ground], -1
    for p in range(scene.num_boxes):
        d = rotate_z(dirs, -scene.yaw[p])
        o = rotate_z(origin - scene.centers[p], -scene.yaw[p])
        half = scene.half_sizes[p]
        for axis in range(3):
            for side in (-1.0, 1.0):
                with np.errstate(divide="ignore", invalid="ignore"):
                    t = (side * half[axis] - o[axis]) / d[:, axis]
                point = o + t[:, None] * d
                others = [a for a in range(3) if a != axis]
                inside = np.all(np.abs(point[:, others]) <= half[others] + 1e-9, axis=1)
                closer = inside & (t > 1e-3) & (t < best)
                best[closer], part[closer] = t[closer], p
    return np.where(part == -2, 0.0, best).reshape(rays.shape[:2]), part.reshape(rays.shape[:2])


def test_yawed_straddling_and_hidden_boxes_match_a_per_pixel_intersection():
    scene = make_scene(
        centers=[
            [9.0, 1.5, 2.0],  # yawed building ahead-left
            [6.0, -2.5, 0.7],  # yawed car ahead-right
            [0.0, 4.0, 3.0],  # long building beside the camera: straddles the image plane
            [-5.0, 0.0, 3.0],  # behind the camera
            [14.0, 1.0, 3.0],  # partly hidden behind the first
            [4.0, -1.0, 2.5],  # thin pole
        ],
        half_sizes=[
            [2.0, 1.5, 2.0],
            [2.0, 0.9, 0.7],
            [20.0, 1.5, 3.0],
            [1.0, 1.0, 3.0],
            [1.0, 4.0, 3.0],
            [0.08, 0.08, 2.5],
        ],
        yaw=[0.5, -0.3, 0.0, 0.0, 0.1, 0.0],
        labels=[BUILDING, CAR, BUILDING, BUILDING, BUILDING, POLE],
    )
    pose = looking_along_x(yaw=0.25)
    # a barrel-distorted ray field checks the conservative screen bounds for non-pinhole rays too
    pin = pinhole_rays(K, H, W)
    r2 = pin[..., 0] ** 2 + pin[..., 1] ** 2
    warped = pin.copy()
    warped[..., :2] *= (1.0 + 0.2 * r2)[..., None]
    for rays in (pin, warped):
        view = render_rays(scene, pose, rays)
        depth, part = brute_force_depth(scene, pose, rays)
        np.testing.assert_array_equal(view.part, part)
        np.testing.assert_allclose(view.depth, depth, rtol=TOL)
        assert set(np.unique(view.part)) >= {-2, -1, 0, 1, 2, 4, 5}
        assert 3 not in view.part


def test_back_projected_depth_lands_on_box_surfaces():
    scene = make_scene(
        centers=[[8.0, 2.0, 3.0], [6.0, -2.0, 0.75]],
        half_sizes=[[2.5, 2.0, 3.0], [2.1, 0.9, 0.75]],
        yaw=[0.7, -0.4],
        labels=[BUILDING, CAR],
    )
    pose = looking_along_x(yaw=0.1)
    view = render(scene, K, pose, H, W)
    points = world_points(view, pose)
    for p in range(scene.num_boxes):
        mask = view.part == p
        assert mask.sum() > 20
        local = rotate_z(points[mask] - scene.centers[p], -scene.yaw[p])
        slack = np.abs(local) - scene.half_sizes[p]  # <= 0 inside, 0 on the face that was hit
        assert (slack <= TOL * 10).all()
        np.testing.assert_allclose(slack.max(1), 0.0, atol=TOL * 10)
        assert (view.label[mask] == scene.label_ids[p]).all()
    assert (np.abs(points[view.part == -1][:, 2]) < TOL).all()


def test_colour_of_a_surface_point_is_the_same_from_another_view():
    scene = make_scene(
        centers=[[9.0, 3.0, 4.0], [7.0, -2.0, 0.75], [12.0, -6.0, 2.0]],
        half_sizes=[[3.0, 2.0, 4.0], [2.1, 0.9, 0.75], [1.5, 1.5, 2.0]],
        yaw=[0.2, 0.1, 0.0],
        labels=[BUILDING, CAR, 21],
    )
    first, second = looking_along_x(), looking_along_x(x=2.0, y=-0.5, yaw=0.15)
    view = render(scene, K, first, H, W)
    hit = view.part != -2
    points = world_points(view, first)[hit]  # [M, 3]
    # rays of the second camera aimed exactly at those points (z = 1)
    cam = (points - second[:3, 3]) @ second[:3, :3]
    keep = cam[:, 2] > 0.5
    rays = (cam[keep] / cam[keep, 2:3])[None]  # [1, M', 3]
    other = render_rays(scene, second, rays)
    same_surface = (other.part[0] == view.part[hit][keep]) & np.isclose(
        other.depth[0], cam[keep, 2], rtol=1e-6
    )
    assert same_surface.mean() > 0.5
    # the same point, lit by the same sun: equal up to rounding to uint8
    diff = np.abs(other.color[0][same_surface].astype(int) - view.color[hit][keep][same_surface].astype(int))
    assert diff.max() <= 1
    np.testing.assert_array_equal(other.label[0][same_surface], view.label[hit][keep][same_surface])


def test_shade_false_skips_colour_and_keeps_geometry():
    scene = make_scene([[8.0, 0.0, 2.0]], [[1.0, 2.0, 2.0]], labels=[CAR])
    full = render(scene, K, looking_along_x(), H, W)
    bare = render(scene, K, looking_along_x(), H, W, shade=False)
    assert bare.color is None
    np.testing.assert_array_equal(bare.depth, full.depth)
    np.testing.assert_array_equal(bare.label, full.label)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="half_sizes"):
        OutdoorScene(
            centers=np.zeros((2, 3)),
            half_sizes=np.zeros((3, 3)),
            yaw=np.zeros(2),
            label_ids=np.zeros(2, np.uint8),
            colors=np.zeros((2, 3)),
            seeds=np.zeros(2, np.int64),
        )
    with pytest.raises(ValueError, match="z = 1"):
        render_rays(make_scene(np.zeros((0, 3)), np.zeros((0, 3))), np.eye(4), np.ones((4, 5, 3)) * 2)
