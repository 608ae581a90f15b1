"""Pre-training pairs: two overlapping frames of a ScanNet scan with their geometry and matches.

Reads the output of `pri3d preprocess scannet` (see docs/data.md):
`<root>/splits/overlap30.txt` (lines `<scene>/color/<i>.jpg <scene>/color/<j>.jpg <score>`; the
original's `<scene>/pcd/<i>.npz` form is accepted too), per scene `color/<i>.jpg`, `depth/<i>.png`
(uint16 mm), `pose/<i>.txt` (camera-to-world), `intrinsic/intrinsic_depth.txt`, and for the geometric
prior `chunk_boxes.txt` and `<root>/pointcloud/<scene>.npz`.

Everything that depends only on the data is computed here, in the DataLoader workers: colour
augmentation, depth in metres, camera matrices, 2D–2D matches sampled to a fixed count with a
validity mask, and for the geometric prior the voxelised scene crop of each view with its 3D–2D
matches. Randomness is a function of (seed, epoch, index) alone, so a resumed run sees exactly the
samples an uninterrupted run would have seen, whatever the number of workers.

Geometry follows `pri3d.geometry` (pixel (row, col), integer pixel centres, depth 0 = invalid).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset
from torchvision.transforms import v2

from pri3d.geometry import (
    invert_rigid,
    points_in_frustum,
    sample_pixel_correspondences,
    scale_intrinsics,
    sparse_quantize,
    voxel_pixel_correspondences,
    voxelize,
)
from pri3d.io.chunk_boxes import read_chunk_boxes
from pri3d.io.images import IMAGENET_MEAN, IMAGENET_STD, read_depth_png
from pri3d.io.pairs import read_pair_list
from pri3d.io.point_cloud import load_point_cloud
from pri3d.io.scannet import read_matrix_txt

VOXEL_CROPS = ("box", "frustum")


@dataclass(frozen=True)
class PairOptions:
    """What a pair sample contains. Defaults are the released recipe (the original's
    `config/default.yaml` and `scripts/*.sh`)."""

    size: tuple[int, int] = (240, 320)  # (H, W) fed to the network
    num_matches: int = 1024  # sampled 2D–2D (and 3D–2D) correspondences per pair / view
    threshold: float = 0.05  # metres; depth agreement for 2D–2D matches
    geometric_prior: bool = False  # load voxel chunks and 3D–2D matches
    voxel_size: float = 0.02
    visibility_threshold: float = 0.2  # metres; occlusion test for 3D–2D matches
    # "box": the frame's chunk box, as the original; "frustum": only its voxels in the view frustum
    # widened by frustum_margin metres (fewer voxels for the 3D network; docs/deviations.md)
    voxel_crop: str = "box"
    frustum_margin: float = 0.1
    augment: bool = True  # colour jitter, grayscale, blur (never geometric)
    seed: int = 0
    cloud_cache_mb: float = 256.0  # scene point clouds kept per process (always at least the last one)

    def __post_init__(self):
        if self.voxel_crop not in VOXEL_CROPS:
            raise ValueError(f"voxel_crop={self.voxel_crop!r}: expected one of {VOXEL_CROPS}")
        if not self.frustum_margin >= 0:  # checked here, not per sample, where it would skip every pair
            raise ValueError(f"frustum_margin={self.frustum_margin}: expected metres >= 0")


class ScanNetPairs(Dataset):
    """Overlapping frame pairs for pre-training.

    Each item is a dict (per view v in 1, 2):
      color{v} [3, H, W] float32 normalised; depth{v} [H, W] float32 metres (0 invalid);
      intrinsics{v} [3, 3]; world_to_camera{v} [4, 4];
      match{v} [S, 2] int64 (row, col) pixel of the 2D–2D matches, match_valid [S] bool;
    and with the geometric prior:
      voxels{v} [V, 3] int32 voxel coordinates (floor(p / voxel_size)) of the view's crop
      (``PairOptions.voxel_crop``), voxel_colors{v} [V, 3] float32
      RGB in [0, 1], vp_pixel{v} [S, 2] int64, vp_voxel{v} [S] int64 (row into voxels{v}),
      vp_valid{v} [S] bool.
    A pair whose scene has no point cloud (preprocessing skips the cloud of a scene without a mesh;
    listed in `scenes_without_cloud`) has an empty voxels{v} [0, 3] and an all-False vp_valid{v}:
    it trains the 2D losses only. A sample that cannot be read comes back as
    {"skip": reason, "index": i} (see `collate_pairs`).
    """

    def __init__(
        self,
        root: str | Path,
        pair_list: str = "splits/overlap30.txt",
        options: PairOptions | None = None,
        pointcloud_dir: str | Path | None = None,
    ):
        self.root = Path(root)
        self.pointcloud_dir = Path(pointcloud_dir) if pointcloud_dir else self.root / "pointcloud"
        self.options = options or PairOptions()
        list_path = self.root / pair_list
        if not list_path.is_file():
            raise FileNotFoundError(
                f"{list_path}: pair list not found (run `pri3d preprocess scannet` first)"
            )
        self.pairs = read_pair_list(list_path)
        if not self.pairs:
            raise ValueError(f"{list_path}: the pair list is empty")
        self.scenes_without_cloud = self._scenes_without_cloud() if self.options.geometric_prior else {}
        self.epoch = 0
        self._clouds: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._boxes: dict[str, dict[int, np.ndarray]] = {}
        self._intrinsics: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        """Samples of epoch e use their own random draws (augmentation, match sampling)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        scene, frame_a, frame_b, _ = self.pairs[index]
        generator = torch.Generator().manual_seed(_sample_seed(self.options.seed, self.epoch, index))
        try:
            views = [self._load_view(scene, frame, generator) for frame in (frame_a, frame_b)]
        except (OSError, ValueError) as error:
            return {"skip": f"{scene} frames {frame_a}/{frame_b}: {error}", "index": index}
        sample: dict = {"index": index, "scene": scene, "frames": (frame_a, frame_b)}
        for v, view in enumerate(views, start=1):
            for key, value in view.items():
                sample[f"{key}{v}"] = value
        add_pixel_matches(sample, self.options, generator)
        if self.options.geometric_prior:
            for v, frame in enumerate((frame_a, frame_b), start=1):
                if scene in self.scenes_without_cloud:
                    chunk = no_chunk(self.options.num_matches)
                else:
                    try:
                        chunk = self._voxel_chunk(
                            scene,
                            frame,
                            sample[f"depth{v}"],
                            sample[f"intrinsics{v}"],
                            sample[f"world_to_camera{v}"],
                            generator,
                        )
                    except (OSError, ValueError) as error:  # a damaged cloud file or chunk box list
                        return {"skip": f"{scene} frame {frame}: {error}", "index": index}
                    if chunk is None:
                        return {
                            "skip": f"{scene} frame {frame}: no scene points inside the frame's chunk box",
                            "index": index,
                        }
                for key, value in chunk.items():
                    sample[f"{key}{v}"] = value
        return sample

    # ------------------------------------------------------------------------------------------
    def _scenes_without_cloud(self) -> dict[str, int]:
        """Scene -> number of its pairs, for the scenes of the pair list without a point cloud file."""
        pairs_per_scene: dict[str, int] = {}
        for scene, *_ in self.pairs:
            pairs_per_scene[scene] = pairs_per_scene.get(scene, 0) + 1
        missing = {
            scene: count
            for scene, count in pairs_per_scene.items()
            if not (self.pointcloud_dir / f"{scene}.npz").is_file()
        }
        if len(missing) == len(pairs_per_scene):
            raise FileNotFoundError(
                f"no scene of the pair list has a point cloud in {self.pointcloud_dir} (preprocessing writes "
                "one per scene with a mesh): the geometric prior cannot train; set dataset.pointcloud_path "
                "or pretrain.geometric_prior=false"
            )
        return missing

    def _load_view(self, scene: str, frame: int, generator: torch.Generator) -> dict:
        height, width = self.options.size
        folder = self.root / scene
        with Image.open(folder / "color" / f"{frame}.jpg") as image:
            image = image.convert("RGB")
            # nearest, as the original: keeps colour and depth pixels aligned to the same rays
            image = image.resize((width, height), Image.NEAREST)
        color = color_tensor(image, generator, self.options.augment)
        depth_mm = read_depth_png(folder / "depth" / f"{frame}.png")
        depth_native = depth_mm.shape
        depth = torch.from_numpy(np.array(Image.fromarray(depth_mm).resize((width, height), Image.NEAREST)))
        depth = depth.to(torch.float32) / 1000.0
        camera_to_world = read_matrix_txt(folder / "pose" / f"{frame}.txt")
        if camera_to_world.shape != (4, 4) or not np.isfinite(camera_to_world).all():
            raise ValueError(f"pose/{frame}.txt is not a finite 4x4 matrix")
        k = torch.from_numpy(self._depth_intrinsics(scene)).to(torch.float64)
        k = scale_intrinsics(k, depth_native, (height, width))
        return {
            "color": color,
            "depth": depth,
            "intrinsics": k.to(torch.float32),
            "world_to_camera": invert_rigid(torch.from_numpy(camera_to_world)).to(torch.float32),
        }

    def _depth_intrinsics(self, scene: str) -> np.ndarray:
        if scene not in self._intrinsics:
            k = read_matrix_txt(self.root / scene / "intrinsic" / "intrinsic_depth.txt")
            self._intrinsics[scene] = k[:3, :3]
        return self._intrinsics[scene]

    def _scene_cloud(self, scene: str) -> tuple[np.ndarray, np.ndarray]:
        """(points as [3, N] float32 rows x, y, z, colours [N, 3] uint8), recently used scenes kept
        per process up to ``cloud_cache_mb`` (pairs come in shuffled order: each miss reloads a file).

        Per-axis box tests on contiguous rows are ~20x faster than on [N, 3] points.
        """
        if scene in self._clouds:
            self._clouds.move_to_end(scene)
            return self._clouds[scene]
        data = load_point_cloud(self.pointcloud_dir / f"{scene}.npz")  # errors name the file
        cloud = (np.ascontiguousarray(data["points"].T), data["colors"])
        self._clouds[scene] = cloud
        budget = self.options.cloud_cache_mb * 2**20
        while len(self._clouds) > 1 and sum(p.nbytes + c.nbytes for p, c in self._clouds.values()) > budget:
            self._clouds.popitem(last=False)
        return cloud

    def _chunk_box(self, scene: str, frame: int) -> np.ndarray:
        if scene not in self._boxes:
            self._boxes[scene] = read_chunk_boxes(self.root / scene / "chunk_boxes.txt")
        if frame not in self._boxes[scene]:
            raise ValueError(f"{scene}/chunk_boxes.txt has no box for frame {frame}")
        return self._boxes[scene][frame]

    def _voxel_chunk(
        self,
        scene: str,
        frame: int,
        depth: torch.Tensor,
        k: torch.Tensor,
        world_to_camera: torch.Tensor,
        generator: torch.Generator,
    ) -> dict | None:
        columns, colors = self._scene_cloud(scene)
        inside = _inside_box(columns, self._chunk_box(scene, frame))
        if not len(inside):
            return None
        coords = voxelize(torch.from_numpy(columns[:, inside].T), self.options.voxel_size)  # [n, 3]
        voxels, first, _ = sparse_quantize(coords)  # one point (the first) per voxel, as the original
        voxel_colors = torch.from_numpy(colors[inside]).to(torch.float32)[first] / 255.0
        k, world_to_camera = k.to(torch.float64), world_to_camera.to(torch.float64)
        if self.options.voxel_crop == "frustum":
            # The same centres and dtype as voxel_pixel_correspondences: every voxel it can match is kept.
            centres = (voxels.to(torch.float64) + 0.5) * self.options.voxel_size  # [V, 3] world
            seen = points_in_frustum(
                centres, k, world_to_camera, tuple(depth.shape), self.options.frustum_margin
            )
            if not seen.any():
                raise ValueError("no voxel of the frame's chunk box is inside its view frustum")
            voxels, voxel_colors = voxels[seen], voxel_colors[seen]
        pixels, voxel_index = voxel_pixel_correspondences(
            voxels,
            self.options.voxel_size,
            depth.to(torch.float64),
            k,
            world_to_camera,
            self.options.visibility_threshold,
        )
        pick, valid = sample_indices(len(voxel_index), self.options.num_matches, generator)
        return {
            "voxels": voxels.to(torch.int32),
            "voxel_colors": voxel_colors,
            "vp_pixel": pixels[pick] if len(pixels) else torch.zeros(len(pick), 2, dtype=torch.int64),
            "vp_voxel": voxel_index[pick] if len(pixels) else torch.zeros(len(pick), dtype=torch.int64),
            "vp_valid": valid,
        }


