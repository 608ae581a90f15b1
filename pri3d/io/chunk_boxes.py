"""Per-frame crop boxes, ``<scene>/chunk_boxes.txt`` of a preprocessing output.

One line per exported frame, ``<frame> minx miny minz maxx maxy maxz``: the axis-aligned box of the
frame's valid world points padded by a margin (metres, world frame, 4 decimals: 0.1 mm). The
geometric prior crops the scene point cloud to it.
"""

from __future__ import annotations

import os

import numpy as np

from pri3d.io.atomic import atomic_write
from pri3d.io.text_table import expect_line, table_lines

__all__ = ["read_chunk_boxes", "write_chunk_boxes"]


def write_chunk_boxes(path: str | os.PathLike[str], frames: list[int], boxes: np.ndarray) -> None:
    """Write ``<frame> minx miny minz maxx maxy maxz`` lines (metres, 4 decimals: 0.1 mm)."""
    lines = [f"{frame} " + " ".join(f"{v:.4f}" for v in box) for frame, box in zip(frames, boxes)]
    with atomic_write(path) as file:
        file.write("".join(line + "\n" for line in lines))


def read_chunk_boxes(path: str | os.PathLike[str]) -> dict[int, np.ndarray]:
    """Read a ``chunk_boxes.txt``: frame number -> [6] float64 (min xyz, max xyz).

    Raises FileNotFoundError for a missing file and ValueError naming the file and line for a line
    that is not a frame number and 6 numbers.
    """
    boxes = {}
    for number, line in table_lines(path, "crop box file not found"):
        fields = line.split()
        with expect_line(path, number, "'<frame> minx miny minz maxx maxy maxz'"):
            if len(fields) != 7:
                raise ValueError(f"{len(fields)} fields")
            boxes[int(fields[0])] = np.array([float(v) for v in fields[1:]])
    return boxes
