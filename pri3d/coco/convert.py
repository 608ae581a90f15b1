"""COCO instance annotations from ScanNet ``scannet_frames_25k`` and NYUv2 instance PNGs, as the
original's `downstream/insseg/dataset/scannet2coco.py` makes them.

Both datasets store one instance image per frame whose value is ``label × 1000 + instance``:

* ScanNet ``<scene>/instance/<id>.png``: 16-bit, label = NYU40 id, instance = ScanNet objectId + 1
  (the format of ScanNet's `2d_helpers`, in which ``scannet_frames_25k`` ships; the generator
  writes the same).
* NYUv2 ``<phase>/instance/<id>.png``: 8-bit per-class instance index; the label comes from
  ``<phase>/label/new_nyu_class13_<id>.png`` (13 classes) and is combined here in int32.

Every distinct value is one object. It becomes an annotation when its label is one of the evaluated
classes (:data:`SCANNET18_NYU40_IDS`, :data:`NYUV2_9_NYU13_IDS`; wall, floor, ceiling … are left
out), its instance index is not 0 (0 = pixels of no object) and it covers at least ``min_area``
pixels (the original's 1000). Category, image and annotation ids start at 1; images without a kept
annotation are left out, as the original. Masks are run-length encoded (exact, the default) or
polygons (marching squares; holes are filled, as every COCO polygon).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

from pri3d.io.atomic import atomic_write
from pri3d.io.images import read_label_png
from pri3d.io.scene_lists import require_scenes, scannet_frames_root, scannet_scene_list
from pri3d.labels import NYU40_NAMES

__all__ = [
    "MIN_AREA",
    "NYUV2_9_NAMES",
    "NYUV2_9_NYU13_IDS",
    "SCANNET18_NAMES",
    "SCANNET18_NYU40_IDS",
    "ConversionReport",
    "convert_nyuv2",
    "convert_scannet",
    "encode_mask",
    "frame_annotations",
]

#: NYU40 ids of ScanNet's 18 instance classes (the 20 benchmark classes without wall and floor).
SCANNET18_NYU40_IDS: tuple[int, ...] = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SCANNET18_NAMES: tuple[str, ...] = tuple(NYU40_NAMES[i] for i in SCANNET18_NYU40_IDS)
#: NYUv2 13-class ids of the 9 instance classes (background, ceiling, floor, objects, wall left out).
NYUV2_9_NYU13_IDS: tuple[int, ...] = (1, 2, 4, 6, 8, 9, 10, 11, 13)
NYUV2_9_NAMES: tuple[str, ...] = ("bed", "books", "chair", "furniture", "painting", "sofa", "table", "tv",
                                  "window")  # fmt: skip
#: The original's minimum mask size in pixels (at the file's resolution).
MIN_AREA = 1000
_VALUE_BASE = 1000  # value = label * 1000 + instance


@dataclass
class ConversionReport:
    """What a conversion kept and left out, and why (written beside the JSON as ``<out>.report.json``)."""

    out: str
    images: int = 0
    annotations: int = 0
    per_category: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    frames_without_annotations: int = 0  # left out of `images`, as the original
    frames_without_instance_png: int = 0
    masks_too_small: int = 0
    masks_not_in_classes: int = 0
    masks_instance_zero: int = 0
    scene_list: str = ""  # ScanNet: the scene list the frames came from

    def summary(self) -> str:
        scenes = f" (scene list: {self.scene_list})" if self.scene_list else ""
        return (
            f"{self.out}: {self.images} images, {self.annotations} annotations from {self.frames} frames{scenes}; "
            f"left out: {self.frames_without_annotations} frames without a kept object, "
            f"{self.frames_without_instance_png} without an instance PNG, {self.masks_too_small} masks "
            f"under the minimum area, {self.masks_not_in_classes} of other classes, "
            f"{self.masks_instance_zero} with instance id 0"
        )


def _lut(class_ids: tuple[int, ...], size: int) -> np.ndarray:
    """[size] int64: file label -> category id (1..K), 0 = not an instance class."""
    lut = np.zeros(size, dtype=np.int64)
    lut[list(class_ids)] = np.arange(1, len(class_ids) + 1)
    return lut


def encode_mask(mask: np.ndarray, mask_format: str = "rle") -> tuple[dict | list, list[float], int]:
    """``[H, W]`` bool mask -> (COCO segmentation, bbox ``[x, y, w, h]``, area in pixels).

    The bbox and area are the mask's own (pixel extent, pixel count), whatever the format.
    ``polygon`` traces the 0.5 iso-line of the mask; vertices are in COCO's pixel-corner coordinates
    (pixel ``(r, c)`` covers ``[c, c + 1] × [r, r + 1]``), so the polygons rasterise back to the mask
    except for holes, which COCO polygons cannot express.
    """
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    area = int(mask_utils.area(rle))
    if mask_format == "rle":
        return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}, bbox, area
    if mask_format != "polygon":
        raise ValueError(f"mask format {mask_format!r}: expected rle or polygon")
    import contourpy

    padded = np.pad(mask.astype(np.float64), 1)  # closes contours at the image border
    lines = contourpy.contour_generator(z=padded, line_type="Separate").lines(0.5)
    polygons = []
    for line in lines:  # [P, 2] (x, y) in padded pixel-centre coordinates, first point repeated
        points = line[:-1] - 0.5  # -1 for the padding, +0.5 from pixel centres to pixel corners
        if len(points) >= 3:
            polygons.append([round(float(v), 2) for v in points.ravel()])
    return polygons, bbox, area


def frame_annotations(
    values: np.ndarray, lut: np.ndarray, min_area: int, mask_format: str
) -> tuple[list[dict], Counter]:
    """Annotations (without ids) of one ``[H, W]`` int ``label × 1000 + instance`` image.

    Returns (``[{category_id, segmentation, bbox, area, iscrowd}]`` in increasing value order, counts
    of what was left out: ``masks_too_small``, ``masks_not_in_classes``, ``masks_instance_zero``).
    """
    unique, inverse, counts = np.unique(values.ravel(), return_inverse=True, return_counts=True)
    inverse = inverse.reshape(values.shape)
    left_out: Counter = Counter()
    annotations = []
    for index, (value, count) in enumerate(zip(unique.tolist(), counts.tolist())):
        label, instance = divmod(value, _VALUE_BASE)
        category = int(lut[label]) if label < len(lut) else 0
        if category == 0:
            left_out["masks_not_in_classes"] += int(value != 0)
            continue
        if instance == 0:
            left_out["masks_instance_zero"] += 1
            continue
        if count < min_area:
            left_out["masks_too_small"] += 1
            continue
        segmentation, bbox, area = encode_mask(inverse == index, mask_format)
        if not segmentation:  # a polygon mask too thin to trace
            left_out["masks_too_small"] += 1
            continue
        annotations.append(
            {"category_id": category, "segmentation": segmentation, "bbox": bbox, "area": area, "iscrowd": 0}
        )
    return annotations, left_out


# ------------------------------------------------------------------------------------------------
# frames of each dataset: (file_name relative to the image root, colour path, instance path, label path)


@dataclass(frozen=True)
class _Frame:
    file_name: str
    color: Path
    instance: Path
    label: Path | None  # NYUv2: the label PNG combined with the instance PNG


def _scannet_frames(frames_root: Path, scenes: list[str]) -> Iterator[_Frame]:
    for scene in scenes:
        for color in sorted((frames_root / scene / "color").glob("*.jpg")):
            instance = frames_root / scene / "instance" / f"{color.stem}.png"
            yield _Frame(f"{scene}/color/{color.name}", color, instance, None)


def _nyuv2_frames(root: Path, phase: str) -> Iterator[_Frame]:
    folder = root / phase
    colors = sorted((folder / "color").glob("nyu_rgb_*.png"))
    if not colors:
        raise FileNotFoundError(f"{folder / 'color'}: no nyu_rgb_<id>.png files (NYUv2 --split {phase})")
    for color in colors:
        frame_id = color.stem.removeprefix("nyu_rgb_")
        label = folder / "label" / f"new_nyu_class13_{frame_id}.png"
        yield _Frame(f"{phase}/color/{color.name}", color, folder / "instance" / f"{frame_id}.png", label)


def _read_frame(frame: _Frame) -> np.ndarray:
    """The frame's ``label × 1000 + instance`` image as int64 ``[H, W]``; checks the colour size."""
    instance = read_label_png(frame.instance).astype(np.int64)
    if frame.label is not None:
        if not frame.label.is_file():
            raise FileNotFoundError(f"{frame.label}: label PNG for {frame.instance} not found")
        label = read_label_png(frame.label).astype(np.int64)
        if label.shape != instance.shape:
            raise ValueError(
                f"{frame.label}: size {label.shape} differs from {frame.instance} {instance.shape}"
            )
        instance = label * _VALUE_BASE + instance
    with Image.open(frame.color) as color:  # reads the header only
        width, height = color.size
    if (height, width) != instance.shape:
        raise ValueError(
            f"{frame.color} is {width}×{height} but {frame.instance} is {instance.shape[1]}×{instance.shape[0]}; "
            "colour and instance images must have the same size"
        )
    return instance


