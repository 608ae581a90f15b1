"""MegaDepth pre-training pairs: two overlapping photos of a landmark, cropped around a common 3D point.

Reads the output of ``pri3d preprocess megadepth`` (or the original's preprocessing) under the
MegaDepth root: ``scene_info/<scene>.npz``, ``Undistorted_SfM/<scene>/images/*`` and
``MegaDepth_v1/<scene>/dense0/depths/*.h5`` (:mod:`pri3d.io.megadepth`).

The original's sampling (D2-Net's, spec §2.2): every epoch, for every scene, ``pairs_per_scene``
image pairs (i, j) are drawn with replacement among those whose directional overlap
``overlap_matrix[i, j]`` is at least ``min_overlap``; a sample takes a random 3D point observed by
both, and crops an H×W window (``PairOptions.size``, no resize: the photos stay at their undistorted
resolution) around the point's keypoint in each photo, clamped inside the photo. Depth is cropped
identically and the principal point shifted by the crop's offset, so the crop is a camera of its own
and the 2D–2D matches come from :func:`pri3d.geometry.sample_pixel_correspondences` as for ScanNet.

Differences from the original, on purpose: pairs are drawn in :meth:`MegaDepthPairs.set_epoch` from
(seed, epoch) alone, vectorised (milliseconds per epoch; the original rebuilt its pair list in the
main process, slowly) and the central point in the worker from (seed, epoch, index), so a resumed run
sees the same samples; the length is fixed (scenes with pairs × ``pairs_per_scene``), so the LR
schedule is known up front; grayscale photos become RGB (the original crashed on them); a photo smaller
than the crop is padded at its bottom/right with black and depth 0 (no match can land there); the
colour augmentation of ScanNet pairs applies (the original had none on MegaDepth). MegaDepth depth is
in the scene's SfM units, not metres, so ``PairOptions.threshold`` (the depth agreement of a match,
0.05) is in those units here, as in the original.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pri3d.data.pretrain_pairs import PairOptions, add_pixel_matches, color_tensor
from pri3d.io.colmap import colmap_to_pri3d_intrinsics, colmap_xy_to_rowcol
from pri3d.io.megadepth import SCENE_INFO_FOLDER, read_depth, read_scene_info

__all__ = ["MegaDepthPairs", "crop_window"]

_STREAM = 0x6D64  # "md": MegaDepth samples draw from other random streams than ScanNet's of the same index


@dataclass
class _Scene:
    """What sampling needs of a scene_info, in pri3d's conventions (compact: kept per worker)."""

    name: str
    image_paths: np.ndarray  # [N] str
    depth_paths: np.ndarray  # [N] str
    intrinsics: np.ndarray  # [N, 3, 3] float64, integer pixel centres
    world_to_camera: np.ndarray  # [N, 4, 4] float64
    indptr: np.ndarray  # [N + 1] int64
    point_ids: np.ndarray  # [nnz] int32 where the ids fit (COLMAP's do), else int64; ascending per image
    rowcol: np.ndarray  # [nnz, 2] float32 continuous (row, col) of the keypoints (~1e-4 px at 1600 px)
    candidates: np.ndarray  # [K, 2] int64 (i, j) with overlap >= min_overlap


