"""Instance-segmentation datasets: COCO-format annotations over an image folder.

| name | images (``dataset.path``) | annotations (``dataset.annotations``: a file, or a folder holding) |
|---|---|---|
| ScanNet | ``[scannet_frames_25k/]<scene>/color/<id>.jpg`` | ``scannet_<phase>.coco.json`` (`pri3d coco scannet`) |
| NYUv2 | ``<phase>/color/nyu_rgb_<id>.png`` | ``nyu_<phase>.coco.json`` (`pri3d coco nyuv2`) |
| COCO | ``<path>/<phase>/*.jpg`` (``train2017``, ``val2017``) | ``instances_<phase>.json``, default ``<path>/annotations`` |

A sample is ``{"image": [3, H, W] float32 RGB in [0, 1], "target": {"boxes": [N, 4] float32 (x1, y1,
x2, y2) pixel corners, "labels": [N] int64 (1..K), "masks": [N, H, W] uint8}, "image_id": int,
"index": int}`` at the file's own resolution: Mask R-CNN's transform normalises (ImageNet mean/std,
as the backbone was pre-trained) and resizes. Category ids of the file are mapped to 1..K in
increasing order (COCO's 1..90 with gaps become 1..80); an annotation of a category the file does
not declare is an error naming it. Crowd regions are not training targets; training leaves out
images without a target (Detectron2's ``FILTER_EMPTY_ANNOTATIONS``). A frame that fails to load
yields ``{"skip": reason}``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from pri3d.io.coco import load_coco
from pri3d.io.scene_lists import scannet_frames_root

__all__ = ["INSSEG_DATASETS", "CocoInstances", "annotation_file", "build_insseg_dataset", "collate_insseg"]

#: dataset name -> the original's annotation file name for a phase.
INSSEG_DATASETS = {
    "ScanNet": "scannet_{phase}.coco.json",
    "NYUv2": "nyu_{phase}.coco.json",
    "COCO": "instances_{phase}.json",
}


class CocoInstances(Dataset):
    """Images and instance masks of one COCO instances file.

    Args:
        annotations: the JSON file.
        image_root: folder the images' ``file_name`` is relative to.
        train: leave out images without targets and (with ``flip``) flip half the samples.
        flip: horizontal flip with p = 0.5 (Detectron2's default training augmentation).
        seed: augmentation is a function of (seed, epoch, index).
    """

    def __init__(
        self, annotations: str | Path, image_root: str | Path, train: bool, flip: bool = False, seed: int = 0
    ) -> None:
        self.annotation_path = Path(annotations)
        self.image_root = Path(image_root)
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"dataset.path: image folder {self.image_root} not found")
        self.coco = load_coco(self.annotation_path)
        self.category_ids = sorted(self.coco.cats)
        if not self.category_ids:
            raise ValueError(f"{self.annotation_path}: no categories")
        for annotation in self.coco.dataset["annotations"]:
            if annotation.get("category_id") not in self.coco.cats:
                raise ValueError(
                    f"{self.annotation_path}: annotation {annotation.get('id')} (image "
                    f"{annotation.get('image_id')}) has category_id {annotation.get('category_id')}, "
                    f"not among the file's categories {self.category_ids}"
                )
        self.class_names = tuple(self.coco.cats[c]["name"] for c in self.category_ids)
        self.label_of = {c: i for i, c in enumerate(self.category_ids, start=1)}
        self.train, self.flip, self.seed = train, flip, seed
        image_ids = sorted(self.coco.imgs)
        if train:
            image_ids = [i for i in image_ids if any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns[i])]
        if not image_ids:
            raise ValueError(f"{self.annotation_path}: no images" + (" with annotations" if train else ""))
        self.image_ids = image_ids
        self.epoch = 0
        left_out = len(self.coco.imgs) - len(image_ids)
        self.notes = [
            f"{self.annotation_path}: {len(image_ids)} images, {len(self.class_names)} classes"
            + (f" ({left_out} images without a non-crowd annotation left out)" if left_out else "")
        ]

    @property
    def num_classes(self) -> int:
        """Object classes K (the detector adds the background class)."""
        return len(self.class_names)

    def image_size(self) -> tuple[int, int]:
        """The most common (height, width) of the images: the data's resolution."""
        sizes = Counter((self.coco.imgs[i]["height"], self.coco.imgs[i]["width"]) for i in self.image_ids)
        return sizes.most_common(1)[0][0]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.image_ids)

    def name(self, index: int) -> str:
        return self.coco.imgs[self.image_ids[index]]["file_name"]

    def __getitem__(self, index: int) -> dict:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_root / info["file_name"]
        try:
            with Image.open(path) as picture:
                rgb = picture.convert("RGB")
        except OSError as error:
            return {"skip": f"{path}: {error}"}
        if rgb.size != (info["width"], info["height"]):
            return {
                "skip": f"{path}: {rgb.size[0]}×{rgb.size[1]}, but {self.annotation_path} says "
                f"{info['width']}×{info['height']}"
            }
        image = TF.to_dtype(TF.pil_to_tensor(rgb), torch.float32, scale=True)  # [3, H, W] in [0, 1]
        target = self.target(image_id)
        if self.train and self.flip and np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5:
            image, target = _flip(image, target)
        return {"image": image, "target": target, "image_id": image_id, "index": index}

    def target(self, image_id: int) -> dict[str, torch.Tensor]:
        """Non-crowd annotations of an image with a positive box: boxes, labels, masks."""
        info = self.coco.imgs[image_id]
        kept = [
            a
            for a in self.coco.imgToAnns[image_id]
            if not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0
        ]
        boxes = torch.tensor([a["bbox"] for a in kept], dtype=torch.float32).reshape(
            -1, 4
        )  # [N, 4] x, y, w, h
        boxes[:, 2:] += boxes[:, :2]  # -> x1, y1, x2, y2
        masks = np.zeros((len(kept), info["height"], info["width"]), dtype=np.uint8)  # [N, H, W]
        for i, annotation in enumerate(kept):
            masks[i] = self.coco.annToMask(annotation)
        labels = torch.tensor([self.label_of[a["category_id"]] for a in kept], dtype=torch.int64)
        return {"boxes": boxes, "labels": labels, "masks": torch.from_numpy(masks)}


