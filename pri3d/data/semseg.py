"""Semantic-segmentation datasets in the layouts the original Pri3D reads (its `downstream/semseg` datasets).

Every dataset yields ``{"image": [3, H, W] float32 (ImageNet-normalised RGB), "label": [H, W] int64,
"index": int, "name": str}`` with label **0 = ignore** and classes 1..K-1, as the original UNet's
K-logit convention. A frame that fails to load, or whose label file holds a value outside the
dataset's ids (ScanNet: NYU40 ids above 40), yields ``{"skip": reason}`` naming the file at fault;
the collate function reports it instead of stopping the run.

| name | files under ``path`` | K | split |
|---|---|---|---|
| ScanNet | ``[scannet_frames_25k/]<scene>/color/<id>.jpg``, ``label/<id>.png`` (NYU40 ids) | 21 | scene lists |
| NYUv2 | ``<phase>/color/nyu_rgb_<id>.png``, ``<phase>/label/new_nyu_class13_<id>.png`` | 14 | folders |
| KITTI | ``image_2/*.png``, ``semantic/<same name>`` (Cityscapes label ids) | 20 | first 40 sorted = val |
| Cityscapes | ``leftImg8bit/<phase>/<city>/*_leftImg8bit.png``, ``gtFine/.../*_gtFine_labelIds.png`` | 20 | folders |

Resizing uses PIL (labels always nearest; colour nearest as the original UNet, or bilinear).
Augmentation randomness is a function of (seed, epoch, index), so runs and resumes are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from pri3d.io.images import IMAGENET_MEAN, IMAGENET_STD
from pri3d.io.scene_lists import require_scenes, scannet_frames_root, scannet_scene_list
from pri3d.labels import IGNORE_INDEX, SCANNET20_NAMES, nyu40_to_scannet20_lut

NYU13_NAMES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "painting", "sofa",
               "table", "tv", "wall", "window")  # fmt: skip
CITYSCAPES19_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)  # fmt: skip
#: Cityscapes label ids of the 19 evaluated classes, in train-id order (train id = position + 1).
CITYSCAPES19_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

KITTI_VAL_IMAGES = 40


def _lut(ids: tuple[int, ...]) -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)
    for train_id, label_id in enumerate(ids, start=1):
        lut[label_id] = train_id
    return lut


@dataclass
class SemsegOptions:
    """How frames become tensors.

    Attributes:
        size: (H, W) of training (and ScanNet/NYUv2/Cityscapes evaluation) images; KITTI crops to it
            for training and evaluates at full resolution, as the original.
        augment: training augmentation. ScanNet/NYUv2: horizontal flip + 5×5 Gaussian blur (each
            p = 0.5, the PSPNet/DeepLab recipe); KITTI/Cityscapes: rotation ±10° + flip (the UNet recipe).
        random_crop: KITTI training: a random ``size`` crop anywhere in the image.
        color_interpolation: ``nearest`` (the original UNet's) or ``bilinear``.
        seed: augmentation seed.
    """

    size: tuple[int, int] = (240, 320)
    augment: bool = False
    random_crop: bool = False
    color_interpolation: str = "nearest"
    seed: int = 0


class SegmentationFrames(Dataset):
    """A list of (colour file, label file) pairs with a label lookup table.

    Subclasses fill ``self.items`` and set ``class_names`` (K entries, index 0 = the ignore label),
    ``lut`` ([256] uint8, file label -> training label) and optionally ``full_resolution``.
    """

    class_names: tuple[str, ...] = ()
    lut: np.ndarray = np.arange(256, dtype=np.uint8)
    #: What the label files hold and their largest valid value, e.g. ("NYU40 ids", 40). A frame with a
    #: larger value is skipped with the reason, as the lookup table would silently make it "ignore".
    #: None: every byte value is a defined id.
    label_range: tuple[str, int] | None = None

    def __init__(
        self,
        items: list[tuple[Path, Path]],
        options: SemsegOptions,
        train: bool,
        full_resolution: bool = False,
    ) -> None:
        if options.color_interpolation not in ("nearest", "bilinear"):
            raise ValueError(
                f"dataset.color_interpolation={options.color_interpolation!r}: expected nearest or bilinear"
            )
        if len(options.size) != 2:
            raise ValueError(f"dataset.size={list(options.size)}: expected [height, width]")
        self.items = items
        self.options = options
        self.train = train
        self.full_resolution = full_resolution  # evaluate at each file's own size (batch 1)
        self.epoch = 0
        self.notes: list[str] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def name(self, index: int) -> str:
        return str(self.items[index][0])

    def __getitem__(self, index: int) -> dict:
        color_path, label_path = self.items[index]
        try:
            with Image.open(color_path) as picture:
                image = picture.convert("RGB")
        except (OSError, ValueError) as error:
            return {"skip": f"{color_path}: {error}"}
        try:
            label = self._read_label(label_path)
        except (OSError, ValueError) as error:
            return {"skip": f"{label_path}: {error}"}
        if self.full_resolution and label.size != image.size:
            image = image.resize(label.size, Image.BILINEAR)
        if not self.full_resolution:
            h, w = self.options.size
            resample = Image.NEAREST if self.options.color_interpolation == "nearest" else Image.BILINEAR
            image = image.resize((w, h), resample)
            label = label.resize((w, h), Image.NEAREST)
        image_t = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)  # [3, H, W] in [0, 1]
        label_t = torch.from_numpy(self.lut[np.asarray(label)].astype(np.int64))  # [H, W]
        if self.train and (self.options.augment or self.options.random_crop):
            rng = np.random.default_rng([self.options.seed, self.epoch, index])
            image_t, label_t = self.augment(image_t, label_t, rng)
        image_t = TF.normalize(image_t, IMAGENET_MEAN, IMAGENET_STD)
        return {"image": image_t, "label": label_t, "index": index, "name": str(color_path)}

    def _read_label(self, path: Path) -> Image.Image:
        """The label file as an 8-bit image; errors say what is wrong, the caller names the file."""
        with Image.open(path) as picture:
            array = np.asarray(picture)  # [H, W]; palette images give their indices
        if array.ndim != 2:
            raise ValueError(f"label image must have one channel, got shape {array.shape}")
        if array.max(initial=0) > 255:
            raise ValueError(f"label values up to {array.max()}, expected ids below 256")
        if self.label_range is not None:
            kind, highest = self.label_range
            wrong = np.unique(array[array > highest])
            if wrong.size:
                raise ValueError(f"label values {wrong.tolist()} are not {kind} (expected 0..{highest})")
        return Image.fromarray(array.astype(np.uint8))

    def augment(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator):
        """Photometric/geometric augmentation of ``[3, H, W]`` and ``[H, W]``; subclasses choose."""
        return image, label


def _flip(image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator):
    if rng.random() < 0.5:
        return image.flip(-1), label.flip(-1)
    return image, label


def _rotate(image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator, degrees: float = 10.0):
    angle = float(rng.uniform(-degrees, degrees))
    image = TF.rotate(image, angle, interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
    # rotated-in corners get label 0 = ignored, as the original
    label = TF.rotate(label[None], angle, interpolation=TF.InterpolationMode.NEAREST, fill=0)[0]
    return image, label


def _blur(image: torch.Tensor, rng: np.random.Generator):
    # cv2.GaussianBlur(img, (5, 5), 0) uses sigma = 0.3 * ((5 - 1) / 2 - 1) + 0.8 = 1.1
    return TF.gaussian_blur(image, [5, 5], [1.1, 1.1]) if rng.random() < 0.5 else image


# ------------------------------------------------------------------------------------------------
# ScanNet


class ScanNetSemseg(SegmentationFrames):
    """ScanNet ``scannet_frames_25k`` with NYU40 labels mapped to the 20 benchmark classes (0 = ignore)."""

    class_names = ("ignore", *SCANNET20_NAMES)
    lut = nyu40_to_scannet20_lut()
    label_range = ("NYU40 ids", 40)

    def __init__(
        self,
        path: str | Path,
        phase: str,
        options: SemsegOptions,
        split_dir: str | Path | None = None,
        train: bool | None = None,
    ) -> None:
        root = scannet_frames_root(path)
        scenes, source = scannet_scene_list(phase, split_dir, root)
        require_scenes(scenes, source, root)
        items, unlabelled = [], 0
        for scene in scenes:
            for color in sorted((root / scene / "color").glob("*.jpg")):
                label = root / scene / "label" / f"{color.stem}.png"
                if label.is_file():
                    items.append((color, label))
                else:
                    unlabelled += 1
        if not items:
            raise FileNotFoundError(
                f"{root}: no labelled frames (color/*.jpg + label/*.png) in the {phase} scenes"
            )
        super().__init__(items, options, train=phase != "val" if train is None else train)
        self.notes.append(f"ScanNet {phase}: {len(scenes)} scenes from {source}, {len(items)} frames")
        if unlabelled:
            self.notes.append(f"ScanNet {phase}: {unlabelled} colour frames without a label PNG left out")

    def augment(self, image, label, rng):
        image, label = _flip(image, label, rng)
        return _blur(image, rng), label


def _with_labels(colors: list[Path], label_of: Callable[[Path], Path]) -> list[tuple[Path, Path]]:
    """``(colour, label)`` pairs; a FileNotFoundError names the first missing label file."""
    items = [(color, label_of(color)) for color in colors]
    for color, label in items:
        if not label.is_file():
            raise FileNotFoundError(f"{label}: label for {color.name} not found")
    return items


class NYUv2Semseg(SegmentationFrames):
    """NYUv2 13-class labels (0 = background, ignored) from the author-prepared folders."""

    class_names = ("ignore", *NYU13_NAMES)

    def __init__(
        self, path: str | Path, phase: str, options: SemsegOptions, train: bool | None = None
    ) -> None:
        folder = Path(path) / phase
        colors = sorted((folder / "color").glob("nyu_rgb_*.png"))
        if not colors:
            raise FileNotFoundError(
                f"{folder / 'color'}: no nyu_rgb_<id>.png files (NYUv2 train.phase={phase})"
            )
        items = _with_labels(
            colors, lambda c: folder / "label" / f"new_nyu_class13_{c.stem.removeprefix('nyu_rgb_')}.png"
        )
        super().__init__(items, options, train=phase != "val" if train is None else train)
        lut = np.zeros(256, dtype=np.uint8)
        lut[: len(self.class_names)] = np.arange(len(self.class_names))
        self.lut = lut

    def augment(self, image, label, rng):
        image, label = _flip(image, label, rng)
        return _blur(image, rng), label


class KITTISemseg(SegmentationFrames):
    """KITTI semantics 2015 (Cityscapes label ids); sorted, first 40 images = val, the rest = train."""

    class_names = ("ignore", *CITYSCAPES19_NAMES)
    lut = _lut(CITYSCAPES19_LABEL_IDS)

    def __init__(
        self, path: str | Path, phase: str, options: SemsegOptions, train: bool | None = None
    ) -> None:
        root = Path(path)
        colors = sorted((root / "image_2").glob("*.png"))
        if not colors:
            raise FileNotFoundError(f"{root / 'image_2'}: no KITTI images (*.png)")
        if phase not in ("train", "val"):
            raise ValueError(f"train.phase={phase!r}: KITTI has train and val")
        colors = colors[:KITTI_VAL_IMAGES] if phase == "val" else colors[KITTI_VAL_IMAGES:]
        items = _with_labels(colors, lambda c: root / "semantic" / c.name)
        is_train = phase == "train" if train is None else train
        super().__init__(items, options, train=is_train, full_resolution=True)

    def augment(self, image, label, rng):
        if self.options.augment:
            image, label = _rotate(image, label, rng)
            image, label = _flip(image, label, rng)
        if self.options.random_crop:
            image, label = _random_crop(image, label, self.options.size, rng)
        return image, label

    def __getitem__(self, index: int) -> dict:
        sample = super().__getitem__(index)
        if "skip" in sample or not self.train or self.options.random_crop:
            return sample
        # training without a random crop: resize to `size` so that samples stack into a batch
        h, w = self.options.size
        sample["image"] = F.interpolate(sample["image"][None], (h, w), mode="bilinear", align_corners=False)[
            0
        ]
        sample["label"] = F.interpolate(sample["label"][None, None].float(), (h, w), mode="nearest")[
            0, 0
        ].long()
        return sample


def _random_crop(image: torch.Tensor, label: torch.Tensor, size, rng: np.random.Generator):
    """A ``size`` crop with its origin uniform over every valid position (padded with ignore if smaller)."""
    h, w = size
    pad_h, pad_w = max(h - image.shape[-2], 0), max(w - image.shape[-1], 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
        label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
    top = int(rng.integers(0, image.shape[-2] - h + 1))
    left = int(rng.integers(0, image.shape[-1] - w + 1))
    return image[:, top : top + h, left : left + w], label[top : top + h, left : left + w]


class CityscapesSemseg(SegmentationFrames):
    """Cityscapes fine annotations, 19 classes (+ 0 = ignore), resized to ``size`` (180×360 in the recipe)."""

    class_names = ("ignore", *CITYSCAPES19_NAMES)
    lut = _lut(CITYSCAPES19_LABEL_IDS)

    def __init__(
        self, path: str | Path, phase: str, options: SemsegOptions, train: bool | None = None
    ) -> None:
        root = Path(path)
        colors = sorted((root / "leftImg8bit" / phase).glob("*/*_leftImg8bit.png"))
        if not colors:
            raise FileNotFoundError(f"{root / 'leftImg8bit' / phase}: no <city>/*_leftImg8bit.png files")
        labels = root / "gtFine" / phase
        items = _with_labels(
            colors,
            lambda c: labels / c.parent.name / c.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"),
        )
        super().__init__(items, options, train=phase == "train" if train is None else train)

    def augment(self, image, label, rng):
        image, label = _rotate(image, label, rng)
        return _flip(image, label, rng)


SEMSEG_DATASETS: dict[str, type[SegmentationFrames]] = {
    "ScanNet": ScanNetSemseg,
    "NYUv2": NYUv2Semseg,
    "KITTI": KITTISemseg,
    "Cityscapes": CityscapesSemseg,
}


def build_semseg_dataset(
    name: str,
    path: str | Path,
    phase: str,
    options: SemsegOptions,
    split_dir: str | Path | None = None,
    train: bool | None = None,
) -> SegmentationFrames:
    """Build a dataset by its original name (ScanNet, NYUv2, KITTI, Cityscapes).

    ``train`` (default: the phase is a training phase) switches augmentation on.
    """
    if name not in SEMSEG_DATASETS:
        raise ValueError(f"dataset.name={name!r}: expected one of {', '.join(SEMSEG_DATASETS)}")
    if name == "ScanNet":
        return ScanNetSemseg(path, phase, options, split_dir=split_dir, train=train)
    return SEMSEG_DATASETS[name](path, phase, options, train=train)


def num_classes(name: str) -> int:
    """Logits (K, including the ignore class 0) of a dataset by name."""
    if name not in SEMSEG_DATASETS:
        raise ValueError(f"dataset.name={name!r}: expected one of {', '.join(SEMSEG_DATASETS)}")
    return len(SEMSEG_DATASETS[name].class_names)


def collate_semseg(samples: list[dict]) -> dict:
    """Stack samples: ``image [B, 3, H, W]``, ``label [B, H, W]``; failed samples go to ``skipped``."""
    skipped = [s["skip"] for s in samples if "skip" in s]
    samples = [s for s in samples if "skip" not in s]
    batch: dict = {"batch_size": len(samples), "skipped": skipped}
    if samples:
        batch["image"] = torch.stack([s["image"] for s in samples])
        batch["label"] = torch.stack([s["label"] for s in samples])
        batch["index"] = torch.tensor([s["index"] for s in samples])
        batch["name"] = [s["name"] for s in samples]
    return batch
