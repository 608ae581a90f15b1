"""Write generated driving sequences in KITTI's download layouts (odometry, annotated depth, semantics).

Output layout under `out` (paths as `pri3d.io.kitti` reads them)::

    synth_settings.json                       the generator settings and the drive table it used
    odometry_drives.txt                       <seq>: <drive> <start> <end>, KITTI readme's format
    odometry/data_odometry_velodyne/dataset/poses/<seq>.txt
    odometry/data_odometry_color/dataset/sequences/<seq>/{calib.txt, times.txt, image_2/%06d.png}
    depth/data_depth_annotated/{train,val}/<drive>_sync/proj_depth/groundtruth/image_02/%010d.png
    data_semantics/training/{image_2,semantic}/%06d_10.png

Each drive is one procedural street driven along at about 1 m per frame (`pri3d.synth.street`). As
in real KITTI, an odometry sequence is a sub-range of its raw drive: the raw drive has frames
``0 .. start + frames - 1`` and sequence frame 0 is raw frame ``start`` (non-zero here for every
drive, so code that mixes raw and sequence indices fails). Poses are camera-0-to-world with world =
camera 0 at sequence frame 0. ``image_2`` and the depth maps are camera 2, which sits 6 cm to the left
of camera 0 (``P2 = K [I | t]``, t = K⁻¹ P2[:, 3]). Depth files are named by raw frame and exist for
raw frames ``depth_margin .. start + frames - 1 - depth_margin`` (KITTI's annotated depth skips each
drive's first and last 5 frames); they hold uint16 metres × 256 (0 = none) at LiDAR scan lines only:
each beam of a 64-beam scanner (+2° to -24.8° elevation, beams scaled with the image height) marks
the pixels where its elevation is crossed, within `lidar_range_m`, with a share of points dropped.

``data_semantics`` holds independent street photos with Cityscapes label ids (8-bit), like KITTI's
semantics benchmark (`pri3d.data.semseg.KITTISemseg` takes its first 40 sorted images as val).

A drive appears under its final names only once complete (written under ``.partial/`` and moved into
place, its poses file last), so an interrupted run resumes by skipping finished drives. Workers render
chunks of frames; a drive's street and path are seeded by (seed, drive index) and its LiDAR dropout by
(seed, drive index, raw frame), so the output does not depend on the number of workers.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from pri3d.geometry import scale_intrinsics
from pri3d.io.images import write_depth_png, write_label_png
from pri3d.io.kitti import (
    KITTI_ODOMETRY_DRIVES,
    DriveSequence,
    calib_path,
    depth_path,
    drive_depth_folder,
    image_path,
    poses_path,
    write_calib,
    write_drive_table,
    write_poses,
)
from pri3d.synth.outdoor import OutdoorScene, render
from pri3d.synth.settings import check_and_record_settings
from pri3d.synth.street import KITTI_CAMERA_HEIGHT, driving_trajectory, street_photo, street_scene

#: KITTI's colour image size (height, width).
KITTI_SIZE = (375, 1242)
#: Rectified camera-0 intrinsics at KITTI_SIZE: sequences 00-02 and the later ones differ.
_K_00_02 = np.array([[718.856, 0.0, 607.1928], [0.0, 718.856, 185.2157], [0.0, 0.0, 1.0]])
_K_04_10 = np.array([[707.0912, 0.0, 601.8873], [0.0, 707.0912, 183.1104], [0.0, 0.0, 1.0]])
#: Camera k's frame from camera 0's: X_k = X_0 + t_k (metres), from KITTI's P1-P3 (cameras 1 and 3
#: are 54 cm and 47 cm to the right, camera 2 6 cm to the left of camera 0).
CAMERA_OFFSETS = {
    "P0": (0.0, 0.0, 0.0),
    "P1": (-0.5372, 0.0, 0.0),
    "P2": (0.0599, -0.0011, 0.0038),
    "P3": (-0.4734, 0.0020, 0.0049),
}
#: Velodyne scanner: x forward, y left, z up, 27 cm behind and 8 cm above camera 0, slightly rotated.
_VELO_AXES = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # velodyne -> camera axes
_VELO_TILT = (0.004, -0.007, 0.0005)  # small rotation vector (radians) on top of the axis swap
_VELO_IN_CAMERA0 = (-0.012, -0.08, -0.27)  # velodyne origin in camera 0 (metres)
#: Elevation range of a Velodyne HDL-64E's beams (degrees).
_BEAM_ELEVATIONS = (2.0, -24.8)
_BEAMS_AT_KITTI_HEIGHT = 64


@dataclass
class KittiSynthConfig:
    """Generator settings. Sizes are (height, width)."""

    drives: int = 2  # the first `drives` of KITTI's odometry drives (sequences 00, 01, 02, 04, ...)
    frames: int = 200  # odometry frames per drive
    size: tuple[int, int] = KITTI_SIZE
    seed: int = 0
    semantic_frames: int = 50  # data_semantics/training images (KITTISemseg: first 40 are val)
    raw_start: int = 10  # raw frame of the first drive's sequence frame 0; drive k adds 7 * k
    depth_margin: int = 5  # raw frames without annotated depth at each end of a drive
    val_every: int = (
        2  # every val_every-th drive (2nd, 4th, ...) is in the annotated-depth val split; 0: none
    )
    lidar_range_m: float = 80.0
    lidar_dropout: float = 0.3  # share of scan-line points without a depth value
    spacing_m: float = 1.0  # distance driven per frame
    drive_table: list[DriveSequence] = field(init=False)

    def __post_init__(self) -> None:
        self.size = tuple(int(v) for v in self.size)  # type: ignore[assignment]
        sequences = [d for d in KITTI_ODOMETRY_DRIVES if d.sequence != "03"]  # 03 has no annotated depth
        checks = {
            "drives": 1 <= self.drives <= len(sequences),
            "frames": self.frames >= 2 * self.depth_margin + 2,
            "size": min(self.size) >= 8,
            "semantic_frames": self.semantic_frames >= 0,
            "raw_start": self.raw_start > self.depth_margin,
            "depth_margin": self.depth_margin >= 0,
            "val_every": self.val_every >= 0,
            "lidar_range_m": self.lidar_range_m > 0,
            "lidar_dropout": 0.0 <= self.lidar_dropout < 1.0,
            "spacing_m": self.spacing_m > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid KITTI synth option {bad[0]}={getattr(self, bad[0])!r}")
        starts = [self.raw_start + 7 * k for k in range(self.drives)]
        self.drive_table = [
            DriveSequence(d.sequence, d.drive, start, start + self.frames - 1)
            for d, start in zip(sequences, starts)
        ]

    def split_of(self, index: int) -> str:
        """Annotated-depth split of drive `index`; fixed per drive, so adding drives moves none."""
        return "val" if self.val_every and index % self.val_every == self.val_every - 1 else "train"


def intrinsics_for(sequence: str, size: tuple[int, int]) -> np.ndarray:
    """Rectified 3×3 intrinsics of `sequence` at (height, width), scaled as `geometry.scale_intrinsics`."""
    k = _K_00_02 if sequence in ("00", "01", "02") else _K_04_10
    return scale_intrinsics(torch.from_numpy(k), KITTI_SIZE, size).numpy()


def kitti_calibration(sequence: str, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """calib.txt matrices: P0..P3 = K [I | t_k] (3×4) and Tr = velodyne -> camera 0 (3×4)."""
    k = intrinsics_for(sequence, size)
    calib = {}
    for key, offset in CAMERA_OFFSETS.items():
        calib[key] = k @ np.concatenate([np.eye(3), np.array(offset)[:, None]], 1)
    calib["Tr"] = velodyne_to_camera0()[:3]
    return calib


def velodyne_to_camera0() -> np.ndarray:
    """4×4 rigid transform from the velodyne frame to camera 0."""
    transform = np.eye(4)
    transform[:3, :3] = Rotation.from_rotvec(_VELO_TILT).as_matrix() @ _VELO_AXES
    transform[:3, 3] = _VELO_IN_CAMERA0
    return transform


def camera2_to_camera0() -> np.ndarray:
    """4×4 transform from camera 2 to camera 0: X_0 = X_2 - t_2."""
    transform = np.eye(4)
    transform[:3, 3] = -np.array(CAMERA_OFFSETS["P2"])
    return transform


@dataclass
class Drive:
    """One generated drive: its street and the camera-0-to-street poses of every raw frame."""

    entry: DriveSequence
    split: str
    scene: OutdoorScene
    raw_camera0_to_street: np.ndarray  # [start + frames, 4, 4]

    def sequence_poses(self) -> np.ndarray:
        """Camera-0-to-world poses [frames, 4, 4] of the odometry sequence (world = its frame 0)."""
        street_to_world = np.linalg.inv(self.raw_camera0_to_street[self.entry.start])
        return street_to_world @ self.raw_camera0_to_street[self.entry.start :]

    def camera2_to_street(self, raw_frame: int) -> np.ndarray:
        return self.raw_camera0_to_street[raw_frame] @ camera2_to_camera0()


def build_drive(config: KittiSynthConfig, index: int) -> Drive:
    """The street and poses of drive `index` (deterministic in (config.seed, index))."""
    entry = config.drive_table[index]
    raw_frames = entry.end + 1
    rng = np.random.default_rng([config.seed, index])
    scene = street_scene(rng, length_m=raw_frames * config.spacing_m * 1.15 + 20.0)
    poses = driving_trajectory(rng, raw_frames, spacing_m=config.spacing_m, height_m=KITTI_CAMERA_HEIGHT)
    return Drive(entry=entry, split=config.split_of(index), scene=scene, raw_camera0_to_street=poses)


def lidar_depth(
    depth: np.ndarray,
    intrinsics: np.ndarray,
    camera2_to_velodyne: np.ndarray,
    rng: np.random.Generator,
    config: KittiSynthConfig,
) -> np.ndarray:
    """Sparse depth [H, W] (metres, 0 = none) at the pixels a rotating multi-beam scanner samples.

    Each surface point seen in camera 2 gets the index of the beam band its elevation (in the
    velodyne frame) falls in; a scan line is where that index changes from one row to the next.
    """
    height, width = depth.shape
    rows, cols = np.mgrid[0:height, 0:width]
    camera = np.stack(
        [
            (cols - intrinsics[0, 2]) / intrinsics[0, 0] * depth,
            (rows - intrinsics[1, 2]) / intrinsics[1, 1] * depth,
            depth,
        ],
        -1,
    )
    velo = camera @ camera2_to_velodyne[:3, :3].T + camera2_to_velodyne[:3, 3]
    elevation = np.degrees(np.arctan2(velo[..., 2], np.hypot(velo[..., 0], velo[..., 1])))
    beams = max(8, round(_BEAMS_AT_KITTI_HEIGHT * height / KITTI_SIZE[0]))
    # beam band index: 0 above the top beam, increasing downwards
    edges = np.linspace(_BEAM_ELEVATIONS[1], _BEAM_ELEVATIONS[0], beams)
    band = beams - np.searchsorted(edges, elevation)
    valid = depth > 0
    scan = np.zeros((height, width), dtype=bool)
    scan[1:] = (band[1:] != band[:-1]) & valid[1:] & valid[:-1]
    keep = scan & (depth <= config.lidar_range_m) & (rng.random((height, width)) >= config.lidar_dropout)
    return np.where(keep, depth, 0.0)


def encode_depth(depth_m: np.ndarray) -> np.ndarray:
    """KITTI's depth PNG values: uint16 round(metres × 256), 0 where there is no depth."""
    return np.round(np.clip(depth_m, 0.0, 65535 / 256.0) * 256.0).astype(np.uint16)


