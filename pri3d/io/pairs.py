"""Frame-pair lists: ``overlap.txt`` of a preprocessed scene and ``splits/overlap<T>.txt``.

One line per pair, ``<scene>/color/<i>.jpg <scene>/color/<j>.jpg <score>``: two frames of one scene
(raw frame numbers, no padding) and the share of their points that overlap, 6 decimals. The
original's lists name the frames ``<scene>/pcd/<i>.npz``; any path whose third-last part is the
scene and whose file stem is the frame number reads the same.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from pri3d.io.text_table import expect_line, table_lines

__all__ = ["FramePair", "pair_line", "read_pair_list"]


class FramePair(NamedTuple):
    scene: str
    frame_i: int
    frame_j: int
    score: float


def pair_line(pair: FramePair) -> str:
    """The list line of ``pair``, newline included."""
    scene, i, j, score = pair
    return f"{scene}/color/{i}.jpg {scene}/color/{j}.jpg {score:.6f}\n"


def read_pair_list(path: str | os.PathLike[str]) -> list[FramePair]:
    """Every pair of a list file, in file order (blank lines ignored; an empty file is an empty list).

    Raises FileNotFoundError for a missing file and ValueError naming the file and line for a line
    that is not ``<path_i> <path_j> <score>`` of two frames of one scene.
    """
    pairs = []
    for number, line in table_lines(path, "pair list not found"):
        tokens = line.split()
        with expect_line(path, number, "'<scene>/color/<i>.jpg <scene>/color/<j>.jpg <score>'"):
            if len(tokens) != 3:
                raise ValueError(f"{len(tokens)} fields")
            (scene_i, frame_i), (scene_j, frame_j) = (_scene_frame(t) for t in tokens[:2])
            score = float(tokens[2])
        if scene_i != scene_j:
            raise ValueError(f"{path}:{number}: a pair must come from one scene, got {scene_i} and {scene_j}")
        pairs.append(FramePair(scene_i, frame_i, frame_j, score))
    return pairs


def _scene_frame(token: str) -> tuple[str, int]:
    parts = Path(token).parts
    return parts[-3], int(Path(parts[-1]).stem)
