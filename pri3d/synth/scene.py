"""Procedural indoor rooms built from oriented boxes.

A scene is a closed room (floor, ceiling and four walls as slabs whose inner faces bound the room)
furnished with objects. Every object is a set of box *parts* that share the object's yaw about the
world z axis, so a chair is legs + seat + back and a table is a top + legs: classes differ in shape.
Boxes make the geometry exact: the renderer intersects rays with the same boxes that the mesh
tessellates, so depth maps and the mesh agree to float precision.

World frame: z up, metres, the room's interior is [0, size_x] × [0, size_y] × [0, height].
Object frame: origin at the centre of the footprint on the floor, +y is the object's back (the side
that faces the wall it stands against), +x its width.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

#: Face order of a box: -x, +x, -y, +y, -z, +z.
NUM_FACES = 6

#: Raw ScanNet categories the generator uses, with their NYU40 id and NYU40 class name.
RAW_CATEGORIES: dict[str, tuple[int, str]] = {
    "wall": (1, "wall"),
    "floor": (2, "floor"),
    "ceiling": (22, "ceiling"),
    "cabinet": (3, "cabinet"),
    "kitchen cabinets": (3, "cabinet"),
    "bed": (4, "bed"),
    "chair": (5, "chair"),
    "office chair": (5, "chair"),
    "sofa": (6, "sofa"),
    "table": (7, "table"),
    "coffee table": (7, "table"),
    "door": (8, "door"),
    "window": (9, "window"),
    "bookshelf": (10, "bookshelf"),
    "picture": (11, "picture"),
    "counter": (12, "counter"),
    "desk": (14, "desk"),
    "curtain": (16, "curtain"),
    "pillow": (18, "pillow"),
    "books": (23, "books"),
    "refrigerator": (24, "refridgerator"),
    "shower curtain": (28, "shower curtain"),
    "nightstand": (32, "night stand"),
    "toilet": (33, "toilet"),
    "sink": (34, "sink"),
    "bathtub": (36, "bathtub"),
    "trash can": (39, "otherfurniture"),
    "ottoman": (39, "otherfurniture"),
}

# Surface patterns understood by `appearance.surface_color`.
PLAIN, WOOD, TILES, STRIPES, FABRIC, PICTURE, WINDOW = range(7)


@dataclass
class Material:
    """How a part looks: a pattern in the part's own coordinates and two colours in [0, 1]."""

    pattern: int
    base: np.ndarray  # [3]
    accent: np.ndarray  # [3]
    scale: float  # pattern period in metres
    seed: int


@dataclass
class SceneObject:
    """One annotated object: an instance with a raw ScanNet category."""

    object_id: int  # 0-based, as in ScanNet's aggregation.json
    raw_category: str

    @property
    def nyu40_id(self) -> int:
        return RAW_CATEGORIES[self.raw_category][0]


@dataclass
class Scene:
    """Box parts of a room. Arrays are indexed by part; P parts in all."""

    scene_id: str
    size: np.ndarray  # [3] room interior extent (x, y, z) in metres
    centers: np.ndarray  # [P, 3] world
    halves: np.ndarray  # [P, 3] half extents in the part frame
    yaws: np.ndarray  # [P] rotation about world z (radians)
    object_ids: np.ndarray  # [P] index into `objects`
    material_ids: np.ndarray  # [P] index into `materials`
    mesh_faces: np.ndarray  # [P, 6] bool: which faces the mesh tessellates
    mesh_bounds: np.ndarray  # [P, 6, 2, 2] tangent (lo, hi) ranges each face is tessellated over
    room_slabs: np.ndarray  # [3, 2] part index of the slab bounding the interior at (axis, low/high side)
    objects: list[SceneObject] = field(default_factory=list)
    materials: list[Material] = field(default_factory=list)
    scene_type: str = "room"

    @property
    def num_parts(self) -> int:
        return len(self.centers)

    def light_position(self) -> np.ndarray:
        """A ceiling light in the middle of the room, used for view-independent shading."""
        return np.array([self.size[0] / 2, self.size[1] / 2, self.size[2] - 0.05])


