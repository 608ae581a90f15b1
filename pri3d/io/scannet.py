"""ScanNet scene files other than ``.sens`` and images, read and written in ScanNet's own formats.

Per scene folder ``<scans>/<scene>/`` (see :func:`scene_mesh_paths`):

* ``<scene>_vh_clean_2.ply``: binary little-endian PLY mesh, vertices x y z (float) red green blue
  alpha (uchar), faces ``list uchar int vertex_indices``. Coordinates are in the scene's world frame,
  the same frame as the ``.sens`` camera-to-world poses.
* ``<scene>_vh_clean_2.0.010000.segs.json``: one over-segmentation segment id per mesh vertex.
* ``<scene>.aggregation.json``: object instances as groups of segment ids, each with a raw label.

At the dataset root, ``scannetv2-labels.combined.tsv`` maps raw labels to NYU40 (and other) ids.
``pose/*.txt`` and ``intrinsics_*.txt`` are whitespace-separated matrices (:func:`read_matrix_txt`).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from plyfile import PlyData, PlyElement, PlyElementParseError

# ScanNet's segmentator parameters for the _vh_clean_2 over-segmentation, stored (as strings) in
# every segs.json; written verbatim so the files look like the real ones.
SEGS_PARAMS = {
    "kThresh": "0.0001",
    "segMinVerts": "20",
    "minPoints": "750",
    "maxPoints": "5000",
    "thinThresh": "0.05",
    "flatThresh": "0.001",
    "minLength": "0.02",
    "maxLength": "1",
}

LABEL_TSV_COLUMNS = (
    "id",
    "raw_category",
    "category",
    "count",
    "nyu40id",
    "eigen13id",
    "nyuClass",
    "nyu40class",
    "eigen13class",
    "ModelNet40",
    "ModelNet10",
    "ShapeNetCore55",
    "synsetoffset",
    "wnsynsetid",
    "wnsynsetkey",
    "mpcat40",
    "mpcat40index",
)

_VERTEX_DTYPE = np.dtype(
    [
        ("x", "<f4"),
        ("y", "<f4"),
        ("z", "<f4"),
        ("red", "u1"),
        ("green", "u1"),
        ("blue", "u1"),
        ("alpha", "u1"),
    ]
)
# A triangle as PLY stores it: the list length (always 3) followed by the three indices, packed.
_FACE_DTYPE = np.dtype([("vertex_count", "u1"), ("vertex_indices", "<i4", (3,))])


def scene_mesh_paths(scan_dir: str | os.PathLike[str], scene_id: str) -> dict[str, Path]:
    """Standard file paths of one raw ScanNet scan; ``scan_dir`` is the scene's own folder.

    Returns a dict with keys 'mesh', 'segs', 'aggregation', 'sens'.
    """
    scan_dir = Path(scan_dir)
    return {
        "mesh": scan_dir / f"{scene_id}_vh_clean_2.ply",
        "segs": scan_dir / f"{scene_id}_vh_clean_2.0.010000.segs.json",
        "aggregation": scan_dir / f"{scene_id}.aggregation.json",
        "sens": scan_dir / f"{scene_id}.sens",
    }


# --- mesh -----------------------------------------------------------------------------------------


def write_mesh_ply(
    path: str | os.PathLike[str], vertices: np.ndarray, colors: np.ndarray, faces: np.ndarray
) -> None:
    """Write a triangle mesh as ScanNet's ``_vh_clean_2.ply`` does (binary little-endian).

    Args:
        vertices: [N, 3] float positions (stored as float32).
        colors: [N, 3] uint8 RGB; alpha is written as 255.
        faces: [F, 3] integer vertex indices in 0..N-1 (stored as int32).
    """
    vertices = np.asarray(vertices)
    colors = np.asarray(colors)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not np.issubdtype(vertices.dtype, np.floating):
        raise ValueError(
            f"{path}: vertices must be float [N, 3], got {vertices.dtype} {list(vertices.shape)}"
        )
    if colors.shape != vertices.shape or colors.dtype != np.uint8:
        raise ValueError(
            f"{path}: colors must be uint8 [{len(vertices)}, 3], got {colors.dtype} {list(colors.shape)}"
        )
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"{path}: faces must be int [F, 3], got {faces.dtype} {list(faces.shape)}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(
            f"{path}: face indices span {faces.min()}..{faces.max()}, expected 0..{len(vertices) - 1}"
        )

    vertex_data = np.empty(len(vertices), _VERTEX_DTYPE)
    for axis, name in enumerate("xyz"):
        vertex_data[name] = vertices[:, axis]
    for channel, name in enumerate(("red", "green", "blue")):
        vertex_data[name] = colors[:, channel]
    vertex_data["alpha"] = 255
    face_data = np.empty(len(faces), _FACE_DTYPE)
    face_data["vertex_count"] = 3
    face_data["vertex_indices"] = faces

    # plyfile writes the header; its binary writer loops over faces in Python, so the body is written
    # here directly. A fixed-size (3,) int32 field is described by plyfile as "list uchar int", and
    # the packed (count, i0, i1, i2) records are exactly that property's binary encoding.
    ply = PlyData(
        [
            PlyElement.describe(vertex_data, "vertex"),
            PlyElement.describe(np.empty(len(faces), [("vertex_indices", "<i4", (3,))]), "face"),
        ],
        text=False,
        byte_order="<",
    )
    with open(path, "wb") as file:
        file.write(ply.header.encode("ascii") + b"\n")
        file.write(vertex_data.tobytes())
        file.write(face_data.tobytes())


def read_mesh_ply(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a ScanNet-style PLY mesh.

    Returns:
        vertices: np.float32 [N, 3]; colors: np.uint8 [N, 3] RGB; faces: np.int64 [F, 3]
        (a [0, 3] array when the file has no faces).
    """
    try:
        # Declaring triangles lets plyfile memory-map the face list instead of parsing it per face.
        ply = PlyData.read(str(path), known_list_len={"face": {"vertex_indices": 3}})
    except PlyElementParseError:
        ply = PlyData.read(str(path))  # polygons other than triangles: slow path, rejected below
    names = [element.name for element in ply.elements]
    if "vertex" not in names:
        raise ValueError(f"{path}: PLY has no 'vertex' element (elements: {names})")
    vertex = ply["vertex"].data
    missing = [name for name in ("x", "y", "z", "red", "green", "blue") if name not in vertex.dtype.names]
    if missing:
        raise ValueError(f"{path}: PLY vertices lack properties {missing}")
    vertices = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32)
    colors = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.uint8)
    if "face" not in names:
        return vertices, colors, np.zeros((0, 3), np.int64)
    face = ply["face"].data
    if "vertex_indices" not in face.dtype.names:
        raise ValueError(f"{path}: PLY faces lack the 'vertex_indices' property")
    indices = face["vertex_indices"]
    if indices.dtype == object:  # variable-length lists from the slow path
        lengths = {len(polygon) for polygon in indices}
        if lengths - {3}:
            raise ValueError(
                f"{path}: PLY faces must be triangles, found polygons with {sorted(lengths)} vertices"
            )
        indices = np.stack(indices) if len(indices) else np.zeros((0, 3))
    return vertices, colors, np.asarray(indices, dtype=np.int64).reshape(-1, 3)