def generate_kitti(
    out: str | Path, config: KittiSynthConfig, workers: int = 1, progress: bool = True
) -> dict:
    """Write `config.drives` drives and the semantics set under `out`; returns a summary.

    Finished drives (and a finished semantics set) are kept. Work is split into chunks of frames, so
    the progress bar counts frames and the workers stay busy whatever the number of drives.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_and_record_settings(
        out / "synth_settings.json", _settings(config), "KITTI data", may_change=("drives", "drive_table")
    )  # more drives may be added later; everything else shapes the existing files
    write_drive_table(out, config.drive_table)
    todo = [i for i in range(config.drives) if not _drive_done(out, config, i)]
    semantics_todo = config.semantic_frames > 0 and not (out / "data_semantics").is_dir()
    chunks: dict[int, list[tuple]] = {}  # drive index (-1: semantics) -> its jobs
    for index in todo:
        _stage_drive(out, config, index)
        # raw frames with a sequence image or annotated depth (raw_start > depth_margin)
        frames = list(range(config.depth_margin, config.drive_table[index].end + 1))
        chunks[index] = [(out, config, index, part) for part in _split(frames)]
    if semantics_todo:
        _stage_semantics(out)
        chunks[-1] = [(out, config, -1, part) for part in _split(list(range(config.semantic_frames)))]
    jobs = [job for index_jobs in chunks.values() for job in index_jobs]
    remaining = {index: len(index_jobs) for index, index_jobs in chunks.items()}
    depth_counts = {index: np.zeros(2, dtype=np.int64) for index in todo}  # valid, all depth pixels
    start = time.perf_counter()
    from tqdm import tqdm

    total = sum(len(job[3]) for job in jobs)
    with tqdm(total=total, unit="frame", desc="synth kitti", disable=not progress, dynamic_ncols=True) as bar:

        def finished(index: int, frames: int, counts: np.ndarray) -> None:
            bar.update(frames)
            if index >= 0:
                depth_counts[index] += counts
            remaining[index] -= 1
            if remaining[index] == 0 and index < 0:
                _finish_semantics(out)
            elif remaining[index] == 0:
                _finish_drive(out, config, index)

        if workers > 1 and len(jobs) > 1:
            with multiprocessing.get_context("spawn").Pool(
                min(workers, len(jobs)), initializer=_worker_init
            ) as pool:
                for result in pool.imap_unordered(_render_chunk, jobs):
                    finished(*result)
        else:
            for job in jobs:
                finished(*_render_chunk(job))
    shutil.rmtree(out / ".partial", ignore_errors=True)
    drives = []
    for i, entry in enumerate(config.drive_table):
        drives.append({**entry._asdict(), "split": config.split_of(i), "generated": i in todo})
        if i in todo:  # share of pixels with annotated depth over the drive's depth files
            drives[-1]["depth_valid_fraction"] = round(float(depth_counts[i][0] / depth_counts[i][1]), 4)
    return {
        "out": str(out),
        "drives": drives,
        "semantic_frames": config.semantic_frames,
        "semantics_generated": semantics_todo,
        "size": list(config.size),
        "seconds": round(time.perf_counter() - start, 1),
    }


_CHUNK_FRAMES = 8


def _split(frames: list[int]) -> list[list[int]]:
    return [frames[k : k + _CHUNK_FRAMES] for k in range(0, len(frames), _CHUNK_FRAMES)]


def _staging(out: Path, name: str) -> Path:
    return out / ".partial" / name


def _stage_drive(out: Path, config: KittiSynthConfig, index: int) -> None:
    """Empty staging folders of drive `index` (``out/.partial/<drive>``) with calib.txt and times.txt."""
    entry = config.drive_table[index]
    staging = _staging(out, entry.drive)
    shutil.rmtree(staging, ignore_errors=True)
    image_path(staging, entry.sequence, 0).parent.mkdir(parents=True)
    drive_depth_folder(staging, config.split_of(index), entry.drive).mkdir(parents=True)
    write_calib(calib_path(staging, entry.sequence), kitti_calibration(entry.sequence, config.size))
    times = "".join(f"{0.1037 * i:e}\n" for i in range(config.frames))  # KITTI's ~10 Hz time stamps
    (calib_path(staging, entry.sequence).parent / "times.txt").write_text(times)


def _render_chunk(job: tuple[Path, KittiSynthConfig, int, list[int]]) -> tuple[int, int, np.ndarray]:
    """Render raw frames of a drive (or semantics images for index -1) into staging.

    Returns (index, frames rendered, [valid depth pixels, depth pixels]).
    """
    out, config, index, frames = job
    if index < 0:
        _render_semantics(out, config, frames)
        return index, len(frames), np.zeros(2, dtype=np.int64)
    drive = build_drive(config, index)
    entry = drive.entry
    staging = _staging(out, entry.drive)
    intrinsics = kitti_calibration(entry.sequence, config.size)["P2"][:, :3]
    camera2_to_velodyne = np.linalg.inv(velodyne_to_camera0()) @ camera2_to_camera0()
    counts = np.zeros(2, dtype=np.int64)
    for raw in frames:
        in_sequence = raw >= entry.start
        has_depth = config.depth_margin <= raw <= entry.end - config.depth_margin
        view = render(drive.scene, intrinsics, drive.camera2_to_street(raw), *config.size, shade=in_sequence)
        if in_sequence:
            _write_png_rgb(image_path(staging, entry.sequence, raw - entry.start), view.color)
        if has_depth:
            rng = np.random.default_rng([config.seed, index, raw])
            sparse = lidar_depth(view.depth, intrinsics, camera2_to_velodyne, rng, config)
            path = depth_path(staging, drive.split, entry.drive, raw)
            write_depth_png(path, encode_depth(sparse), compress_level=3)
            counts += ((sparse > 0).sum(), sparse.size)
    return index, len(frames), counts


def _finish_drive(out: Path, config: KittiSynthConfig, index: int) -> None:
    """Move a rendered drive into place: depth and sequence folders, then the poses file that marks it
    complete."""
    entry = config.drive_table[index]
    split = config.split_of(index)
    staging = _staging(out, entry.drive)
    moves = [
        (
            drive_depth_folder(staging, split, entry.drive).parents[2],
            drive_depth_folder(out, split, entry.drive).parents[2],
        ),
        (calib_path(staging, entry.sequence).parent, calib_path(out, entry.sequence).parent),
    ]
    for source, target in moves:
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        source.rename(target)
    poses = poses_path(out, entry.sequence)
    poses.parent.mkdir(parents=True, exist_ok=True)
    staged_poses = staging / poses.name
    write_poses(staged_poses, build_drive(config, index).sequence_poses())
    staged_poses.rename(poses)
    shutil.rmtree(staging, ignore_errors=True)


def _stage_semantics(out: Path) -> None:
    staging = _staging(out, "data_semantics")
    shutil.rmtree(staging, ignore_errors=True)
    for folder in ("image_2", "semantic"):
        (staging / "training" / folder).mkdir(parents=True)


def _render_semantics(out: Path, config: KittiSynthConfig, frames: list[int]) -> None:
    """Street photos ``training/image_2/%06d_10.png`` and their label ids ``training/semantic/``."""
    training = _staging(out, "data_semantics") / "training"
    intrinsics = kitti_calibration("00", config.size)["P2"][:, :3]
    for i in frames:
        scene, pose = street_photo(np.random.default_rng([config.seed, 1000 + i]), KITTI_CAMERA_HEIGHT)
        view = render(scene, intrinsics, pose, *config.size)
        _write_png_rgb(training / "image_2" / f"{i:06d}_10.png", view.color)
        write_label_png(training / "semantic" / f"{i:06d}_10.png", view.label)


def _finish_semantics(out: Path) -> None:
    _staging(out, "data_semantics").rename(out / "data_semantics")


def _write_png_rgb(path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(path, format="PNG", compress_level=3)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _drive_done(out: Path, config: KittiSynthConfig, index: int) -> bool:
    entry = config.drive_table[index]
    return (
        poses_path(out, entry.sequence).is_file()
        and image_path(out, entry.sequence, 0).parent.is_dir()
        and drive_depth_folder(out, config.split_of(index), entry.drive).is_dir()
    )


def _settings(config: KittiSynthConfig) -> dict:
    settings = asdict(config)
    settings["drive_table"] = [entry._asdict() for entry in config.drive_table]
    return json.loads(json.dumps(settings))
