"""MegaDepth files: the folder layout, dense depth maps (``.h5``) and ``scene_info/<scene>.npz``.

**Layout** under the MegaDepth root (the download, then what ``pri3d preprocess megadepth`` adds)::

    MegaDepth_v1_SfM/<scene>/images/*.jpg                    photos as downloaded (distorted)
    MegaDepth_v1_SfM/<scene>/sparse/manhattan/0/*.bin        COLMAP model (cameras with distortion)
    MegaDepth_v1/<scene>/dense0/imgs/*.jpg                   undistorted images of the MVS
    MegaDepth_v1/<scene>/dense0/depths/<stem>.h5             their depth maps
    Undistorted_SfM/<scene>/{images,sparse}/                 written by preprocessing (COLMAP's undistortion)
    scene_info/<scene>.npz                                   written by preprocessing

**Depth.** ``MegaDepth_v1/<scene>/dense0/depths/<stem>.h5`` holds one float dataset ``/depth``
[H, W]: z-depth along the camera axis in the scene's SfM units (COLMAP's arbitrary scale, not
metres), aligned pixel for pixel with the undistorted image of that name; 0 = no depth. Some of
these files are not depth but masks. The original drops files under 100 KB as masks, which only
works at MegaDepth's image sizes; pri3d reads the values instead (:func:`is_mask`): MVS depth in SfM
units is never integer-valued, a mask is (0/1, or label ids).

**scene_info.** One ``.npz`` per scene with the fields of the original's preprocessing (D2-Net's
``preprocess_scene.py``) and their definitions (N images of the undistorted model, image id order):

=======================  ==================  ====================================================
key                      shape / dtype       meaning
=======================  ==================  ====================================================
image_paths              [N] str             ``Undistorted_SfM/<scene>/images/<name>``, relative to
                                             the MegaDepth root; '' when the image is unusable
depth_paths              [N] str             ``MegaDepth_v1/<scene>/dense0/depths/<stem>.h5``; ''
                                             when there is no usable depth (original: None)
intrinsics               [N, 3, 3] float64   K of the undistorted PINHOLE camera, COLMAP convention
                                             (pixel centres at +0.5; see :mod:`pri3d.io.colmap`)
poses                    [N, 4, 4] float64   world-to-camera
overlap_matrix           [N, N] float64      |common 3D points| / |3D points of image i| (directional);
                                             -1 on the diagonal and for unusable images
scale_ratio_matrix       [N, N] float64      min over common points of max(nd_i / nd_j, nd_j / nd_i);
                                             -1 where there is no common point
angles                   [N, N] float64      degrees between the two cameras' principal axes
n_points3D               int                 3D points in the model
=======================  ==================  ====================================================

and the observations: for image i, the 3D points it observes with the keypoint's COLMAP (x, y) and
the point's normalised depth nd = z_camera / mean focal ((fx + fy) / 2). The original stores them as
two object arrays of per-image dicts (``points3D_id_to_2D``: {id: [x, y]},
``points3D_id_to_ndepth``: {id: nd}), readable only by unpickling. pri3d writes them as plain arrays
in CSR form: ``points3D_indptr`` [N + 1] int64; image i's entries are rows
``indptr[i]:indptr[i + 1]`` of ``points3D_ids`` [nnz] int64 (ascending per image), ``points3D_xy``
[nnz, 2] float64 and ``points3D_ndepth`` [nnz] float64; plus ``pri3d_scene_info`` (format version,
int). :func:`read_scene_info` reads both forms into the same :class:`SceneInfo`.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pri3d.io.atomic import atomic_write

__all__ = [
    "DENSE_FOLDER",
    "DEPTH_DATASET",
    "SCENE_INFO_FOLDER",
    "SCENE_INFO_VERSION",
    "SCENE_INFO_VERSION_KEY",
    "SFM_FOLDER",
    "UNDISTORTED_FOLDER",
    "SceneInfo",
    "depth_path",
    "image_path",
    "is_mask",
    "read_depth",
    "read_scene_info",
    "write_scene_info",
]

SFM_FOLDER = "MegaDepth_v1_SfM"
DENSE_FOLDER = "MegaDepth_v1"
UNDISTORTED_FOLDER = "Undistorted_SfM"
SCENE_INFO_FOLDER = "scene_info"
#: The dataset inside a MegaDepth depth file.
DEPTH_DATASET = "depth"
#: Version of pri3d's plain scene_info layout, stored under ``pri3d_scene_info``.
SCENE_INFO_VERSION = 1
#: The key of that version: a file without it is the original's (pickled) layout.
SCENE_INFO_VERSION_KEY = "pri3d_scene_info"
_MATRICES = ("overlap_matrix", "scale_ratio_matrix", "angles")


def image_path(scene: str, name: str) -> str:
    """Root-relative path of an undistorted image, as scene_info stores it."""
    return f"{UNDISTORTED_FOLDER}/{scene}/images/{name}"


def depth_path(scene: str, name: str) -> str:
    """Root-relative path of the depth map of image ``name`` (its file stem + ``.h5``)."""
    return f"{DENSE_FOLDER}/{scene}/dense0/depths/{Path(name).stem}.h5"


def _open_depth(path: Path):
    import h5py  # imported here: reading scene_info must not need it

    if not path.is_file():
        raise FileNotFoundError(f"{path}: depth file not found")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not a readable HDF5 file ({error})") from None
    dataset = file.get(DEPTH_DATASET)
    if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 2 or 0 in dataset.shape:
        what = f"shape {dataset.shape}" if isinstance(dataset, h5py.Dataset) else f"datasets {sorted(file)}"
        file.close()
        raise ValueError(f"{path}: expected a non-empty 2-D dataset /{DEPTH_DATASET}, found {what}")
    if not (np.issubdtype(dataset.dtype, np.number) or dataset.dtype == bool):
        file.close()
        raise ValueError(f"{path}: /{DEPTH_DATASET} holds {dataset.dtype}, expected numbers")
    return file, dataset


def read_depth(
    path: str | os.PathLike[str],
    window: tuple[int, int, int, int] | None = None,
    raw: bool = False,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """The ``/depth`` dataset of a MegaDepth ``.h5`` file as float32 [H, W].

    window: (top, left, height, width) reads only that part (top, left >= 0; a window reaching past
    the bottom or right edge gives the part inside the map; h5py reads just those rows). shape:
    the (H, W) the whole map must have (its image's), checked from the header in the same opening.
    Values that are not finite and > 0 become 0, pri3d's invalid depth, unless ``raw`` (the stored
    values, e.g. to test :func:`is_mask`). Raises FileNotFoundError / ValueError naming the file.
    """
    path = Path(path)
    file, dataset = _open_depth(path)
    with file:
        if shape is not None and dataset.shape != tuple(shape):
            raise ValueError(f"{path}: depth map is {dataset.shape} (H, W), its image {tuple(shape)}")
        if window is None:
            values = dataset[()]
        else:
            top, left, height, width = window
            if top < 0 or left < 0:
                raise ValueError(f"{path}: depth window {window} starts outside the map")
            values = dataset[top : top + height, left : left + width]
    if raw:
        return values
    depth = values.astype(np.float32)
    depth[~(np.isfinite(depth) & (depth > 0))] = 0.0
    return depth


def is_mask(values: np.ndarray) -> bool:
    """Whether a MegaDepth "depth" file's raw values are a mask rather than depth.

    True for integer or boolean data and for float data whose finite values are all whole numbers
    (0/1 masks, label ids, and an all-zero map that has no depth at all). MVS depth in SfM units is
    a continuous float: an image's worth of it is never all whole numbers.
    """
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        return True
    finite = values[np.isfinite(values)]
    return bool(np.all(finite == np.round(finite)))


@dataclass
class SceneInfo:
    """A scene's ``scene_info`` in memory (see the module docstring for every field)."""

    image_paths: np.ndarray  # [N] str, '' = unusable
    depth_paths: np.ndarray  # [N] str, '' = no usable depth
    intrinsics: np.ndarray  # [N, 3, 3] COLMAP convention
    poses: np.ndarray  # [N, 4, 4] world-to-camera
    overlap_matrix: np.ndarray  # [N, N]
    scale_ratio_matrix: np.ndarray  # [N, N]
    angles: np.ndarray  # [N, N] degrees
    n_points3D: int
    points3D_indptr: np.ndarray  # [N + 1] int64
    points3D_ids: np.ndarray  # [nnz] int64
    points3D_xy: np.ndarray  # [nnz, 2] COLMAP (x, y)
    points3D_ndepth: np.ndarray  # [nnz]

    @property
    def num_images(self) -> int:
        return len(self.image_paths)

    @property
    def usable(self) -> np.ndarray:
        """[N] bool: images with both an image and a depth path (the ones pairs are drawn from)."""
        return (self.image_paths != "") & (self.depth_paths != "")

    def observations(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image i's observed 3D point ids [M], their keypoints [M, 2] (COLMAP x, y) and normalised depths [M]."""
        rows = slice(self.points3D_indptr[i], self.points3D_indptr[i + 1])
        return self.points3D_ids[rows], self.points3D_xy[rows], self.points3D_ndepth[rows]

    def check(self, source: str) -> None:
        """Raise ValueError naming ``source`` when the arrays do not fit together."""
        n = self.num_images
        nnz = len(self.points3D_ids)
        expected = {
            "image_paths": (self.image_paths, (n,)),
            "depth_paths": (self.depth_paths, (n,)),
            "intrinsics": (self.intrinsics, (n, 3, 3)),
            "poses": (self.poses, (n, 4, 4)),
            **{name: (getattr(self, name), (n, n)) for name in _MATRICES},
            "points3D_indptr": (self.points3D_indptr, (n + 1,)),
            "points3D_xy": (self.points3D_xy, (nnz, 2)),
            "points3D_ndepth": (self.points3D_ndepth, (nnz,)),
        }
        for key, (array, shape) in expected.items():
            if array.shape != shape:
                raise ValueError(
                    f"{source}: {key} has shape {list(array.shape)}, expected {list(shape)} for {n} images"
                )
        indptr = self.points3D_indptr
        if n and (indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0)):
            raise ValueError(f"{source}: points3D_indptr is not a CSR index of {nnz} observations")


