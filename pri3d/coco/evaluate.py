"""COCO evaluation through pycocotools: box and mask AP, AP50, AP75, APs/m/l and per-class AP / AP50.

Numbers are fractions in [0, 1], as pycocotools computes them (and as `pri3d eval semseg` reports
mIoU); Detectron2's ``COCOEvaluator`` and the original's README print them ×100 (the README's
headline is AP50). A class without ground truth in the evaluated images has no AP
(``None``), as in pycocotools.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

__all__ = [
    "STAT_NAMES",
    "evaluate_detections",
    "format_coco_table",
    "gt_as_detections",
    "to_coco_results",
]

#: The first six numbers of ``COCOeval.stats``, in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def gt_as_detections(coco) -> list[dict]:
    """The ground truth of ``coco`` as detections with score 1 (non-crowd only); masks as RLE.

    Evaluated against itself this gives AP = 1 for every class with ground truth.
    """
    detections = []
    for annotation in coco.dataset["annotations"]:
        if annotation.get("iscrowd", 0):
            continue
        rle = coco.annToRLE(annotation)
        counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
        detections.append(
            {
                "image_id": annotation["image_id"],
                "category_id": annotation["category_id"],
                "bbox": list(annotation["bbox"]),
                "score": 1.0,
                "segmentation": {"size": list(rle["size"]), "counts": counts},
            }
        )
    return detections


def _mean_valid(values: np.ndarray) -> float | None:
    values = values[values > -1]
    return float(values.mean()) if values.size else None


def evaluate_detections(
    coco_gt, detections: list[dict], iou_types: tuple[str, ...] = ("bbox", "segm")
) -> dict:
    """COCO metrics of ``detections`` (COCO results format) against ``coco_gt``, per IoU type.

    Returns ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class": {name: {"AP",
    "AP50", "instances"}}, "summary": pycocotools' text table}}`` with COCO's standard limit of 100
    detections per image. Only the ground truth's images are evaluated; without any detection every AP
    of a class with ground truth is 0.
    """
    from pycocotools.cocoeval import COCOeval

    categories = sorted(coco_gt.cats)
    names = {c: coco_gt.cats[c]["name"] for c in categories}
    instances = {c: 0 for c in categories}
    for annotation in coco_gt.dataset["annotations"]:
        if not annotation.get("iscrowd", 0):
            instances[annotation["category_id"]] += 1
    results = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"IoU type {iou_type!r}: expected bbox or segm")
        if not detections:
            per_class = {
                names[c]: {
                    "AP": 0.0 if instances[c] else None,
                    "AP50": 0.0 if instances[c] else None,
                    "instances": instances[c],
                }
                for c in categories
            }
            results[iou_type] = {
                **dict.fromkeys(STAT_NAMES, 0.0),
                "per_class": per_class,
                "summary": "no detections",
            }
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            # segm: without the box, loadRes takes each detection's area from its mask (as Detectron2)
            drop = "bbox" if iou_type == "segm" else ""
            coco_dt = coco_gt.loadRes([{k: v for k, v in d.items() if k != drop} for d in detections])
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
        with contextlib.redirect_stdout(io.StringIO()) as text:
            evaluator.summarize()
        precision = evaluator.eval["precision"]  # [T IoUs, R recalls, K classes, A areas, M maxDets]
        per_class = {}
        for k, category in enumerate(evaluator.params.catIds):
            per_class[names[category]] = {
                "AP": _mean_valid(precision[:, :, k, 0, -1]),
                "AP50": _mean_valid(precision[0, :, k, 0, -1]),
                "instances": instances[category],
            }
        stats = {name: (float(v) if v > -1 else None) for name, v in zip(STAT_NAMES, evaluator.stats)}
        results[iou_type] = {**stats, "per_class": per_class, "summary": text.getvalue().strip()}
    return results


def to_coco_results(outputs: list[dict], image_ids: list[int], category_ids: list[int]) -> list[dict]:
    """torchvision detector outputs -> COCO results (boxes x, y, w, h; masks thresholded at 0.5, as RLE).

    ``outputs``: per image ``boxes`` [N, 4] (x1, y1, x2, y2), ``labels`` [N] in 1..K, ``scores`` [N],
    ``masks`` [N, 1, H, W] probabilities; label l is ``category_ids[l - 1]``.
    """
    from pycocotools import mask as mask_utils

    results = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output["boxes"].cpu().numpy()  # [N, 4] x1, y1, x2, y2
        if not len(boxes):
            continue
        masks = (output["masks"][:, 0] > 0.5).cpu().numpy()  # [N, H, W]
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        for box, label, score, rle in zip(boxes, output["labels"].tolist(), output["scores"].tolist(), rles):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": category_ids[label - 1],
                    "score": float(score),
                    "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                    "segmentation": {
                        "size": [int(s) for s in rle["size"]],
                        "counts": rle["counts"].decode("ascii"),
                    },
                }
            )
    return results


def percent(value: float | None) -> str:
    """A metric ×100 in five characters; ``-`` where pycocotools has none."""
    return "  -  " if value is None else f"{100 * value:5.1f}"


def format_coco_table(report: dict) -> str:
    """The headline numbers ×100 (as the original's README) and per-class AP50."""
    lines = ["       " + " ".join(f"{n:>5}" for n in STAT_NAMES)]
    for kind in ("bbox", "segm"):
        lines.append(f"{kind:<6} " + " ".join(percent(report[kind][n]) for n in STAT_NAMES))
    lines.append(f"{'class':<16} {'AP50 bbox':>9} {'AP50 mask':>9} {'instances':>9}")
    for name, box in report["bbox"]["per_class"].items():
        mask = report["segm"]["per_class"][name]
        lines.append(f"{name:<16} {percent(box['AP50']):>9} {percent(mask['AP50']):>9} {box['instances']:>9}")
    return "\n".join(lines)
