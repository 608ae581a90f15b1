"""Offline data preparation: raw datasets as downloaded -> what pre-training and fine-tuning read.

* :mod:`~pri3d.preprocess.scannet`: ScanNet raw scans -> frames, overlapping pairs, labelled scene
  clouds and chunk boxes (``pri3d preprocess scannet``), built from
* :mod:`~pri3d.preprocess.frames` (``.sens`` export, per-frame clouds, chunk boxes),
* :mod:`~pri3d.preprocess.overlap` (frame-pair overlap, exact and vectorised) and
* :mod:`~pri3d.preprocess.pointcloud` (labelled mesh vertices).

The files they write are read and written through :mod:`pri3d.io` (pairs, chunk boxes, point clouds).
"""

from pri3d.preprocess.overlap import overlap_matrix, pair_scores, voxel_downsample
from pri3d.preprocess.scannet import ScanNetOptions, preprocess_scannet

__all__ = [
    "ScanNetOptions",
    "overlap_matrix",
    "pair_scores",
    "preprocess_scannet",
    "voxel_downsample",
]
