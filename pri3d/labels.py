"""Label sets shared by the datasets: NYU40 and the ScanNet 20-class benchmark.

ScanNet annotates objects with free-text raw categories; `scannetv2-labels.combined.tsv` maps each
raw category to an NYU40 id. The ScanNet semantic-segmentation benchmark evaluates 20 of the 40 NYU40
classes; everything else is ignored (label 0).
"""

from __future__ import annotations

import numpy as np

#: The label of unlabelled pixels in every label set (NYU40, ScanNet-20, the datasets' train ids):
#: the losses and the metrics ignore it.
IGNORE_INDEX = 0

#: NYU40 class names, index = NYU40 id (0 = unlabeled). Spelling as in ScanNet's label table.
NYU40_NAMES: tuple[str, ...] = (
    "unlabeled", "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow",
    "mirror", "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper",
    "towel", "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip

#: NYU40 ids of the 20 ScanNet benchmark classes, in benchmark order (benchmark id = position + 1).
SCANNET20_NYU40_IDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)

SCANNET20_NAMES: tuple[str, ...] = tuple(NYU40_NAMES[i] for i in SCANNET20_NYU40_IDS)


def nyu40_to_scannet20_lut() -> np.ndarray:
    """Lookup table [256] uint8 from NYU40 id to ScanNet-20 benchmark id (0 = ignored)."""
    lut = np.zeros(256, dtype=np.uint8)
    for benchmark_id, nyu40_id in enumerate(SCANNET20_NYU40_IDS, start=1):
        lut[nyu40_id] = benchmark_id
    return lut