# --- over-segmentation and aggregation ------------------------------------------------------------


def _load_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def _get_key(path: str | os.PathLike[str], mapping: Any, key: str, where: str = "") -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ValueError(f"{path}: {where}missing key {key!r}")
    return mapping[key]


def write_segs_json(path: str | os.PathLike[str], scene_id: str, seg_indices: np.ndarray) -> None:
    """Write ScanNet's over-segmentation file: ``seg_indices`` [N] int, one segment id per vertex."""
    seg_indices = np.asarray(seg_indices)
    if seg_indices.ndim != 1 or not np.issubdtype(seg_indices.dtype, np.integer):
        raise ValueError(
            f"{path}: seg_indices must be int [N], got {seg_indices.dtype} {list(seg_indices.shape)}"
        )
    document = {"params": SEGS_PARAMS, "sceneId": scene_id, "segIndices": seg_indices.tolist()}
    with open(path, "w", encoding="utf-8") as file:
        json.dump(document, file)


def read_segs_json(path: str | os.PathLike[str]) -> np.ndarray:
    """Read ``segIndices`` of a ScanNet over-segmentation file as np.int64 [N] (one per mesh vertex)."""
    seg_indices = _get_key(path, _load_json(path), "segIndices")
    try:
        array = np.asarray(seg_indices, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: 'segIndices' must be a list of integers ({exc})") from exc
    if array.ndim != 1:
        raise ValueError(f"{path}: 'segIndices' must be a flat list, got shape {list(array.shape)}")
    return array


def write_aggregation_json(path: str | os.PathLike[str], scene_id: str, groups: list[dict[str, Any]]) -> None:
    """Write ScanNet's instance aggregation file.

    Args:
        groups: one dict per object, ``{"objectId": int, "label": str, "segments": [int, ...]}``.
            Real ScanNet files number objects 0..K-1 in file order and set ``id == objectId``;
            both are written from ``objectId``.
    """
    seg_groups = []
    seen: set[int] = set()
    for position, group in enumerate(groups):
        where = f"group {position}: "
        object_id = int(_get_key(path, group, "objectId", where))
        if object_id in seen:
            raise ValueError(f"{path}: {where}objectId {object_id} is used twice")
        seen.add(object_id)
        segments = [int(segment) for segment in _get_key(path, group, "segments", where)]
        label = _get_key(path, group, "label", where)
        seg_groups.append({"id": object_id, "objectId": object_id, "segments": segments, "label": str(label)})
    document = {
        "sceneId": f"scannet.{scene_id}",
        "appId": "pri3d.synth",
        "segGroups": seg_groups,
        "segmentsFile": f"scannet.{scene_id}_vh_clean_2.0.010000.segs.json",
    }
    with open(path, "w", encoding="utf-8") as file:
        json.dump(document, file, indent=1)


def read_aggregation_json(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the object groups of a ScanNet aggregation file, in file order.

    Returns a list of ``{"objectId": int, "label": str, "segments": list[int]}``.
    """
    groups = []
    for position, group in enumerate(_get_key(path, _load_json(path), "segGroups")):
        where = f"segGroups[{position}]: "
        groups.append(
            {
                "objectId": int(_get_key(path, group, "objectId", where)),
                "label": str(_get_key(path, group, "label", where)),
                "segments": [int(segment) for segment in _get_key(path, group, "segments", where)],
            }
        )
    return groups


# --- label table ----------------------------------------------------------------------------------


def write_label_tsv(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    """Write a label table with the header of ScanNet's ``scannetv2-labels.combined.tsv``.

    Each row needs at least id, raw_category, category, nyu40id and nyu40class; other columns of
    :data:`LABEL_TSV_COLUMNS` are optional and written empty when absent.
    """
    required = ("id", "raw_category", "category", "nyu40id", "nyu40class")
    lines = ["\t".join(LABEL_TSV_COLUMNS)]
    for position, row in enumerate(rows):
        missing = [column for column in required if column not in row]
        unknown = sorted(set(row) - set(LABEL_TSV_COLUMNS))
        if missing or unknown:
            raise ValueError(f"{path}: row {position}: missing columns {missing}, unknown columns {unknown}")
        cells = ["" if row.get(column) is None else str(row[column]) for column in LABEL_TSV_COLUMNS]
        for column, cell in zip(LABEL_TSV_COLUMNS, cells):
            if "\t" in cell or "\n" in cell or "\r" in cell:
                raise ValueError(f"{path}: row {position}: column {column!r} contains a tab or newline")
        lines.append("\t".join(cells))
    with open(path, "w", encoding="utf-8", newline="\n") as file:
        file.write("\n".join(lines) + "\n")


#: Label-table columns whose ids index a fixed class list: (lowest, highest) valid id, 0 = unlabelled.
LABEL_ID_RANGES = {"nyu40id": (0, 40), "eigen13id": (0, 13)}


def read_label_map(path: str | os.PathLike[str], to: str = "nyu40id") -> dict[str, int]:
    """Map ``raw_category`` to the integer in column ``to`` of a ScanNet label table.

    Works on the real ``scannetv2-labels.combined.tsv``. Rows whose ``to`` cell is empty are skipped.
    An id outside its class list (:data:`LABEL_ID_RANGES`) is an error naming the line and the raw
    category: it would otherwise be written into every point cloud that uses the category.
    """
    low, high = LABEL_ID_RANGES.get(to, (None, None))
    with open(path, encoding="utf-8", newline="") as file:
        # QUOTE_NONE: the file is plain tab-separated text; raw categories may contain quote marks.
        reader = csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns = reader.fieldnames or []
        for column in ("raw_category", to):
            if column not in columns:
                raise ValueError(f"{path}: label table has no column {column!r} (columns: {columns})")
        mapping = {}
        for row in reader:
            cell = (row[to] or "").strip()
            if not cell:
                continue
            try:
                value = int(cell)
            except ValueError as exc:
                raise ValueError(
                    f"{path}: line {reader.line_num}: column {to!r} is {cell!r}, expected an integer"
                ) from exc
            if low is not None and not low <= value <= high:
                raise ValueError(
                    f"{path}: line {reader.line_num}: raw_category {row['raw_category']!r} has {to} {value}, "
                    f"expected {low}..{high}"
                )
            mapping[row["raw_category"]] = value
    return mapping


# --- matrices -------------------------------------------------------------------------------------


def _format_number(value: np.generic) -> str:
    # Shortest text that reads back to the same value at the array's own precision: str() of a
    # NumPy float32 gives 9 significant digits at most, repr() of a float64 up to 17; -inf stays -inf.
    if isinstance(value, np.floating):
        return str(value) if value.dtype.itemsize <= 4 else repr(float(value))
    return str(value)


def write_matrix_txt(path: str | os.PathLike[str], m: np.ndarray) -> None:
    """Write a [R, C] matrix as whitespace-separated rows (ScanNet ``pose/*.txt``, intrinsics).

    Values round-trip exactly at their dtype's precision, including -inf (invalid ScanNet poses).
    """
    m = np.asarray(m)
    if m.ndim != 2 or m.size == 0 or not np.issubdtype(m.dtype, np.number):
        raise ValueError(f"{path}: expected a non-empty numeric [R, C] matrix, got {m.dtype} {list(m.shape)}")
    lines = [" ".join(_format_number(value) for value in row) for row in m]
    with open(path, "w", encoding="ascii") as file:
        file.write("\n".join(lines) + "\n")


def read_matrix_txt(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a whitespace-separated matrix file to np.float64 [R, C]; blank lines are ignored."""
    rows = []
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                rows.append([float(field) for field in fields])
            except ValueError as exc:
                raise ValueError(
                    f"{path}: line {line_number}: not a row of numbers: {line.strip()!r}"
                ) from exc
            if len(rows[-1]) != len(rows[0]):
                raise ValueError(
                    f"{path}: line {line_number} has {len(rows[-1])} values, earlier rows have {len(rows[0])}"
                )
    if not rows:
        raise ValueError(f"{path}: no matrix rows found")
    return np.array(rows, dtype=np.float64)
