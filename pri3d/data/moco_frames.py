"""Single frames for MoCo v2: two "aug-plus" crops of each image, optionally mixed with other images.

Reads the output of `pri3d preprocess scannet` (docs/data.md): the pair list
``<root>/splits/overlap30.txt`` names the frames, read from ``<root>/<scene>/color/<i>.jpg``.

* ``frames="first_of_pair"`` (the original's): one item per pair, its first frame, so a frame with
  many overlapping partners comes up that many times per epoch.
* ``frames="each_once"``: every frame of the pair list (either column) once.

A ScanNet frame is resized to ``resize`` (nearest, as the original) before the augmentation; images
from ``extra_images`` (any folder of .jpg/.jpeg/.png, searched recursively, e.g. ImageNet's train
folder) are augmented as they are, as upstream MoCo does with ImageNet. The augmentation is upstream
MoCo v2's: RandomResizedCrop(crop, scale 0.2–1, bilinear), horizontal flip p 0.5, then the colour
augmentations (ColorJitter 0.4/0.4/0.4/0.1 p 0.8, grayscale p 0.2, Gaussian blur σ 0.1–2 p 0.5) and
ImageNet normalisation. The flip comes before the colour changes rather than after: these act on
each pixel or are mirror-symmetric (the blur), so the distribution of crops is the same.

Randomness is a function of (seed, epoch, index) alone, so a resumed run sees exactly the samples an
uninterrupted run would have seen. With ``extra_images`` and ``balanced`` (the original's
``--imagenet --balanced``), each epoch draws a fresh permutation of both sources, repeats the smaller
source's permutations until it is as long as the larger, and interleaves them 1:1 (even indices
ScanNet, odd ones the other images). That order must reach the model as it is
(``orders_epochs`` is True: the trainer's sampler then takes indices in order), so every global batch,
and every rank's and accumulation step's share of it, holds both sources 1:1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from pri3d.data.pretrain_pairs import _sample_seed, color_tensor
from pri3d.io.pairs import read_pair_list

__all__ = ["FRAME_CHOICES", "IMAGE_SUFFIXES", "MoCoFrameOptions", "MoCoFrames", "collate_views"]

FRAME_CHOICES = ("first_of_pair", "each_once")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class MoCoFrameOptions:
    """What a MoCo sample holds. Defaults are the original's recipe."""

    frames: str = "first_of_pair"  # or "each_once"
    resize: tuple[int, int] = (240, 320)  # (H, W) of ScanNet frames before the augmentation
    crop: int = 224  # side of the square crops
    extra_images: str = ""  # a folder of other images to mix in (the original: ImageNet)
    balanced: bool = True  # with extra_images: 1:1 interleaving, the smaller source oversampled
    seed: int = 0

    def __post_init__(self):
        if self.frames not in FRAME_CHOICES:
            raise ValueError(f"frames={self.frames!r}: expected one of {', '.join(FRAME_CHOICES)}")


