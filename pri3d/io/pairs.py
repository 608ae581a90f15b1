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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pair list not found")
    pairs = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            tokens = line.split()
            if not tokens:
                continue
            try:
                if len(tokens) != 3:
                    raise ValueError(f"{len(tokens)} fields")
                (scene_i, frame_i), (scene_j, frame_j) = (_scene_frame(t) for t in tokens[:2])
                score = float(tokens[2])
            except (ValueError, IndexError) as error:
                raise ValueError(
                    f"{path}:{number}: expected '<scene>/color/<i>.jpg <scene>/color/<j>.jpg <score>' ({error})"
                ) from None
            if scene_i != scene_j:
                raise ValueError(
                    f"{path}:{number}: a pair must come from one scene, got {scene_i} and {scene_j}"
                )
            pairs.append(FramePair(scene_i, frame_i, frame_j, score))
    return pairs


def _scene_frame(token: str) -> tuple[str, int]:
    parts = Path(token).parts
    return parts[-3], int(Path(parts[-1]).stem)
