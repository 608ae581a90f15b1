"""Lay out a furnished room: structure, wall items (doors, windows, curtains, pictures), furniture.

Room types decide which furniture appears so that, over a handful of scenes, all 20 ScanNet
benchmark classes occur in plausible company (a toilet in a bathroom, a refrigerator in a kitchen).
"""

from __future__ import annotations

import numpy as np

from pri3d.synth import furniture
from pri3d.synth.scene import (
    FABRIC,
    PICTURE,
    PLAIN,
    STRIPES,
    TILES,
    WINDOW,
    WOOD,
    Scene,
    _Builder,
    rotation_z,
)

WALL_THICKNESS = 0.1

#: room type -> (wall furniture candidates with their probability, free furniture candidates)
ROOM_TYPES: dict[str, tuple[list[tuple[str, float]], list[tuple[str, float]]]] = {
    "bedroom": (
        [("bed", 1.0), ("nightstand", 0.7), ("cabinet", 0.8), ("desk", 0.5), ("bookshelf", 0.4),
         ("trash can", 0.3)],
        [("office chair", 0.5), ("ottoman", 0.3)],
    ),
    "living room": (
        [("sofa", 1.0), ("bookshelf", 0.7), ("cabinet", 0.6), ("desk", 0.2)],
        [("coffee table", 0.9), ("chair", 0.6), ("ottoman", 0.5), ("trash can", 0.3)],
    ),
    "kitchen": (
        [("counter", 1.0), ("kitchen cabinets", 0.9), ("refrigerator", 1.0), ("trash can", 0.6)],
        [("table", 0.9), ("chair", 1.0)],
    ),
    "bathroom": (
        [("toilet", 1.0), ("bathtub", 0.9), ("sink", 1.0), ("cabinet", 0.5), ("trash can", 0.5)],
        [],
    ),
    "office": (
        [("desk", 1.0), ("bookshelf", 0.9), ("cabinet", 0.8), ("desk", 0.5), ("trash can", 0.6)],
        [("office chair", 1.0), ("table", 0.5), ("chair", 0.6)],
    ),
}  # fmt: skip

EXTRA_WALL_FURNITURE = ("cabinet", "bookshelf", "trash can", "nightstand", "desk")
EXTRA_FREE_FURNITURE = ("ottoman", "chair", "trash can")


def build_room(
    scene_id: str, rng: np.random.Generator, room_type: str | None = None, class_looks: bool = False
) -> Scene:
    """Generate one furnished room. Deterministic for a given generator state."""
    if room_type is None:
        room_type = str(rng.choice(list(ROOM_TYPES)))
    small = room_type == "bathroom"
    size = np.array(
        [
            rng.uniform(2.8, 3.8) if small else rng.uniform(4.0, 6.0),
            rng.uniform(2.4, 3.2) if small else rng.uniform(3.4, 5.0),
            rng.uniform(2.45, 2.8),
        ]
    )
    b = _Builder(scene_id, size, rng, class_looks)
    _add_structure(b)
    _add_door(b)
    for _ in range(int(rng.integers(1, 3))):
        _add_window(b)
    wall_items, free_items = ROOM_TYPES[room_type]
    for name, p in wall_items:
        if rng.random() < p:
            _add_wall_furniture(b, name)
    if room_type == "bathroom" and any(o.raw_category == "bathtub" for o in b.objects):
        _add_shower_curtain(b)
    if room_type == "kitchen":
        _add_counter_sink(b)
    for name, p in free_items:
        if rng.random() < p:
            _add_free_group(b, name)
    # clutter that any room may have, so that rooms are not sparse and classes share company
    for _ in range(int(rng.integers(1, 4))):
        _add_wall_furniture(b, str(rng.choice(EXTRA_WALL_FURNITURE)))
    for _ in range(int(rng.integers(0, 3))):
        _add_free_group(b, str(rng.choice(EXTRA_FREE_FURNITURE)))
    for _ in range(int(rng.integers(1, 4))):
        _add_picture(b)
    scene = b.build()
    scene.scene_type = room_type
    return scene


# ----------------------------------------------------------------------------------------------


