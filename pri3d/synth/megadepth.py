"""Generated MegaDepth data: landmark photos, their COLMAP model and MVS depth, in MegaDepth's layout.

Output under `out` (MegaDepth's download layout; scene names are 4-digit numbers as MegaDepth's)::

    synth_settings.json                                     the generator settings (a re-run must match)
    MegaDepth_v1_SfM/<scene>/images/<name>.jpg              distorted photos (a few single-channel)
    MegaDepth_v1_SfM/<scene>/sparse/manhattan/0/{cameras,images,points3D}.bin
    MegaDepth_v1/<scene>/dense0/imgs/<name>.jpg             undistorted images (PINHOLE)
    MegaDepth_v1/<scene>/dense0/depths/<stem>.h5            dataset /depth: float32 z-depth, 0 = invalid

**Cameras.** One COLMAP camera per image, `RADIAL` (f, cx, cy, k1, k2) or `SIMPLE_RADIAL` (f, cx, cy,
k), sizes and focal lengths that differ between images (landscape and portrait, longest side between
half of and `max_size`). A camera-frame point (x, y, z) lands on the image at
``(u, v) = f · (1 + k1 r² + k2 r⁴) · (x/z, y/z) + (cx, cy)`` with ``r² = (x/z)² + (y/z)²``, in
**COLMAP's pixel convention: the centre of the top-left pixel is (0.5, 0.5)**, so pixel (row, col) of
`pri3d.geometry` is at (u, v) = (col + 0.5, row + 0.5). Keypoints (`Point2D.xy`) are these exact
distorted projections; photos are rendered by casting, for every pixel centre, the ray of its
undistorted normalised position (`undistort_normalized`).

**Model.** `sparse/manhattan/0` is a COLMAP binary model written by pycolmap: cameras, images with
their world-to-camera pose (`cam_from_world`) and 2D keypoints (those with a `point3D_id`, plus about
a fifth more without one, as detected features that were never triangulated), and 3D points with
colour and tracks of at least two observations. A 3D point is a surface point seen at a random
position of one photo; an image observes it when it projects inside the image and the ray through it
hits nothing nearer (the renderer's depth along that ray equals the point's z). The model holds only
these three files: MegaDepth's models predate COLMAP's `rigs.bin` / `frames.bin`, and COLMAP reads a
model without them as one trivial rig and frame per camera and image.

**Units.** SfM models have an arbitrary scale: each scene's world is the rendered one (metres) times a
random `sfm_units_per_metre` in [0.25, 4] (`scene_scale`), applied to the points, the camera
translations and the depth maps alike.

**Dense output.** MegaDepth's `dense0` images and depth maps are those of COLMAP's undistorted
images. Here each image's undistorted camera is exactly the one COLMAP computes
(`pycolmap.undistort_camera` with default options: a PINHOLE camera with the original focal length,
the principal point at the centre of a width × height that keeps the valid undistorted area), and
`imgs/<name>.jpg` and `depths/<stem>.h5` are rendered directly for that camera at its pixel centres:
depth is exact (no noise); sky, and surfaces farther than `MAX_DEPTH_METRES`, are 0. No undistorted camera is larger than its scene's largest
dense image, so undistorting `images/` + the model with COLMAP (as the original's
`undistort_reconstructions.py`, `--max_image_size` = the largest dimension in `dense0/imgs`)
reproduces these cameras and pixel grids exactly: the depth maps align with those images.

**Masks.** As in MegaDepth, a few `depths/*.h5` files are masks, not depth: `/depth` holds only the
values 0 and 1 (here float32, 1 where the pixel shows the landmark). Real depth maps are continuous,
so "every value is 0 or 1" tells a mask from a depth map at any image size (the original's rule,
file size under 100 KB, flags every small depth map).

Scenes are seeded by (seed, scene index), written to `.partial/<scene>/` and moved into place when
complete; a re-run skips finished scenes and redoes unfinished ones. The output does not depend on
the number of workers.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import pycolmap
from PIL import Image

from pri3d.io.colmap import colmap_to_pri3d_intrinsics
from pri3d.io.images import write_jpeg
from pri3d.io.megadepth import DENSE_FOLDER, DEPTH_DATASET, SFM_FOLDER
from pri3d.synth.landmark import Landmark, landmark_scene, photo_pose
from pri3d.synth.outdoor import OutdoorScene, pinhole_rays, render_rays
from pri3d.synth.settings import check_and_record_settings

MODEL_SUBDIR = Path("sparse") / "manhattan" / "0"
#: COLMAP's model files; pycolmap also writes rigs.bin and frames.bin, which MegaDepth's models lack.
MODEL_FILES = ("cameras.bin", "images.bin", "points3D.bin")
#: Newton's method stops when no step exceeds this fraction of the undistorted radius (~45 ulp).
NEWTON_RELATIVE_STEP = 1e-14
NEWTON_MAX_ITERATIONS = 50
#: A point is seen when the depth along its ray agrees with its z to this fraction (exact geometry;
#: a nearer occluder differs by far more).
VISIBILITY_RELATIVE_TOLERANCE = 1e-6
UNTRIANGULATED_SHARE = 0.2
#: Farthest surface (z, metres) with MVS depth or SfM points; the ground beyond, out towards the
#: horizon, stays invalid as MVS leaves far, grazing surfaces empty.
MAX_DEPTH_METRES = 300.0


@dataclass
class MegaDepthSynthConfig:
    """Generator settings (sizes in pixels)."""

    scenes: int = 3
    images: int = 150  # photos per scene
    seed: int = 0
    max_size: int = 320  # longest side of the largest photos; the smallest have half of it
    points_per_image: int = 40  # 3D point candidates seeded on each photo's visible surfaces
    grayscale_fraction: float = 0.05  # photos stored as single-channel JPEG (at least one when > 0)
    mask_fraction: float = 0.05  # depth files that are masks (at least one when > 0)
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        checks = {
            "scenes": self.scenes >= 1,
            "images": self.images >= 2,
            "max_size": self.max_size >= 32,
            "points_per_image": self.points_per_image >= 1,
            "grayscale_fraction": 0 <= self.grayscale_fraction <= 1,
            "mask_fraction": 0 <= self.mask_fraction < 1,
            "jpeg_quality": 1 <= self.jpeg_quality <= 100,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid synth megadepth option {bad[0]}={getattr(self, bad[0])!r}")


def scene_name(index: int) -> str:
    return f"{index:04d}"


# ---------------------------------------------------------------------------------------------- cameras


def radial_params(camera: pycolmap.Camera) -> tuple[float, float, float, float, float]:
    """(f, cx, cy, k1, k2) of a RADIAL or SIMPLE_RADIAL camera (k2 = 0 for SIMPLE_RADIAL)."""
    params = [float(p) for p in camera.params]
    if camera.model_name == "SIMPLE_RADIAL":
        return (*params, 0.0)  # type: ignore[return-value]
    if camera.model_name == "RADIAL":
        return tuple(params)  # type: ignore[return-value]
    raise ValueError(f"camera {camera.camera_id}: expected RADIAL or SIMPLE_RADIAL, got {camera.model_name}")


def photo_camera(rng: np.random.Generator, max_size: int, camera_id: int) -> pycolmap.Camera:
    """A random photo camera: size, focal length and radial distortion as consumer cameras have.

    The longest side is drawn from [max_size / 2, max_size]; the shape is 4:3 or 3:2, landscape or
    portrait; the field of view along the longest side is 35-70°; the principal point is the image
    centre (COLMAP keeps it there). Distortion is redrawn until the model is invertible over the
    image with margin (`_invertible`).
    """
    longest = int(rng.integers(max_size // 2, max_size + 1))
    ratio = (4 / 3, 3 / 2)[int(rng.random() < 0.3)]
    shorter = round(longest / ratio)
    width, height = (longest, shorter) if rng.random() < 0.7 else (shorter, longest)
    focal = 0.5 * longest / np.tan(np.deg2rad(rng.uniform(35.0, 70.0)) / 2)
    corner = np.hypot(width, height) / (2 * focal)  # largest distorted radius in the image
    simple = rng.random() < 0.3
    while True:
        k1 = rng.uniform(-0.15, 0.08)
        k2 = 0.0 if simple else rng.uniform(-0.04, 0.04)
        if _invertible(k1, k2, corner):
            break
    params = [focal, width / 2, height / 2, k1] if simple else [focal, width / 2, height / 2, k1, k2]
    return pycolmap.Camera(
        model="SIMPLE_RADIAL" if simple else "RADIAL",
        width=width,
        height=height,
        params=params,
        camera_id=camera_id,
    )


def _invertible(k1: float, k2: float, max_radius: float) -> bool:
    """Whether r -> r (1 + k1 r² + k2 r⁴) rises steeply (slope > 0.3) until it passes 1.5 × max_radius.

    Then every distorted radius in the image, and a margin beyond, has exactly one undistorted radius,
    which Newton's method started at r_d finds.
    """
    r = np.linspace(0.0, 3.0 * max_radius, 600)
    value = r * (1 + k1 * r**2 + k2 * r**4)
    slope = 1 + 3 * k1 * r**2 + 5 * k2 * r**4
    beyond = np.flatnonzero(value > 1.5 * max_radius)
    return len(beyond) > 0 and bool(np.all(slope[: beyond[0] + 1] > 0.3))


def distort_normalized(camera: pycolmap.Camera, xy: np.ndarray) -> np.ndarray:
    """COLMAP image coordinates [M, 2] (u, v) of normalised camera coordinates xy [M, 2] = (x/z, y/z)."""
    f, cx, cy, k1, k2 = radial_params(camera)
    r2 = (xy**2).sum(-1, keepdims=True)
    return f * xy * (1 + k1 * r2 + k2 * r2**2) + np.array([cx, cy])


def undistort_normalized(camera: pycolmap.Camera, uv: np.ndarray) -> np.ndarray:
    """Normalised undistorted coordinates [..., 2] (x/z, y/z) of COLMAP image coordinates uv [..., 2].

    The radial model scales a normalised point by 1 + k1 r² + k2 r⁴, so only its radius changes:
    Newton's method solves r_u (1 + k1 r_u² + k2 r_u⁴) = r_d from r_u = r_d, in float64, and stops
    when every step is at most `NEWTON_RELATIVE_STEP` × r_u (a few dozen ulp: float64 precision;
    the quadratic convergence gets there in a handful of steps for the cameras `photo_camera` draws).
    """
    f, cx, cy, k1, k2 = radial_params(camera)
    distorted = (uv - np.array([cx, cy])) / f
    r_d = np.hypot(distorted[..., 0], distorted[..., 1])
    r_u = r_d.copy()
    for _ in range(NEWTON_MAX_ITERATIONS):
        r2 = r_u * r_u
        step = (r_u * (1 + k1 * r2 + k2 * r2 * r2) - r_d) / (1 + 3 * k1 * r2 + 5 * k2 * r2 * r2)
        r_u -= step
        if np.all(np.abs(step) <= NEWTON_RELATIVE_STEP * r_u):
            break
    else:
        raise RuntimeError(
            f"camera {camera.camera_id}: radial undistortion did not converge in {NEWTON_MAX_ITERATIONS} steps"
        )
    scale = np.divide(r_u, r_d, out=np.ones_like(r_d), where=r_d > 0)
    return distorted * scale[..., None]


def image_rays(camera: pycolmap.Camera) -> np.ndarray:
    """Undistorted camera-frame rays [H, W, 3] (z = 1) through the centres of a distorted image's pixels."""
    rows, cols = np.mgrid[0 : camera.height, 0 : camera.width]
    uv = np.stack([cols + 0.5, rows + 0.5], -1).astype(np.float64)  # COLMAP's pixel convention
    xy = undistort_normalized(camera, uv)
    return np.concatenate([xy, np.ones((*xy.shape[:2], 1))], -1)