def rotation_z(yaw: np.ndarray | float) -> np.ndarray:
    """Rotation matrices about z: [..., 3, 3] for yaw [...] (radians)."""
    yaw = np.asarray(yaw, dtype=np.float64)
    c, s = np.cos(yaw), np.sin(yaw)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack(
        [np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1), np.stack([zero, zero, one], -1)], -2
    )


def rotate_z(vectors: np.ndarray, yaw: np.ndarray | float) -> np.ndarray:
    """Rotate vectors [..., 3] about z by yaw (broadcast against vectors[..., 0])."""
    c, s = np.cos(yaw), np.sin(yaw)
    x, y = vectors[..., 0], vectors[..., 1]
    return np.stack([c * x - s * y, s * x + c * y, vectors[..., 2]], -1)


def face_tangent_axes(face: int) -> tuple[int, int]:
    """The two part-frame axes spanning a face (face // 2 is its normal axis)."""
    axis = face // 2
    return tuple(a for a in range(3) if a != axis)  # type: ignore[return-value]


def distance_to_parts(points: np.ndarray, scene: Scene, parts: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distance from each point [N, 3] to the nearest of the given parts: [N]."""
    idx = np.arange(scene.num_parts) if parts is None else parts
    if len(idx) == 0:
        return np.full(len(points), np.inf)
    local = rotate_z(points[:, None, :] - scene.centers[idx][None], -scene.yaws[idx][None])  # [N, Q, 3]
    outside = np.maximum(np.abs(local) - scene.halves[idx][None], 0.0)
    return np.linalg.norm(outside, axis=-1).min(axis=1)


# ----------------------------------------------------------------------------------------------
# Building a scene


class _Builder:
    """Accumulates parts, objects and materials while a room is laid out."""

    def __init__(self, scene_id: str, size: np.ndarray, rng: np.random.Generator, class_looks: bool = False):
        self.scene_id = scene_id
        self.class_looks = class_looks
        self.size = size
        self.rng = rng
        self.parts: list[tuple[np.ndarray, np.ndarray, float, int, int, np.ndarray, np.ndarray]] = []
        self.objects: list[SceneObject] = []
        self.materials: list[Material] = []
        self.footprints: list[np.ndarray] = []  # [4] (x0, y0, x1, y1) of floor objects
        self.wall_spans: list[tuple[int, float, float, float, float]] = []  # (wall, s0, s1, z0, z1)
        self.room_slabs = np.full((3, 2), -1, dtype=np.int64)

    # -- materials ----------------------------------------------------------------------------
    def material(self, pattern: int, base=None, accent=None, scale: float | None = None) -> int:
        rng = self.rng
        if base is None:
            base = _random_color(rng)
        if accent is None:
            accent = np.clip(np.asarray(base) * rng.uniform(0.5, 0.8) + rng.uniform(-0.1, 0.1, 3), 0, 1)
        if scale is None:
            scale = float(rng.uniform(0.05, 0.4))
        self.materials.append(
            Material(
                pattern, np.asarray(base, float), np.asarray(accent, float), scale, int(rng.integers(2**31))
            )
        )
        return len(self.materials) - 1

    def furniture_material(self, raw_category: str, slot: int = 0) -> int:
        """Material ``slot`` (0 main, 1 secondary) of a piece of furniture.

        By default every furniture class draws from the same pool of looks, so colour never names the
        class. With ``class_looks`` each class has its own pattern and colour (per slot), which
        every instance varies a little, as real beds, sofas and tables look alike within a class.
        """
        if not self.class_looks:
            pattern = int(
                self.rng.choice([PLAIN, WOOD, FABRIC, STRIPES, TILES], p=[0.3, 0.3, 0.25, 0.1, 0.05])
            )
            return self.material(pattern)
        look = np.random.default_rng(zlib.crc32(f"{raw_category}/{slot}".encode()))
        pattern = int(look.choice([PLAIN, WOOD, FABRIC, STRIPES, TILES], p=[0.3, 0.3, 0.25, 0.1, 0.05]))
        hue, sat, val = look.uniform(0, 1), look.uniform(0.2, 0.7), look.uniform(0.35, 0.9)
        rng = self.rng
        base = _hsv_to_rgb(
            (hue + rng.normal(0, 0.03)) % 1.0,
            float(np.clip(sat + rng.uniform(-0.08, 0.08), 0, 1)),
            float(np.clip(val + rng.uniform(-0.08, 0.08), 0, 1)),
        )
        return self.material(
            pattern, base=base, scale=float(look.uniform(0.05, 0.4) * rng.uniform(0.8, 1.25))
        )

    # -- parts and objects --------------------------------------------------------------------
    def new_object(self, raw_category: str) -> int:
        self.objects.append(SceneObject(len(self.objects), raw_category))
        return len(self.objects) - 1

    def add_part(
        self,
        obj: int,
        material: int,
        center,
        half,
        yaw: float = 0.0,
        faces: np.ndarray | None = None,
        bounds: np.ndarray | None = None,
    ) -> None:
        center = np.asarray(center, float)
        half = np.asarray(half, float)
        if faces is None:
            faces = np.ones(NUM_FACES, bool)
            faces[4] = center[2] - half[2] > 1e-6  # a bottom face on the floor is never seen
        if bounds is None:
            bounds = np.zeros((NUM_FACES, 2, 2))
            for face in range(NUM_FACES):
                for k, axis in enumerate(face_tangent_axes(face)):
                    bounds[face, k] = (-half[axis], half[axis])
        self.parts.append((center, half, float(yaw), obj, material, faces, bounds))

    def add_object_parts(
        self,
        raw_category: str,
        parts: list[tuple[list, list]],
        position,
        yaw: float,
        materials: list[int] | int,
    ) -> int:
        """Place an object made of (local centre, half extents) parts at `position` (floor) with `yaw`."""
        obj = self.new_object(raw_category)
        rot = rotation_z(yaw)
        mats = materials if isinstance(materials, list) else [materials] * len(parts)
        for (local_center, half), mat in zip(parts, mats):
            world_center = np.asarray(position, float) + rot @ np.asarray(local_center, float)
            self.add_part(obj, mat, world_center, half, yaw)
        return obj

    def build(self) -> Scene:
        centers, halves, yaws, objs, mats, faces, bounds = zip(*self.parts)
        return Scene(
            scene_id=self.scene_id,
            size=self.size,
            centers=np.array(centers),
            halves=np.array(halves),
            yaws=np.array(yaws),
            object_ids=np.array(objs, dtype=np.int64),
            material_ids=np.array(mats, dtype=np.int64),
            mesh_faces=np.array(faces),
            mesh_bounds=np.array(bounds),
            room_slabs=self.room_slabs,
            objects=self.objects,
            materials=self.materials,
        )

    # -- placement ----------------------------------------------------------------------------
    def wall_frame(self, wall: int) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Origin on the floor, unit direction along the wall, inward normal yaw, and wall length.

        Walls: 0 at y = 0, 1 at x = size_x, 2 at y = size_y, 3 at x = 0 (counter-clockwise).
        An object with yaw `yaw` has its back (+y) towards the wall.
        """
        sx, sy = self.size[:2]
        if wall == 0:
            return np.array([0.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0]), np.pi, sx
        if wall == 1:
            return np.array([sx, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), -np.pi / 2, sy
        if wall == 2:
            return np.array([sx, sy, 0.0]), np.array([-1.0, 0.0, 0.0]), 0.0, sx
        return np.array([0.0, sy, 0.0]), np.array([0.0, -1.0, 0.0]), np.pi / 2, sy

    def span_free(self, wall: int, s0: float, s1: float, z0: float, z1: float) -> bool:
        for w, a0, a1, b0, b1 in self.wall_spans:
            if w == wall and s0 < a1 and a0 < s1 and z0 < b1 and b0 < z1:
                return False
        return True

    def footprint_free(self, box: np.ndarray) -> bool:
        x0, y0, x1, y1 = box
        if x0 < 0 or y0 < 0 or x1 > self.size[0] or y1 > self.size[1]:
            return False
        return all(not (x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1) for b in self.footprints)


def _random_color(rng: np.random.Generator) -> np.ndarray:
    hue = rng.uniform(0, 1)
    sat = rng.uniform(0.1, 0.7)
    val = rng.uniform(0.35, 0.95)
    return _hsv_to_rgb(hue, sat, val)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])
