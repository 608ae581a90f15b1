"""Procedural streets for the outdoor generators (KITTI, Cityscapes) and a forward-driving camera.

A street runs along world +x with its centre line on y = 0 (world z up, metres, ground z = 0):

* road for |y| < ``road_half_width`` (two lanes plus a parking strip on each side), sidewalks beyond,
  then terrain (`outdoor.GroundBands`);
* rows of buildings on both sides, set back a little from the sidewalk, of varied width, depth and
  height, with gaps where trees stand;
* parked cars on both parking strips and a few cars in the oncoming lane;
* poles and traffic signs at the kerb, trees (a trunk and a leafy crown, both vegetation) on the
  sidewalk's outer edge.

The camera drives in the right-hand lane (y < 0), so nothing ever stands on its path.
"""

from __future__ import annotations

import numpy as np

from pri3d.synth.outdoor import (
    BUILDING,
    CAR,
    POLE,
    ROAD,
    SIDEWALK,
    TERRAIN,
    TRAFFIC_SIGN,
    VEGETATION,
    GroundBands,
    OutdoorScene,
)
from pri3d.synth.trajectory import look_rotation

#: Height of KITTI's cameras above the road (metres).
KITTI_CAMERA_HEIGHT = 1.65
#: Lateral position of the driving camera: the middle of the right-hand lane.
LANE_Y = -1.3

_FACADE_COLORS = np.array(
    [
        [0.72, 0.62, 0.52],
        [0.62, 0.36, 0.28],
        [0.8, 0.78, 0.72],
        [0.55, 0.55, 0.58],
        [0.85, 0.75, 0.55],
        [0.68, 0.7, 0.62],
        [0.5, 0.42, 0.38],
    ]
)
_CAR_COLORS = np.array(
    [
        [0.7, 0.08, 0.08],
        [0.1, 0.12, 0.4],
        [0.85, 0.85, 0.85],
        [0.15, 0.15, 0.15],
        [0.5, 0.52, 0.55],
        [0.1, 0.35, 0.2],
    ]
)


