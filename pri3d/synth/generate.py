"""Write synthetic scenes in ScanNet's on-disk formats.

Output layout under `out`::

    synth.json                          the generator settings (a re-run must use the same ones)
    scannetv2-labels.combined.tsv       raw category -> NYU40 table with ScanNet's columns
    scannetv2_train.txt, scannetv2_val.txt
    scans/<scene>/<scene>.sens          jpeg colour + zlib uint16 depth (mm) + camera-to-world poses
    scans/<scene>/<scene>_vh_clean_2.ply, <scene>_vh_clean_2.0.010000.segs.json,
    scans/<scene>/<scene>.aggregation.json, <scene>.txt
    scannet_frames_25k/<scene>/{color/<id>.jpg, depth/<id>.png, label/<id>.png, instance/<id>.png,
                                pose/<id>.txt}, intrinsics_color.txt, intrinsics_depth.txt

Ids in scannet_frames_25k are the raw frame numbers, zero-padded to 6 digits. Label PNGs hold NYU40
ids (uint8); instance PNGs hold NYU40 id × 1000 + instance id (uint16, instance id = ScanNet
objectId + 1). Colour is registered to depth: both cameras share the pose and their intrinsics are
ScanNet's depth intrinsics scaled to each resolution, so a plain resize aligns them.

A scene appears under its final name only once it is complete (written to `<name>.tmp`, then
renamed), so an interrupted run resumes by skipping finished scenes. Scenes are independent and
seeded by (seed, scene index): the output does not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pri3d.geometry import scale_intrinsics
from pri3d.io.images import write_depth_png, write_jpeg, write_label_png
from pri3d.io.scannet import (
    write_aggregation_json,
    write_label_tsv,
    write_matrix_txt,
    write_mesh_ply,
    write_segs_json,
)
from pri3d.io.sens import SensWriter
from pri3d.labels import NYU40_NAMES
from pri3d.synth.appearance import value_noise
from pri3d.synth.layout import ROOM_TYPES, build_room
from pri3d.synth.mesh import tessellate
from pri3d.synth.render import render
from pri3d.synth.scene import RAW_CATEGORIES, Scene
from pri3d.synth.settings import check_and_record_settings
from pri3d.synth.trajectory import scan_trajectory

#: ScanNet's depth camera at its native 640×480 (the matrix the original hard-codes at 320×240 / 2).
SCANNET_DEPTH_INTRINSICS_640 = np.array([[577.870605, 0.0, 319.5], [0.0, 577.870605, 239.5], [0.0, 0.0, 1.0]])


@dataclass
class SynthConfig:
    """Generator settings. Sizes are (height, width)."""

    scenes: int = 10
    frames: int = 100
    seed: int = 0
    color_size: tuple[int, int] = (240, 320)
    depth_size: tuple[int, int] = (240, 320)
    frames_25k_every: int = 20  # ScanNet's frames_25k keeps every 100th frame of 30 Hz scans
    depth_noise: float = 1.0  # scale of the Kinect-like noise model; 0 = exact depth (mm quantised)
    depth_holes: float = 0.02  # fraction of depth pixels dropped in blobs (set to 0)
    invalid_pose_fraction: float = 0.02  # frames whose pose is -inf, as failed tracking in ScanNet
    val_fraction: float = 0.2
    mesh_spacing: float = 0.02  # metres between mesh vertices
    degrees_per_frame: float = 1.0  # how fast the camera turns
    jpeg_quality: int = 90
    class_looks: bool = False  # each furniture class has its own look (default: one pool for all classes)

    def __post_init__(self) -> None:
        self.color_size = tuple(int(v) for v in self.color_size)  # type: ignore[assignment]
        self.depth_size = tuple(int(v) for v in self.depth_size)  # type: ignore[assignment]
        checks = {
            "scenes": self.scenes >= 1,
            "frames": self.frames >= 1,
            "frames_25k_every": self.frames_25k_every >= 1,
            "color_size": min(self.color_size) >= 8,
            "depth_size": min(self.depth_size) >= 8,
            "depth_noise": self.depth_noise >= 0,
            "depth_holes": 0 <= self.depth_holes < 1,
            "invalid_pose_fraction": 0 <= self.invalid_pose_fraction < 1,
            "val_fraction": 0 <= self.val_fraction < 1,
            "mesh_spacing": 0.002 <= self.mesh_spacing <= 0.2,
            "jpeg_quality": 1 <= self.jpeg_quality <= 100,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid synth option {bad[0]}={getattr(self, bad[0])!r}")


def scene_name(index: int) -> str:
    return f"scene{index:04d}_00"


def intrinsics_for(size: tuple[int, int]) -> np.ndarray:
    """3×3 intrinsics at (height, width): ScanNet's depth camera scaled as `geometry.scale_intrinsics`."""
    k = scale_intrinsics(torch.from_numpy(SCANNET_DEPTH_INTRINSICS_640), (480, 640), size)
    return k.numpy()