def write_scene_info(path: str | os.PathLike[str], info: SceneInfo) -> None:
    """Write ``info`` in pri3d's plain layout (no pickled objects), atomically."""
    path = Path(path)
    info.check(str(path))
    arrays = {
        SCENE_INFO_VERSION_KEY: np.int64(SCENE_INFO_VERSION),
        "image_paths": np.asarray(info.image_paths, dtype=str),
        "depth_paths": np.asarray(info.depth_paths, dtype=str),
        "intrinsics": info.intrinsics.astype(np.float64),
        "poses": info.poses.astype(np.float64),
        **{name: getattr(info, name).astype(np.float64) for name in _MATRICES},
        "n_points3D": np.int64(info.n_points3D),
        "points3D_indptr": info.points3D_indptr.astype(np.int64),
        "points3D_ids": info.points3D_ids.astype(np.int64),
        "points3D_xy": info.points3D_xy.astype(np.float64),
        "points3D_ndepth": info.points3D_ndepth.astype(np.float64),
    }
    with atomic_write(path, "wb") as file:
        np.savez_compressed(file, **arrays)


def read_scene_info(path: str | os.PathLike[str]) -> SceneInfo:
    """Read a ``scene_info/<scene>.npz``, pri3d's layout or the original's.

    pri3d's files are read without unpickling. The original's store Python dicts and None values in
    object arrays, which numpy can only restore by unpickling; a pickle can run code, so this is done
    only for a file without pri3d's version key, i.e. one the original's preprocessing wrote. Raises
    FileNotFoundError / ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: scene_info file not found (run `pri3d preprocess megadepth`)")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array, expected a scene_info .npz archive")
    try:
        with npz:
            info = _read_plain(path, npz) if SCENE_INFO_VERSION_KEY in npz.files else _read_legacy(path)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:  # a truncated or damaged member
        raise ValueError(f"{path}: damaged .npz file ({type(error).__name__}: {error})") from None
    info.check(str(path))
    return info


def _require(path: Path, files: list[str], keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in files]
    if missing:
        raise ValueError(f"{path}: scene_info lacks {', '.join(missing)}")


def _read_plain(path: Path, npz) -> SceneInfo:
    version = int(npz[SCENE_INFO_VERSION_KEY])
    if version != SCENE_INFO_VERSION:
        raise ValueError(
            f"{path}: scene_info format version {version}, this pri3d reads version {SCENE_INFO_VERSION}"
        )
    keys = ("image_paths", "depth_paths", "intrinsics", "poses", *_MATRICES, "n_points3D")
    csr = ("points3D_indptr", "points3D_ids", "points3D_xy", "points3D_ndepth")
    _require(path, npz.files, keys + csr)
    return SceneInfo(
        image_paths=npz["image_paths"].astype(str),
        depth_paths=npz["depth_paths"].astype(str),
        intrinsics=npz["intrinsics"],
        poses=npz["poses"],
        overlap_matrix=npz["overlap_matrix"],
        scale_ratio_matrix=npz["scale_ratio_matrix"],
        angles=npz["angles"],
        n_points3D=int(npz["n_points3D"]),
        points3D_indptr=npz["points3D_indptr"],
        points3D_ids=npz["points3D_ids"],
        points3D_xy=npz["points3D_xy"].reshape(-1, 2),
        points3D_ndepth=npz["points3D_ndepth"],
    )


def _read_legacy(path: Path) -> SceneInfo:
    with np.load(path, allow_pickle=True) as npz:  # the original's object arrays: see read_scene_info
        keys = ("image_paths", "depth_paths", "intrinsics", "poses", *_MATRICES, "n_points3D")
        _require(path, npz.files, (*keys, "points3D_id_to_2D", "points3D_id_to_ndepth"))
        fields = {key: npz[key] for key in npz.files}
    n = len(fields["image_paths"])
    try:
        ids, xy, ndepth = [], [], []
        for i in range(n):
            points = fields["points3D_id_to_2D"][i] or {}  # None or a dict {point3D_id: [x, y]}
            depths = fields["points3D_id_to_ndepth"][i] or {}  # {point3D_id: nd}
            image_ids = np.array(sorted(points), dtype=np.int64)
            ids.append(image_ids)
            xy.append(np.array([points[k] for k in image_ids], dtype=np.float64).reshape(-1, 2))
            ndepth.append(np.array([depths[k] for k in image_ids], dtype=np.float64))
        return SceneInfo(
            image_paths=np.array(["" if p is None else str(p) for p in fields["image_paths"]], dtype=str),
            depth_paths=np.array(["" if p is None else str(p) for p in fields["depth_paths"]], dtype=str),
            intrinsics=np.array(list(fields["intrinsics"]), dtype=np.float64),
            poses=np.array(list(fields["poses"]), dtype=np.float64),
            **{name: fields[name].astype(np.float64) for name in _MATRICES},
            n_points3D=int(fields["n_points3D"]),
            points3D_indptr=np.concatenate([[0], np.cumsum([len(k) for k in ids])]).astype(np.int64),
            points3D_ids=np.concatenate([np.zeros(0, np.int64), *ids]),
            points3D_xy=np.concatenate([np.zeros((0, 2)), *xy]),
            points3D_ndepth=np.concatenate([np.zeros(0), *ndepth]),
        )
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise ValueError(
            f"{path}: not the original's scene_info layout ({type(error).__name__}: {error})"
        ) from None
