"""A tiny MegaDepth-layout scene built with pycolmap, with geometry known in closed form.

The world is the ground plane z = 0 seen from above by cameras with radial distortion and different
image sizes. 3D points lie on the plane; a point's keypoint in image i is its projection through that
image's distorted camera; the dense depth of an image is the exact distance along the undistorted
camera's axis to the plane, for the undistorted camera COLMAP's undistorter makes from the distorted
one. So keypoints, depths and overlaps can be checked against direct computations.

Quirks of real MegaDepth put in on purpose (by image index): ``GRAYSCALE`` is a one-channel photo,
``MASK`` has a 0/1 mask as its depth file, ``NO_DEPTH`` has no depth file.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pycolmap
from PIL import Image

GRAYSCALE, MASK, NO_DEPTH = 1, 2, 3


@dataclass
class TinyScene:
    points: np.ndarray  # [P, 3] world, on z = 0
    point_ids: np.ndarray  # [P] their COLMAP ids
    names: list[str]
    world_to_camera: list[np.ndarray]  # [4, 4]
    distorted: list[pycolmap.Camera]
    undistorted: list[pycolmap.Camera]  # PINHOLE, as COLMAP's undistortion makes them
    visible: list[np.ndarray]  # per image, [P] bool: the point projects inside the distorted image


def _pose(index: int, rng: np.random.Generator) -> np.ndarray:
    """World-to-camera of a camera ~6 units above the plane, looking down, slightly tilted."""
    centre = np.array([1.2 * index - 2.4, 0.8 * (index % 3) - 0.8, 6.0]) + rng.normal(0, 0.05, 3)
    look_down = np.diag([1.0, -1.0, -1.0])  # camera z = world -z, camera y = world -y
    tilt = pycolmap.Rotation3d(rng.normal(0, 0.05, 3)).matrix()
    rotation = tilt @ look_down  # world -> camera
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = -rotation @ centre
    return pose


def plane_depth(camera: pycolmap.Camera, world_to_camera: np.ndarray) -> np.ndarray:
    """[H, W] camera z of the plane z = 0 at every pixel centre of a PINHOLE camera (0 where the
    plane is behind the camera)."""
    h, w = camera.height, camera.width
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    xy = np.stack((cols + 0.5, rows + 0.5), -1).reshape(-1, 2)  # COLMAP pixel centres
    rays = np.concatenate([camera.cam_from_img(xy), np.ones((h * w, 1))], 1)  # [H*W, 3], z = 1
    rotation, translation = world_to_camera[:3, :3], world_to_camera[:3, 3]
    centre = -rotation.T @ translation
    world_rays = rays @ rotation  # R^T d per row
    z = -centre[2] / world_rays[:, 2]  # ray parameter = camera z, since d has z = 1
    return np.where(z > 0, z, 0.0).reshape(h, w).astype(np.float32)


def write_tiny_scene(
    root: Path, scene: str = "0001", images: int = 5, points: int = 300, seed: int = 0
) -> TinyScene:
    """Write ``MegaDepth_v1_SfM/<scene>`` and ``MegaDepth_v1/<scene>/dense0`` under ``root``."""
    rng = np.random.default_rng(seed)
    sfm = root / "MegaDepth_v1_SfM" / scene
    dense = root / "MegaDepth_v1" / scene / "dense0"
    for folder in (sfm / "images", sfm / "sparse" / "manhattan" / "0", dense / "imgs", dense / "depths"):
        folder.mkdir(parents=True, exist_ok=True)
    xyz = np.concatenate([rng.uniform(-6, 6, (points, 2)), np.zeros((points, 1))], 1)
    reconstruction = pycolmap.Reconstruction()
    tiny = TinyScene(xyz, np.zeros(points, np.int64), [], [], [], [], [])
    keypoints = []
    for i in range(images):
        width, height = 80 + 8 * i, 60 + 4 * (i % 2)
        camera = pycolmap.Camera(
            model="RADIAL",
            width=width,
            height=height,
            params=[45.0 + 3 * i, width / 2 + 1.3, height / 2 - 0.7, 0.08, -0.02],
            camera_id=i + 1,
        )
        pose = _pose(i, rng)
        camera_points = xyz @ pose[:3, :3].T + pose[:3, 3]
        xy = camera.img_from_cam(camera_points)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
        name = f"photo_{i:03d}.jpg"
        reconstruction.add_camera_with_trivial_rig(camera)
        image = pycolmap.Image(name=name, keypoints=xy[inside], camera_id=i + 1, image_id=i + 1)
        reconstruction.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pose[:3]))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        if i == GRAYSCALE:
            Image.fromarray(pixels[..., 0]).save(sfm / "images" / name)
        else:
            Image.fromarray(pixels).save(sfm / "images" / name)
        options = pycolmap.UndistortCameraOptions()
        tiny.names.append(name)
        tiny.world_to_camera.append(pose)
        tiny.distorted.append(camera)
        tiny.undistorted.append(pycolmap.undistort_camera(options, camera))
        tiny.visible.append(inside)
        keypoints.append(np.flatnonzero(inside))
    for p in range(points):
        track = pycolmap.Track()
        seen = [i for i in range(images) if tiny.visible[i][p]]
        if len(seen) < 2:
            continue
        for i in seen:
            track.add_element(i + 1, int(np.searchsorted(keypoints[i], p)))
        point_id = reconstruction.add_point3D(xyz[p], track)
        tiny.point_ids[p] = point_id
        for i in seen:
            reconstruction.image(i + 1).set_point3D_for_point2D(
                int(np.searchsorted(keypoints[i], p)), point_id
            )
    reconstruction.write_binary(sfm / "sparse" / "manhattan" / "0")
    for i, name in enumerate(tiny.names):
        camera = tiny.undistorted[i]
        Image.new("RGB", (camera.width, camera.height)).save(dense / "imgs" / name)
        if i == NO_DEPTH:
            continue
        depth = plane_depth(camera, tiny.world_to_camera[i])
        if i == MASK:
            depth = (depth > 0).astype(np.float32)
        with h5py.File(dense / "depths" / f"{Path(name).stem}.h5", "w") as file:
            file["depth"] = depth
    return tiny


def copy_scene(root: Path, scene: str, new: str) -> None:
    """A second scene with the same content (for multi-scene runs)."""
    for folder in ("MegaDepth_v1_SfM", "MegaDepth_v1"):
        shutil.copytree(root / folder / scene, root / folder / new)
