"""Confusion-matrix semantic-segmentation metrics: the standard mIoU and the original Pri3D's.

A confusion matrix here is ``[K, K]`` int64 with **rows = ground truth, columns = prediction**
(the original's `common/iou.py` uses the transpose). Pixels whose ground truth is the ignore label
are never counted. Two mIoU definitions are reported side by side because they give different
numbers on the same predictions:

* **standard** (Cityscapes/ScanNet benchmark style, torchmetrics' ``MulticlassJaccardIndex`` with
  ``ignore_index``): IoU_c = TP / (TP + FP + FN) over labelled pixels; a prediction of the ignore
  class on a labelled pixel is an error (a false negative of the true class); classes absent from
  both ground truth and prediction are excluded from the mean (their IoU is NaN).
* **original** (Pri3D UNet fine-tuning, the original's `common/iou.py`): the ignore class's row *and column* are zeroed,
  so predicting the ignore class on a labelled pixel is not counted at all; IoU_c = TP / (TP + FP +
  FN + 1e-15); the mean runs over every non-ignored class, absent classes contributing 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "ConfusionMatrix",
    "format_iou_table",
    "iou_report",
    "miou_original",
    "miou_standard",
    "per_class_iou",
]


class ConfusionMatrix:
    """Accumulates a ``[K, K]`` confusion matrix (rows = ground truth, columns = prediction).

    Args:
        num_classes: K, including the ignore class.
        ignore_index: ground-truth label whose pixels are not counted (0 in every pri3d dataset).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 0) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add predicted labels ``[...]`` against ground-truth labels ``[...]`` (same shape, integers)."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
        prediction = prediction.reshape(-1).long()
        target = target.reshape(-1).long()
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        if ((prediction[keep] < 0) | (prediction[keep] >= self.num_classes)).any():
            raise ValueError(f"predictions outside [0, {self.num_classes})")
        # one bincount over (gt, pred) pairs: no loop over classes or images
        flat = target[keep] * self.num_classes + prediction[keep]
        counts = torch.bincount(flat, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).cpu()

    def merge(self, matrix: torch.Tensor) -> None:
        """Add another matrix (e.g. the all-reduced sum of other processes' matrices)."""
        self.matrix += matrix.cpu().to(torch.int64)


def _numpy(matrix: torch.Tensor | np.ndarray) -> np.ndarray:
    return matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)


def per_class_iou(matrix: torch.Tensor | np.ndarray) -> np.ndarray:
    """IoU per class ``[K]`` from a ``[K, K]`` (gt, pred) matrix; NaN where a class is absent from both."""
    m = _numpy(matrix).astype(np.float64)
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp  # predicted + true - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou_standard(matrix: torch.Tensor | np.ndarray, ignore_index: int | None = 0) -> float:
    """Mean IoU over non-ignored classes present in ground truth or prediction (NaN if none)."""
    iou = per_class_iou(matrix)
    if ignore_index is not None:
        iou = np.delete(iou, ignore_index)
    present = iou[~np.isnan(iou)]
    return float(present.mean()) if present.size else math.nan


def _original_class_iou(matrix: torch.Tensor | np.ndarray, ignore_index: int | None) -> np.ndarray:
    m = _numpy(matrix).astype(np.float64)  # a copy: rows/columns are zeroed below
    if ignore_index is not None:
        m[ignore_index, :] = 0  # the original zeroes the ignored row and column before the IoU
        m[:, ignore_index] = 0
    tp = np.diag(m)
    return tp / (m.sum(0) + m.sum(1) - tp + 1e-15)


def miou_original(matrix: torch.Tensor | np.ndarray, ignore_index: int | None = 0) -> float:
    """The original Pri3D UNet mIoU; see the module docstring for how it differs."""
    iou = _original_class_iou(matrix, ignore_index)
    if ignore_index is not None:
        iou = np.delete(iou, ignore_index)
    return float(iou.mean())


def iou_report(
    matrix: torch.Tensor | np.ndarray, class_names: list[str] | tuple[str, ...], ignore_index: int | None = 0
) -> dict:
    """Per-class IoU table and both mIoU definitions, as a JSON-ready dict.

    Returns keys ``miou`` (standard, the headline), ``miou_original`` (the original's definition),
    ``pixel_accuracy`` (over labelled pixels), ``classes`` (one row per non-ignored class: name, iou,
    iou_original, gt_pixels, predicted_pixels; iou is None where the class is absent from both),
    ``labelled_pixels``, ``predicted_ignore_pixels`` (labelled pixels predicted as the ignore class:
    errors in the standard mIoU, not counted in the original's) and ``definitions``.
    """
    m = _numpy(matrix).astype(np.int64)
    if len(class_names) != m.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {m.shape[0]}-class confusion matrix")
    iou = per_class_iou(m)
    iou_orig = _original_class_iou(m, ignore_index)
    labelled = int(m.sum())
    rows = []
    for c, name in enumerate(class_names):
        if c == ignore_index:
            continue
        rows.append(
            {
                "id": c,
                "name": name,
                "iou": None if math.isnan(iou[c]) else float(iou[c]),
                "iou_original": float(iou_orig[c]),
                "gt_pixels": int(m[c].sum()),
                "predicted_pixels": int(m[:, c].sum()),
            }
        )
    return {
        "miou": miou_standard(m, ignore_index),
        "miou_original": miou_original(m, ignore_index),
        "pixel_accuracy": float(np.trace(m) / labelled) if labelled else math.nan,
        "labelled_pixels": labelled,
        "predicted_ignore_pixels": int(m[:, ignore_index].sum()) if ignore_index is not None else 0,
        "classes": rows,
        "definitions": {
            "miou": "standard: mean IoU over classes present in ground truth or prediction; ignore-label "
            "pixels excluded; predicting the ignore class on a labelled pixel is an error",
            "miou_original": "Pri3D UNet (common/iou.py): ignore class row and column zeroed (its "
            "predictions are not errors); mean over all non-ignored classes, absent classes count as 0",
        },
    }


def format_iou_table(report: dict) -> str:
    """A plain-text table of :func:`iou_report`'s output."""
    lines = [f"{'class':<22}{'IoU':>8}{'IoU (orig.)':>13}{'GT pixels':>12}"]
    for row in report["classes"]:
        iou = "-" if row["iou"] is None else f"{100 * row['iou']:.1f}"
        lines.append(f"{row['name']:<22}{iou:>8}{100 * row['iou_original']:>13.1f}{row['gt_pixels']:>12}")
    lines.append(
        f"{'mIoU':<22}{100 * report['miou']:>8.1f}{100 * report['miou_original']:>13.1f}"
        f"   (standard | original Pri3D definition)"
    )
    return "\n".join(lines)
