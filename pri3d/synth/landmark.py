"""A landmark on a plaza, and tourist photos of it from many distances and directions.

The scene is an `pri3d.synth.outdoor.OutdoorScene` (world z up, metres, ground z = 0): a large
building of several boxes (hall, towers, a stacked crossing tower, a rear wing and a portico) at the
origin, smaller buildings around the plaza, trees and lamp posts. Cameras stand on rings at various
radii and heights and look at a point of the landmark, with jitter, as photos collected from the
internet do (MegaDepth's scenes are such landmarks).

Camera conventions are those of `pri3d.geometry`: x right, y down, z forward, camera-to-world poses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pri3d.synth.outdoor import (
    BUILDING,
    POLE,
    SIDEWALK,
    TERRAIN,
    VEGETATION,
    GroundBands,
    OutdoorScene,
    render_rays,
)

#: Camera placements as (share of photos, radius range, height range) in metres: people on the plaza,
#: photos from surrounding windows and roofs, and far views over the roofs.
PHOTO_RINGS = (
    (0.65, (20.0, 50.0), (1.4, 2.0)),
    (0.25, (30.0, 75.0), (8.0, 30.0)),
    (0.10, (90.0, 160.0), (25.0, 60.0)),
)


@dataclass
class Landmark:
    """An outdoor scene whose first `num_landmark_boxes` boxes form the landmark building."""

    scene: OutdoorScene
    num_landmark_boxes: int

    def landmark_mask(self, part: np.ndarray) -> np.ndarray:
        """Whether each pixel of a rendered part map [H, W] shows the landmark: [H, W] bool."""
        return (part >= 0) & (part < self.num_landmark_boxes)

    def landmark_box_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned bounds (lower [3], upper [3]) of the landmark's boxes."""
        corners = self.scene.corners()[: self.num_landmark_boxes].reshape(-1, 3)
        return corners.min(0), corners.max(0)


def landmark_scene(rng: np.random.Generator) -> Landmark:
    """A random landmark with its plaza. Every size is drawn from `rng`, so scenes differ by seed."""
    boxes: list[
        tuple[np.ndarray, np.ndarray, float, int, np.ndarray]
    ] = []  # centre, half, yaw, label, colour
    heading = rng.uniform(0.0, 2 * np.pi)
    stone = np.array([0.78, 0.72, 0.6]) * rng.uniform(0.85, 1.1, size=3)

    def landmark_part(local_xy: tuple[float, float], half: tuple[float, float, float], base: float = 0.0):
        """A box of the landmark at `local_xy` in the landmark's own frame, standing on height `base`."""
        c, s = np.cos(heading), np.sin(heading)
        x, y = local_xy
        centre = np.array([c * x - s * y, s * x + c * y, base + half[2]])
        colour = np.clip(stone * rng.uniform(0.9, 1.1, size=3), 0.0, 1.0)
        boxes.append((centre, np.asarray(half, dtype=np.float64), heading, BUILDING, colour))

    hx, hy, hz = rng.uniform(12.0, 18.0), rng.uniform(7.0, 11.0), rng.uniform(6.0, 10.0)
    landmark_part((0.0, 0.0), (hx, hy, hz))  # hall
    tower = (rng.uniform(2.5, 4.0), rng.uniform(2.5, 4.0), rng.uniform(14.0, 22.0))
    for side in (-1.0, 1.0):  # two towers on the front corners
        landmark_part((side * (hx - tower[0]), -(hy + tower[1] - 1.0)), tower)
    drum = rng.uniform(4.5, 6.5)
    drum_height = rng.uniform(3.0, 5.0)
    landmark_part((0.0, 0.0), (drum, drum, drum_height), base=2 * hz)  # crossing tower on the roof
    landmark_part((0.0, 0.0), (0.6 * drum, 0.6 * drum, rng.uniform(2.0, 4.0)), base=2 * (hz + drum_height))
    landmark_part((0.0, hy + 4.0), (0.55 * hx, 4.0, 0.8 * hz))  # rear wing
    landmark_part((0.0, -(hy + 2.0)), (0.45 * hx, 2.0, rng.uniform(3.0, 4.5)))  # portico
    num_landmark = len(boxes)

    # smaller buildings around the plaza, facing its centre, with gaps between them
    count = int(rng.integers(10, 15))
    for k in range(count):
        angle = 2 * np.pi * (k + rng.uniform(-0.2, 0.2)) / count
        radius = rng.uniform(62.0, 78.0)
        half = np.array([rng.uniform(6.0, 11.0), rng.uniform(5.0, 8.0), rng.uniform(5.0, 12.0)])
        centre = np.array([radius * np.cos(angle), radius * np.sin(angle), half[2]])
        colour = rng.uniform(0.35, 0.85, size=3)
        boxes.append((centre, half, angle + np.pi / 2 + rng.uniform(-0.15, 0.15), BUILDING, colour))
    for kind, label, number, radii, half_range, colour in (
        (
            "tree",
            VEGETATION,
            int(rng.integers(6, 11)),
            (30.0, 52.0),
            ((1.2, 2.2), (2.0, 3.5)),
            (0.2, 0.4, 0.15),
        ),
        ("lamp", POLE, int(rng.integers(6, 11)), (24.0, 50.0), ((0.1, 0.15), (2.0, 2.8)), (0.25, 0.25, 0.27)),
    ):
        for _ in range(number):
            angle, radius = rng.uniform(0.0, 2 * np.pi), rng.uniform(*radii)
            width = rng.uniform(*half_range[0])
            half = np.array([width, width, rng.uniform(*half_range[1])])
            base = rng.uniform(0.8, 1.5) if kind == "tree" else 0.0  # crowns stand on an invisible trunk
            centre = np.array([radius * np.cos(angle), radius * np.sin(angle), base + half[2]])
            boxes.append((centre, half, rng.uniform(0.0, np.pi), label, np.asarray(colour)))

    centres, halves, yaws, labels, colours = zip(*boxes)
    scene = OutdoorScene(
        centers=np.stack(centres),
        half_sizes=np.stack(halves),
        yaw=np.asarray(yaws, dtype=np.float64),
        label_ids=np.asarray(labels, dtype=np.uint8),
        colors=np.stack(colours).astype(np.float64),
        seeds=rng.integers(0, 2**31, size=len(boxes)).astype(np.int64),
        ground_label=GroundBands(
            limits=(85.0,), labels=(SIDEWALK,), outside=TERRAIN, seed=int(rng.integers(0, 2**31))
        ),
    )
    return Landmark(scene=scene, num_landmark_boxes=num_landmark)


