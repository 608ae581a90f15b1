"""Furniture shapes: each builder returns box parts in the object frame (see `scene`).

A part is `(center [3], half extents [3], material slot)`; slot 0 is the object's main material,
slot 1 a secondary one (legs, frames, cushions). Sizes are drawn around real furniture dimensions so
classes differ by shape and size, not by colour.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Part = tuple[list[float], list[float], int]


def _legs(width: float, depth: float, height: float, thickness: float, inset: float) -> list[Part]:
    t = thickness / 2
    xs = (-width / 2 + inset + t, width / 2 - inset - t)
    ys = (-depth / 2 + inset + t, depth / 2 - inset - t)
    return [([x, y, height / 2], [t, t, height / 2], 1) for x in xs for y in ys]


def chair(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d = rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.55)
    seat_h = rng.uniform(0.42, 0.5)
    back_h = rng.uniform(0.35, 0.55)
    parts = _legs(w, d, seat_h - 0.05, rng.uniform(0.03, 0.05), 0.0)
    parts.append(([0, 0, seat_h - 0.025], [w / 2, d / 2, 0.025], 0))
    parts.append(([0, d / 2 - 0.03, seat_h + back_h / 2], [w / 2, 0.03, back_h / 2], 0))
    return parts, (w, d)


def table(rng: np.random.Generator, low: bool = False) -> tuple[list[Part], tuple[float, float]]:
    w, d = rng.uniform(0.9, 1.6), rng.uniform(0.7, 1.0)
    h = rng.uniform(0.4, 0.5) if low else rng.uniform(0.72, 0.78)
    top = rng.uniform(0.03, 0.05)
    parts = _legs(w, d, h - top, rng.uniform(0.04, 0.07), rng.uniform(0.02, 0.08))
    parts.append(([0, 0, h - top / 2], [w / 2, d / 2, top / 2], 0))
    return parts, (w, d)


def desk(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d, h = rng.uniform(1.0, 1.6), rng.uniform(0.55, 0.75), rng.uniform(0.72, 0.76)
    top = 0.03
    side = 0.025
    drawer_w = rng.uniform(0.35, 0.45)
    return [
        ([0, 0, h - top / 2], [w / 2, d / 2, top / 2], 0),
        ([-w / 2 + side / 2, 0, (h - top) / 2], [side / 2, d / 2, (h - top) / 2], 0),
        ([w / 2 - drawer_w / 2, 0, (h - top) / 2], [drawer_w / 2, d / 2, (h - top) / 2], 1),
        ([0, d / 2 - 0.01, h * 0.6], [w / 2 - side, 0.01, h * 0.25], 0),
    ], (w, d)


def bed(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, length = rng.choice([0.95, 1.45, 1.65]) + rng.uniform(0, 0.1), rng.uniform(1.95, 2.15)
    base = rng.uniform(0.25, 0.35)
    mattress = rng.uniform(0.18, 0.25)
    head = rng.uniform(0.8, 1.1)
    return [
        ([0, 0, base / 2], [w / 2, length / 2, base / 2], 1),
        ([0, -0.02, base + mattress / 2], [w / 2 - 0.03, length / 2 - 0.05, mattress / 2], 0),
        ([0, length / 2 - 0.03, head / 2], [w / 2, 0.03, head / 2], 1),
    ], (w, length)


def sofa(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d = rng.uniform(1.6, 2.3), rng.uniform(0.8, 0.95)
    seat = rng.uniform(0.4, 0.45)
    back = rng.uniform(0.75, 0.9)
    arm_w, arm_h = rng.uniform(0.15, 0.25), rng.uniform(0.55, 0.65)
    back_d = 0.2
    return [
        ([0, -back_d / 2, seat / 2], [w / 2 - arm_w, (d - back_d) / 2, seat / 2], 0),
        ([0, d / 2 - back_d / 2, back / 2], [w / 2, back_d / 2, back / 2], 0),
        ([-w / 2 + arm_w / 2, -back_d / 2, arm_h / 2], [arm_w / 2, (d - back_d) / 2, arm_h / 2], 1),
        ([w / 2 - arm_w / 2, -back_d / 2, arm_h / 2], [arm_w / 2, (d - back_d) / 2, arm_h / 2], 1),
    ], (w, d)


def cabinet(rng: np.random.Generator, tall: bool | None = None) -> tuple[list[Part], tuple[float, float]]:
    tall = bool(rng.random() < 0.4) if tall is None else tall
    w, d = rng.uniform(0.5, 1.2), rng.uniform(0.4, 0.6)
    h = rng.uniform(1.6, 2.0) if tall else rng.uniform(0.7, 0.95)
    parts: list[Part] = [([0, 0, h / 2], [w / 2, d / 2, h / 2], 0)]
    doors = 2 if w > 0.7 else 1
    for k in range(doors):
        x = -w / 2 + (k + 0.5) * w / doors
        parts.append(([x, -d / 2 - 0.01, h / 2], [w / doors / 2 - 0.015, 0.01, h / 2 - 0.03], 0))
        hx = x + (0.3 if k == 0 and doors == 2 else -0.3) * w / doors
        parts.append(([hx, -d / 2 - 0.03, h * 0.55], [0.01, 0.015, 0.06], 1))
    return parts, (w, d)


def bookshelf(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d, h = rng.uniform(0.7, 1.2), rng.uniform(0.28, 0.38), rng.uniform(1.5, 2.0)
    t = 0.02
    shelves = int(rng.integers(3, 6))
    parts: list[Part] = [
        ([-w / 2 + t / 2, 0, h / 2], [t / 2, d / 2, h / 2], 0),
        ([w / 2 - t / 2, 0, h / 2], [t / 2, d / 2, h / 2], 0),
        ([0, d / 2 - t / 2, h / 2], [w / 2 - t, t / 2, h / 2], 1),
    ]
    for k in range(shelves + 1):
        z = t / 2 + k * (h - t) / shelves
        parts.append(([0, 0, z], [w / 2 - t, d / 2 - t / 2, t / 2], 0))
    return parts, (w, d)


def counter(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d, h = rng.uniform(1.2, 2.4), rng.uniform(0.58, 0.65), rng.uniform(0.86, 0.92)
    top = 0.04
    return [
        ([0, 0.01, (h - top) / 2], [w / 2 - 0.01, d / 2 - 0.01, (h - top) / 2], 1),
        ([0, 0, h - top / 2], [w / 2, d / 2, top / 2], 0),
    ], (w, d)


def sink(rng: np.random.Generator, height: float | None = None) -> tuple[list[Part], tuple[float, float]]:
    """A basin (rim walls around a floor) on a pedestal, or resting on a counter at `height`."""
    w, d, depth = rng.uniform(0.45, 0.6), rng.uniform(0.38, 0.45), rng.uniform(0.12, 0.18)
    z0 = rng.uniform(0.65, 0.75) if height is None else height
    t = 0.03
    parts: list[Part] = [
        ([0, 0, z0 + t / 2], [w / 2, d / 2, t / 2], 0),
        ([-w / 2 + t / 2, 0, z0 + depth / 2], [t / 2, d / 2, depth / 2], 0),
        ([w / 2 - t / 2, 0, z0 + depth / 2], [t / 2, d / 2, depth / 2], 0),
        ([0, -d / 2 + t / 2, z0 + depth / 2], [w / 2 - t, t / 2, depth / 2], 0),
        ([0, d / 2 - t / 2, z0 + depth / 2], [w / 2 - t, t / 2, depth / 2], 0),
        ([0, d / 2 - 0.03, z0 + depth + 0.08], [0.015, 0.015, 0.08], 1),  # tap
    ]
    if height is None:
        parts.append(([0, 0.05, z0 / 2], [0.08, 0.08, z0 / 2], 1))
    return parts, (w, d)


def refrigerator(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d, h = rng.uniform(0.6, 0.8), rng.uniform(0.65, 0.75), rng.uniform(1.7, 1.95)
    split = h * rng.uniform(0.55, 0.65)
    return [
        ([0, 0, h / 2], [w / 2, d / 2, h / 2], 0),
        ([0, -d / 2 - 0.015, split / 2 + 0.02], [w / 2 - 0.01, 0.015, split / 2 - 0.02], 0),
        ([0, -d / 2 - 0.015, (split + h) / 2], [w / 2 - 0.01, 0.015, (h - split) / 2 - 0.02], 0),
        ([w / 2 - 0.08, -d / 2 - 0.05, split - 0.25], [0.012, 0.02, 0.18], 1),
        ([w / 2 - 0.08, -d / 2 - 0.05, split + 0.2], [0.012, 0.02, 0.12], 1),
    ], (w, d)


def toilet(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d = rng.uniform(0.36, 0.42), rng.uniform(0.6, 0.7)
    seat = rng.uniform(0.38, 0.42)
    return [
        ([0, -0.05, seat / 2 - 0.02], [w / 2 - 0.06, d / 2 - 0.15, seat / 2 - 0.02], 0),
        ([0, -0.05, seat - 0.03], [w / 2, d / 2 - 0.08, 0.03], 0),
        ([0, d / 2 - 0.09, seat + 0.2], [w / 2 + 0.03, 0.09, 0.2], 0),
        ([0, d / 2 - 0.09, seat + 0.42], [w / 2 + 0.04, 0.1, 0.02], 1),
    ], (w + 0.08, d)


def bathtub(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d, h = rng.uniform(1.5, 1.75), rng.uniform(0.7, 0.8), rng.uniform(0.5, 0.6)
    t = 0.07
    return [
        ([0, 0, 0.05], [w / 2, d / 2, 0.05], 0),
        ([-w / 2 + t / 2, 0, h / 2], [t / 2, d / 2, h / 2], 0),
        ([w / 2 - t / 2, 0, h / 2], [t / 2, d / 2, h / 2], 0),
        ([0, -d / 2 + t / 2, h / 2], [w / 2 - t, t / 2, h / 2], 0),
        ([0, d / 2 - t / 2, h / 2], [w / 2 - t, t / 2, h / 2], 0),
    ], (w, d)


def trash_can(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, h = rng.uniform(0.25, 0.35), rng.uniform(0.35, 0.6)
    return [
        ([0, 0, h / 2], [w / 2, w / 2, h / 2], 0),
        ([0, 0, h + 0.015], [w / 2 + 0.01, w / 2 + 0.01, 0.015], 1),
    ], (w + 0.02, w + 0.02)


def ottoman(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d, h = rng.uniform(0.45, 0.8), rng.uniform(0.45, 0.6), rng.uniform(0.38, 0.45)
    return [
        ([0, 0, 0.04], [w / 2 - 0.04, d / 2 - 0.04, 0.04], 1),
        ([0, 0, (h + 0.08) / 2], [w / 2, d / 2, (h - 0.08) / 2], 0),
    ], (w, d)


def nightstand(rng: np.random.Generator) -> tuple[list[Part], tuple[float, float]]:
    w, d, h = rng.uniform(0.4, 0.55), rng.uniform(0.35, 0.45), rng.uniform(0.5, 0.65)
    return [
        ([0, 0, h / 2], [w / 2, d / 2, h / 2], 0),
        ([0, -d / 2 - 0.01, h * 0.7], [w / 2 - 0.03, 0.01, h * 0.15], 1),
    ], (w, d)


#: Floor furniture that stands against a wall: raw category -> builder.
WALL_FURNITURE: dict[str, Callable[[np.random.Generator], tuple[list[Part], tuple[float, float]]]] = {
    "bed": bed,
    "sofa": sofa,
    "cabinet": cabinet,
    "kitchen cabinets": lambda rng: cabinet(rng, tall=False),
    "bookshelf": bookshelf,
    "desk": desk,
    "counter": counter,
    "refrigerator": refrigerator,
    "toilet": toilet,
    "sink": sink,
    "bathtub": bathtub,
    "nightstand": nightstand,
    "trash can": trash_can,
}

#: Furniture that stands free in the room.
FREE_FURNITURE: dict[str, Callable[[np.random.Generator], tuple[list[Part], tuple[float, float]]]] = {
    "table": table,
    "coffee table": lambda rng: table(rng, low=True),
    "chair": chair,
    "office chair": chair,
    "ottoman": ottoman,
    "trash can": trash_can,
}