class _Boxes:
    """Collects boxes and builds the `OutdoorScene`."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.rows: list[tuple] = []

    def add(self, center, half, yaw: float, label: int, color) -> None:
        seed = int(self.rng.integers(0, 2**31))
        self.rows.append((center, half, yaw, label, color, seed))

    def scene(self, ground: GroundBands) -> OutdoorScene:
        if not self.rows:
            raise ValueError("street_scene: a street needs at least one box")
        center, half, yaw, label, color, seed = zip(*self.rows)
        return OutdoorScene(
            centers=np.array(center, dtype=np.float64),
            half_sizes=np.array(half, dtype=np.float64),
            yaw=np.array(yaw, dtype=np.float64),
            label_ids=np.array(label, dtype=np.uint8),
            colors=np.clip(np.array(color, dtype=np.float64), 0.0, 1.0),
            seeds=np.array(seed, dtype=np.int64),
            ground_label=ground,
        )


def street_scene(
    rng: np.random.Generator,
    length_m: float,
    road_half_width: float = 5.0,
    sidewalk_width: float = 3.0,
    start_m: float = -40.0,
) -> OutdoorScene:
    """A straight street covering x in [start_m, length_m + 80] (so a camera near its end still sees
    buildings ahead), with the layout described in the module docstring.
    """
    if length_m <= 0 or road_half_width < 3.5 or sidewalk_width < 2.0:
        raise ValueError(
            f"street_scene: length_m={length_m} must be > 0, road_half_width={road_half_width} >= 3.5 "
            f"and sidewalk_width={sidewalk_width} >= 2"
        )
    end = length_m + 80.0
    kerb = road_half_width + sidewalk_width
    ground = GroundBands(
        limits=(road_half_width, kerb),
        labels=(ROAD, SIDEWALK),
        outside=TERRAIN,
        seed=int(rng.integers(0, 2**31)),
    )
    boxes = _Boxes(rng)
    for side in (-1.0, 1.0):
        _buildings(boxes, side, kerb, start_m, end)
        _parked_cars(boxes, side, road_half_width, start_m, end)
        _kerb_furniture(boxes, side, road_half_width, kerb, start_m, end)
    _oncoming_cars(boxes, start_m, end)
    return boxes.scene(ground)


def _buildings(boxes: _Boxes, side: float, kerb: float, start: float, end: float) -> None:
    rng = boxes.rng
    x = start + rng.uniform(0, 5)
    while x < end:
        width = rng.uniform(8.0, 26.0)
        depth = rng.uniform(8.0, 16.0)
        height = rng.choice([rng.uniform(5.0, 10.0), rng.uniform(10.0, 24.0)])
        setback = rng.uniform(0.3, 4.0)
        yaw = rng.normal(0.0, 0.04) if rng.random() < 0.3 else 0.0
        color = _FACADE_COLORS[rng.integers(len(_FACADE_COLORS))] * rng.uniform(0.85, 1.1)
        boxes.add(
            (x + width / 2, side * (kerb + setback + depth / 2), height / 2),
            (width / 2, depth / 2, height / 2),
            yaw,
            BUILDING,
            color,
        )
        x += width
        gap = rng.choice([0.0, rng.uniform(2.0, 9.0)], p=[0.55, 0.45])
        if gap > 4.0:  # a tree in front of the gap
            _tree(boxes, x + gap / 2, side * (kerb + rng.uniform(1.0, 2.5)))
        x += gap


def _parked_cars(boxes: _Boxes, side: float, road_half_width: float, start: float, end: float) -> None:
    rng = boxes.rng
    x = start + rng.uniform(0, 8)
    while x < end:
        if rng.random() < 0.6:
            _car(boxes, x, side * (road_half_width - 1.2), yaw=rng.normal(0.0, 0.03))
        x += rng.uniform(5.0, 9.0)


def _oncoming_cars(boxes: _Boxes, start: float, end: float) -> None:
    rng = boxes.rng
    x = start + rng.uniform(10, 40)
    while x < end:
        _car(boxes, x, -LANE_Y + rng.uniform(-0.2, 0.2), yaw=np.pi + rng.normal(0.0, 0.02))
        x += rng.uniform(25.0, 70.0)


def _car(boxes: _Boxes, x: float, y: float, yaw: float) -> None:
    rng = boxes.rng
    half = (rng.uniform(1.9, 2.4), rng.uniform(0.82, 0.95), rng.uniform(0.7, 0.82))
    color = _CAR_COLORS[rng.integers(len(_CAR_COLORS))]
    boxes.add((x, y, half[2]), half, yaw, CAR, color)


def _kerb_furniture(
    boxes: _Boxes, side: float, road_half_width: float, kerb: float, start: float, end: float
) -> None:
    """Street lights and traffic signs at the kerb, trees along the sidewalk's outer edge."""
    rng = boxes.rng
    x = start + rng.uniform(0, 10)
    while x < end:
        y = side * (road_half_width + 0.4)
        height = rng.uniform(4.5, 7.0)
        boxes.add((x, y, height / 2), (0.08, 0.08, height / 2), 0.0, POLE, (0.45, 0.46, 0.48))
        x += rng.uniform(18.0, 30.0)
    x = start + rng.uniform(0, 40)
    while x < end:
        y = side * (road_half_width + 0.6)
        boxes.add((x, y, 1.3), (0.05, 0.05, 1.3), 0.0, POLE, (0.5, 0.5, 0.52))
        sign_color = [(0.8, 0.1, 0.1), (0.1, 0.25, 0.7), (0.9, 0.8, 0.1)][rng.integers(3)]
        boxes.add((x, y, 2.9), (0.03, 0.35, 0.35), 0.0, TRAFFIC_SIGN, sign_color)
        x += rng.uniform(30.0, 80.0)
    x = start + rng.uniform(0, 12)
    while x < end:
        if rng.random() < 0.5:
            _tree(boxes, x, side * (kerb - 0.8))
        x += rng.uniform(9.0, 16.0)


