"""MegaDepth pre-training data from the download (``pri3d preprocess megadepth``).

For every scene with ``MegaDepth_v1/<scene>/dense0/imgs`` (layout: :mod:`pri3d.io.megadepth`):

1. undistort ``MegaDepth_v1_SfM/<scene>/images`` with the model ``sparse/manhattan/0`` through
   pycolmap (COLMAP's own image undistorter) into ``Undistorted_SfM/<scene>/{images,sparse}``, with
   ``max_image_size`` = the largest side of the scene's dense images, as the original's
   ``undistort_reconstructions.py``; the dense depth maps are aligned with these images;
2. write ``scene_info/<scene>.npz`` with the original's fields and definitions
   (:func:`scene_info_matrices`; an image is usable when its undistorted image exists and its depth
   file is depth of the image's size, not a mask), and ``scene_info/<scene>.json``, the scene's report.

The undistorted folder is written as ``Undistorted_SfM/<scene>.tmp`` and renamed when complete; the
npz and the report are written atomically, the report last. A re-run skips a scene whose report
lists files that are all there with their recorded sizes and redoes one that is incomplete. One run
at a time may write the root (:mod:`pri3d.preprocess.output_folder`). Scenes run in parallel
processes; a scene whose model, images or depth cannot be read is reported and the others go on.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import sparse
from tqdm import tqdm

from pri3d import __version__
from pri3d.io.atomic import atomic_write, check_writable_folder
from pri3d.io.colmap import ColmapModel, read_model
from pri3d.io.megadepth import (
    DENSE_FOLDER,
    SCENE_INFO_FOLDER,
    SCENE_INFO_VERSION_KEY,
    SFM_FOLDER,
    UNDISTORTED_FOLDER,
    SceneInfo,
    depth_path,
    image_path,
    is_mask,
    read_depth,
    write_scene_info,
)
from pri3d.preprocess.output_folder import output_lock

__all__ = [
    "DROP_REASONS",
    "REPORT_NAME",
    "find_scenes",
    "observation_table",
    "overlap_and_scale_ratio",
    "preprocess_megadepth",
    "preprocess_scene",
    "principal_axis_angles",
    "scene_info_matrices",
]

REPORT_NAME = "preprocess_megadepth_report.json"
#: Written into the undistorted folder before it is renamed into place: the folder is pri3d's.
UNDISTORTED_MARKER = "pri3d_undistorted.json"
#: Why an image of the model is not usable for pairs (keys of a report's ``dropped``).
DROP_REASONS = (
    "image_not_undistorted",
    "missing_depth",
    "unreadable_depth",
    "mask_depth",
    "depth_size_differs",
)
_CHUNK = 1 << 21  # pair entries per step of the scale-ratio reduction (bounds its memory to ~50 MB)


# --- the vectorised scene_info matrices -----------------------------------------------------------


def observation_table(model: ColmapModel) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per image of ``model``, its observed 3D points in CSR form with normalised depths.

    An image that observes one point through several keypoints keeps the last keypoint (the
    original stored them in a dict). nd = z_camera / ((fx + fy) / 2).
    Returns indptr [N + 1], ids [nnz] int64 (ascending per image), xy [nnz, 2] (COLMAP), nd [nnz].
    """
    ids, xy, ndepth, counts = [], [], [], []
    for image in model.images:
        if image.intrinsics is None:
            raise ValueError(f"image {image.name!r} has a {image.camera_model} camera, expected PINHOLE")
        reversed_ids = image.point3D_ids[::-1]
        unique, first_reversed = np.unique(reversed_ids, return_index=True)
        keep = len(reversed_ids) - 1 - first_reversed  # the last keypoint of each point
        rotation, translation = image.world_to_camera[:3, :3], image.world_to_camera[:3, 3]
        z = model.point_xyz(unique) @ rotation[2] + translation[2]
        focal = 0.5 * (image.intrinsics[0, 0] + image.intrinsics[1, 1])
        ids.append(unique)
        xy.append(image.xy[keep])
        ndepth.append(z / focal)
        counts.append(len(unique))
    indptr = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
    return (
        indptr,
        np.concatenate([np.zeros(0, np.int64), *ids]),
        np.concatenate([np.zeros((0, 2)), *xy]),
        np.concatenate([np.zeros(0), *ndepth]),
    )


