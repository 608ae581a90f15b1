"""Hand-held scanning trajectories: smooth camera paths that look at the room's objects.

The camera drifts along a loop inside the free part of the room at chest height and, like a person
scanning a room, looks at one object after another: it dwells on an object for a while, then turns
to the next at about ``degrees_per_frame`` (so frames 25 apart share part of their view, as in
ScanNet's 30 Hz scans), and carries the small wobble of a hand. Gazing at objects rather than
sweeping the horizon keeps furniture, floor and walls all in view, as ScanNet's operators did.
Every pose keeps a clearance from all furniture so that no view starts inside an object.
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


def object_centers(scene: Scene) -> np.ndarray:
    """Centres [M, 3] of the bounding boxes of the room's objects other than walls, floor, ceiling."""
    centers = []
    for obj in scene.objects:
        if obj.raw_category in ("wall", "floor", "ceiling"):
            continue
        parts = np.flatnonzero(scene.object_ids == obj.object_id)
        if len(parts) == 0:
            continue
        reach = np.abs(scene.halves[parts]).max(1, keepdims=True)  # yaw-free bound of each part
        low = (scene.centers[parts] - reach).min(0)
        high = (scene.centers[parts] + reach).max(0)
        centers.append((low + high) / 2)
    return np.array(centers).reshape(-1, 3)


def gaze_targets(
    positions: np.ndarray, targets: np.ndarray, rng: np.random.Generator, degrees_per_frame: float
) -> np.ndarray:
    """Points [N, 3] the camera looks at: ``targets`` in random order, each held 30–70 frames, with
    smooth (smoothstep) turns from one to the next lasting the turn's angle / ``degrees_per_frame``.
    """
    n = len(positions)
    if len(targets) == 0:  # an empty room: look across it
        return positions + np.array([1.0, 0.0, -0.5])
    out = np.empty((n, 3))
    order = list(rng.permutation(len(targets)))
    current = targets[order.pop()]
    frame = 0
    while frame < n:
        dwell = int(rng.integers(30, 71))
        out[frame : frame + dwell] = current
        frame += dwell
        if frame >= n:
            break
        if not order:
            order = list(rng.permutation(len(targets)))
        nxt = targets[order.pop()]
        a, b = current - positions[frame], nxt - positions[frame]
        cosine = a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-9)
        turn = max(int(np.degrees(np.arccos(np.clip(cosine, -1, 1))) / degrees_per_frame), 10)
        s = (np.arange(1, turn + 1) / turn)[:, None]
        s = s * s * (3 - 2 * s)
        out[frame : frame + turn] = (current + s * (nxt - current))[: n - frame]
        frame += turn
        current = nxt
    return out


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
    targets = object_centers(scene)
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

        gaze = gaze_targets(positions, targets, rng, degrees_per_frame) - positions
        horizontal = np.linalg.norm(gaze[:, :2], axis=1)
        yaw = np.arctan2(gaze[:, 1], gaze[:, 0]) + _smooth_noise(rng, t, (60.0, 140.0), np.deg2rad(8))
        pitch = np.clip(np.arctan2(-gaze[:, 2], horizontal), np.deg2rad(10), np.deg2rad(55))
        pitch = pitch + _smooth_noise(rng, t, (45.0, 100.0), np.deg2rad(5))
        roll = _smooth_noise(rng, t, (50.0, 110.0), np.deg2rad(3))
        yaw = yaw + _smooth_noise(rng, t, (2.9, 5.3), np.deg2rad(0.3))

        inside = (
            (positions[:, 0] > clearance)
            & (positions[:, 0] < sx - clearance)
            & (positions[:, 1] > clearance)
            & (positions[:, 1] < sy - clearance)
            & (positions[:, 2] < sz - clearance)
        )
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