def _add_structure(b: _Builder) -> None:
    """Floor, ceiling and four walls as slabs outside the interior; only inner faces are meshed."""
    sx, sy, sz = b.size
    t, e = WALL_THICKNESS, 0.01  # slabs overhang by e so rays into corners never slip between them
    floor_mat = b.material(int(b.rng.choice([WOOD, TILES, PLAIN])), scale=float(b.rng.uniform(0.15, 0.5)))
    wall_mat = b.material(
        int(b.rng.choice([PLAIN, STRIPES, PLAIN])),
        base=_wall_color(b.rng),
        scale=float(b.rng.uniform(0.1, 0.3)),
    )
    ceiling_mat = b.material(PLAIN, base=np.full(3, b.rng.uniform(0.8, 0.95)), scale=0.5)
    slabs = [
        ("floor", [sx / 2, sy / 2, -t / 2], [sx / 2 + e, sy / 2 + e, t / 2], 5, floor_mat),
        ("ceiling", [sx / 2, sy / 2, sz + t / 2], [sx / 2 + e, sy / 2 + e, t / 2], 4, ceiling_mat),
        ("wall", [sx / 2, -t / 2, sz / 2], [sx / 2 + e, t / 2, sz / 2 + e], 3, wall_mat),
        ("wall", [sx + t / 2, sy / 2, sz / 2], [t / 2, sy / 2 + e, sz / 2 + e], 0, wall_mat),
        ("wall", [sx / 2, sy + t / 2, sz / 2], [sx / 2 + e, t / 2, sz / 2 + e], 2, wall_mat),
        ("wall", [-t / 2, sy / 2, sz / 2], [t / 2, sy / 2 + e, sz / 2 + e], 1, wall_mat),
    ]
    for name, center, half, inner_face, mat in slabs:
        obj = b.new_object(name)
        faces = np.zeros(6, bool)
        faces[inner_face] = True
        center, half = np.asarray(center), np.asarray(half)
        bounds = np.zeros((6, 2, 2))
        for k, axis in enumerate(a for a in range(3) if a != inner_face // 2):
            # tessellate exactly the interior rectangle, not the overhang
            lo, hi = 0.0 - center[axis], b.size[axis] - center[axis]
            bounds[inner_face, k] = (lo, hi)
        b.add_part(obj, mat, center, half, 0.0, faces=faces, bounds=bounds)
        # the slab whose inner face is +axis bounds the interior on its low side, and vice versa
        b.room_slabs[inner_face // 2, 1 - inner_face % 2] = len(b.parts) - 1


def _wall_color(rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.uniform(0.6, 0.95) + rng.uniform(-0.08, 0.08, 3), 0, 1)


def _wall_point(b: _Builder, wall: int, s: float, offset: float, z: float) -> tuple[np.ndarray, float]:
    """World point at arc length `s` along `wall`, `offset` metres into the room, height z."""
    origin, direction, yaw, _ = b.wall_frame(wall)
    inward = rotation_z(yaw) @ np.array([0.0, -1.0, 0.0])
    p = origin + s * direction + offset * inward
    p[2] = z
    return p, yaw


def _try_wall_item(
    b: _Builder,
    raw: str,
    width: float,
    height: float,
    depth: float,
    z0: float,
    material: int,
    tries: int = 30,
    offset: float = 0.0,
) -> tuple[int, float, float] | None:
    """Place a thin box flat on a wall (door, window, picture); returns (wall, s, yaw) or None."""
    for _ in range(tries):
        wall = int(b.rng.integers(4))
        length = b.wall_frame(wall)[3]
        if length < width + 0.3:
            continue
        s = float(b.rng.uniform(0.15 + width / 2, length - 0.15 - width / 2))
        if not b.span_free(wall, s - width / 2, s + width / 2, z0, z0 + height):
            continue
        center, yaw = _wall_point(b, wall, s, offset + depth / 2, z0 + height / 2)
        obj = b.new_object(raw)
        b.add_part(obj, material, center, [width / 2, depth / 2, height / 2], yaw)
        b.wall_spans.append((wall, s - width / 2, s + width / 2, z0, z0 + height))
        return wall, s, yaw
    return None


def _add_door(b: _Builder) -> None:
    width, height = float(b.rng.uniform(0.8, 0.95)), float(b.rng.uniform(2.0, 2.1))
    placed = _try_wall_item(b, "door", width, height, 0.04, 0.0, b.material(int(b.rng.choice([WOOD, PLAIN]))))
    if placed is None:
        return
    wall, s, yaw = placed
    handle, _ = _wall_point(b, wall, s + width / 2 - 0.1, 0.07, 1.0)
    b.add_part(len(b.objects) - 1, b.material(PLAIN, base=np.full(3, 0.7)), handle, [0.06, 0.03, 0.012], yaw)
    # keep the swing area free of furniture
    p0, _ = _wall_point(b, wall, s - width / 2, 0.0, 0.0)
    p1, _ = _wall_point(b, wall, s + width / 2, 1.0, 0.0)
    b.footprints.append(
        np.array([min(p0[0], p1[0]), min(p0[1], p1[1]), max(p0[0], p1[0]), max(p0[1], p1[1])])
    )
    b.wall_spans.append((wall, s - width / 2 - 0.05, s + width / 2 + 0.05, 0.0, b.size[2]))


def _add_window(b: _Builder) -> None:
    width, height = float(b.rng.uniform(0.8, 1.6)), float(b.rng.uniform(0.9, 1.3))
    sill = float(b.rng.uniform(0.8, 1.0))
    mat = b.material(
        WINDOW,
        base=np.array([0.75, 0.85, 0.98]),
        accent=np.full(3, b.rng.uniform(0.85, 1.0)),
        scale=float(b.rng.uniform(0.3, 0.6)),
    )
    placed = _try_wall_item(b, "window", width, height, 0.03, sill, mat)
    if placed is None or b.rng.random() < 0.3:
        return
    wall, s, yaw = placed
    curtain_mat = b.material(int(b.rng.choice([FABRIC, STRIPES])))
    top = min(sill + height + 0.15, b.size[2] - 0.02)
    for side in (-1, 1):
        panel = float(b.rng.uniform(0.3, 0.5))
        cs = s + side * (width / 2 + panel / 2 - 0.1)
        # the panel overlaps the window's edge on purpose; only the part beside the window must be free
        outer = (s + width / 2, cs + panel / 2) if side > 0 else (cs - panel / 2, s - width / 2)
        if not b.span_free(wall, outer[0], outer[1], 0.05, top):
            continue
        length = b.wall_frame(wall)[3]
        if cs - panel / 2 < 0.02 or cs + panel / 2 > length - 0.02:
            continue
        center, _ = _wall_point(b, wall, cs, 0.06, (top + 0.05) / 2)
        obj = b.new_object("curtain")
        b.add_part(obj, curtain_mat, center, [panel / 2, 0.025, (top - 0.05) / 2], yaw)
        b.wall_spans.append((wall, cs - panel / 2, cs + panel / 2, 0.0, top))


def _add_picture(b: _Builder) -> None:
    width, height = float(b.rng.uniform(0.3, 1.0)), float(b.rng.uniform(0.25, 0.8))
    z0 = float(b.rng.uniform(1.2, min(1.9, b.size[2] - height - 0.15)))
    mat = b.material(PICTURE, scale=float(b.rng.uniform(0.1, 0.4)))
    _try_wall_item(b, "picture", width, height, 0.025, z0, mat)


def _place_against_wall(b: _Builder, raw: str, parts, size, tries: int = 40) -> tuple[int, float] | None:
    width, depth = size
    height = max(c[2] + h[2] for c, h, _ in parts)
    mats = [b.furniture_material(raw, 0), b.furniture_material(raw, 1)]
    for _ in range(tries):
        wall = int(b.rng.integers(4))
        length = b.wall_frame(wall)[3]
        if length < width + 0.1:
            continue
        s = float(b.rng.uniform(width / 2 + 0.02, length - width / 2 - 0.02))
        if not b.span_free(wall, s - width / 2, s + width / 2, 0.0, height):
            continue
        position, yaw = _wall_point(b, wall, s, depth / 2 + 0.02, 0.0)
        box = _footprint(position, yaw, width, depth)
        if not b.footprint_free(box):
            continue
        b.add_object_parts(raw, [(c, h) for c, h, _ in parts], position, yaw, [mats[m] for _, _, m in parts])
        b.footprints.append(box)
        b.wall_spans.append((wall, s - width / 2, s + width / 2, 0.0, height))
        return wall, s
    return None


def _add_wall_furniture(b: _Builder, raw: str) -> None:
    parts, size = furniture.WALL_FURNITURE[raw](b.rng)
    _place_against_wall(b, raw, parts, size)


def _add_counter_sink(b: _Builder) -> None:
    """A sink basin set on top of the kitchen counter."""
    counters = [i for i, o in enumerate(b.objects) if o.raw_category == "counter"]
    if not counters:
        return
    idx = [k for k, p in enumerate(b.parts) if p[3] == counters[0]]
    top = b.parts[idx[-1]]
    center, half, yaw = top[0], top[1], top[2]
    parts, _ = furniture.sink(b.rng, height=0.0)
    offset = rotation_z(yaw) @ np.array([b.rng.uniform(-0.4, 0.4) * half[0], 0.0, 0.0])
    position = center + offset + np.array([0.0, 0.0, half[2]])
    mats = [b.furniture_material("sink", 0), b.furniture_material("sink", 1)]
    b.add_object_parts("sink", [(c, h) for c, h, _ in parts], position, yaw, [mats[m] for _, _, m in parts])


def _add_shower_curtain(b: _Builder) -> None:
    tub = next(i for i, o in enumerate(b.objects) if o.raw_category == "bathtub")
    idx = [k for k, p in enumerate(b.parts) if p[3] == tub]
    base = b.parts[idx[0]]
    center, half, yaw = base[0], base[1], base[2]
    front = center + rotation_z(yaw) @ np.array([0.0, -half[1] + 0.03, 0.0])
    top = min(2.05, b.size[2] - 0.05)
    front[2] = (0.6 + top) / 2
    obj = b.new_object("shower curtain")
    b.add_part(
        obj,
        b.material(int(b.rng.choice([STRIPES, PLAIN, FABRIC]))),
        front,
        [half[0] * b.rng.uniform(0.6, 0.95), 0.015, (top - 0.6) / 2],
        yaw,
    )


def _add_free_group(b: _Builder, raw: str) -> None:
    """A free-standing object near the middle of the room; tables get chairs around them."""
    parts, (width, depth) = furniture.FREE_FURNITURE[raw](b.rng)
    sx, sy = b.size[:2]
    for _ in range(40):
        position = np.array([b.rng.uniform(0.25, 0.75) * sx, b.rng.uniform(0.25, 0.75) * sy, 0.0])
        yaw = float(b.rng.choice([0.0, np.pi / 2, np.pi, -np.pi / 2]) + b.rng.normal(0, 0.15))
        box = _footprint(position, yaw, width, depth, margin=0.05)
        if not b.footprint_free(box):
            continue
        mats = [b.furniture_material(raw, 0), b.furniture_material(raw, 1)]
        b.add_object_parts(raw, [(c, h) for c, h, _ in parts], position, yaw, [mats[m] for _, _, m in parts])
        b.footprints.append(box)
        if raw == "table":
            _add_chairs_around(b, position, yaw, width, depth)
        return


def _add_chairs_around(b: _Builder, center: np.ndarray, yaw: float, width: float, depth: float) -> None:
    parts, (cw, cd) = furniture.chair(b.rng)
    mats = [b.furniture_material("chair", 0), b.furniture_material("chair", 1)]
    rot = rotation_z(yaw)
    seats = [
        (0.0, -(depth / 2 + cd / 2 - 0.1), 0.0),
        (0.0, depth / 2 + cd / 2 - 0.1, np.pi),
        (-(width / 2 + cd / 2 - 0.05), 0.0, -np.pi / 2),
        (width / 2 + cd / 2 - 0.05, 0.0, np.pi / 2),
    ]
    for x, y, turn in seats:
        if b.rng.random() < 0.3:
            continue
        position = center + rot @ np.array([x, y, 0.0])
        chair_yaw = yaw + turn + np.pi + float(b.rng.normal(0, 0.1))  # back away from the table
        box = _footprint(position, chair_yaw, cw, cd)
        x0, y0, x1, y1 = box
        if x0 < 0 or y0 < 0 or x1 > b.size[0] or y1 > b.size[1]:
            continue
        b.add_object_parts(
            "chair", [(c, h) for c, h, _ in parts], position, chair_yaw, [mats[m] for _, _, m in parts]
        )
        b.footprints.append(box)


def _footprint(
    position: np.ndarray, yaw: float, width: float, depth: float, margin: float = 0.0
) -> np.ndarray:
    """Axis-aligned (x0, y0, x1, y1) bound of a rotated width × depth footprint."""
    corners = np.array([[sx * width / 2, sy * depth / 2, 0.0] for sx in (-1, 1) for sy in (-1, 1)])
    xy = (corners @ rotation_z(yaw).T)[:, :2] + position[:2]
    return np.concatenate([xy.min(0) - margin, xy.max(0) + margin])
