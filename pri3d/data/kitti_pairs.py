"""KITTI pre-training pairs: two overlapping frames of a driving sequence with their geometry and matches.

Reads a KITTI root (:mod:`pri3d.io.kitti`) and the output of `pri3d preprocess kitti`
(``<root>/preprocessed/pairs.txt`` and ``<drive>/mapping.npy``). Per frame: camera 2's colour image
``image_2/<sequence frame>.png``, the annotated depth of the same raw frame (metres x 256, 0 invalid),
K2 = P2[:3, :3] from ``calib.txt`` and camera 2's pose, world_to_camera2 = [I | t] @ inverse(pose),
from the odometry camera-0 pose at row raw frame - start (the original used camera 0's pose for
camera 2's image, 6 cm off, and the raw frame as the row).

Items have exactly the keys of :class:`pri3d.data.pretrain_pairs.ScanNetPairs` (without the geometric
prior: KITTI has no point clouds), so `collate_pairs` and the Pri3D model take them unchanged. As the
original: a random stored match of the pair is picked and an ``options.size`` (H, W) window is cut
around it in each frame (centred on it, shifted inward where it would leave the image); the depth is
cut identically and the principal point moved by the window's offset. With ``resize=True`` the frames
are instead resized to height H (aspect kept) and their first W columns taken.

Matches inside the two windows are computed from the cropped depth and cameras with
:func:`pri3d.geometry.sample_pixel_correspondences` at ``options.threshold`` (0.05 m), the definition
every pri3d pair dataset uses and the one the original's model applied to KITTI crops; the stored
mapping (0.5 m, the pair-selection tolerance) only chooses the windows. Randomness is a function of
(seed, epoch, index) alone, as for ScanNet pairs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pri3d.data.pretrain_pairs import PairOptions, _sample_seed, add_pixel_matches, color_tensor
from pri3d.geometry import invert_rigid
from pri3d.io.images import read_rgb
from pri3d.io.kitti import (
    MAPPING_NAME,
    PAIRS_NAME,
    DriveSequence,
    calib_path,
    camera0_to_camera2,
    depth_path,
    image_path,
    poses_path,
    read_calib,
    read_drive_table,
    read_kitti_depth,
    read_kitti_pairs,
    read_pair_mapping,
    read_poses,
)


class KITTIPairs(Dataset):
    """Overlapping KITTI frame pairs for pre-training (view-invariant and depth losses).

    Each item is a dict (per view v in 1, 2): color{v} [3, H, W] float32 normalised; depth{v} [H, W]
    float32 metres (0 invalid); intrinsics{v} [3, 3]; world_to_camera{v} [4, 4] of camera 2;
    match{v} [S, 2] int64 (row, col), match_valid [S] bool; index; scene (the drive); frames (raw
    frame numbers). A pair that cannot be read comes back as {"skip": reason, "index": i}.

    Args:
        root: the KITTI root (odometry/ and depth/).
        options: size, num_matches, threshold, augment, seed; ``geometric_prior`` must be False.
        preprocessed: the output folder of `pri3d preprocess kitti` (default root/preprocessed).
        resize: resize to height H and take the first W columns instead of cropping around a match.
    """

    def __init__(
        self,
        root: str | Path,
        options: PairOptions | None = None,
        preprocessed: str | Path | None = None,
        resize: bool = False,
    ):
        self.root = Path(root)
        self.options = options or PairOptions()
        if self.options.geometric_prior:
            raise ValueError(
                "KITTI has no point clouds: the geometric prior cannot train on it; "
                "set pretrain.geometric_prior=false (the view-invariant and depth losses train)"
            )
        self.preprocessed = Path(preprocessed) if preprocessed else self.root / "preprocessed"
        self.resize = resize
        self.pairs = read_kitti_pairs(self.preprocessed / PAIRS_NAME)
        if not self.pairs:
            raise ValueError(f"{self.preprocessed / PAIRS_NAME}: the pair list is empty")
        table = {entry.drive: entry for entry in read_drive_table(self.root)}
        unknown = sorted({pair.drive for pair in self.pairs} - set(table))
        if unknown:
            raise ValueError(
                f"{self.preprocessed / PAIRS_NAME}: drives {unknown} are not odometry drives of {self.root}"
            )
        self.drives: dict[str, DriveSequence] = table
        self.epoch = 0
        self._cameras: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        """Samples of epoch e use their own random draws (match, augmentation, match sampling)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        frames = (pair.frame_i, pair.frame_j)
        generator = torch.Generator().manual_seed(_sample_seed(self.options.seed, self.epoch, index))
        try:
            views = [self._read_frame(pair.drive, pair.split, frame) for frame in frames]
            if self.resize:
                views = [self._resized(*view) for view in views]
            else:
                pick = int(torch.randint(pair.num_matches, (1,), generator=generator))
                match = read_pair_mapping(
                    self.preprocessed / pair.drive / MAPPING_NAME, pair.first_row + pick, 1
                )[0]
                views = [self._cropped(*view, centre) for view, centre in zip(views, (match[:2], match[2:]))]
        except (OSError, ValueError) as error:
            return {"skip": f"{pair.drive} frames {frames[0]}/{frames[1]}: {error}", "index": index}
        sample: dict = {"index": index, "scene": pair.drive, "frames": frames}
        for v, (color, depth, k, world_to_camera) in enumerate(views, start=1):
            sample[f"color{v}"] = color_tensor(Image.fromarray(color), generator, self.options.augment)
            sample[f"depth{v}"] = torch.from_numpy(np.ascontiguousarray(depth))
            sample[f"intrinsics{v}"] = torch.from_numpy(k).to(torch.float32)
            sample[f"world_to_camera{v}"] = torch.from_numpy(world_to_camera).to(torch.float32)
        add_pixel_matches(sample, self.options, generator)
        return sample

    # ------------------------------------------------------------------------------------------
    def _camera(self, sequence: str) -> tuple[np.ndarray, np.ndarray]:
        """(K2 [3, 3], camera-2-from-world of every sequence frame [n, 4, 4]) of a sequence, cached."""
        if sequence not in self._cameras:
            p2 = read_calib(calib_path(self.root, sequence))["P2"]
            camera0_to_world = read_poses(poses_path(self.root, sequence))
            world_to_camera0 = invert_rigid(torch.from_numpy(camera0_to_world)).numpy()
            self._cameras[sequence] = (p2[:, :3].copy(), camera0_to_camera2(p2) @ world_to_camera0)
        return self._cameras[sequence]

    def _read_frame(
        self, drive: str, split: str, raw_frame: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(colour uint8 [H, W, 3], depth float32 [H, W], K2 [3, 3], world_to_camera2 [4, 4]) at full size."""
        entry = self.drives[drive]
        k, world_to_camera = self._camera(entry.sequence)
        sequence_frame = raw_frame - entry.start
        if not 0 <= sequence_frame < len(world_to_camera) or raw_frame > entry.end:
            raise ValueError(
                f"raw frame {raw_frame} has no pose in sequence {entry.sequence} (from {entry.start})"
            )
        color_path = image_path(self.root, entry.sequence, sequence_frame)
        color = read_rgb(color_path)
        depth_file = depth_path(self.root, split, drive, raw_frame)
        depth = read_kitti_depth(depth_file)
        if depth.shape != color.shape[:2]:
            raise ValueError(
                f"{depth_file} is {depth.shape[0]}x{depth.shape[1]}, {color_path} is {color.shape[0]}x{color.shape[1]}"
            )
        return color, depth, k, world_to_camera[sequence_frame]

    def _cropped(
        self,
        color: np.ndarray,
        depth: np.ndarray,
        k: np.ndarray,
        world_to_camera: np.ndarray,
        centre: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The options.size window around ``centre`` (row, col), shifted inside the image."""
        height, width = self.options.size
        full_h, full_w = depth.shape
        if full_h < height or full_w < width:
            raise ValueError(f"frame is {full_h}x{full_w}, smaller than dataset.size {height}x{width}")
        top = min(max(int(centre[0]) - height // 2, 0), full_h - height)
        left = min(max(int(centre[1]) - width // 2, 0), full_w - width)
        k = k.copy()
        k[0, 2] -= left
        k[1, 2] -= top
        window = (slice(top, top + height), slice(left, left + width))
        return color[window], depth[window], k, world_to_camera

    def _resized(
        self, color: np.ndarray, depth: np.ndarray, k: np.ndarray, world_to_camera: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Resized to height H (aspect kept, width as torchvision's Resize(H)), first W columns.

        Colour is resampled bilinearly, depth with nearest so that invalid pixels stay 0 (the
        original's bilinear resize mixed its -1 into valid depths). Both resamplers map pixel
        centres as u' = (u + 0.5) * W'/W - 0.5, and so do the intrinsics.
        """
        height, width = self.options.size
        full_h, full_w = depth.shape
        new_w = int(height * full_w / full_h)
        if new_w < width:
            raise ValueError(
                f"frame is {full_h}x{full_w}: resized to height {height} it is {new_w} wide, < {width}"
            )
        color = np.asarray(Image.fromarray(color).resize((new_w, height), Image.BILINEAR))[:, :width]
        depth = np.asarray(Image.fromarray(depth).resize((new_w, height), Image.NEAREST))[:, :width]
        scale_x, scale_y = new_w / full_w, height / full_h
        k = k.copy()
        k[0, :2] *= scale_x  # fx and skew
        k[1, 1] *= scale_y
        k[0, 2] = (k[0, 2] + 0.5) * scale_x - 0.5
        k[1, 2] = (k[1, 2] + 0.5) * scale_y - 0.5
        return color, depth, k, world_to_camera
