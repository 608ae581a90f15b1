"""Exact ray casting of outdoor scenes: oriented boxes standing on an infinite ground plane, under a sky.

World frame: z up, metres; the ground is the plane z = 0. Each box is given by its centre, its half
extents along its own axes and a yaw about world z, and carries a Cityscapes label id. Rays are
intersected analytically (slab test in the box frame, one division for the plane), so depth is exact
to float precision and colour, labels and depth all come from one geometry.

Camera conventions are those of `pri3d.geometry` (x right, y down, z forward, camera-to-world poses).
Rays are camera-frame directions with z = 1, so the ray parameter of a hit *is* its z-depth; a caller
with a distorted camera passes its own undistorted per-pixel rays to `render_rays`.

Colour is a function of the surface point alone (patterns in the box's own frame, or in world x, y on
the ground) lit by a fixed sun without shadows, so a 3D point has the same colour in every view: the
pre-training matches rely on that. Only the sky, which has no point, is coloured by ray direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pri3d.synth.appearance import value_noise
from pri3d.synth.raycast import NEAR, box_corners, intersect_box
from pri3d.synth.scene import rotate_z

#: Cityscapes label ids used by the outdoor generators.
ROAD, SIDEWALK, BUILDING, POLE, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY, CAR = 7, 8, 11, 17, 20, 21, 22, 23, 26

# the 12 edges of a box as pairs of corner indices (corner index bits are x, y, z)
_EDGES = np.array([(i, i | bit) for bit in (4, 2, 1) for i in range(8) if not i & bit])
# face order of a box: -x, +x, -y, +y, -z, +z (as pri3d.synth.raycast)
_FACE_NORMALS = np.array(
    [[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], dtype=np.float64
)


@dataclass(frozen=True)
class GroundBands:
    """Ground label by position: bands parallel to the world x axis, by distance across them.

    A ground point (x, y) takes ``labels[k]`` for the first k with ``|y - center_y| < limits[k]`` and
    ``outside`` beyond the last limit: a straight street along x is ``limits=(3.5, 6.0)``,
    ``labels=(ROAD, SIDEWALK)``, ``outside=TERRAIN``; an open square is ``limits=()``,
    ``outside=SIDEWALK``. A road band in the middle gets lane markings (a dashed centre line and solid
    edge lines); `seed` varies the ground's texture.
    """

    limits: tuple[float, ...] = (3.5, 6.0)
    labels: tuple[int, ...] = (ROAD, SIDEWALK)
    outside: int = TERRAIN
    center_y: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.limits) != len(self.labels) or list(self.limits) != sorted(self.limits):
            raise ValueError(
                f"GroundBands: limits {self.limits} must be increasing, one per label in {self.labels}"
            )

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        """Label ids [N] uint8 of ground points xy [N, 2]."""
        across = np.abs(xy[:, 1] - self.center_y)
        bands = np.searchsorted(np.asarray(self.limits, dtype=np.float64), across, side="right")
        return np.asarray([*self.labels, self.outside], dtype=np.uint8)[bands]


@dataclass
class OutdoorScene:
    """Boxes on the ground plane z = 0, in world coordinates (z up, metres)."""

    centers: np.ndarray  # [N, 3] float64 box centres
    half_sizes: np.ndarray  # [N, 3] float64 half extents along the box's own x, y, z
    yaw: np.ndarray  # [N] float64 rotation about world z
    label_ids: np.ndarray  # [N] uint8 Cityscapes label ids (11 building, 26 car, 17 pole, 21 vegetation, ...)
    colors: np.ndarray  # [N, 3] float64 base RGB in [0, 1]
    seeds: np.ndarray  # [N] int64 texture seeds
    ground_label: GroundBands = field(default_factory=GroundBands)  # road / sidewalk / terrain by position
    sky_label: int = SKY  # pixels whose ray hits nothing (no depth)
    sun: tuple[float, float, float] = (0.45, -0.3, 0.84)  # direction towards the sun (normalised on use)

    def __post_init__(self) -> None:
        n = len(self.centers)
        for name, shape in (
            ("centers", (n, 3)),
            ("half_sizes", (n, 3)),
            ("yaw", (n,)),
            ("label_ids", (n,)),
            ("colors", (n, 3)),
            ("seeds", (n,)),
        ):
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(
                    f"OutdoorScene.{name}: expected shape {shape}, got {np.shape(getattr(self, name))}"
                )

    @property
    def num_boxes(self) -> int:
        return len(self.centers)

    def corners(self) -> np.ndarray:
        """World corners of every box: [N, 8, 3]."""
        return box_corners(self.centers, self.half_sizes, self.yaw)


@dataclass
class OutdoorView:
    """Per-pixel results of one view."""

    depth: np.ndarray  # [H, W] float64 z-depth (ray parameter for rays with z = 1); 0 = sky
    color: np.ndarray | None  # [H, W, 3] uint8 RGB; None when rendered with shade=False
    label: np.ndarray  # [H, W] uint8 Cityscapes label id (sky = scene.sky_label)
    part: np.ndarray  # [H, W] int64 box index, -1 ground, -2 sky


def pinhole_rays(intrinsics: np.ndarray, height: int, width: int) -> np.ndarray:
    """Camera-frame ray directions [H, W, 3] with z = 1 through the pixel centres of a pinhole camera.

    Pixel (r, c) looks along ((c - cx - skew·y) / fx, y, 1) with y = (r - cy) / fy.
    """
    k = np.asarray(intrinsics, dtype=np.float64)
    fx, fy, cx, cy, skew = k[0, 0], k[1, 1], k[0, 2], k[1, 2], k[0, 1]
    y = np.broadcast_to(((np.arange(height) - cy) / fy)[:, None], (height, width))
    x = (np.arange(width)[None, :] - cx - skew * y) / fx
    return np.stack([x, y, np.ones((height, width))], -1)


def render(
    scene: OutdoorScene,
    intrinsics: np.ndarray,
    camera_to_world: np.ndarray,
    height: int,
    width: int,
    shade: bool = True,
) -> OutdoorView:
    """Render one pinhole view of `scene` with 3×3 `intrinsics` at height × width."""
    return render_rays(scene, camera_to_world, pinhole_rays(intrinsics, height, width), shade)


def render_rays(
    scene: OutdoorScene, camera_to_world: np.ndarray, rays: np.ndarray, shade: bool = True
) -> OutdoorView:
    """Intersect camera-frame rays [H, W, 3] (z = 1) from the camera at `camera_to_world` with the scene.

    `shade=False` skips colour (depth, labels and parts only).
    """
    rays = np.asarray(rays, dtype=np.float64)
    if rays.ndim != 3 or rays.shape[2] != 3 or not np.allclose(rays[..., 2], 1.0):
        raise ValueError(
            f"rays: expected [H, W, 3] camera-frame directions with z = 1, got shape {rays.shape}"
        )
    rot = np.asarray(camera_to_world, dtype=np.float64)[:3, :3]
    origin = np.asarray(camera_to_world, dtype=np.float64)[:3, 3]
    dirs = rays @ rot.T  # [H, W, 3] world directions, still one unit of z-depth per unit of t
    shape = rays.shape[:2]

    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = -origin[2] / dirs[..., 2]
    zbuf = np.where(t_ground > NEAR, t_ground, np.inf)  # [H, W]
    part = np.where(np.isfinite(zbuf), -1, -2).astype(np.int64)
    face = np.full(shape, 5, dtype=np.int64)

    # Conservative screen bounds of a box: a ray belongs to the rows whose y/z range and to the columns
    # whose x/z range overlaps the box's projected extent (exact rows/columns for a pinhole camera).
    row_lo, row_hi = rays[..., 1].min(1), rays[..., 1].max(1)
    col_lo, col_hi = rays[..., 0].min(0), rays[..., 0].max(0)
    corners_cam = (scene.corners() - origin) @ rot  # [N, 8, 3] world -> camera, as row vectors
    for p in range(scene.num_boxes):
        extent = _projected_extent(corners_cam[p])
        if extent is None:
            continue
        (x0, x1), (y0, y1) = extent
        rows = np.flatnonzero((row_hi >= y0) & (row_lo <= y1))
        cols = np.flatnonzero((col_hi >= x0) & (col_lo <= x1))
        if len(rows) == 0 or len(cols) == 0:
            continue
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        intersect_box(
            np.moveaxis(dirs[window], -1, 0),  # world x, y, z components
            origin,
            scene.centers[p],
            scene.half_sizes[p],
            scene.yaw[p],
            p,
            zbuf[window],
            part[window],
            face[window],
        )

    hit = part != -2
    depth = np.where(hit, zbuf, 0.0)
    label = np.full(shape, scene.sky_label, dtype=np.uint8)
    on_box = part >= 0
    label[on_box] = scene.label_ids[part[on_box]]
    points = origin + dirs * depth[..., None]  # [H, W, 3] world surface points (camera origin on sky)
    on_ground = part == -1
    label[on_ground] = scene.ground_label(points[on_ground][:, :2])
    color = _shade(scene, points, dirs, part, face, label) if shade else None
    return OutdoorView(depth=depth, color=color, label=label, part=part)


def _projected_extent(corners: np.ndarray):
    """((x0, x1), (y0, y1)) bounds of x/z and y/z over the part of a box in front of the camera, or None.

    The part with z >= near is a convex polytope whose vertices are the corners in front plus the
    points where the 12 edges cross z = near, so a box straddling the camera is bounded exactly.
    """
    z = corners[:, 2]
    front = z >= NEAR
    if not front.any():
        return None
    points = [corners[front]]
    a, b = corners[_EDGES[:, 0]], corners[_EDGES[:, 1]]
    crossing = front[_EDGES[:, 0]] != front[_EDGES[:, 1]]
    if crossing.any():
        a, b = a[crossing], b[crossing]
        s = (NEAR - a[:, 2]) / (b[:, 2] - a[:, 2])
        points.append(a + s[:, None] * (b - a))
    pts = np.concatenate(points)
    nx, ny = pts[:, 0] / pts[:, 2], pts[:, 1] / pts[:, 2]
    # widen by float noise: a hit found by the slab test may sit on the rounded-off boundary
    pad = 1e-9 * (1.0 + max(np.abs(nx).max(), np.abs(ny).max()))
    return (nx.min() - pad, nx.max() + pad), (ny.min() - pad, ny.max() + pad)


def _shade(
    scene: OutdoorScene,
    points: np.ndarray,
    dirs: np.ndarray,
    part: np.ndarray,
    face: np.ndarray,
    label: np.ndarray,
) -> np.ndarray:
    """[H, W, 3] uint8 colour: textured, sun-lit boxes and ground; a sky gradient elsewhere."""
    rgb = np.zeros((*part.shape, 3))
    sun = np.asarray(scene.sun, dtype=np.float64)
    sun = sun / np.linalg.norm(sun)
    on_box = part >= 0
    if on_box.any():
        idx, faces = part[on_box], face[on_box]
        local = rotate_z(points[on_box] - scene.centers[idx], -scene.yaw[idx])
        normal = rotate_z(_FACE_NORMALS[faces], scene.yaw[idx])
        rgb[on_box] = box_color(scene, idx, faces, local) * _sunlight(normal @ sun)[:, None]
    on_ground = part == -1
    if on_ground.any():
        rgb[on_ground] = ground_color(scene.ground_label, points[on_ground][:, :2], label[on_ground])
        rgb[on_ground] *= _sunlight(np.full(on_ground.sum(), sun[2]))[:, None]
    sky = part == -2
    if sky.any():
        rgb[sky] = sky_color(dirs[sky])
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def _sunlight(cos_incidence: np.ndarray) -> np.ndarray:
    """Ambient plus Lambert light of the sun; surfaces facing away get the ambient term only."""
    return 0.55 + 0.5 * np.clip(cos_incidence, 0.0, 1.0)


def _uniform(seeds: np.ndarray, k: int) -> np.ndarray:
    """A number in [0, 1) per seed [N] (value noise at a lattice point is the lattice hash), hashed
    once per distinct seed."""
    unique, inverse = np.unique(np.asarray(seeds, dtype=np.int64), return_inverse=True)
    lattice = np.zeros((len(unique), 3))
    lattice[:, 0] = k
    return value_noise(lattice, unique)[inverse]


def box_color(scene: OutdoorScene, part: np.ndarray, face: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Unlit colour [N, 3] in [0, 1] of points `local` [N, 3] (box frame) on faces [N] of boxes `part` [N].

    Buildings get facades with a grid of framed windows per floor, cars glass and tyre bands, trees
    leafy noise; everything else a plain noisy finish of its base colour.
    """
    base = scene.colors[part]
    seed = scene.seeds[part].astype(np.int64)
    half = scene.half_sizes[part]
    labels = scene.label_ids[part]
    coarse = value_noise(local * 0.8 + 31.0, seed)
    fine = value_noise(local * 7.0, seed + 1)
    rgb = base * (0.8 + 0.3 * coarse[:, None]) * (0.9 + 0.15 * fine[:, None])

    vertical = face < 4
    # horizontal coordinate along a vertical face and the height above the box's bottom
    along = np.where(face // 2 == 0, local[:, 1], local[:, 0])
    along_half = np.where(face // 2 == 0, half[:, 1], half[:, 0])
    height = local[:, 2] + half[:, 2]

    sel = np.flatnonzero((labels == BUILDING) & vertical)
    if len(sel):
        rgb[sel] = _facade(rgb[sel], along[sel], along_half[sel], height[sel], 2 * half[sel, 2], seed[sel])
    sel = np.flatnonzero((labels == BUILDING) & (face == 5))
    rgb[sel] *= 0.55  # roofs
    sel = np.flatnonzero(labels == CAR)
    if len(sel):
        frac = height[sel] / (2 * half[sel, 2])
        glass = vertical[sel] & (frac > 0.58) & (frac < 0.92) & (np.abs(along[sel]) < along_half[sel] - 0.12)
        tyres = frac < 0.22
        rgb[sel] = np.where(glass[:, None], np.array([0.12, 0.15, 0.2]), rgb[sel])
        rgb[sel] = np.where(tyres[:, None], np.array([0.06, 0.06, 0.06]), rgb[sel])
    sel = np.flatnonzero(labels == VEGETATION)
    if len(sel):
        leaves = value_noise(local[sel] * 3.0, seed[sel] + 2)
        rgb[sel] = base[sel] * (0.45 + 0.9 * leaves[:, None]) * (0.75 + 0.5 * fine[sel, None])
    return np.clip(rgb, 0.0, 1.0)


def _facade(
    wall: np.ndarray, along: np.ndarray, along_half: np.ndarray, height: np.ndarray, top: np.ndarray, seed
) -> np.ndarray:
    """Wall colour [N, 3] with framed windows: floors and window spacing vary per building (seed)."""
    floor = 2.9 + 0.8 * _uniform(seed, 1)
    spacing = 2.2 + 1.6 * _uniform(seed, 2)
    width = spacing * (0.35 + 0.25 * _uniform(seed, 3))
    columns = np.floor(2 * along_half / spacing)
    margin = along_half - 0.5 * columns * spacing
    cell = (along + along_half - margin) / spacing
    col_frac = (cell - np.floor(cell) - 0.5) * spacing  # metres from the window column's centre
    level = height / floor
    row_frac = (level - np.floor(level)) * floor  # metres above the floor
    in_grid = (cell >= 0) & (cell < columns) & (height < top - 0.8)
    opening = in_grid & (np.abs(col_frac) < 0.5 * width) & (row_frac > 0.9) & (row_frac < 2.3)
    pane = opening & (np.abs(col_frac) < 0.5 * width - 0.08) & (row_frac > 0.98) & (row_frac < 2.22)
    out = np.where(opening[:, None], np.array([0.85, 0.84, 0.8]), wall)  # window frames
    # each pane its own shade of glass (hashed by its window cell)
    cell_id = np.stack([np.floor(cell[pane]), np.floor(level[pane]), np.zeros(pane.sum())], 1)
    brightness = 0.7 + 0.8 * value_noise(cell_id, seed[pane] + 3)
    out[pane] = np.array([0.16, 0.2, 0.27]) * brightness[:, None]
    return out


def ground_color(rule: GroundBands, xy: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Unlit colour [N, 3] in [0, 1] of ground points xy [N, 2] with label ids [N]."""
    n = len(xy)
    points = np.stack([xy[:, 0], xy[:, 1], np.zeros(n)], 1)
    coarse = value_noise(points * 0.6 + 5.0, rule.seed)
    fine = value_noise(points * 9.0, rule.seed + 1)
    rgb = np.empty((n, 3))
    road = label == ROAD
    rgb[road] = 0.33 * (0.85 + 0.3 * coarse[road, None]) * (0.85 + 0.3 * fine[road, None])
    if rule.labels and rule.labels[0] == ROAD:
        across = xy[:, 1] - rule.center_y
        dashes = (np.abs(across) < 0.07) & (np.mod(xy[:, 0], 6.0) < 3.0)
        edges = np.abs(np.abs(across) - (rule.limits[0] - 0.3)) < 0.06
        rgb[road & (dashes | edges)] = 0.88
    walk = label == SIDEWALK
    tile = value_noise(np.floor(points[walk] / 0.6), rule.seed + 2)
    grout = np.any(np.abs(points[walk, :2] / 0.6 - np.round(points[walk, :2] / 0.6)) < 0.04, axis=1)
    rgb[walk] = np.where(grout, 0.45, 0.6 + 0.15 * tile)[:, None] * np.array([1.0, 0.98, 0.95])
    terrain = label == TERRAIN
    grass, soil = np.array([0.3, 0.42, 0.18]), np.array([0.45, 0.37, 0.25])
    mix = coarse[terrain, None]
    rgb[terrain] = (grass * (1 - mix) + soil * mix) * (0.75 + 0.5 * fine[terrain, None])
    other = ~(road | walk | terrain)
    rgb[other] = 0.45 * (0.8 + 0.3 * coarse[other, None]) * (0.9 + 0.2 * fine[other, None])
    return np.clip(rgb, 0.0, 1.0)


def sky_color(dirs: np.ndarray) -> np.ndarray:
    """Sky colour [N, 3] for world ray directions [N, 3]: pale at the horizon, deeper blue above."""
    elevation = np.clip(dirs[:, 2] / np.linalg.norm(dirs, axis=1), 0.0, 1.0)
    horizon, zenith = np.array([0.78, 0.85, 0.92]), np.array([0.35, 0.55, 0.85])
    w = np.sqrt(elevation)[:, None]
    return horizon * (1 - w) + zenith * w