def look_at(eye: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world [4, 4] of a camera at `eye` looking at `target`, level but for `roll` (radians)."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], 1)
    pose[:3, 3] = eye
    return pose


def photo_pose(rng: np.random.Generator, landmark: Landmark, max_tries: int = 200) -> np.ndarray:
    """Camera-to-world [4, 4] of one photo of the landmark.

    The camera stands on one of `PHOTO_RINGS`, outside every box (with a 1 m margin), and looks at a
    random point of the landmark's bounds, turned by up to ±6° and rolled by up to ±4°; a placement is
    kept when the optical axis hits the landmark, so no photo shows only a neighbouring building.
    """
    shares = np.array([ring[0] for ring in PHOTO_RINGS])
    lower, upper = landmark.landmark_box_bounds()
    for _ in range(max_tries):
        _, radii, heights = PHOTO_RINGS[rng.choice(len(PHOTO_RINGS), p=shares / shares.sum())]
        azimuth, radius = rng.uniform(0.0, 2 * np.pi), rng.uniform(*radii)
        eye = np.array([radius * np.cos(azimuth), radius * np.sin(azimuth), rng.uniform(*heights)])
        target = rng.uniform(lower, upper * np.array([1.0, 1.0, 0.85]))
        turn = np.tan(np.deg2rad(rng.uniform(-6.0, 6.0, size=2)))
        aim = eye + look_at(eye, target)[:3, :3] @ np.array([turn[0], turn[1], 1.0])
        pose = look_at(eye, aim, roll=np.deg2rad(rng.uniform(-4.0, 4.0)))
        if _inside_any_box(landmark.scene, eye, margin=1.0):
            continue
        axis = render_rays(landmark.scene, pose, np.array([[[0.0, 0.0, 1.0]]]), shade=False)
        if landmark.landmark_mask(axis.part)[0, 0]:
            return pose
    raise RuntimeError(f"no photo placement sees the landmark in {max_tries} tries")


def _inside_any_box(scene: OutdoorScene, point: np.ndarray, margin: float) -> bool:
    """Whether `point` [3] lies within `margin` metres of the inside of any box."""
    local = point - scene.centers  # [N, 3]
    c, s = np.cos(-scene.yaw), np.sin(-scene.yaw)
    local = np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]], 1)
    return bool(np.any(np.all(np.abs(local) < scene.half_sizes + margin, axis=1)))
