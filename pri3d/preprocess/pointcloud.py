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

The file format is :mod:`pri3d.io.point_cloud`.
"""

from __future__ import annotations

import os

import numpy as np

from pri3d.io.scannet import read_aggregation_json, read_mesh_ply, read_segs_json, scene_mesh_paths

__all__ = ["scene_point_cloud"]


def scene_point_cloud(
    scan_dir: str | os.PathLike[str], scene: str, label_map: dict[str, int]
) -> tuple[dict[str, np.ndarray], str]:
    """Read one raw scan's mesh and annotation into labelled points.

    Args:
        scan_dir: the scene's folder in ScanNet's ``scans/``.
        scene: scene id, e.g. ``scene0000_00``.
        label_map: raw category -> NYU40 id (:func:`pri3d.io.scannet.read_label_map`).
    Returns:
        the arrays of :data:`pri3d.io.point_cloud.POINT_CLOUD_ARRAYS`, and a note: ``"labelled"``, or why labels are all
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
