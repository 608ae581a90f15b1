"""Labelled scene point clouds from ScanNet's meshes (the original's
`collect_indoor3d_data.py`).

The vertices of ``<scene>_vh_clean_2.ply`` become the points. Each vertex gets the over-segment
of ``_vh_clean_2.0.010000.segs.json``; each object group of ``<scene>.aggregation.json`` names its
segments, so its vertices get

* ``instance`` = the group's ``objectId`` + 1 (0 = no object), and
* ``semantic`` = the NYU40 id of the group's raw label in ``scannetv2-labels.combined.tsv``
  (0 = unlabeled).

A raw label missing from the table is an error naming the label, the scene and the table: a
silent 0 would hide a wrong table. Where groups share a segment, the later group wins (as the
original's loop). The cloud is in ScanNet's scene frame, the frame of the ``.sens`` poses (not
the axis-aligned frame).

File format, ``<scene>.npz`` (NumPy ``savez``, uncompressed, no pickled objects; read with
:func:`load_point_cloud` or ``np.load(path)``):

=============  =========  =========================================================
``points``     float32    [N, 3] world coordinates, metres
``colors``     uint8      [N, 3] RGB
``semantic``   int32      [N] NYU40 id, 0 = unlabeled
``instance``   int32      [N] objectId + 1, 0 = no object
=============  =========  =========================================================
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from pri3d.io.atomic import atomic_write
from pri3d.io.scannet import read_aggregation_json, read_mesh_ply, read_segs_json, scene_mesh_paths

__all__ = ["POINT_CLOUD_ARRAYS", "load_point_cloud", "save_point_cloud", "scene_point_cloud"]

#: Array names of a saved point cloud and their dtype and per-point width (0 = one value).
POINT_CLOUD_ARRAYS: dict[str, tuple[np.dtype, int]] = {
    "points": (np.dtype(np.float32), 3),
    "colors": (np.dtype(np.uint8), 3),
    "semantic": (np.dtype(np.int32), 0),
    "instance": (np.dtype(np.int32), 0),
}


def scene_point_cloud(
    scan_dir: str | os.PathLike[str], scene: str, label_map: dict[str, int]
) -> tuple[dict[str, np.ndarray], str]:
    """Read one raw scan's mesh and annotation into labelled points.

    Args:
        scan_dir: the scene's folder in ScanNet's ``scans/``.
        scene: scene id, e.g. ``scene0000_00``.
        label_map: raw category -> NYU40 id (:func:`pri3d.io.scannet.read_label_map`).
    Returns:
        the arrays of :data:`POINT_CLOUD_ARRAYS`, and a note: ``"labelled"``, or why labels are all
        0 (ScanNet's test scans have a mesh but no segs/aggregation files).
    Raises:
        FileNotFoundError: no mesh. ValueError: an unknown raw label, or files that disagree.
    """
    paths = scene_mesh_paths(scan_dir, scene)
    if not paths["mesh"].is_file():
        raise FileNotFoundError(f"{paths['mesh']}: mesh not found")
    vertices, colors, _ = read_mesh_ply(paths["mesh"])
    num_points = len(vertices)
    semantic = np.zeros(num_points, dtype=np.int32)
    instance = np.zeros(num_points, dtype=np.int32)
    arrays = {"points": vertices, "colors": colors, "semantic": semantic, "instance": instance}
    missing = [paths[key].name for key in ("segs", "aggregation") if not paths[key].is_file()]
    if missing:
        return arrays, f"unlabelled: no {' or '.join(missing)}"

    segments = read_segs_json(paths["segs"])  # [N] segment id per vertex
    if len(segments) != num_points:
        raise ValueError(
            f"{paths['segs']}: {len(segments)} segment ids for the {num_points} vertices of {paths['mesh'].name}"
        )
    groups = read_aggregation_json(paths["aggregation"])
    unknown = sorted({group["label"] for group in groups} - set(label_map))
    if unknown:
        raise ValueError(
            f"{paths['aggregation']}: raw categories {unknown} are not in the label table; "
            "add them to the tsv (raw_category -> nyu40id) or pass the right --labels"
        )
    # Sorting segment ids once turns "vertices of these segments" into searchsorted lookups.
    order = np.argsort(segments, kind="stable")
    sorted_segments = segments[order]
    for group in groups:
        ids = np.asarray(group["segments"], dtype=np.int64)
        first = np.searchsorted(sorted_segments, ids, side="left")
        last = np.searchsorted(sorted_segments, ids, side="right")
        lengths = last - first
        members = order[np.repeat(first, lengths) + _ranks(lengths)]
        semantic[members] = label_map[group["label"]]
        instance[members] = group["objectId"] + 1
    return arrays, "labelled"


def _ranks(lengths: np.ndarray) -> np.ndarray:
    """0, 1, ..., n-1 for each n in ``lengths``, concatenated."""
    return np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _validate(arrays: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    missing = sorted(set(POINT_CLOUD_ARRAYS) - set(arrays))
    if missing:
        raise ValueError(f"{where}: point cloud lacks arrays {missing}")
    num_points = len(arrays["points"])
    checked = {}
    for name, (dtype, width) in POINT_CLOUD_ARRAYS.items():
        array = np.asarray(arrays[name])
        shape = (num_points, width) if width else (num_points,)
        if array.shape != shape:
            raise ValueError(f"{where}: '{name}' has shape {list(array.shape)}, expected {list(shape)}")
        if array.dtype != dtype:
            if not np.can_cast(array.dtype, dtype, casting="same_kind"):
                raise ValueError(f"{where}: '{name}' is {array.dtype}, expected {dtype}")
            array = array.astype(dtype)
        checked[name] = array
    return checked


def save_point_cloud(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """Write a point cloud (see module doc) atomically: a temporary file renamed onto ``path``."""
    path = Path(path)
    checked = _validate(arrays, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as file:
        np.savez(file, **checked)


def load_point_cloud(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a point cloud written by :func:`save_point_cloud`; checks names, dtypes and shapes.

    A missing file raises FileNotFoundError; a file that is not a whole ``.npz`` (e.g. cut short by a
    full disk) or holds other arrays raises ValueError naming it.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable point cloud .npz ({error})") from None
    return _validate(arrays, str(path))