def _convert_frame(
    job: tuple[_Frame, np.ndarray, int, str],
) -> tuple[tuple[int, int], list[dict], Counter] | None:
    frame, lut, min_area, mask_format = job
    if not frame.instance.is_file():
        return None
    values = _read_frame(frame)
    annotations, left_out = frame_annotations(values, lut, min_area, mask_format)
    return values.shape, annotations, left_out


def _convert(
    frames: list[_Frame],
    lut: np.ndarray,
    names: tuple[str, ...],
    description: str,
    out: Path,
    min_area: int,
    mask_format: str,
    workers: int,
    progress: bool,
    scene_list: str = "",
) -> ConversionReport:
    if mask_format not in ("rle", "polygon"):
        raise ValueError(f"--masks {mask_format!r}: expected rle or polygon")
    if min_area < 1:
        raise ValueError(f"--min-area {min_area}: expected at least 1 pixel")
    from tqdm import tqdm

    report = ConversionReport(str(out), frames=len(frames), scene_list=scene_list)
    images: list[dict] = []
    annotations: list[dict] = []
    jobs = [(frame, lut, min_area, mask_format) for frame in frames]
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 1:
            pool = stack.enter_context(ProcessPoolExecutor(min(workers, len(jobs))))
            results = pool.map(_convert_frame, jobs, chunksize=16)
        else:
            results = map(_convert_frame, jobs)
        bar = stack.enter_context(tqdm(total=len(jobs), unit="frame", desc="coco", disable=not progress))
        for frame, result in zip(frames, results):  # in frame order: ids do not depend on `workers`
            bar.update(1)
            if result is None:
                report.frames_without_instance_png += 1
                continue
            (height, width), kept, left_out = result
            for key, count in left_out.items():
                setattr(report, key, getattr(report, key) + count)
            if not kept:
                report.frames_without_annotations += 1
                continue
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": frame.file_name, "width": width, "height": height})
            for annotation in kept:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
    if report.frames_without_instance_png == len(frames):
        raise FileNotFoundError(
            f"none of the {len(frames)} frames has an instance PNG (e.g. {frames[0].instance})"
        )
    counts = Counter(a["category_id"] for a in annotations)
    report.images, report.annotations = len(images), len(annotations)
    report.per_category = {name: counts.get(i, 0) for i, name in enumerate(names, start=1)}
    document = {
        "info": {
            "description": description,
            "version": "1.0",
            "year": date.today().year,
            "contributor": "pri3d coco",
            "date_created": date.today().isoformat(),
            "min_area": min_area,
            "masks": mask_format,
        },
        "licenses": [],
        "categories": [
            {"id": i, "name": name, "supercategory": "object"} for i, name in enumerate(names, start=1)
        ],
        "images": images,
        "annotations": annotations,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as file:
        json.dump(document, file)
    _validate(out, report)
    with atomic_write(out.with_name(out.name + ".report.json")) as file:
        file.write(json.dumps(asdict(report), indent=1) + "\n")
    return report


def _validate(path: Path, report: ConversionReport) -> None:
    """Load the written file with pycocotools and decode every mask once."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    if len(coco.imgs) != report.images or len(coco.anns) != report.annotations:
        raise RuntimeError(
            f"{path}: pycocotools reads {len(coco.imgs)} images / {len(coco.anns)} annotations, "
            f"{report.images} / {report.annotations} were written"
        )
    for annotation in coco.anns.values():
        coco.annToRLE(annotation)


def convert_scannet(
    frames: str | Path,
    phase: str,
    out: str | Path,
    split_dir: str | Path | None = None,
    min_area: int = MIN_AREA,
    mask_format: str = "rle",
    workers: int = 1,
    progress: bool = True,
) -> ConversionReport:
    """``scannet_frames_25k`` scenes of ``phase`` (train, val, train20 …) -> COCO JSON at ``out``.

    Scene lists as `pri3d finetune semseg` reads them (``split_dir``, default: the data's own
    ``scannetv2_*.txt`` lists if it has them, else those shipped with pri3d; see
    :mod:`pri3d.io.scene_lists`); file names are ``<scene>/color/<id>.jpg`` relative to the
    ``scannet_frames_25k`` folder.
    """
    root = scannet_frames_root(frames, option="--frames")
    scenes, source = scannet_scene_list(
        phase, split_dir, root, phase_option="--split", split_option="--split-dir"
    )
    require_scenes(scenes, source, root, option="--split-dir")
    frame_list = list(_scannet_frames(root, scenes))
    if not frame_list:
        raise FileNotFoundError(f"{root}: no <scene>/color/*.jpg frames in the {phase} scenes")
    lut = _lut(SCANNET18_NYU40_IDS, len(NYU40_NAMES))
    return _convert(
        frame_list,
        lut,
        SCANNET18_NAMES,
        f"ScanNet scannet_frames_25k {phase}",
        Path(out),
        min_area,
        mask_format,
        workers,
        progress,
        scene_list=source,
    )


def convert_nyuv2(
    root: str | Path,
    phase: str,
    out: str | Path,
    min_area: int = MIN_AREA,
    mask_format: str = "rle",
    workers: int = 1,
    progress: bool = True,
) -> ConversionReport:
    """NYUv2 ``<root>/<phase>/{color,label,instance}`` -> COCO JSON at ``out``.

    File names are ``<phase>/color/nyu_rgb_<id>.png`` relative to ``root``.
    """
    frame_list = list(_nyuv2_frames(Path(root), phase))
    lut = _lut(NYUV2_9_NYU13_IDS, 14)
    return _convert(
        frame_list, lut, NYUV2_9_NAMES, f"NYUv2 {phase}", Path(out), min_area, mask_format, workers, progress
    )