def _tree(boxes: _Boxes, x: float, y: float) -> None:
    rng = boxes.rng
    trunk = rng.uniform(2.0, 3.2)
    boxes.add((x, y, trunk / 2), (0.15, 0.15, trunk / 2), 0.0, VEGETATION, (0.35, 0.25, 0.15))
    crown = rng.uniform(0.9, 1.6)
    crown_height = rng.uniform(1.5, 3.0)
    green = np.array([0.22, 0.42, 0.15]) * rng.uniform(0.8, 1.2)
    boxes.add(
        (x, y, trunk + crown_height / 2),
        (crown, crown, crown_height / 2),
        rng.uniform(0, np.pi / 2),
        VEGETATION,
        green,
    )


def driving_trajectory(
    rng: np.random.Generator,
    frames: int,
    spacing_m: float = 1.0,
    height_m: float = KITTI_CAMERA_HEIGHT,
    start_x: float = 0.0,
) -> np.ndarray:
    """Camera-to-world poses [frames, 4, 4] of a car driving along the street's right-hand lane.

    The camera looks along +x from ``height_m`` above the road, advancing about ``spacing_m`` per
    frame (KITTI: 10 Hz at ~36 km/h), with a gentle lateral drift within the lane, a heading that
    follows it plus a little steering wobble, and slight pitch and roll from the suspension.
    """
    t = np.arange(frames, dtype=np.float64)
    speed = spacing_m * (1.0 + 0.1 * np.sin(2 * np.pi * t / rng.uniform(60, 120) + rng.uniform(0, 2 * np.pi)))
    x = start_x + np.concatenate([[0.0], np.cumsum(speed[:-1])])
    period = rng.uniform(40.0, 90.0)
    phase = rng.uniform(0, 2 * np.pi)
    drift = 0.25
    y = LANE_Y + drift * np.sin(2 * np.pi * x / period + phase)
    heading = np.arctan(drift * 2 * np.pi / period * np.cos(2 * np.pi * x / period + phase))
    heading += np.radians(1.0) * np.sin(2 * np.pi * t / rng.uniform(15, 30) + rng.uniform(0, 2 * np.pi))
    pitch = np.radians(0.4) * np.sin(2 * np.pi * t / rng.uniform(8, 14) + rng.uniform(0, 2 * np.pi))
    roll = np.radians(0.3) * np.sin(2 * np.pi * t / rng.uniform(10, 20) + rng.uniform(0, 2 * np.pi))
    poses = np.tile(np.eye(4), (frames, 1, 1))
    poses[:, :3, :3] = look_rotation(heading, pitch, roll)
    poses[:, :3, 3] = np.stack([x, y, np.full(frames, height_m)], -1)
    return poses


def street_camera(rng: np.random.Generator, x: float, height_m: float) -> np.ndarray:
    """Camera-to-world pose [4, 4] of a single street photo at ``x``: in the right-hand lane, heading
    along the street within a few degrees, slightly pitched and rolled.
    """
    heading = np.radians(rng.uniform(-6.0, 6.0))
    pitch = np.radians(rng.uniform(-2.0, 3.0))
    roll = np.radians(rng.uniform(-1.0, 1.0))
    pose = np.eye(4)
    pose[:3, :3] = look_rotation(np.array([heading]), np.array([pitch]), np.array([roll]))[0]
    pose[:3, 3] = (x, LANE_Y + rng.uniform(-0.3, 0.3), height_m)
    return pose


def street_photo(rng: np.random.Generator, camera_height_m: float, length_m: float = 60.0):
    """A short street and the camera-to-world pose [4, 4] of one photo taken on it: (scene, pose)."""
    scene = street_scene(rng, length_m)
    return scene, street_camera(rng, rng.uniform(5.0, length_m - 5.0), camera_height_m)