def dense_camera(camera: pycolmap.Camera) -> pycolmap.Camera:
    """The PINHOLE camera of `camera`'s undistorted image, as COLMAP's image undistorter computes it."""
    return pycolmap.undistort_camera(pycolmap.UndistortCameraOptions(), camera)


def scene_scale(rng: np.random.Generator) -> float:
    """SfM units per metre of one scene: log-uniform in [0.25, 4]."""
    return float(np.exp(rng.uniform(np.log(0.25), np.log(4.0))))


# ---------------------------------------------------------------------------------------------- scenes


@dataclass
class Photo:
    """One photo of a scene: file name, COLMAP camera and camera-to-world pose (metres)."""

    name: str
    camera: pycolmap.Camera
    camera_to_world: np.ndarray  # [4, 4]
    grayscale: bool
    depth_is_mask: bool


@dataclass
class SceneSpec:
    """Everything drawn for one scene before rendering."""

    landmark: Landmark
    photos: list[Photo]
    sfm_units_per_metre: float


def build_scene(config: MegaDepthSynthConfig, index: int) -> SceneSpec:
    """The landmark, photo cameras and poses, and SfM scale of scene `index` (no rendering)."""
    rng = np.random.default_rng([config.seed, index])
    landmark = landmark_scene(rng)
    scale = scene_scale(rng)
    n = config.images
    grayscale = _pick(rng, n, config.grayscale_fraction)
    masks = _pick(rng, n, config.mask_fraction)
    names = _photo_names(rng, n)
    photos = [
        Photo(
            name=names[i],
            camera=photo_camera(rng, config.max_size, camera_id=i + 1),
            camera_to_world=photo_pose(rng, landmark),
            grayscale=bool(grayscale[i]),
            depth_is_mask=bool(masks[i]),
        )
        for i in range(n)
    ]
    return SceneSpec(landmark=landmark, photos=photos, sfm_units_per_metre=scale)