def split_scenes(config: SynthConfig) -> tuple[list[str], list[str]]:
    """Train and val scene names: the last `val_fraction` of the scenes are validation scenes."""
    names = [scene_name(i) for i in range(config.scenes)]
    num_val = round(config.val_fraction * config.scenes)
    if config.val_fraction > 0 and config.scenes > 1:
        num_val = max(num_val, 1)
    return names[: config.scenes - num_val], names[config.scenes - num_val :]


def generate(out: str | Path, config: SynthConfig, workers: int = 1, progress: bool = True) -> dict:
    """Write `config.scenes` scenes under `out`; returns a summary. Finished scenes are kept."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_and_record_settings(
        out / "synth.json", asdict(config), "scenes", may_change=("scenes",), defaults=asdict(SynthConfig())
    )
    write_label_tsv(out / "scannetv2-labels.combined.tsv", label_table_rows())
    train, val = split_scenes(config)
    (out / "scannetv2_train.txt").write_text("".join(f"{s}\n" for s in train))
    (out / "scannetv2_val.txt").write_text("".join(f"{s}\n" for s in val))

    todo = [i for i in range(config.scenes) if not _scene_done(out, scene_name(i))]
    start = time.perf_counter()
    done = config.scenes - len(todo)
    bar = _progress(total=config.scenes, initial=done, enabled=progress)
    jobs = [(out, config, i) for i in todo]
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(
            min(workers, len(jobs)), initializer=_worker_init
        ) as pool:
            for _ in pool.imap_unordered(_write_scene_job, jobs):
                bar.update(1)
    else:
        for job in jobs:
            _write_scene_job(job)
            bar.update(1)
    bar.close()
    return {
        "out": str(out),
        "scenes": config.scenes,
        "generated": len(todo),
        "skipped_existing": done,
        "train": train,
        "val": val,
        "seconds": time.perf_counter() - start,
    }


def label_table_rows() -> list[dict]:
    """Rows of the label tsv for every raw category the generator uses."""
    return [
        {
            "id": i + 1,
            "raw_category": raw,
            "category": raw,
            "count": 1,
            "nyu40id": nyu40,
            "nyu40class": NYU40_NAMES[nyu40],
            "mpcat40": NYU40_NAMES[nyu40],
        }
        for i, (raw, (nyu40, _)) in enumerate(RAW_CATEGORIES.items())
    ]


def room_type_of(config: SynthConfig, index: int) -> str:
    """Room types cycle so that any 5 consecutive scenes contain all 20 benchmark classes' rooms."""
    types = list(ROOM_TYPES)
    return types[(index + config.seed) % len(types)]


def build_scene(config: SynthConfig, index: int) -> tuple[Scene, np.ndarray, np.ndarray]:
    """The scene, its camera-to-world poses [M, 4, 4] and the invalid-pose flags [M] for scene `index`."""
    rng = np.random.default_rng([config.seed, index])
    scene = build_room(scene_name(index), rng, room_type_of(config, index), class_looks=config.class_looks)
    poses = scan_trajectory(scene, config.frames, rng, degrees_per_frame=config.degrees_per_frame)
    invalid = _invalid_pose_runs(rng, config.frames, config.invalid_pose_fraction)
    return scene, poses, invalid


# ----------------------------------------------------------------------------------------------


def _worker_init() -> None:
    torch.set_num_threads(1)


def _write_scene_job(job: tuple[Path, SynthConfig, int]) -> str:
    out, config, index = job
    write_scene(out, config, index)
    return scene_name(index)


def _scene_done(out: Path, name: str) -> bool:
    return (out / "scans" / name).is_dir() and (out / "scannet_frames_25k" / name).is_dir()


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, unit="scene", desc="synth", disable=not enabled, dynamic_ncols=True
    )


def _invalid_pose_runs(rng: np.random.Generator, frames: int, fraction: float) -> np.ndarray:
    """Flags [frames] for frames whose tracking 'failed': a few short runs, as in real scans."""
    invalid = np.zeros(frames, dtype=bool)
    target = round(fraction * frames)
    while invalid.sum() < target:
        length = int(rng.integers(1, 6))
        start = int(rng.integers(0, frames))
        invalid[start : start + length] = True
    return invalid