def crop_window(center: np.ndarray, image_hw: tuple[int, int], crop_hw: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the ``crop_hw`` window around a continuous (row, col) ``center``.

    The center's pixel sits at offset (H // 2, W // 2) of the window unless that would leave the image,
    in which case the window is shifted inward (the original's rule); a window larger than the image
    starts at 0. The center's pixel is always inside the window.
    """
    top_left = []
    for position, side, crop in zip(center, image_hw, crop_hw):
        pixel = min(max(int(np.floor(position + 0.5)), 0), side - 1)
        top_left.append(min(max(pixel - crop // 2, 0), max(side - crop, 0)))
    return top_left[0], top_left[1]


def _compact_ids(ids: np.ndarray) -> np.ndarray:
    """3D point ids as int32 when they fit: the observations of every scene stay in memory (12 bytes
    each with the float32 keypoints), shared by the DataLoader workers."""
    if not len(ids) or (ids.min() >= np.iinfo(np.int32).min and ids.max() <= np.iinfo(np.int32).max):
        return ids.astype(np.int32)
    return ids


def _inside(rowcol: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """[C] bool: continuous (row, col) positions [C, 2] whose nearest pixel is in the image."""
    pixel = np.floor(rowcol + 0.5)
    return ((pixel >= 0) & (pixel < np.array(image_hw))).all(1)


class MegaDepthPairs(Dataset):
    """Overlapping MegaDepth photo pairs for pre-training (view-invariant and depth losses).

    Items have exactly the keys of :class:`pri3d.data.pretrain_pairs.ScanNetPairs` without the
    geometric prior (MegaDepth has no point clouds; :class:`pri3d.data.mixture_pairs.MixturePairs`
    adds empty voxel chunks): color{v} [3, H, W], depth{v} [H, W] float32 (SfM units, 0 invalid),
    intrinsics{v} [3, 3] of the crop, world_to_camera{v} [4, 4], match{v} [S, 2] int64 (row, col),
    match_valid [S], index, scene, frames (the two photos' file stems). A sample that cannot be read
    comes back as {"skip": reason, "index": i}.

    Args:
        root: the MegaDepth root (``scene_info/``, ``Undistorted_SfM/``, ``MegaDepth_v1/``).
        options: crop size (H, W), matches per pair, depth threshold, augmentation, seed;
            ``geometric_prior`` must be off.
        pairs_per_scene: pairs drawn per scene and epoch, with replacement (the original's 4000).
        min_overlap: smallest directional overlap of a pair (the original's 0.3).
        scenes: scene names (default: every ``scene_info/*.npz``).
    """

    def __init__(
        self,
        root: str | Path,
        options: PairOptions | None = None,
        pairs_per_scene: int = 4000,
        min_overlap: float = 0.3,
        scenes: Sequence[str] | None = None,
    ):
        self.root = Path(root)
        self.options = options or PairOptions()
        if self.options.geometric_prior:
            raise ValueError(
                "MegaDepth has no point clouds for the geometric prior: set pretrain.geometric_prior=false, "
                "or dataset.name=Mixture to train it on the ScanNet pairs only"
            )
        if pairs_per_scene < 1:
            raise ValueError(f"pairs_per_scene={pairs_per_scene}: expected an integer >= 1")
        if not 0 <= min_overlap <= 1:
            raise ValueError(f"min_overlap={min_overlap}: expected a fraction in [0, 1]")
        self.pairs_per_scene, self.min_overlap = pairs_per_scene, min_overlap
        folder = self.root / SCENE_INFO_FOLDER
        if scenes is None:
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"{folder}: not found (run `pri3d preprocess megadepth --root {self.root}`)"
                )
            scenes = sorted(path.stem for path in folder.glob("*.npz"))
        #: scenes left out, with why (no pair at min_overlap)
        self.scenes_without_pairs: dict[str, str] = {}
        self.scenes: list[_Scene] = []
        for name in scenes:
            scene = self._load_scene(name)
            if len(scene.candidates):
                self.scenes.append(scene)
            else:
                self.scenes_without_pairs[name] = f"no image pair with overlap >= {min_overlap}"
        if not self.scenes:
            raise ValueError(
                f"{folder}: no scene has an image pair with overlap >= {min_overlap} "
                f"({len(self.scenes_without_pairs)} scenes read)"
            )
        self.epoch = 0
        self.pairs = np.zeros((len(self.scenes), pairs_per_scene, 2), dtype=np.int64)  # [S, P, (i, j)]
        self.set_epoch(0)

    def _load_scene(self, name: str) -> _Scene:
        info = read_scene_info(self.root / SCENE_INFO_FOLDER / f"{name}.npz")  # errors name the file
        overlap = info.overlap_matrix
        usable = info.usable
        # > 0 as well: a pair needs a common point for its central match, even at min_overlap 0
        candidates = (overlap >= self.min_overlap) & (overlap > 0) & usable[:, None] & usable[None, :]
        return _Scene(
            name=name,
            image_paths=info.image_paths,
            depth_paths=info.depth_paths,
            intrinsics=colmap_to_pri3d_intrinsics(info.intrinsics),
            world_to_camera=info.poses,
            indptr=info.points3D_indptr,
            point_ids=_compact_ids(info.points3D_ids),
            rowcol=colmap_xy_to_rowcol(info.points3D_xy).astype(np.float32),
            candidates=np.argwhere(candidates),
        )

    def __len__(self) -> int:
        return len(self.scenes) * self.pairs_per_scene

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s pairs: ``pairs_per_scene`` per scene, with replacement, from (seed, epoch)."""
        self.epoch = epoch
        rng = np.random.default_rng([self.options.seed, epoch, _STREAM])
        for s, scene in enumerate(self.scenes):
            self.pairs[s] = scene.candidates[rng.integers(len(scene.candidates), size=self.pairs_per_scene)]

    def pair(self, index: int) -> tuple[_Scene, int, int]:
        """The scene and image indices (i, j) of sample ``index`` in the current epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} MegaDepth pairs")
        scene_index, k = divmod(index, self.pairs_per_scene)
        i, j = self.pairs[scene_index, k]
        return self.scenes[scene_index], int(i), int(j)

    def central_match(
        self, index: int, generator: torch.Generator | None = None
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """A random 3D point whose keypoints lie inside both photos of sample ``index``: its id and its
        continuous (row, col) in photo i and in photo j. ``generator`` defaults to the sample's own.

        Undistorted keypoints can fall just outside the undistorted photo (COLMAP's undistorted camera
        need not cover every distorted pixel); such points are not drawn, so the crop holds the point.
        """
        scene, i, j = self.pair(index)
        generator = generator or self._generator(index)
        rows_i = slice(scene.indptr[i], scene.indptr[i + 1])
        rows_j = slice(scene.indptr[j], scene.indptr[j + 1])
        common, in_i, in_j = np.intersect1d(
            scene.point_ids[rows_i], scene.point_ids[rows_j], assume_unique=True, return_indices=True
        )
        center_i, center_j = scene.rowcol[rows_i][in_i], scene.rowcol[rows_j][in_j]  # [C, 2]
        inside = _inside(center_i, self._photo_size(scene, i)) & _inside(center_j, self._photo_size(scene, j))
        if not inside.any():
            raise ValueError(f"no common 3D point inside both photos ({len(common)} common)")
        k = np.flatnonzero(inside)[int(torch.randint(int(inside.sum()), (1,), generator=generator))]
        return int(common[k]), center_i[k], center_j[k]

    def _photo_size(self, scene: _Scene, k: int) -> tuple[int, int]:
        with Image.open(self.root / scene.image_paths[k]) as image:  # reads the header only
            return image.height, image.width

    def _generator(self, index: int) -> torch.Generator:
        seed = np.random.SeedSequence([self.options.seed, self.epoch, index, _STREAM]).generate_state(
            1, np.uint64
        )[0]
        return torch.Generator().manual_seed(int(seed >> 1))

    def __getitem__(self, index: int) -> dict:
        scene, i, j = self.pair(index)
        stems = (Path(scene.image_paths[i]).stem, Path(scene.image_paths[j]).stem)
        generator = self._generator(index)
        try:
            _, center_i, center_j = self.central_match(index, generator)
            views = [
                self._load_view(scene, k, center, generator) for k, center in ((i, center_i), (j, center_j))
            ]
        except (OSError, ValueError) as error:
            return {"skip": f"{scene.name} photos {stems[0]}/{stems[1]}: {error}", "index": index}
        sample: dict = {"index": index, "scene": scene.name, "frames": stems}
        for v, view in enumerate(views, start=1):
            for key, value in view.items():
                sample[f"{key}{v}"] = value
        add_pixel_matches(sample, self.options, generator)
        return sample

    def _load_view(self, scene: _Scene, k: int, center: np.ndarray, generator: torch.Generator) -> dict:
        height, width = self.options.size
        with Image.open(self.root / scene.image_paths[k]) as image:
            image_hw = (image.height, image.width)
            top, left = crop_window(center, image_hw, (height, width))
            # outside the photo (one smaller than the crop) PIL's crop fills black
            crop = image.convert("RGB").crop((left, top, left + width, top + height))
        depth = np.zeros((height, width), np.float32)
        part = read_depth(self.root / scene.depth_paths[k], window=(top, left, height, width), shape=image_hw)
        depth[: part.shape[0], : part.shape[1]] = part
        K = scene.intrinsics[k].copy()
        K[0, 2] -= left  # the crop's pixel (0, 0) is the photo's (top, left)
        K[1, 2] -= top
        return {
            "color": color_tensor(crop, generator, self.options.augment),
            "depth": torch.from_numpy(depth),
            "intrinsics": torch.from_numpy(K).to(torch.float32),
            "world_to_camera": torch.from_numpy(scene.world_to_camera[k]).to(torch.float32),
        }