def overlap_and_scale_ratio(
    indptr: np.ndarray, ids: np.ndarray, ndepth: np.ndarray, usable: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The original's overlap and scale-ratio matrices, vectorised.

    Over the usable images only (the others' rows and columns are -1, as is the diagonal):
    overlap[i, j] = |common 3D points| / |points of i| (0 when i observes none), and
    scale[i, j] = scale[j, i] = min over common points of max(nd_i / nd_j, nd_j / nd_i), -1 when
    there is no common point. Both come from every pair of images within each 3D point's track,
    grouped by track length: a pair's |common| is how many tracks hold it (a bincount), its scale
    ratio the minimum over those tracks. Bit-identical to the pairwise loop (the same float
    operations on the same numbers), without its O(N²·|obs|) Python cost.

    Args:
        indptr [N + 1], ids [nnz], ndepth [nnz]: the observation table (unique ids per image);
        usable [N] bool.
    Returns:
        overlap [N, N], scale [N, N] float64.
    """
    n = len(indptr) - 1
    rows = np.repeat(np.arange(n), np.diff(indptr))
    keep = usable[rows]
    observed = np.bincount(rows[keep], minlength=n)  # [N] points per usable image
    usable_indptr = np.concatenate([[0], np.cumsum(observed)])
    ids, ndepth = ids[keep], ndepth[keep]
    columns, num_points = _dense_columns(ids)  # ascending per image, as the ids
    entries = len(ids)
    # the tracks: the transposed image × point incidence lists each point's images in ascending
    # order; its data (entry numbers + 1, never 0) carries the permutation to the ndepth values
    tracks = sparse.csr_matrix(
        (np.arange(1, entries + 1), columns, usable_indptr), shape=(n, num_points)
    ).tocsc()
    track_images, track_nd = tracks.indices, ndepth[tracks.data - 1]  # [nnz] grouped by point
    starts, lengths = tracks.indptr[:-1], np.diff(tracks.indptr)  # [P]
    by_length = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[by_length]
    best = np.full(n * n, np.inf)  # [N*N] flat (i, j) with i < j
    shared = np.zeros(n * n, np.int64)  # [N*N] flat (i, j) with i < j: tracks holding both images
    for length in np.unique(sorted_lengths[sorted_lengths > 1]):
        first, second = np.triu_indices(length, 1)  # every image pair within a track, i before j
        same = slice(*np.searchsorted(sorted_lengths, [length, length + 1]))
        track_starts = starts[by_length[same]]
        step = max(1, _CHUNK // len(first))
        for chunk in range(0, len(track_starts), step):
            members = track_starts[chunk : chunk + step, None] + np.arange(length)  # [T, L] entries
            image, nd = track_images[members], track_nd[members]  # [T, L]
            a, b = nd[:, first], nd[:, second]  # [T, L(L-1)/2] nd of the first / second image
            ratio = np.maximum(a / b, b / a)
            pair = (image[:, first] * n + image[:, second]).ravel()
            np.minimum.at(best, pair, ratio.ravel())
            shared += np.bincount(pair, minlength=n * n)
    common = shared.reshape(n, n)
    common = common + common.T  # [N, N] |common points|
    with np.errstate(divide="ignore", invalid="ignore"):
        overlap = np.where(observed[:, None] > 0, common / observed[:, None], 0.0)
    unused = ~usable[:, None] | ~usable[None, :] | np.eye(n, dtype=bool)
    overlap[unused] = -1.0
    best = best.reshape(n, n)
    best = np.minimum(best, best.T)
    scale = np.where(np.isfinite(best), best, -1.0)
    return overlap, scale


def _dense_columns(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Column 0..P-1 of each (possibly repeated) 3D point id, in id order, and P."""
    if not len(ids):
        return np.zeros(0, np.int64), 0
    low, high = int(ids.min()), int(ids.max())
    if high - low < 4 * len(ids) + 1024:  # COLMAP numbers points 1, 2, ...: a table beats a sort
        present = np.zeros(high - low + 1, bool)
        present[ids - low] = True
        column = np.cumsum(present) - 1
        return column[ids - low], int(column[-1]) + 1
    points, columns = np.unique(ids, return_inverse=True)
    return columns, len(points)


def principal_axis_angles(poses: np.ndarray) -> np.ndarray:
    """Degrees between the principal (camera z) axes of every two cameras. poses: [N, 4, 4]
    world-to-camera, whose rotation's third row is the camera's z axis in world coordinates."""
    axes = poses[:, 2, :3]  # [N, 3]
    cosine = np.clip(axes @ axes.T, -1.0, 1.0)
    angles = np.degrees(np.arccos(cosine))
    np.fill_diagonal(angles, 0.0)
    return angles


def scene_info_matrices(
    indptr: np.ndarray, ids: np.ndarray, ndepth: np.ndarray, usable: np.ndarray, poses: np.ndarray
) -> dict[str, np.ndarray]:
    """``overlap_matrix``, ``scale_ratio_matrix`` and ``angles`` of a scene (see the two functions)."""
    overlap, scale = overlap_and_scale_ratio(indptr, ids, ndepth, usable)
    return {"overlap_matrix": overlap, "scale_ratio_matrix": scale, "angles": principal_axis_angles(poses)}


# --- one scene ------------------------------------------------------------------------------------


def find_scenes(root: str | os.PathLike[str], names: list[str] | None = None) -> list[str]:
    """Scenes of a MegaDepth root: folders ``MegaDepth_v1/<scene>`` with ``dense0/imgs`` (all, or
    ``names`` after checking they have it)."""
    root = Path(root)
    dense = root / DENSE_FOLDER
    if not dense.is_dir():
        raise FileNotFoundError(
            f"{dense}: not found; --root must hold MegaDepth's {DENSE_FOLDER}/ and {SFM_FOLDER}/ folders"
        )
    if names:
        missing = [name for name in names if not (dense / name / "dense0" / "imgs").is_dir()]
        if missing:
            raise FileNotFoundError(f"{dense}: no <scene>/dense0/imgs for scenes {missing} (from --scenes)")
        return list(dict.fromkeys(names))
    found = sorted(p.name for p in dense.iterdir() if (p / "dense0" / "imgs").is_dir())
    if not found:
        raise ValueError(
            f"{dense}: no scene has dense0/imgs (expected {DENSE_FOLDER}/<scene>/dense0/imgs/*.jpg)"
        )
    return found


def max_dense_image_size(folder: Path) -> int:
    """The largest side of the images in ``folder`` (read from their headers)."""
    largest = 0
    for path in sorted(folder.iterdir()):
        if path.is_file():
            try:
                with Image.open(path) as image:
                    largest = max(largest, *image.size)
            except OSError as error:
                raise ValueError(f"{path}: not a readable image ({error})") from None
    if not largest:
        raise ValueError(f"{folder}: no images")
    return largest


def undistort(model: Path, images: Path, out: Path, max_image_size: int, threads: int) -> None:
    """COLMAP's undistortion of ``model`` + ``images`` into ``out/{images,sparse}`` (PINHOLE cameras)."""
    import pycolmap

    pycolmap.logging.minloglevel = 2  # COLMAP's progress lines would drown the progress bar
    options = pycolmap.UndistortCameraOptions(max_image_size=max_image_size)
    pycolmap.undistort_images(out, model, images, undistort_options=options, num_threads=threads)


def _is_grayscale(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            return image.mode in ("L", "LA", "1")
    except OSError:
        return False


def _image_state(root: Path, scene: str, name: str) -> str | None:
    """Why an image of the undistorted model cannot be used for pairs, or None when it can."""
    path = root / image_path(scene, name)
    try:
        with Image.open(path) as opened:
            width, height = opened.size
    except OSError:  # COLMAP skips (and only logs) a source photo it cannot read
        return "image_not_undistorted"
    depth_file = root / depth_path(scene, name)
    if not depth_file.is_file():
        return "missing_depth"
    try:
        raw = read_depth(depth_file, raw=True)
    except (OSError, ValueError):
        return "unreadable_depth"
    if is_mask(raw):
        return "mask_depth"
    if raw.shape != (height, width):
        return "depth_size_differs"
    return None


def build_scene_info(root: Path, scene: str, model: ColmapModel) -> tuple[SceneInfo, dict, list[str]]:
    """The scene_info of an undistorted model; also {reason: [image names]} dropped and the names of
    grayscale photos (kept: COLMAP's undistortion writes them as RGB, and the dataset converts any
    grayscale image it meets)."""
    dropped: dict[str, list[str]] = {reason: [] for reason in DROP_REASONS}
    image_paths, depth_paths = [], []
    photos = root / SFM_FOLDER / scene / "images"
    grayscale = [image.name for image in model.images if _is_grayscale(photos / image.name)]
    for image in model.images:
        reason = _image_state(root, scene, image.name)
        if reason is not None:
            dropped[reason].append(image.name)
        image_ok = reason != "image_not_undistorted"
        image_paths.append(image_path(scene, image.name) if image_ok else "")
        depth_paths.append(depth_path(scene, image.name) if reason is None else "")
    indptr, ids, xy, ndepth = observation_table(model)
    image_paths, depth_paths = np.array(image_paths, dtype=str), np.array(depth_paths, dtype=str)
    poses = np.stack([image.world_to_camera for image in model.images]).reshape(-1, 4, 4)
    usable = (image_paths != "") & (depth_paths != "")
    info = SceneInfo(
        image_paths=image_paths,
        depth_paths=depth_paths,
        intrinsics=np.stack([image.intrinsics for image in model.images]).reshape(-1, 3, 3),
        poses=poses,
        **scene_info_matrices(indptr, ids, ndepth, usable, poses),
        n_points3D=len(model.point3D_ids),
        points3D_indptr=indptr,
        points3D_ids=ids,
        points3D_xy=xy,
        points3D_ndepth=ndepth,
    )
    return info, {reason: names for reason, names in dropped.items() if names}, grayscale


def _scene_paths(root: Path, scene: str) -> dict[str, Path]:
    return {
        "model": root / SFM_FOLDER / scene / "sparse" / "manhattan" / "0",
        "images": root / SFM_FOLDER / scene / "images",
        "dense_images": root / DENSE_FOLDER / scene / "dense0" / "imgs",
        "undistorted": root / UNDISTORTED_FOLDER / scene,
        "scene_info": root / SCENE_INFO_FOLDER / f"{scene}.npz",
        "report": root / SCENE_INFO_FOLDER / f"{scene}.json",
    }


def _write_json(path: Path, data: dict) -> None:
    with atomic_write(path) as file:
        file.write(json.dumps(data, indent=2) + "\n")


def preprocess_scene(root: str | os.PathLike[str], scene: str, threads: int = -1) -> dict[str, Any]:
    """Undistort one scene and write its scene_info and report; returns the report.

    The scene's outputs must not exist (a re-run removes incomplete ones first). On an exception the
    partial outputs are removed and the exception propagates.
    """
    start = time.perf_counter()
    root = Path(root)
    paths = _scene_paths(root, scene)
    for key in ("model", "images"):
        if not paths[key].is_dir():
            raise FileNotFoundError(f"{paths[key]}: not found (MegaDepth's SfM archive, {SFM_FOLDER}/)")
    read_model(paths["model"])  # a clear error for a broken model before undistortion starts
    max_image_size = max_dense_image_size(paths["dense_images"])
    final, tmp = paths["undistorted"], paths["undistorted"].with_name(f"{scene}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        undistort(paths["model"], paths["images"], tmp, max_image_size, threads)
        _write_json(tmp / UNDISTORTED_MARKER, {"scene": scene, "max_image_size": max_image_size})
        tmp.rename(final)
        model = read_model(final / "sparse")
        info, dropped, grayscale = build_scene_info(root, scene, model)
        paths["scene_info"].parent.mkdir(exist_ok=True)
        write_scene_info(paths["scene_info"], info)
        images = sorted(os.listdir(final / "images"))
        sized = [paths["scene_info"], *sorted((final / "sparse").iterdir())]
        report = {
            "scene": scene,
            "status": "done",
            "max_image_size": max_image_size,
            "images": info.num_images,
            "usable_images": int(info.usable.sum()),
            "dropped": dropped,
            "grayscale_kept": grayscale,
            "points3D": info.n_points3D,
            "observations": len(info.points3D_ids),
            # ordered pairs (i, j) at the default dataset.min_overlap
            "pairs_overlap_at_least_0.3": int((info.overlap_matrix >= 0.3).sum()),
            "undistorted_images": images,
            "file_bytes": {str(path.relative_to(root)): path.stat().st_size for path in sized},
            "seconds": round(time.perf_counter() - start, 3),
            "pri3d_version": __version__,
        }
        _write_json(paths["report"], report)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_outputs(paths)
        raise
    return report


def _remove_outputs(paths: dict[str, Path]) -> None:
    shutil.rmtree(paths["undistorted"], ignore_errors=True)
    paths["scene_info"].unlink(missing_ok=True)
    paths["report"].unlink(missing_ok=True)


def _scene_job(root: Path, scene: str, threads: int) -> dict[str, Any]:
    """Run one scene; never raises, so that one broken scene cannot stop the others."""
    start = time.perf_counter()
    try:
        return preprocess_scene(root, scene, threads)
    except Exception as error:  # reported per scene; the run goes on
        reason = f"{type(error).__name__}: {error}"
        if not isinstance(error, (OSError, ValueError)):
            reason += "\n" + traceback.format_exc(limit=-3)  # an unexpected error: where it happened
        return _failure(scene, reason, start)


def _failure(scene: str, reason: str, start: float) -> dict[str, Any]:
    return {
        "scene": scene,
        "status": "failed",
        "reason": reason,
        "seconds": round(time.perf_counter() - start, 3),
    }


# --- resuming -------------------------------------------------------------------------------------


def scene_state(root: Path, scene: str) -> tuple[str, dict[str, Any] | str | None]:
    """What a re-run does with a scene: ("skip", its report), ("redo", why), ("new", None) or
    ("foreign", why): outputs that pri3d did not write (e.g. the original's), left alone."""
    paths = _scene_paths(root, scene)
    undistorted, npz, report_path = paths["undistorted"], paths["scene_info"], paths["report"]
    if undistorted.is_dir() and not (undistorted / UNDISTORTED_MARKER).is_file():
        return "foreign", f"{undistorted} was not written by pri3d preprocess megadepth"
    if npz.is_file() and not report_path.is_file() and not _is_plain_npz(npz):
        return "foreign", f"{npz} was not written by pri3d preprocess megadepth"
    if not report_path.is_file():
        if undistorted.is_dir() or npz.is_file():
            return "redo", "a previous run stopped inside this scene"
        return "new", None
    try:
        report = json.loads(report_path.read_text())
        files, images = report["file_bytes"], report["undistorted_images"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        return "redo", f"its report {report_path.name} is unreadable ({error})"
    for name, size in files.items():
        path = root / name
        if not path.is_file() or path.stat().st_size != size:
            return "redo", f"{name} is missing or not the {size} bytes its report records"
    present = set(os.listdir(undistorted / "images")) if (undistorted / "images").is_dir() else set()
    missing = [name for name in images if name not in present]
    if missing:
        return "redo", f"{len(missing)} undistorted images are missing (e.g. {missing[0]})"
    return "skip", report


def _is_plain_npz(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return SCENE_INFO_VERSION_KEY in npz.files
    except Exception:  # a damaged file: whatever wrote it, this run may replace it
        return True


# --- the run --------------------------------------------------------------------------------------


def preprocess_megadepth(
    root: str | os.PathLike[str],
    scenes: list[str] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Undistort MegaDepth scenes and write their scene_info (see the module doc).

    Args:
        root: the MegaDepth root (``MegaDepth_v1/``, ``MegaDepth_v1_SfM/``); outputs go there too.
        scenes: scene names (default: every ``MegaDepth_v1/<scene>`` with ``dense0/imgs``).
        workers: scenes processed in parallel (spawned processes); 1 = in this process.
        progress: show a progress bar with ETA over scenes.
    Returns:
        the report, also written to ``root/preprocess_megadepth_report.json``.
    """
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    start = time.perf_counter()
    root = Path(root)
    names = find_scenes(root, scenes)
    check_writable_folder(root, "--root", (UNDISTORTED_FOLDER, SCENE_INFO_FOLDER))
    (root / UNDISTORTED_FOLDER).mkdir(exist_ok=True)
    (root / SCENE_INFO_FOLDER).mkdir(exist_ok=True)
    with output_lock(root):
        results: dict[str, dict[str, Any]] = {}
        redone: dict[str, str] = {}
        todo = []
        for name in names:
            action, detail = scene_state(root, name)
            if action == "skip":
                results[name] = {**detail, "status": "skipped_existing"}
            elif action == "foreign":
                results[name] = _failure(name, f"{detail}; move it away to redo this scene here", start)
            else:
                if action == "redo":
                    redone[name] = detail
                    _remove_outputs(_scene_paths(root, name))
                todo.append(name)
        bar = tqdm(
            total=len(names),
            initial=len(results),
            unit="scene",
            desc="preprocess megadepth",
            disable=not progress,
            dynamic_ncols=True,
        )

        def record(result: dict[str, Any]) -> None:
            results[result["scene"]] = result
            bar.set_postfix(failed=sum(r["status"] == "failed" for r in results.values()), refresh=False)
            bar.update(1)

        try:
            _run_scenes(root, todo, workers, record)
        finally:
            bar.close()
        report = _summarise(root, names, results, redone)
        report["seconds"] = round(time.perf_counter() - start, 3)
        _write_json(root / REPORT_NAME, report)
    return report


def _run_scenes(root: Path, todo: list[str], workers: int, record: Callable[[dict], None]) -> None:
    if workers == 1 or len(todo) < 2:
        for name in todo:
            record(_scene_job(root, name, -1))
        return
    workers = min(workers, len(todo))
    threads = max(1, (os.cpu_count() or 1) // workers)  # undistortion threads per scene process
    start = time.perf_counter()
    # a process pool that reports a dead worker (BrokenProcessPool) rather than waiting for it forever
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_scene_job, root, name, threads): name for name in todo}
        for future in as_completed(futures):
            try:
                record(future.result())
            except BrokenProcessPool:
                reason = "its worker process died (out of memory, or a crash in this or another scene)"
                record(_failure(futures[future], reason, start))


def _summarise(
    root: Path, names: list[str], results: dict[str, dict[str, Any]], redone: dict[str, str]
) -> dict[str, Any]:
    per_scene = {name: results[name] for name in names}
    statuses = [result["status"] for result in per_scene.values()]
    finished = [r for r in per_scene.values() if r["status"] != "failed"]
    dropped = {
        reason: sum(len(r.get("dropped", {}).get(reason, [])) for r in finished) for reason in DROP_REASONS
    }
    return {
        "pri3d_version": __version__,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "root": str(root),
        "scenes": {
            "selected": len(names),
            "done": statuses.count("done"),
            "skipped_existing": statuses.count("skipped_existing"),
            "failed": statuses.count("failed"),
        },
        "images": {
            "total": sum(r.get("images", 0) for r in finished),
            "usable": sum(r.get("usable_images", 0) for r in finished),
            "dropped": dropped,
            "grayscale_kept": sum(len(r.get("grayscale_kept", [])) for r in finished),
        },
        "failures": [
            {"scene": name, "reason": result["reason"]}
            for name, result in per_scene.items()
            if result["status"] == "failed"
        ],
        "redone": [{"scene": name, "reason": reason} for name, reason in redone.items()],
        "per_scene": {
            name: {k: v for k, v in result.items() if k != "undistorted_images"}
            for name, result in per_scene.items()
        },
    }