def no_chunk(num_matches: int) -> dict:
    """The 3D part of a view without a point cloud: no voxels, no valid 3D-2D match (``num_matches`` slots)."""
    return {
        "voxels": torch.zeros(0, 3, dtype=torch.int32),
        "voxel_colors": torch.zeros(0, 3),
        "vp_pixel": torch.zeros(num_matches, 2, dtype=torch.int64),
        "vp_voxel": torch.zeros(num_matches, dtype=torch.int64),
        "vp_valid": torch.zeros(num_matches, dtype=torch.bool),
    }


def color_tensor(image: Image.Image, generator: torch.Generator, augment: bool = True) -> torch.Tensor:
    """RGB image -> [3, H, W] float32 ImageNet-normalised, after the original's colour augmentations
    (jitter p=0.8, grayscale p=0.2, blur p=0.5) when ``augment``, drawn from ``generator``."""
    if augment:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            if torch.rand(1) < 0.8:
                image = v2.ColorJitter(0.4, 0.4, 0.4, 0.1)(image)
            if torch.rand(1) < 0.2:
                image = v2.Grayscale(num_output_channels=3)(image)
            if torch.rand(1) < 0.5:
                image = image.filter(
                    ImageFilter.GaussianBlur(radius=float(torch.empty(1).uniform_(0.1, 2.0)))
                )
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return v2.functional.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD)


