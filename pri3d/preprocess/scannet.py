"""ScanNet pre-training data from the raw scans (``pri3d preprocess scannet``).

Input: ScanNet's raw ``scans/`` folder as distributed (``<scene>/<scene>.sens``,
``<scene>_vh_clean_2.ply``, ``<scene>_vh_clean_2.0.010000.segs.json``, ``<scene>.aggregation.json``)
and ``scannetv2-labels.combined.tsv``. ``scannet_frames_25k`` is *not* enough: it has too few frames
per scene and no meshes. Output under TARGET::

    <scene>/color/<frame>.jpg          JPEG bytes from the .sens (frame = raw number: 0, 25, 50, ...)
    <scene>/depth/<frame>.png          uint16 millimetres, 0 = invalid
    <scene>/pose/<frame>.txt           4×4 camera-to-world
    <scene>/intrinsic/{intrinsic,extrinsic}_{color,depth}.txt   4×4
    <scene>/chunk_boxes.txt            <frame> minx miny minz maxx maxy maxz   (frames.chunk_box)
    <scene>/overlap.txt                every pair i < j: <scene>/color/<i>.jpg <scene>/color/<j>.jpg <score>
    <scene>/scene_report.json          what this scene produced, with the settings used
    pointcloud/<scene>.npz             labelled mesh vertices (pointcloud module)
    splits/overlap<100·t>.txt          pairs with score >= t of all finished scenes, same line format
    preprocess_report.json             the run's report

Each scene is written into ``TARGET/<scene>.tmp/`` and renamed when complete, so a scene folder
exists only when it is whole. Its ``scene_report.json`` lists the frames and files it holds; a
re-run skips a scene whose folder holds them all and redoes one that lost any. One run at a time
may write TARGET (:mod:`pri3d.preprocess.output_folder`): a second is refused before it touches
anything. Scenes run in parallel processes; a scene that fails (truncated ``.sens``, unknown label)
is reported and the others go on; frames with an unusable pose or no depth are skipped and named in
the scene's report. A scene without a mesh still gets frames and pairs; its point cloud is skipped
and the report says so.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pri3d import __version__
from pri3d.io.atomic import atomic_write, check_writable_folder
from pri3d.io.chunk_boxes import write_chunk_boxes
from pri3d.io.pairs import FramePair, pair_line, read_pair_list
from pri3d.io.point_cloud import save_point_cloud
from pri3d.io.scannet import read_label_map, scene_mesh_paths
from pri3d.preprocess.frames import CAMERA_FILES, CHUNK_MARGIN, SKIP_REASONS, export_frames
from pri3d.preprocess.output_folder import output_lock
from pri3d.preprocess.overlap import VOXEL_SIZE, overlap_matrix, pair_scores
from pri3d.preprocess.pointcloud import scene_point_cloud

__all__ = [
    "LABEL_TSV",
    "REPORT_NAME",
    "SCENE_REPORT_NAME",
    "SIZED_FILES",
    "ScanNetOptions",
    "build_pair_list",
    "find_label_table",
    "find_scenes",
    "pair_list_name",
    "preprocess_scannet",
    "preprocess_scene",
]

LABEL_TSV = "scannetv2-labels.combined.tsv"
REPORT_NAME = "preprocess_report.json"
SCENE_REPORT_NAME = "scene_report.json"
#: Files of a scene folder whose sizes its report records, so that a re-run can tell they are whole.
SIZED_FILES = ("overlap.txt", "chunk_boxes.txt")


@dataclass
class ScanNetOptions:
    """Settings of a ScanNet preprocessing run; defaults are the original's recipe.

    frame_skip: export every n-th frame (25). overlap_threshold: minimum pair score for the pair
    list (0.3). voxel_size: downsampling voxel of the overlap clouds (0.05 m; the match radius is
    1.5 × this). chunk_margin: padding of the chunk boxes (0.1 m; the original had none, see
    :func:`pri3d.preprocess.frames.chunk_box`).
    """

    frame_skip: int = 25
    overlap_threshold: float = 0.3
    voxel_size: float = VOXEL_SIZE
    chunk_margin: float = CHUNK_MARGIN

    def __post_init__(self) -> None:
        if self.frame_skip < 1:
            raise ValueError(f"--frame-skip must be >= 1, got {self.frame_skip}")
        if not 0 <= self.overlap_threshold <= 1:
            raise ValueError(f"--overlap-threshold must be in [0, 1], got {self.overlap_threshold}")
        if self.voxel_size <= 0:
            raise ValueError(f"--voxel-size must be > 0, got {self.voxel_size}")
        if self.chunk_margin < 0:
            raise ValueError(f"--chunk-margin must be >= 0, got {self.chunk_margin}")

    def scene_settings(self) -> dict[str, float]:
        """The settings a finished scene depends on (the threshold only filters the pair list)."""
        return {
            "frame_skip": self.frame_skip,
            "voxel_size": self.voxel_size,
            "chunk_margin": self.chunk_margin,
        }


def pair_list_name(threshold: float) -> str:
    """``overlap30.txt`` for 0.3: the threshold in percent, as the original named the list."""
    return f"overlap{round(100 * threshold)}.txt"


def find_scenes(scans: str | os.PathLike[str], names: list[str] | None = None) -> list[str]:
    """Scene folders of a raw ``scans/`` directory (all, or ``names`` after checking they exist)."""
    scans = Path(scans)
    if not scans.is_dir():
        raise FileNotFoundError(f"{scans}: scans folder not found (expected ScanNet's raw scans/ directory)")
    if names:
        missing = [name for name in names if not (scans / name).is_dir()]
        if missing:
            raise FileNotFoundError(f"{scans}: no scene folders {missing} (from --scenes)")
        found = list(dict.fromkeys(names))
    else:
        found = sorted(p.name for p in scans.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise ValueError(f"{scans}: no scene folders; expected ScanNet's raw scans/<scene>/<scene>.sens")
    if not any(scene_mesh_paths(scans / name, name)["sens"].is_file() for name in found):
        hint = ""
        if (scans / "scans").is_dir():
            hint = f" (did you mean --scans {scans / 'scans'}?)"
        elif any((scans / name / "color").is_dir() for name in found):
            hint = (
                " (this looks like scannet_frames_25k, the fine-tuning data; pre-training needs the raw "
                "scans with .sens files)"
            )
        raise ValueError(f"{scans}: no scene folder holds a <scene>/<scene>.sens file{hint}")
    return found


def find_label_table(scans: str | os.PathLike[str], labels: str | os.PathLike[str] | None = None) -> Path:
    """``labels`` if given, else ``scannetv2-labels.combined.tsv`` in ``scans`` or its parent."""
    if labels is not None:
        path = Path(labels)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: label table not found (--labels)")
        return path
    scans = Path(scans)
    candidates = [scans / LABEL_TSV, scans.resolve().parent / LABEL_TSV]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{LABEL_TSV} not found in {candidates[0].parent} or {candidates[1].parent}; pass --labels TSV"
    )


# --- one scene ------------------------------------------------------------------------------------


def _write_overlap_txt(path: Path, scene: str, frames: list[int], m: np.ndarray) -> int:
    first, second, scores = pair_scores(m)
    lines = [pair_line(FramePair(scene, frames[i], frames[j], s)) for i, j, s in zip(first, second, scores)]
    path.write_text("".join(lines))  # inside the scene's temporary folder, renamed when complete
    return len(lines)


def preprocess_scene(
    scans: str | os.PathLike[str],
    out: str | os.PathLike[str],
    scene: str,
    options: ScanNetOptions,
    label_map: dict[str, int],
) -> dict[str, Any]:
    """Produce ``out/<scene>/`` (and ``out/pointcloud/<scene>.npz``) from ``scans/<scene>``.

    Everything is written to ``out/<scene>.tmp/`` first and renamed at the end; on an exception
    the temporary folder is removed and the exception propagates. ``out/<scene>/`` must not exist.
    Returns the scene's report.
    """
    start = time.perf_counter()
    scan_dir, out = Path(scans) / scene, Path(out)
    paths = scene_mesh_paths(scan_dir, scene)
    if not paths["sens"].is_file():
        raise FileNotFoundError(f"{paths['sens']}: no .sens file (pre-training needs the raw scan)")
    final, tmp = out / scene, out / f"{scene}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        # The cloud first: a label problem fails the scene before the long part.
        try:
            cloud, label_note = scene_point_cloud(scan_dir, scene, label_map)
        except FileNotFoundError as missing:
            cloud, label_note = None, str(missing)
        exported = export_frames(
            paths["sens"], tmp, options.frame_skip, options.voxel_size, options.chunk_margin
        )
        m = overlap_matrix(exported.clouds, radius=1.5 * options.voxel_size, cell_size=options.voxel_size)
        num_pairs = _write_overlap_txt(tmp / "overlap.txt", scene, exported.frames, m)
        write_chunk_boxes(tmp / "chunk_boxes.txt", exported.frames, exported.boxes)
        cloud_path = out / "pointcloud" / f"{scene}.npz"
        if cloud is None:
            cloud_path.unlink(missing_ok=True)  # a stale cloud from an older run would be wrong now
            pointcloud = f"skipped: {label_note}"
        else:
            save_point_cloud(cloud_path, cloud)
            pointcloud = f"written ({label_note}, {len(cloud['points'])} points)"
        report = {
            "scene": scene,
            "status": "done",
            "settings": options.scene_settings(),
            "frames_read": exported.read,
            "frames_exported": len(exported.frames),
            "frames": exported.frames,
            "frames_skipped": exported.skipped,
            "skipped_frames": {str(frame): why for frame, why in exported.skipped_frames.items()},
            "pairs": num_pairs,
            "file_bytes": {name: (tmp / name).stat().st_size for name in SIZED_FILES},
            "pointcloud": pointcloud,
            "seconds": round(time.perf_counter() - start, 3),
            "pri3d_version": __version__,
        }
        (tmp / SCENE_REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _scene_job(job: tuple[Path, Path, str, ScanNetOptions, dict[str, int]]) -> dict[str, Any]:
    """Run one scene; never raises, so that one broken scene cannot stop the pool."""
    scans, out, scene, options, label_map = job
    start = time.perf_counter()
    try:
        return preprocess_scene(scans, out, scene, options, label_map)
    except Exception as error:  # reported per scene; the run goes on
        reason = f"{type(error).__name__}: {error}"
        if not isinstance(error, (OSError, ValueError)):
            reason += "\n" + traceback.format_exc(limit=-3)  # an unexpected error: where it happened
        return {
            "scene": scene,
            "status": "failed",
            "reason": reason,
            "seconds": round(time.perf_counter() - start, 3),
        }


def _worker_init() -> None:
    # Parallelism is over scenes. The scene code does not import torch (it would cost each worker
    # about 0.6 GB); should anything have imported it, keep it to one thread.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


# --- pair list ------------------------------------------------------------------------------------


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        file.write(text)


def build_pair_list(out: str | os.PathLike[str], threshold: float) -> tuple[Path, dict[str, tuple[int, int]]]:
    """Rebuild ``out/splits/overlap<100·t>.txt`` from every finished scene's ``overlap.txt``.

    Returns the list's path and, per scene, (pairs, pairs with score >= threshold).
    """
    out = Path(out)
    lines, counts = [], {}
    for overlap in sorted(out.glob("*/overlap.txt")):
        scene = overlap.parent.name
        if scene.endswith(".tmp"):
            continue
        pairs = read_pair_list(overlap)
        kept = [pair_line(pair) for pair in pairs if pair.score >= threshold]
        lines.extend(kept)
        counts[scene] = (len(pairs), len(kept))
    path = out / "splits" / pair_list_name(threshold)
    _atomic_write_text(path, "".join(lines))
    return path, counts


# --- the run --------------------------------------------------------------------------------------


def _finished_report(out: Path, scene: str, options: ScanNetOptions) -> dict[str, Any] | str | None:
    """The state of a scene's folder in ``out``.

    Returns the stored report when the folder holds everything it lists, a sentence saying why the
    folder is incomplete, or None when there is no folder. Raises if the folder was not made by
    this command or was made with other settings.
    """
    folder = out / scene
    if not folder.is_dir():
        return None
    path = folder / SCENE_REPORT_NAME
    if not path.is_file():
        raise ValueError(
            f"{folder} exists but has no {SCENE_REPORT_NAME}: not made by pri3d preprocess; "
            "move it away or use another --out"
        )
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        return f"its {SCENE_REPORT_NAME} is not valid JSON ({error})"
    if not isinstance(report, dict):
        return f"its {SCENE_REPORT_NAME} is not a JSON object"
    settings = report.get("settings", {})
    wanted = options.scene_settings()
    changed = sorted(key for key in wanted if settings.get(key) != wanted[key])
    if changed:
        raise ValueError(
            f"{folder} was made with {', '.join(f'{k}={settings.get(k)!r}' for k in changed)}, this run asks "
            f"{', '.join(f'{k}={wanted[k]!r}' for k in changed)}; use another --out or remove that scene"
        )
    return _incompleteness(folder, report) or report


def _incompleteness(folder: Path, report: dict[str, Any]) -> str | None:
    """Why a finished scene folder does not hold what its report lists, or None when it does.

    Every listed frame's colour, depth and pose file and the camera files must exist, and the pair
    and chunk-box files must have their recorded sizes. A folder that lost files, or that a second
    run wrote over, would otherwise feed pairs of missing frames to pre-training.
    """
    frames, sizes = report.get("frames"), report.get("file_bytes")
    if not isinstance(frames, list) or not isinstance(sizes, dict):
        return f"its {SCENE_REPORT_NAME} does not list its frames and files (written by an older pri3d)"
    expected = [f"intrinsic/{name}.txt" for name in CAMERA_FILES]
    expected += [
        f"{sub}/{frame}{ext}"
        for frame in frames
        for sub, ext in (("color", ".jpg"), ("depth", ".png"), ("pose", ".txt"))
    ]
    present = set()
    for sub in ("intrinsic", "color", "depth", "pose"):
        if (folder / sub).is_dir():
            present.update(f"{sub}/{name}" for name in os.listdir(folder / sub))
    missing = [name for name in expected if name not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        return f"its {SCENE_REPORT_NAME} lists files it lacks: {shown}"
    for name in SIZED_FILES:
        path = folder / name
        if not path.is_file():
            return f"its {SCENE_REPORT_NAME} lists files it lacks: {name}"
        if path.stat().st_size != sizes.get(name):
            return (
                f"{name} has {path.stat().st_size} bytes, not the {sizes.get(name)} its "
                f"{SCENE_REPORT_NAME} records"
            )
    return None


def preprocess_scannet(
    scans: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: ScanNetOptions | None = None,
    scenes: list[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Preprocess raw ScanNet scans for pre-training (see the module doc for what is written).

    Args:
        scans: ScanNet's ``scans/`` folder. out: TARGET.
        options: frame skip, threshold, voxel size, chunk margin.
        scenes: scene names to process (default: every folder in ``scans``).
        labels: the label tsv (default: ``scannetv2-labels.combined.tsv`` in scans or its parent).
        workers: scenes processed in parallel (spawned processes); 1 = in this process.
        progress: show a progress bar with ETA over scenes.
    Returns:
        the report, also written to ``out/preprocess_report.json``.
    """
    options = options or ScanNetOptions()
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    start = time.perf_counter()
    scans, out = Path(scans), Path(out)
    names = find_scenes(scans, scenes)
    label_path = find_label_table(scans, labels)
    label_map = read_label_map(label_path)
    # Every run writes the pair list and the report; scenes write their clouds into pointcloud/.
    check_writable_folder(out, "--out", ("pointcloud", "splits"))
    with output_lock(out):
        results, redone = _resume(out, names, options)
        todo = [name for name in names if name not in results]
        bar = tqdm(
            total=len(names),
            initial=len(results),
            unit="scene",
            desc="preprocess scannet",
            disable=not progress,
            dynamic_ncols=True,
        )
        failed = 0

        def record(result: dict[str, Any]) -> None:
            nonlocal failed
            results[result["scene"]] = result
            failed += result["status"] == "failed"
            bar.set_postfix(failed=failed, refresh=False)
            bar.update(1)

        jobs = [(scans, out, name, options, label_map) for name in todo]
        try:
            if workers > 1 and len(jobs) > 1:
                context = multiprocessing.get_context("spawn")
                with context.Pool(min(workers, len(jobs)), initializer=_worker_init) as pool:
                    for result in pool.imap_unordered(_scene_job, jobs):
                        record(result)
            else:
                for job in jobs:
                    record(_scene_job(job))
        finally:
            bar.close()

        list_path, pair_counts = build_pair_list(out, options.overlap_threshold)
        report = _summarise(names, results, redone, pair_counts, list_path, out, options, scans, label_path)
        report["seconds"] = round(time.perf_counter() - start, 3)
        _atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=2) + "\n")
    return report