def write_scene(out: Path, config: SynthConfig, index: int) -> None:
    """Generate scene `index` and write its raw scan and frames_25k folders."""
    name = scene_name(index)
    scene, poses, invalid = build_scene(config, index)
    scan_final = out / "scans" / name
    frames_final = out / "scannet_frames_25k" / name
    scan_dir = scan_final.with_name(name + ".tmp")
    frames_dir = frames_final.with_name(name + ".tmp")
    for d in (scan_dir, frames_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for sub in ("color", "depth", "label", "instance", "pose"):
        (frames_dir / sub).mkdir()

    k_color = intrinsics_for(config.color_size)
    k_depth = intrinsics_for(config.depth_size)
    _write_mesh_files(scan_dir, scene, config)
    _write_scene_meta(scan_dir / f"{name}.txt", scene, config, k_color, k_depth)
    write_matrix_txt(frames_dir / "intrinsics_color.txt", _as4(k_color))
    write_matrix_txt(frames_dir / "intrinsics_depth.txt", _as4(k_depth))

    same_size = config.color_size == config.depth_size
    with SensWriter(
        scan_dir / f"{name}.sens",
        sensor_name="pri3d.synth",
        intrinsic_color=_as4(k_color),
        intrinsic_depth=_as4(k_depth),
        color_width=config.color_size[1],
        color_height=config.color_size[0],
        depth_width=config.depth_size[1],
        depth_height=config.depth_size[0],
        jpeg_quality=config.jpeg_quality,
    ) as sens:
        for f in range(config.frames):
            pose = poses[f]
            color_view = render(scene, k_color, pose, *config.color_size)
            depth_view = (
                color_view if same_size else render(scene, k_depth, pose, *config.depth_size, shade=False)
            )
            frame_rng = np.random.default_rng([config.seed, index, f])
            depth_mm = _sensor_depth(depth_view.depth, frame_rng, config)
            stored_pose = np.full((4, 4), -np.inf) if invalid[f] else pose
            timestamp = int(f * 1e6 / 30)  # 30 Hz, microseconds
            sens.write_frame(
                stored_pose.astype(np.float32),
                color_view.color,
                depth_mm,
                timestamp_color=timestamp,
                timestamp_depth=timestamp,
            )
            if f % config.frames_25k_every == 0:
                stem = f"{f:06d}"
                write_jpeg(
                    frames_dir / "color" / f"{stem}.jpg", color_view.color, quality=config.jpeg_quality
                )
                write_depth_png(frames_dir / "depth" / f"{stem}.png", depth_mm)
                write_label_png(frames_dir / "label" / f"{stem}.png", color_view.label)
                instance = color_view.label.astype(np.uint16) * 1000 + color_view.instance.astype(np.uint16)
                write_label_png(
                    frames_dir / "instance" / f"{stem}.png", np.where(color_view.instance > 0, instance, 0)
                )
                write_matrix_txt(frames_dir / "pose" / f"{stem}.txt", stored_pose)
    for tmp, final in ((scan_dir, scan_final), (frames_dir, frames_final)):
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)


def _as4(k: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = k
    return m


def _write_mesh_files(scan_dir: Path, scene: Scene, config: SynthConfig) -> None:
    name = scene.scene_id
    mesh = tessellate(scene, spacing=config.mesh_spacing)
    write_mesh_ply(scan_dir / f"{name}_vh_clean_2.ply", mesh.vertices, mesh.colors, mesh.faces)
    write_segs_json(scan_dir / f"{name}_vh_clean_2.0.010000.segs.json", name, mesh.segments)
    groups = []
    for obj in scene.objects:
        segments = np.flatnonzero(mesh.segment_object == obj.object_id)
        if len(segments):
            groups.append(
                {"objectId": obj.object_id, "label": obj.raw_category, "segments": segments.tolist()}
            )
    write_aggregation_json(scan_dir / f"{name}.aggregation.json", name, groups)


def _write_scene_meta(
    path: Path, scene: Scene, config: SynthConfig, k_color: np.ndarray, k_depth: np.ndarray
):
    """ScanNet's `<scene>.txt`: axis alignment (identity here), camera parameters, frame counts."""
    lines = {
        "axisAlignment": " ".join(str(v) for v in np.eye(4, dtype=int).ravel()),
        "colorHeight": config.color_size[0],
        "colorWidth": config.color_size[1],
        "depthHeight": config.depth_size[0],
        "depthWidth": config.depth_size[1],
        "fx_color": k_color[0, 0],
        "fx_depth": k_depth[0, 0],
        "fy_color": k_color[1, 1],
        "fy_depth": k_depth[1, 1],
        "mx_color": k_color[0, 2],
        "mx_depth": k_depth[0, 2],
        "my_color": k_color[1, 2],
        "my_depth": k_depth[1, 2],
        "numColorFrames": config.frames,
        "numDepthFrames": config.frames,
        "numIMUmeasurements": 0,
        "sceneType": scene.scene_type,
    }
    path.write_text("".join(f"{k} = {v}\n" for k, v in lines.items()))


def _sensor_depth(depth: np.ndarray, rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
    """Metres [H, W] -> uint16 millimetres with sensor noise, holes and range limits (0 = invalid)."""
    z = depth.copy()
    valid = z > 0
    if config.depth_noise > 0:
        sigma = config.depth_noise * (
            0.0012 + 0.0019 * (z - 0.4) ** 2
        )  # structured-light noise grows with z²
        z = z + rng.standard_normal(z.shape) * sigma
    if config.depth_holes > 0:
        h, w = z.shape
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        scale = max(h, w) / 20.0  # blobs a few percent of the image across, whatever the resolution
        pts = np.stack([rows.ravel() / scale, cols.ravel() / scale, np.zeros(h * w)], 1)
        blob = value_noise(pts, int(rng.integers(2**31))).reshape(h, w)
        valid &= blob > np.quantile(blob, config.depth_holes)
    valid &= (z > 0.2) & (z < 10.0)  # outside the sensor's working range
    return np.where(valid, np.round(z * 1000.0), 0).astype(np.uint16)
