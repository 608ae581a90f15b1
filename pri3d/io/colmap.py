"""COLMAP sparse models (``cameras``, ``images``, ``points3D``, binary or text) through pycolmap.

:func:`read_model` turns a model folder into plain numpy arrays per image: name, size, the 3×3 K of
its PINHOLE camera, the 4×4 world-to-camera pose and its observations (3D point id, keypoint xy).
Values are COLMAP's, unconverted, so that files derived from them (MegaDepth's ``scene_info``) keep
the original's definitions.

**Pixel convention.** COLMAP puts the centre of the top-left pixel at (0.5, 0.5): a keypoint (x, y)
lies in pixel column floor(x), row floor(y), and K maps camera points to such coordinates. pri3d
puts pixel centres at integers (:mod:`pri3d.geometry`). The two conversions below are the only
place where one becomes the other: :func:`colmap_to_pri3d_intrinsics` (cx, cy move by -0.5) and
:func:`colmap_xy_to_rowcol` ((x, y) -> (row, col) = (y - 0.5, x - 0.5)). A keypoint's nearest pri3d
pixel is then floor(row + 0.5) = floor(y), the pixel COLMAP puts it in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ColmapImage",
    "ColmapModel",
    "colmap_to_pri3d_intrinsics",
    "colmap_xy_to_rowcol",
    "pinhole_intrinsics",
    "read_model",
]

#: Camera models whose K describes the camera completely (what COLMAP's undistortion writes).
PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")


@dataclass(frozen=True)
class ColmapImage:
    """One registered image of a model, in COLMAP's conventions.

    intrinsics [3, 3] (None unless the camera is PINHOLE or SIMPLE_PINHOLE); world_to_camera [4, 4];
    point3D_ids [M] int64 and xy [M, 2] float64: the keypoints that observe a 3D point, in keypoint order.
    """

    image_id: int
    name: str
    camera_id: int
    camera_model: str
    width: int
    height: int
    intrinsics: np.ndarray | None
    world_to_camera: np.ndarray
    point3D_ids: np.ndarray
    xy: np.ndarray


@dataclass(frozen=True)
class ColmapModel:
    """The registered images sorted by image id; point3D_ids [P] int64 (sorted) with their world xyz [P, 3]."""

    images: list[ColmapImage]
    point3D_ids: np.ndarray
    xyz: np.ndarray

    def point_xyz(self, ids: np.ndarray) -> np.ndarray:
        """World positions [len(ids), 3] of 3D points by id (every id must exist in the model)."""
        rows = np.searchsorted(self.point3D_ids, ids)
        if len(ids) and (rows.max() >= len(self.point3D_ids) or (self.point3D_ids[rows] != ids).any()):
            raise ValueError("an observation names a 3D point that is not in points3D")
        return self.xyz[rows]


def pinhole_intrinsics(model_name: str, params: np.ndarray) -> np.ndarray | None:
    """K [3, 3] (COLMAP convention) of a PINHOLE (fx, fy, cx, cy) or SIMPLE_PINHOLE (f, cx, cy)
    camera; None for a camera with distortion, whose K alone does not describe it."""
    if model_name == "PINHOLE":
        fx, fy, cx, cy = params
    elif model_name == "SIMPLE_PINHOLE":
        fx, cx, cy = params
        fy = fx
    else:
        return None
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def read_model(folder: str | os.PathLike[str]) -> ColmapModel:
    """Read the COLMAP model in ``folder`` (``*.bin`` or ``*.txt``; pycolmap picks).

    Raises FileNotFoundError for a folder without a model and ValueError naming the folder for a model
    pycolmap cannot parse (a truncated file) or one whose observations name missing 3D points.
    """
    import pycolmap  # imported here: reading other formats must not need it

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: COLMAP model folder not found")
    try:
        reconstruction = pycolmap.Reconstruction(folder)
    except (ValueError, IndexError, RuntimeError) as error:
        raise ValueError(f"{folder}: not a readable COLMAP model ({error})") from None
    point3D_ids = np.array(sorted(reconstruction.point3D_ids()), dtype=np.int64)
    xyz = np.array([reconstruction.point3D(int(i)).xyz for i in point3D_ids], dtype=np.float64).reshape(-1, 3)
    invalid = pycolmap.INVALID_POINT3D_ID
    images = []
    for image_id in sorted(reconstruction.reg_image_ids()):  # images with a pose
        image = reconstruction.image(image_id)
        camera = image.camera
        pose = np.eye(4)
        pose[:3] = image.cam_from_world().matrix()
        points2D = [p for p in image.points2D if p.point3D_id != invalid]
        images.append(
            ColmapImage(
                image_id=int(image_id),
                name=image.name,
                camera_id=int(image.camera_id),
                camera_model=camera.model_name,
                width=int(camera.width),
                height=int(camera.height),
                intrinsics=pinhole_intrinsics(camera.model_name, np.asarray(camera.params)),
                world_to_camera=pose,
                point3D_ids=np.array([p.point3D_id for p in points2D], dtype=np.int64),
                xy=np.array([p.xy for p in points2D], dtype=np.float64).reshape(-1, 2),
            )
        )
    model = ColmapModel(images=images, point3D_ids=point3D_ids, xyz=xyz)
    for image in images:
        try:
            model.point_xyz(image.point3D_ids)
        except ValueError as error:
            raise ValueError(f"{folder}: image {image.name!r}: {error}") from None
    return model


def colmap_to_pri3d_intrinsics(K: np.ndarray) -> np.ndarray:
    """K [..., 3, 3] in COLMAP's convention -> pri3d's (integer pixel centres): cx, cy minus 0.5."""
    out = np.array(K, dtype=np.float64, copy=True)
    out[..., 0, 2] -= 0.5
    out[..., 1, 2] -= 0.5
    return out


def colmap_xy_to_rowcol(xy: np.ndarray) -> np.ndarray:
    """COLMAP keypoints [..., 2] (x, y) -> pri3d continuous (row, col) = (y - 0.5, x - 0.5)."""
    xy = np.asarray(xy, dtype=np.float64)
    return np.stack((xy[..., 1] - 0.5, xy[..., 0] - 0.5), axis=-1)