def _pick(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """Flags [n] for round(fraction · n) random items, at least one when fraction > 0."""
    count = min(n, max(round(fraction * n), 1)) if fraction > 0 else 0
    flags = np.zeros(n, dtype=bool)
    flags[rng.choice(n, size=count, replace=False)] = True
    return flags


def _photo_names(rng: np.random.Generator, n: int) -> list[str]:
    """Unique Flickr-like file names (`<10 digits>_<10 hex>_o.jpg`), as MegaDepth's photos have."""
    names: list[str] = []
    while len(names) < n:
        name = f"{int(rng.integers(10**9, 10**10))}_{int(rng.integers(0, 16**10)):010x}_o.jpg"
        if name not in names:
            names.append(name)
    return names


def world_to_camera(camera_to_world: np.ndarray, scale: float) -> np.ndarray:
    """World-to-camera [4, 4] in SfM units of a camera-to-world pose in metres."""
    rotation = camera_to_world[:3, :3].T
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = -rotation @ camera_to_world[:3, 3] * scale
    return out


@dataclass
class Tracks:
    """3D points (metres) with their observations."""

    xyz: np.ndarray  # [P, 3] world points, metres
    color: np.ndarray  # [P, 3] uint8
    observations: list[tuple[np.ndarray, np.ndarray]]  # per image: point indices [M], keypoints uv [M, 2]


def sample_tracks(
    scene: OutdoorScene, photos: list[Photo], points_per_image: int, rng: np.random.Generator
) -> Tracks:
    """Surface points seen at random positions of each photo, observed by every photo that sees them.

    Only points with at least two observations are kept.
    """
    seeds, colors = [], []
    for photo in photos:
        camera = photo.camera
        uv = rng.uniform([0.0, 0.0], [camera.width, camera.height], size=(points_per_image, 2))
        rays = _rays_of(undistort_normalized(camera, uv))
        view = render_rays(scene, photo.camera_to_world, rays[None])
        hit = (view.depth[0] > 0) & (view.depth[0] <= MAX_DEPTH_METRES)  # sky and horizon seed nothing
        points_cam = rays[hit] * view.depth[0, hit, None]  # [M, 3], z = depth
        seeds.append(points_cam @ photo.camera_to_world[:3, :3].T + photo.camera_to_world[:3, 3])
        colors.append(view.color[0, hit])
    xyz, color = np.concatenate(seeds), np.concatenate(colors)

    observed_by = [observe(scene, photo, xyz) for photo in photos]
    counts = np.zeros(len(xyz), dtype=np.int64)
    for points, _ in observed_by:
        counts[points] += 1
    keep = counts >= 2
    new_index = np.cumsum(keep) - 1
    observations = [(new_index[p[keep[p]]], uv[keep[p]]) for p, uv in observed_by]
    return Tracks(xyz=xyz[keep], color=color[keep], observations=observations)


def observe(scene: OutdoorScene, photo: Photo, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which world points [P, 3] `photo` sees, and where: point indices [M] and keypoints uv [M, 2].

    Seen = in front of the camera, projected inside the image (COLMAP coordinates in [0, W) × [0, H))
    by the branch of the radial model that the image uses (undistorting the keypoint gives the point's
    ray back), and not occluded: the depth the renderer finds along the point's own ray equals its z.
    """
    rotation, centre = photo.camera_to_world[:3, :3], photo.camera_to_world[:3, 3]
    cam = (xyz - centre) @ rotation  # [P, 3] camera frame
    front = np.flatnonzero(cam[:, 2] > 1e-6)
    xy = cam[front, :2] / cam[front, 2:]
    uv = distort_normalized(photo.camera, xy)
    inside = (
        (uv[:, 0] >= 0) & (uv[:, 0] < photo.camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < photo.camera.height)
    )
    front, xy, uv = front[inside], xy[inside], uv[inside]
    # beyond the image's radii the radial polynomial folds back: far-off-axis points land inside too
    unfolded = np.abs(undistort_normalized(photo.camera, uv) - xy).max(-1) <= 1e-9 * (1 + np.abs(xy).max(-1))
    front, xy, uv = front[unfolded], xy[unfolded], uv[unfolded]
    if len(front) == 0:
        return front, uv
    order = np.argsort(xy[:, 0])  # the renderer culls boxes by ray columns: sorted rays keep windows tight
    view = render_rays(scene, photo.camera_to_world, _rays_of(xy[order])[None], shade=False)
    depth = np.empty(len(order))
    depth[order] = view.depth[0]
    z = cam[front, 2]
    seen = np.abs(depth - z) <= VISIBILITY_RELATIVE_TOLERANCE * z
    return front[seen], uv[seen]


def _rays_of(xy: np.ndarray) -> np.ndarray:
    """Rays [M, 3] with z = 1 from normalised coordinates [M, 2]."""
    return np.concatenate([xy, np.ones((len(xy), 1))], -1)


def build_reconstruction(
    spec: SceneSpec, tracks: Tracks, rng: np.random.Generator
) -> pycolmap.Reconstruction:
    """The COLMAP model of a scene in SfM units: image i has image and camera id i + 1, points ids 1..P.

    Each image's keypoints are its observations plus `UNTRIANGULATED_SHARE` as many random positions
    without a 3D point, in a random order.
    """
    scale = spec.sfm_units_per_metre
    reconstruction = pycolmap.Reconstruction()
    elements: list[list[pycolmap.TrackElement]] = [[] for _ in range(len(tracks.xyz))]
    for i, (photo, (points, uv)) in enumerate(zip(spec.photos, tracks.observations)):
        camera = photo.camera
        extra = round(UNTRIANGULATED_SHARE * len(points))
        loose = rng.uniform([0.0, 0.0], [camera.width, camera.height], size=(extra, 2))
        keypoints = np.concatenate([uv, loose])
        order = rng.permutation(len(keypoints))
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))  # keypoint k of `keypoints` is stored at position[k]
        for point, idx in zip(points, position[: len(points)]):
            elements[point].append(pycolmap.TrackElement(i + 1, int(idx)))
        reconstruction.add_camera_with_trivial_rig(camera)
        image = pycolmap.Image(name=photo.name, keypoints=keypoints[order], camera_id=i + 1, image_id=i + 1)
        pose = world_to_camera(photo.camera_to_world, scale)
        reconstruction.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pose[:3]))
    for p in range(len(tracks.xyz)):
        point_id = reconstruction.add_point3D(
            tracks.xyz[p] * scale, pycolmap.Track(elements[p]), tracks.color[p]
        )
        if point_id != p + 1:
            raise RuntimeError(f"pycolmap numbered 3D point {p} as {point_id}, expected {p + 1}")
    return reconstruction


# ---------------------------------------------------------------------------------------------- files


def write_model(reconstruction: pycolmap.Reconstruction, folder: Path) -> None:
    """Write `cameras.bin`, `images.bin` and `points3D.bin` (only these, as MegaDepth's models)."""
    folder.mkdir(parents=True, exist_ok=True)
    reconstruction.write_binary(folder)
    for path in folder.iterdir():
        if path.name not in MODEL_FILES:
            path.unlink()


def write_photo(path: Path, rgb: np.ndarray, grayscale: bool, quality: int) -> None:
    """A JPEG of `rgb` [H, W, 3] uint8; single-channel (ITU-R 601 luma) when `grayscale`."""
    if grayscale:
        Image.fromarray(rgb).convert("L").save(path, format="JPEG", quality=quality)
    else:
        write_jpeg(path, rgb, quality=quality)


def write_depth_h5(path: Path, depth: np.ndarray, compress: bool = False) -> None:
    """MegaDepth's depth file: dataset `/depth`, [H, W] as given (float32 depth or a 0/1 mask).

    No timestamps are stored, so the same array gives the same bytes.
    """
    with h5py.File(path, "w") as f:
        f.create_dataset(
            DEPTH_DATASET, data=depth, track_times=False, compression="gzip" if compress else None
        )


def write_scene(out: Path, config: MegaDepthSynthConfig, index: int) -> dict:
    """Generate scene `index` into `out/.partial/<scene>/`, then move it into MegaDepth's layout.

    Returns the model's size: {"images", "points3D", "observations"}.
    """
    name = scene_name(index)
    staging = out / ".partial" / name
    if staging.exists():
        shutil.rmtree(staging)
    for top in (SFM_FOLDER, DENSE_FOLDER):
        if (out / top / name).exists():  # an interrupted move: the scene is redone whole
            shutil.rmtree(out / top / name)
    sfm, dense = staging / SFM_FOLDER / name, staging / DENSE_FOLDER / name / "dense0"
    for folder in (sfm / "images", dense / "imgs", dense / "depths"):
        folder.mkdir(parents=True)

    spec = build_scene(config, index)
    scene, scale = spec.landmark.scene, spec.sfm_units_per_metre
    rng = np.random.default_rng([config.seed, index, 1])
    tracks = sample_tracks(scene, spec.photos, config.points_per_image, rng)
    reconstruction = build_reconstruction(spec, tracks, rng)
    write_model(reconstruction, sfm / MODEL_SUBDIR)
    for photo in spec.photos:
        view = render_rays(scene, photo.camera_to_world, image_rays(photo.camera))
        write_photo(sfm / "images" / photo.name, view.color, photo.grayscale, config.jpeg_quality)
        pinhole = dense_camera(photo.camera)
        rays = pinhole_rays(
            colmap_to_pri3d_intrinsics(pinhole.calibration_matrix()), pinhole.height, pinhole.width
        )
        view = render_rays(scene, photo.camera_to_world, rays)
        write_photo(dense / "imgs" / photo.name, view.color, photo.grayscale, config.jpeg_quality)
        depth_path = dense / "depths" / f"{Path(photo.name).stem}.h5"
        if photo.depth_is_mask:
            write_depth_h5(
                depth_path, spec.landmark.landmark_mask(view.part).astype(np.float32), compress=True
            )
        else:
            depth = np.where(view.depth <= MAX_DEPTH_METRES, view.depth * scale, 0.0)
            write_depth_h5(depth_path, depth.astype(np.float32))

    (out / DENSE_FOLDER).mkdir(exist_ok=True)
    (out / SFM_FOLDER).mkdir(exist_ok=True)
    (staging / DENSE_FOLDER / name).rename(out / DENSE_FOLDER / name)
    (staging / SFM_FOLDER / name).rename(out / SFM_FOLDER / name)  # last: its presence marks the scene done
    shutil.rmtree(staging)
    return {
        "images": reconstruction.num_images(),
        "points3D": reconstruction.num_points3D(),
        "observations": reconstruction.compute_num_observations(),
    }


def scene_done(out: Path, name: str) -> bool:
    return (out / SFM_FOLDER / name).is_dir() and (out / DENSE_FOLDER / name).is_dir()


def generate(out: str | Path, config: MegaDepthSynthConfig, workers: int = 1, progress: bool = True) -> dict:
    """Write `config.scenes` scenes under `out`; returns a summary. Finished scenes are kept."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_and_record_settings(
        out / "synth_settings.json",
        {"generator": "pri3d synth megadepth", **asdict(config)},
        "scenes",
        may_change=("scenes",),
    )
    names = [scene_name(i) for i in range(config.scenes)]
    todo = [i for i, name in enumerate(names) if not scene_done(out, name)]
    start = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(
        total=config.scenes,
        initial=config.scenes - len(todo),
        unit="scene",
        desc="synth megadepth",
        disable=not progress,
        dynamic_ncols=True,
    )
    jobs = [(out, config, i) for i in todo]
    models: dict[str, dict] = {}
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for name, size in pool.imap_unordered(_write_scene_job, jobs):
                models[name] = size
                bar.update(1)
            pool.close()  # let the workers exit: the terminate() of leaving the block signals them
            pool.join()
    else:
        for job in jobs:
            name, size = _write_scene_job(job)
            models[name] = size
            bar.update(1)
    bar.close()
    shutil.rmtree(out / ".partial", ignore_errors=True)  # staging left by an interrupted move
    return {
        "out": str(out),
        "scenes": names,
        "generated": len(todo),
        "skipped_existing": config.scenes - len(todo),
        "models": dict(sorted(models.items())),  # of the scenes generated by this run
        "seconds": round(time.perf_counter() - start, 2),
    }


def _write_scene_job(job: tuple[Path, MegaDepthSynthConfig, int]) -> tuple[str, dict]:
    out, config, index = job
    return scene_name(index), write_scene(out, config, index)