class MoCoFrames(Dataset):
    """Images for MoCo. Each item is a dict:
    image_q, image_k [3, crop, crop] float32 normalised (two augmentations of one image);
    shuffle_key [] float32 in [0, 1) (orders the key encoder's BN groups, see `pri3d.models.moco`);
    source 0 for a ScanNet frame, 1 for an extra image; name (``<scene>/color/<i>.jpg`` or the path
    under ``extra_images``); index. An image that cannot be read comes back as
    {"skip": reason, "index": i} (see `collate_views`).
    """

    def __init__(
        self,
        root: str | Path,
        pair_list: str = "splits/overlap30.txt",
        options: MoCoFrameOptions | None = None,
    ):
        self.root = Path(root)
        self.options = options or MoCoFrameOptions()
        list_path = self.root / pair_list
        if not list_path.is_file():
            raise FileNotFoundError(
                f"{list_path}: pair list not found (run `pri3d preprocess scannet` first)"
            )
        pairs = read_pair_list(list_path)
        if not pairs:
            raise ValueError(f"{list_path}: the pair list is empty")
        if self.options.frames == "first_of_pair":
            self.frames = [(scene, i) for scene, i, _, _ in pairs]
        else:
            self.frames = sorted({(p.scene, f) for p in pairs for f in (p.frame_i, p.frame_j)})
        self.extra = find_images(self.options.extra_images) if self.options.extra_images else []
        self.orders_epochs = bool(self.extra) and self.options.balanced
        self.epoch = 0
        self._orders = self._epoch_orders(0)

    def __len__(self) -> int:
        if self.orders_epochs:
            return 2 * max(len(self.frames), len(self.extra))
        return len(self.frames) + len(self.extra)

    def set_epoch(self, epoch: int) -> None:
        """Epoch e has its own random draws (augmentation, BN groups and, balanced, its mixing order)."""
        self.epoch = epoch
        self._orders = self._epoch_orders(epoch)

    def source_item(self, index: int) -> tuple[int, int]:
        """(source, item) that ``index`` reads this epoch: source 0 is ``frames``, 1 is ``extra``."""
        if self.orders_epochs:
            return index % 2, int(self._orders[index % 2][index // 2])
        return (0, index) if index < len(self.frames) else (1, index - len(self.frames))

    def __getitem__(self, index: int) -> dict:
        source, item = self.source_item(index)
        # stream index + 1: stream 0 is the epoch's mixing order
        generator = torch.Generator().manual_seed(_sample_seed(self.options.seed, self.epoch, index + 1))
        if source == 0:
            scene, frame = self.frames[item]
            name, path = f"{scene}/color/{frame}.jpg", self.root / scene / "color" / f"{frame}.jpg"
        else:
            path = self.extra[item]
            name = path.relative_to(self.options.extra_images).as_posix()
        try:
            with Image.open(path) as file:
                image = file.convert("RGB")
        except (OSError, ValueError) as error:
            return {"skip": f"{path}: cannot read the image ({error})", "index": index}
        if source == 0:
            height, width = self.options.resize
            image = image.resize((width, height), Image.NEAREST)
        views = [aug_plus(image, self.options.crop, generator) for _ in range(2)]
        return {
            "image_q": views[0],
            "image_k": views[1],
            "shuffle_key": torch.rand((), generator=generator),
            "source": source,
            "name": name,
            "index": index,
        }

    def _epoch_orders(self, epoch: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Balanced mixing: per source, the items of epoch ``epoch``'s interleaved positions."""
        if not self.orders_epochs:
            return None
        length = max(len(self.frames), len(self.extra))
        generator = torch.Generator().manual_seed(_sample_seed(self.options.seed, epoch, 0))
        orders = []
        for count in (len(self.frames), len(self.extra)):
            rounds = [torch.randperm(count, generator=generator) for _ in range(math.ceil(length / count))]
            orders.append(torch.cat(rounds)[:length].numpy().astype(np.int32))
        return orders[0], orders[1]


def aug_plus(image: Image.Image, crop: int, generator: torch.Generator) -> torch.Tensor:
    """MoCo v2's "aug-plus" of an RGB image -> [3, crop, crop] float32 normalised, drawn from ``generator``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        image = v2.RandomResizedCrop(crop, scale=(0.2, 1.0))(image)
        if torch.rand(1) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return color_tensor(image, generator, augment=True)


def find_images(folder: str | Path) -> list[Path]:
    """Every image (``IMAGE_SUFFIXES``, any case) under ``folder``, recursively, in sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset.extra_images={folder}: not a folder")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ValueError(f"dataset.extra_images={folder}: no {'/'.join(IMAGE_SUFFIXES)} images in it")
    return images


def collate_views(samples: list[dict]) -> dict:
    """Stack `MoCoFrames` items. Returns ``batch_size``, ``skipped`` (reasons), and when any sample
    loaded: image_q, image_k [B, 3, crop, crop], shuffle_key [B], index [B], name, and with images from the
    extra folder ``counts`` (``extra_images``: how many)."""
    skipped = [s["skip"] for s in samples if "skip" in s]
    samples = [s for s in samples if "skip" not in s]
    batch: dict = {"batch_size": len(samples), "skipped": skipped}
    if not samples:
        return batch
    for key in ("image_q", "image_k", "shuffle_key"):
        batch[key] = torch.stack([s[key] for s in samples])
    batch["index"] = torch.tensor([s["index"] for s in samples])
    batch["name"] = [s["name"] for s in samples]
    extra = sum(s["source"] for s in samples)
    if extra:
        batch["counts"] = {"extra_images": extra}
    return batch