def add_pixel_matches(sample: dict, options: PairOptions, generator: torch.Generator) -> None:
    """Set a pair's `match1`, `match2` [S, 2] (row, col) and `match_valid` [S]: ``options.num_matches``
    pixels of view 1 whose depth, moved into view 2, agrees with view 2's within ``options.threshold``
    (`pri3d.geometry.sample_pixel_correspondences`), from the views' `depth`, `intrinsics` and
    `world_to_camera` entries. Every pair dataset defines its matches this way."""
    pos1, pos2, valid = sample_pixel_correspondences(
        *(sample[f"{key}{v}"][None] for v in (1, 2) for key in ("depth", "intrinsics", "world_to_camera")),
        options.num_matches,
        options.threshold,
        generator=generator,
    )
    sample["match1"], sample["match2"], sample["match_valid"] = pos1[0], pos2[0], valid[0]


def sample_indices(count: int, num: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`num` indices into `count` items: without replacement when count >= num, with replacement
    when fewer (as the original), and all invalid (index 0) when count is 0. Returns (index, valid)."""
    if count == 0:
        return torch.zeros(num, dtype=torch.int64), torch.zeros(num, dtype=torch.bool)
    if count >= num:
        pick = torch.randperm(count, generator=generator)[:num]
    else:
        pick = torch.randint(count, (num,), generator=generator)
    return pick, torch.ones(num, dtype=torch.bool)


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _inside_box(columns: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Indices of the points ([3, N] rows x, y, z) inside ``box`` (min xyz, max xyz), bounds included."""
    mask = np.ones(columns.shape[1], dtype=bool)
    for axis in range(3):
        mask &= columns[axis] >= box[axis]
        mask &= columns[axis] <= box[axis + 3]
    return np.flatnonzero(mask)
