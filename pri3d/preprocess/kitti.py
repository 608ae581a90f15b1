"""KITTI pre-training pairs from the annotated depth and odometry poses (``pri3d preprocess kitti``).

Input: a KITTI root laid out as downloaded (:mod:`pri3d.io.kitti`, docs/data.md). For every odometry
drive with annotated depth, every frame pair i < j of its annotated frames (train and val) that have a
pose and lie at most ``max_gap`` raw frames apart is scored with the original's overlap
(``kitti_process.py``):

frame i's valid depth pixels are back-projected with camera 2's intrinsics K2 = P2[:3, :3], moved
camera 2 (i) -> camera 0 (i) -> world -> camera 0 (j) -> camera 2 (j) and projected with K2; a pixel
matches where its point is in front of camera 2 (j), its **nearest pixel** ``floor(x + 0.5)`` lies in
the image (pri3d's pixel-centre convention, :mod:`pri3d.geometry`; the original truncated), and frame
j's depth there is valid and within ``depth_threshold`` metres of the point's depth. The ratio is
matches / (valid_i + valid_j - matches). Pairs with ratio > ``min_ratio`` are kept with their pixel
mapping (row-major order of frame i's pixels). Raw-drive frame r is odometry frame r - start of its
sequence: poses are read at that row.

Output under OUT (default ROOT/preprocessed)::

    <drive>/pairs.txt             <drive> <split> <frame_i> <frame_j> <ratio> <first_row> <num_matches>
    <drive>/mapping.npy           int16 [rows, 4] (row_i, col_i, row_j, col_j), the pairs' mappings stacked
    <drive>/drive_report.json     what the drive produced and the settings it was made with
    pairs.txt                     the pairs of every finished drive, same lines
    preprocess_report.json        the run's report

Each drive is written into ``OUT/<drive>.tmp/`` and renamed when complete; a re-run skips a drive whose
folder holds the files its report lists at their recorded sizes and redoes one that does not. One run
at a time may write OUT (:mod:`pri3d.preprocess.output_folder`). Drives run in parallel processes; a
drive that fails (missing calibration or poses, unreadable depth) is reported and the others go on.

Per frame i, every partner is bounded first (:mod:`pri3d.preprocess.kitti_overlap`: an exact upper
bound on the matches from boxes around groups of frame i's points); only the pairs the bound cannot
reject are matched point by point, on the points that can land in frame j. The result is the same as
matching every point of every pair. Every depth map is read once, the calibration once per drive.
Pure NumPy: one process per drive, and torch would cost each about 0.6 GB.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pri3d import __version__
from pri3d.io.atomic import atomic_write, check_writable_folder
from pri3d.io.kitti import (
    DEPTH_SPLITS,
    MAPPING_NAME,
    PAIRS_NAME,
    DriveSequence,
    KittiPair,
    calib_path,
    camera0_to_camera2,
    drive_depth_folder,
    kitti_pair_line,
    poses_path,
    read_calib,
    read_drive_table,
    read_kitti_depth,
    read_poses,
)
from pri3d.preprocess.kitti_overlap import (
    match_points,
    overlap_ratio,
    point_blocks,
    reachable_blocks,
)
from pri3d.preprocess.output_folder import output_lock
from pri3d.preprocess.summary import outcome_lines

__all__ = [
    "DRIVE_REPORT_NAME",
    "REPORT_NAME",
    "DriveInput",
    "KittiOptions",
    "find_drives",
    "preprocess_drive",
    "preprocess_kitti",
    "summary_lines",
]

REPORT_NAME = "preprocess_report.json"
DRIVE_REPORT_NAME = "drive_report.json"
_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_NPY_HEADER_BYTES = 128  # room for any [rows, 4] int16 header; rewritten with the final row count


@dataclass
class KittiOptions:
    """Settings of a KITTI preprocessing run; defaults are the original's.

    max_gap: pairs at most this many raw frames apart (100). depth_threshold: metres between a warped
    point's depth and frame j's depth for a match (0.5). min_ratio: pairs with a larger ratio are kept
    (0.05).
    """

    max_gap: int = 100
    depth_threshold: float = 0.5
    min_ratio: float = 0.05

    def __post_init__(self) -> None:
        if self.max_gap < 1:
            raise ValueError(f"--max-gap must be >= 1 frame, got {self.max_gap}")
        if not self.depth_threshold > 0:
            raise ValueError(f"--depth-threshold must be > 0 metres, got {self.depth_threshold}")
        if not 0 <= self.min_ratio < 1:
            raise ValueError(f"--min-ratio must be in [0, 1), got {self.min_ratio}")


# --- one drive ------------------------------------------------------------------------------------


@dataclass
class DriveInput:
    """A drive found under the root: its table entry, depth split and annotated raw frames."""

    entry: DriveSequence
    split: str
    frames: list[int]


class _MappingWriter:
    """Appends int16 [M, 4] rows to a ``.npy`` file whose header is written last (rows unknown ahead)."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows = path, 0
        self.file = open(path, "wb")
        self.file.write(b"\0" * _NPY_HEADER_BYTES)

    def append(self, rows: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(rows, dtype="<i2").tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        header = f"{{'descr': '<i2', 'fortran_order': False, 'shape': ({self.rows}, 4), }}"
        prefix = b"\x93NUMPY\x01\x00" + (_NPY_HEADER_BYTES - 10).to_bytes(2, "little")
        self.file.seek(0)
        self.file.write(prefix + header.ljust(_NPY_HEADER_BYTES - 11).encode("latin1") + b"\n")
        self.file.close()


def _frame_ranges(frames: list[int]) -> list[str]:
    """[0, 1, 2, 7] -> ["0-2", "7"]: frame lists of real drives run to thousands."""
    ranges: list[str] = []
    for frame in frames:
        if ranges and int(ranges[-1].split("-")[-1]) == frame - 1:
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{frame}"
        else:
            ranges.append(str(frame))
    return ranges


def preprocess_drive(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    drive: DriveInput,
    options: KittiOptions,
    on_frames: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score the pairs of one drive into ``out/<drive>/`` (written in ``<drive>.tmp/``, then renamed).

    ``on_frames(n)`` is called as frames are finished (progress). Raises on a missing calibration or
    poses file, an unreadable depth map or images too large for int16 pixel indices; the temporary
    folder is removed then. Returns the drive's report.
    """
    start_time = time.perf_counter()
    root, out, entry = Path(root), Path(out), drive.entry
    calib = read_calib(calib_path(root, entry.sequence))
    poses = read_poses(poses_path(root, entry.sequence))  # [n, 4, 4] camera 0 -> world, sequence rows
    K = calib["P2"][:, :3]
    camera0_to_2 = camera0_to_camera2(calib["P2"])
    with_pose = [r for r in drive.frames if entry.start <= r <= entry.end and r - entry.start < len(poses)]
    without_pose = sorted(set(drive.frames) - set(with_pose))
    # camera 2 -> world at every posed frame: pose(r - start) @ inverse(camera 0 -> camera 2)
    camera2_to_world = {r: poses[r - entry.start] @ np.linalg.inv(camera0_to_2) for r in with_pose}
    world_to_camera2 = {r: np.linalg.inv(pose) for r, pose in camera2_to_world.items()}
    if on_frames:
        on_frames(len(without_pose))

    final, tmp = out / entry.drive, out / f"{entry.drive}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        depth_folder = drive_depth_folder(root, drive.split, entry.drive)
        depths: dict[int, np.ndarray] = {}  # the frames still needed as partners
        valid: dict[int, int] = {}
        shape: tuple[int, ...] | None = None  # of the drive's first depth map; all must share it
        lines, tested = [], 0
        writer = _MappingWriter(tmp / MAPPING_NAME)
        try:
            for position, frame_i in enumerate(with_pose):
                partners = [j for j in with_pose[position + 1 :] if j - frame_i <= options.max_gap]
                for frame in (frame_i, *partners):
                    if frame not in depths:
                        depths[frame] = _read_depth(depth_folder / f"{frame:010d}.png", shape)
                        shape = depths[frame].shape
                        valid[frame] = np.count_nonzero(depths[frame] > 0)
                if partners:
                    transforms = np.stack([world_to_camera2[j] for j in partners]) @ camera2_to_world[frame_i]
                    kept = _kept_partners(
                        depths[frame_i],
                        [depths[j] for j in partners],
                        valid[frame_i],
                        [valid[j] for j in partners],
                        K,
                        K @ transforms[:, :3],
                        options,
                    )
                    for k, ratio, rows in kept:
                        pair = KittiPair(
                            entry.drive, drive.split, frame_i, partners[k], ratio, writer.rows, len(rows)
                        )
                        lines.append(kitti_pair_line(pair))
                        writer.append(rows)
                    tested += len(partners)
                del depths[frame_i]
                if on_frames:
                    on_frames(1)
        finally:
            writer.close()
        (tmp / PAIRS_NAME).write_text("".join(lines))
        report = {
            "drive": entry.drive,
            "status": "done",
            "settings": _drive_settings(options, drive),
            "frames_annotated": len(drive.frames),
            "frames_with_pose": len(with_pose),
            "frames_without_pose": _frame_ranges(without_pose),
            "pairs_tested": tested,
            "pairs": len(lines),
            "matches": writer.rows,
            "file_bytes": {name: (tmp / name).stat().st_size for name in (PAIRS_NAME, MAPPING_NAME)},
            "seconds": round(time.perf_counter() - start_time, 3),
            "pri3d_version": __version__,
        }
        (tmp / DRIVE_REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _kept_partners(
    depth_i: np.ndarray,
    partner_depths: list[np.ndarray],
    valid_i: int,
    partner_valid: list[int],
    K: np.ndarray,
    projections: np.ndarray,
    options: KittiOptions,
) -> Iterator[tuple[int, float, np.ndarray]]:
    """The partners k of frame i with ratio > min_ratio: (k, ratio, mapping int [M, 4]).

    The mapping's rows are (row_i, col_i, row_j, col_j) in row-major order of frame i's pixels.
    K: [3, 3] camera 2's intrinsics; projections: [J, 3, 4] camera 2 (i) -> pixels of each partner.
    Pairs the bound rejects (:mod:`pri3d.preprocess.kitti_overlap`) are not matched at all; the others
    are matched on the points of the blocks that can reach the partner's image.
    """
    width = depth_i.shape[1]
    blocks = point_blocks(depth_i, K)
    reachable = reachable_blocks(blocks, projections, depth_i.shape)  # [J, B]
    bound = reachable.astype(np.int64) @ blocks.counts  # [J] most matches each pair can have
    for k in np.flatnonzero(overlap_ratio(bound, valid_i, partner_valid) > options.min_ratio):
        reached = np.flatnonzero(reachable[k])  # not empty: bound[k] > 0
        first, stop = blocks.starts[reached[0]], blocks.starts[reached[-1]] + blocks.counts[reached[-1]]
        matched, pixel_j = match_points(
            blocks.points[:, first:stop], projections[k], partner_depths[k], options.depth_threshold
        )
        ratio = float(overlap_ratio(np.count_nonzero(matched), valid_i, partner_valid[k]))
        if ratio > options.min_ratio:
            pixel_i = blocks.pixels[first:stop][matched]
            row_major = np.argsort(pixel_i)
            pixel_i, pixel_j = pixel_i[row_major], pixel_j[matched][row_major]
            yield (
                k,
                ratio,
                np.stack((pixel_i // width, pixel_i % width, pixel_j // width, pixel_j % width), 1),
            )


def _read_depth(path: Path, shape: tuple[int, ...] | None) -> np.ndarray:
    """A depth map of the drive; ``shape``: that of the drive's maps read before (None for the first)."""
    depth = read_kitti_depth(path)  # errors name the file
    if max(depth.shape) > np.iinfo(np.int16).max:
        raise ValueError(f"{path}: {depth.shape} pixels do not fit the int16 indices of {MAPPING_NAME}")
    if shape is not None and depth.shape != shape:
        raise ValueError(
            f"{path}: {depth.shape[0]}x{depth.shape[1]} pixels, the drive's other depth maps have "
            f"{shape[0]}x{shape[1]}"
        )
    return depth


def _drive_settings(options: KittiOptions, drive: DriveInput) -> dict[str, Any]:
    """What a finished drive depends on; a re-run with other values is refused."""
    entry = drive.entry
    return {**asdict(options), "sequence": entry.sequence, "start": entry.start, "split": drive.split}


# --- finding drives -------------------------------------------------------------------------------


def find_drives(
    root: str | os.PathLike[str], names: list[str] | None = None
) -> tuple[list[DriveInput], dict[str, str]]:
    """The odometry drives under ``root`` that have annotated depth (all, or ``names``).

    Returns the drives found and, per table drive without usable depth folder, why it is skipped.
    Raises ValueError for a name of ``names`` that is not in the drive table.
    """
    root = Path(root)
    if not (root / "odometry").is_dir() and not (root / "depth").is_dir():
        raise FileNotFoundError(
            f"{root}: no odometry/ or depth/ folder; expected a KITTI root (see docs/data.md, KITTI)"
        )
    table = read_drive_table(root)
    if names:
        known = {entry.drive for entry in table}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(
                f"--drives {','.join(unknown)}: not odometry drives of this data (known: {', '.join(sorted(known))})"
            )
        table = tuple(entry for entry in table if entry.drive in names)
    found, skipped = [], {}
    for entry in table:
        splits = [split for split in DEPTH_SPLITS if drive_depth_folder(root, split, entry.drive).is_dir()]
        if not splits:
            skipped[entry.drive] = (
                f"no annotated depth: {drive_depth_folder(root, 'train', entry.drive)} (or val/) not found"
            )
        elif len(splits) > 1:
            skipped[entry.drive] = (
                "annotated depth in both train/ and val/; KITTI puts each drive in one split"
            )
        else:
            folder = drive_depth_folder(root, splits[0], entry.drive)
            frames = sorted(int(p.stem) for p in folder.glob("*.png") if p.stem.isdigit())
            if frames:
                found.append(DriveInput(entry, splits[0], frames))
            else:
                skipped[entry.drive] = f"{folder}: no <%010d>.png depth files"
    return found, skipped


# --- the run --------------------------------------------------------------------------------------

_progress_queue: Any = None  # set in pool workers by _worker_init


def _worker_init(progress_queue: Any) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _drive_job(
    job: tuple[Path, Path, DriveInput, KittiOptions], on_frames: Callable[[int], None] | None
) -> dict[str, Any]:
    """Run one drive; never raises, so that one broken drive cannot stop the others."""
    root, out, drive, options = job
    start = time.perf_counter()
    try:
        return preprocess_drive(root, out, drive, options, on_frames)
    except Exception as error:  # reported per drive; the run goes on
        reason = f"{type(error).__name__}: {error}"
        if not isinstance(error, (OSError, ValueError)):
            reason += "\n" + traceback.format_exc(limit=-3)  # an unexpected error: where it happened
        return {
            "drive": drive.entry.drive,
            "status": "failed",
            "reason": reason,
            "frames_annotated": len(drive.frames),
            "seconds": round(time.perf_counter() - start, 3),
        }


def _pool_job(job: tuple[Path, Path, DriveInput, KittiOptions]) -> dict[str, Any]:
    drive = job[2].entry.drive
    return _drive_job(job, lambda count: _progress_queue.put((drive, count)))


def _run_jobs(jobs: list, workers: int, bar: tqdm) -> list[dict[str, Any]]:
    """Drive reports of ``jobs``, in processes when ``workers`` > 1; the bar advances per frame.

    A failed drive's remaining frames are counted as done, so that the ETA stays right.
    """
    done: dict[str, int] = {job[2].entry.drive: 0 for job in jobs}

    def advance(drive: str, count: int) -> None:
        done[drive] += count
        bar.update(count)

    def finish(result: dict[str, Any]) -> dict[str, Any]:
        if result["status"] == "failed":
            advance(result["drive"], result["frames_annotated"] - done[result["drive"]])
            failed.append(result["drive"])
            bar.set_postfix(failed=len(failed), refresh=False)
        return result

    results: list[dict[str, Any]] = []
    failed: list[str] = []
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            results.append(finish(_drive_job(job, lambda count, d=job[2].entry.drive: advance(d, count))))
        return results
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    with (
        _one_blas_thread_in_children(),
        context.Pool(min(workers, len(jobs)), initializer=_worker_init, initargs=(progress_queue,)) as pool,
    ):
        pending = [pool.apply_async(_pool_job, (job,)) for job in jobs]
        while pending:
            try:
                advance(*progress_queue.get(timeout=0.2))
            except queue.Empty:
                pass
            for task in [task for task in pending if task.ready()]:
                pending.remove(task)
                results.append(finish(task.get()))
        while not progress_queue.empty():
            advance(*progress_queue.get())
    return results


@contextlib.contextmanager
def _one_blas_thread_in_children() -> Iterator[None]:
    """Processes started inside the block run BLAS on one thread (unless the user set the variables).

    Parallelism is one process per drive; BLAS threads in each would contend for the same cores (the
    small 3x4 projections ran ~5x slower that way on a loaded 2-core machine).
    """
    saved = {name: os.environ.get(name) for name in _BLAS_THREAD_VARIABLES}
    os.environ.update({name: "1" for name, value in saved.items() if value is None})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)


def _finished_report(out: Path, drive: DriveInput, options: KittiOptions) -> dict[str, Any] | str | None:
    """The stored report of a finished, whole drive folder; why it is not whole; or None if absent.

    Raises if the folder was not made by this command or with other settings.
    """
    folder = out / drive.entry.drive
    if not folder.is_dir():
        return None
    path = folder / DRIVE_REPORT_NAME
    if not path.is_file():
        raise ValueError(
            f"{folder} exists but has no {DRIVE_REPORT_NAME}: not made by pri3d preprocess kitti; "
            "move it away or use another --out"
        )
    try:
        report = json.loads(path.read_text())
        sizes, settings = report["file_bytes"], report["settings"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        return f"its {DRIVE_REPORT_NAME} is unreadable ({type(error).__name__}: {error})"
    wanted = _drive_settings(options, drive)
    changed = sorted(key for key in wanted if settings.get(key) != wanted[key])
    if changed:
        raise ValueError(
            f"{folder} was made with {', '.join(f'{k}={settings.get(k)!r}' for k in changed)}, this run asks "
            f"{', '.join(f'{k}={wanted[k]!r}' for k in changed)}; use another --out or remove that drive"
        )
    for name, size in sizes.items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, its report says {size}"
    return report


def preprocess_kitti(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    options: KittiOptions | None = None,
    drives: list[str] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Preprocess the odometry drives under ``root`` into ``out`` (default ``root/preprocessed``).

    Returns the run's report (also written to ``out/preprocess_report.json``).
    """
    start = time.perf_counter()
    options = options or KittiOptions()
    root = Path(root)
    out = Path(out) if out is not None else root / "preprocessed"
    found, absent = find_drives(root, drives)
    check_writable_folder(out, "--out")
    with output_lock(out):
        states = {d.entry.drive: _finished_report(out, d, options) for d in found}  # may refuse the run
        results, redone = {}, {}
        for drive in found:
            state = states[drive.entry.drive]
            if isinstance(state, dict):
                results[drive.entry.drive] = {**state, "status": "skipped_existing"}
            elif isinstance(state, str):
                redone[drive.entry.drive] = state
                shutil.rmtree(out / drive.entry.drive)
        todo = [d for d in found if d.entry.drive not in results]
        bar = tqdm(
            total=sum(len(d.frames) for d in todo),
            unit="frame",
            desc="preprocess kitti",
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            for result in _run_jobs([(root, out, drive, options) for drive in todo], workers, bar):
                results[result["drive"]] = result
        finally:
            bar.close()
        pair_count = _write_pair_list(
            out, [d.entry.drive for d in found if results[d.entry.drive]["status"] != "failed"]
        )
        report = _summarise(found, absent, results, redone, pair_count, root, out, options)
        report["seconds"] = round(time.perf_counter() - start, 3)
        with atomic_write(out / REPORT_NAME) as file:
            file.write(json.dumps(report, indent=2) + "\n")
    return report


def _write_pair_list(out: Path, drives: list[str]) -> int:
    """``out/pairs.txt``: the pairs of the finished ``drives`` (their own lists, concatenated)."""
    text = "".join((out / drive / PAIRS_NAME).read_text() for drive in drives)
    with atomic_write(out / PAIRS_NAME) as file:
        file.write(text)
    return text.count("\n")


def _summarise(
    found: list[DriveInput],
    absent: dict[str, str],
    results: dict[str, dict[str, Any]],
    redone: dict[str, str],
    pair_count: int,
    root: Path,
    out: Path,
    options: KittiOptions,
) -> dict[str, Any]:
    per_drive = {d.entry.drive: results[d.entry.drive] for d in found}
    statuses = [r["status"] for r in per_drive.values()]
    finished = [r for r in per_drive.values() if r["status"] != "failed"]
    return {
        "pri3d_version": __version__,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "root": str(root),
        "options": asdict(options),
        "drives": {
            "found": len(found),
            "done": statuses.count("done"),
            "skipped_existing": statuses.count("skipped_existing"),
            "failed": statuses.count("failed"),
            "without_depth": len(absent),
        },
        "frames": {
            "annotated": sum(r["frames_annotated"] for r in finished),
            "with_pose": sum(r["frames_with_pose"] for r in finished),
        },
        "pairs": {"tested": sum(r["pairs_tested"] for r in finished), "kept": pair_count},
        "pair_list": PAIRS_NAME,
        "skipped_drives": [{"drive": drive, "reason": reason} for drive, reason in absent.items()],
        "failures": [
            {"drive": name, "reason": r["reason"]} for name, r in per_drive.items() if r["status"] == "failed"
        ],
        "redone": [{"drive": drive, "reason": reason} for drive, reason in redone.items()],
        "per_drive": per_drive,
    }


def summary_lines(report: dict[str, Any], out: Path) -> list[str]:
    """A few lines a person reads at the end of a run."""
    drives, frames, pairs = report["drives"], report["frames"], report["pairs"]
    lines = [
        f"drives: {drives['done']} done, {drives['skipped_existing']} already done, {drives['failed']} failed "
        f"(of {drives['found']} with annotated depth; {drives['without_depth']} odometry drives without)",
        f"frames: {frames['annotated']} annotated, {frames['with_pose']} with an odometry pose",
        f"pairs: {pairs['tested']} tested, {pairs['kept']} kept (ratio > {report['options']['min_ratio']})",
        f"pair list: {out / report['pair_list']}",
    ]
    return lines + outcome_lines(report, "drive", out / REPORT_NAME)