def _resume(
    out: Path, names: list[str], options: ScanNetOptions
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The reports of the finished, complete scenes of ``names``, and why each incomplete one is redone.

    Incomplete scene folders are removed, so that the pair list cannot name their files should the
    redo fail. Every scene is checked (settings, foreign folders) before anything is removed.
    """
    states = {name: _finished_report(out, name, options) for name in names}
    results, redone = {}, {}
    for name, state in states.items():
        if isinstance(state, dict):
            results[name] = {**state, "status": "skipped_existing"}
        elif isinstance(state, str):
            redone[name] = state
            shutil.rmtree(out / name)
    return results, redone


def _summarise(
    names: list[str],
    results: dict[str, dict[str, Any]],
    redone: dict[str, str],
    pair_counts: dict[str, tuple[int, int]],
    list_path: Path,
    out: Path,
    options: ScanNetOptions,
    scans: Path,
    label_path: Path,
) -> dict[str, Any]:
    per_scene = {}
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    exported = pairs = kept = 0
    for name in names:
        result = dict(results[name])
        if result["status"] != "failed":
            total, at_threshold = pair_counts.get(name, (0, 0))
            result["pairs_at_threshold"] = at_threshold
            exported += result.get("frames_exported", 0)
            for reason, count in result.get("frames_skipped", {}).items():
                skipped[reason] = skipped.get(reason, 0) + count
            pairs += total
            kept += at_threshold
        per_scene[name] = result
    statuses = [result["status"] for result in per_scene.values()]
    return {
        "pri3d_version": __version__,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "scans": str(scans),
        "labels": str(label_path),
        "options": asdict(options),
        "scenes": {
            "selected": len(names),
            "done": statuses.count("done"),
            "skipped_existing": statuses.count("skipped_existing"),
            "failed": statuses.count("failed"),
        },
        "frames": {"exported": exported, "skipped": skipped},
        "pairs": {"total": pairs, "at_threshold": kept, "threshold": options.overlap_threshold},
        "pair_list": {
            "path": str(list_path.relative_to(out)),
            "pairs": sum(k for _, k in pair_counts.values()),
            "scenes": len(pair_counts),
        },
        "failures": [
            {"scene": name, "reason": result["reason"]}
            for name, result in per_scene.items()
            if result["status"] == "failed"
        ],
        "redone": [{"scene": name, "reason": reason} for name, reason in redone.items()],
        "per_scene": per_scene,
    }
