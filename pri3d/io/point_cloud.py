"""Scene point clouds, ``pointcloud/<scene>.npz``: written by `pri3d preprocess scannet`, read by
geometric-prior pre-training.

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

__all__ = ["POINT_CLOUD_ARRAYS", "load_point_cloud", "save_point_cloud"]

#: Array names of a saved point cloud and their dtype and per-point width (0 = one value).
POINT_CLOUD_ARRAYS: dict[str, tuple[np.dtype, int]] = {
    "points": (np.dtype(np.float32), 3),
    "colors": (np.dtype(np.uint8), 3),
    "semantic": (np.dtype(np.int32), 0),
    "instance": (np.dtype(np.int32), 0),
}


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
