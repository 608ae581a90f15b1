"""Per-frame crop boxes, ``<scene>/chunk_boxes.txt`` of a preprocessing output.

One line per exported frame, ``<frame> minx miny minz maxx maxy maxz``: the axis-aligned box of the
frame's valid world points padded by a margin (metres, world frame, 4 decimals: 0.1 mm). The
geometric prior crops the scene point cloud to it.
"""

from __future__ import annotations

import os

import numpy as np

from pri3d.io.atomic import atomic_write

__all__ = ["read_chunk_boxes", "write_chunk_boxes"]


def write_chunk_boxes(path: str | os.PathLike[str], frames: list[int], boxes: np.ndarray) -> None:
    """Write ``<frame> minx miny minz maxx maxy maxz`` lines (metres, 4 decimals: 0.1 mm)."""
    lines = [f"{frame} " + " ".join(f"{v:.4f}" for v in box) for frame, box in zip(frames, boxes)]
    with atomic_write(path) as file:
        file.write("".join(line + "\n" for line in lines))


def read_chunk_boxes(path: str | os.PathLike[str]) -> dict[int, np.ndarray]:
    """Read a ``chunk_boxes.txt``: frame number -> [6] float64 (min xyz, max xyz)."""
    boxes = {}
    with open(path, encoding="ascii") as file:
        for line_number, line in enumerate(file, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 7:
                    raise ValueError(f"{len(fields)} fields")
                boxes[int(fields[0])] = np.array([float(v) for v in fields[1:]])
            except ValueError as exc:
                raise ValueError(
                    f"{path}: line {line_number}: expected '<frame> minx miny minz maxx maxy maxz' ({exc})"
                ) from exc
    return boxes
