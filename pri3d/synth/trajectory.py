"""Hand-held scanning trajectories: smooth camera paths that look around the room.

The camera drifts along a loop inside the free part of the room at chest height, turns slowly
(about a degree per frame, so frames 25 apart share part of their view, as in ScanNet's 30 Hz scans),
looks somewhat down, and carries the small wobble of a hand. Every pose keeps a clearance from
all furniture so that no view starts inside an object.
"""

from __future__ import annotations

import numpy as np

from pri3d.synth.scene import Scene, distance_to_parts


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, periods: tuple[float, ...], amplitude: float):
    """Sum of sinusoids with random phases: smooth, deterministic, zero-mean wobble."""
    out = np.zeros_like(t)
    for period in periods:
        out += np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.5, 1.0)
    return amplitude * out / len(periods)


def look_rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Camera-to-world rotations [N, 3, 3] (camera x right, y down, z forward; world z up).

    yaw: heading in the xy plane from +x; pitch: positive looks down; roll: about the view axis.
    """
    forward = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), -np.sin(pitch)], -1)
    right = np.stack([np.sin(yaw), -np.cos(yaw), np.zeros_like(yaw)], -1)
    down = np.cross(forward, right)
    c, s = np.cos(roll)[:, None], np.sin(roll)[:, None]
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], -1)


def scan_trajectory(
    scene: Scene,
    num_frames: int,
    rng: np.random.Generator,
    degrees_per_frame: float = 1.0,
    clearance: float = 0.3,
    tries: int = 30,
) -> np.ndarray:
    """Camera-to-world poses [num_frames, 4, 4] (float64) of a smooth scan of `scene`."""
    sx, sy, sz = scene.size
    t = np.arange(num_frames, dtype=np.float64)
    structure = np.array([o.raw_category in ("wall", "floor", "ceiling") for o in scene.objects])
    furniture = np.flatnonzero(~structure[scene.object_ids])
    for attempt in range(tries):
        shrink = 1.0 - attempt / tries  # later tries stay closer to the middle of the room
        radius_x = rng.uniform(0.15, 0.3) * sx * shrink
        radius_y = rng.uniform(0.15, 0.3) * sy * shrink
        center = np.array([sx / 2, sy / 2]) + rng.uniform(-0.1, 0.1, 2) * np.array([sx, sy]) * shrink
        phase = rng.uniform(0, 2 * np.pi) + t * np.deg2rad(rng.uniform(0.3, 0.6)) * rng.choice([-1, 1])
        xy = center + np.stack([radius_x * np.cos(phase), radius_y * np.sin(phase)], 1)
        xy += np.stack(
            [_smooth_noise(rng, t, (37.0, 91.0), 0.1), _smooth_noise(rng, t, (43.0, 77.0), 0.1)], 1
        )
        z = rng.uniform(1.25, 1.6) + _smooth_noise(rng, t, (53.0, 120.0), 0.08)
        positions = np.concatenate([xy, z[:, None]], 1)
        positions += _smooth_noise(rng, t[:, None] * np.ones(3), (3.1, 4.7), 0.004)  # hand tremor

        turn = rng.choice([-1, 1]) * np.deg2rad(degrees_per_frame)
        yaw = rng.uniform(0, 2 * np.pi) + turn * t + _smooth_noise(rng, t, (60.0, 140.0), np.deg2rad(25))
        pitch = np.deg2rad(rng.uniform(15, 28)) + _smooth_noise(rng, t, (45.0, 100.0), np.deg2rad(10))
        roll = _smooth_noise(rng, t, (50.0, 110.0), np.deg2rad(3))
        yaw = yaw + _smooth_noise(rng, t, (2.9, 5.3), np.deg2rad(0.3))

        inside = (
            (positions[:, 0] > clearance) & (positions[:, 0] < sx - clearance)
            & (positions[:, 1] > clearance) & (positions[:, 1] < sy - clearance)
            & (positions[:, 2] < sz - clearance)
        )  # fmt: skip
        if not inside.all():
            continue
        if (distance_to_parts(positions, scene, furniture) < clearance).any():
            continue
        poses = np.tile(np.eye(4), (num_frames, 1, 1))
        poses[:, :3, :3] = look_rotation(yaw, pitch, roll)
        poses[:, :3, 3] = positions
        return poses
    raise RuntimeError(
        f"{scene.scene_id}: no collision-free camera path found in {tries} tries; the room is too cluttered"
    )