def _flip(image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}


def annotation_file(name: str, annotations: str | Path, path: str | Path, phase: str) -> Path:
    """The annotation JSON of ``phase``: ``annotations`` itself when it is a file, else the original's
    file name (:data:`INSSEG_DATASETS`) inside it; COCO's default folder is ``<path>/annotations``."""
    if name not in INSSEG_DATASETS:
        raise ValueError(f"dataset.name={name!r}: expected one of {', '.join(INSSEG_DATASETS)}")
    folder = Path(annotations) if annotations else (Path(path) / "annotations" if name == "COCO" else None)
    if folder is None:
        raise ValueError(f"dataset.annotations is empty: give the folder with the {name} COCO JSON files")
    if folder.is_file():
        return folder
    candidate = folder / INSSEG_DATASETS[name].format(phase=phase)
    if not candidate.is_file():
        hint = (
            f"; write it with `pri3d coco {name.lower()} --split {phase} --out {candidate}`"
            if name != "COCO"
            else ""
        )
        raise FileNotFoundError(f"dataset.annotations: {candidate} not found{hint}")
    return candidate


def build_insseg_dataset(
    name: str,
    path: str | Path,
    annotations: str | Path,
    phase: str,
    train: bool,
    flip: bool = False,
    seed: int = 0,
) -> CocoInstances:
    """The dataset of ``phase`` by its original name (ScanNet, NYUv2, COCO); see the module docstring."""
    json_path = annotation_file(name, annotations, path, phase)
    if name == "ScanNet":
        image_root = scannet_frames_root(path)
    elif name == "COCO":
        image_root = Path(path) / phase
    else:
        image_root = Path(path)
    return CocoInstances(json_path, image_root, train=train, flip=flip, seed=seed)


def collate_insseg(samples: list[dict]) -> dict:
    """Lists (images differ in size): ``images`` [3, H, W] each, ``targets``, ``image_id``; failures in ``skipped``."""
    skipped = [s["skip"] for s in samples if "skip" in s]
    samples = [s for s in samples if "skip" not in s]
    return {
        "batch_size": len(samples),
        "skipped": skipped,
        "images": [s["image"] for s in samples],
        "targets": [s["target"] for s in samples],
        "image_id": [s["image_id"] for s in samples],
        "index": [s["index"] for s in samples],
    }
