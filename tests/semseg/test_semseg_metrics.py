"""mIoU: a hand-made confusion matrix with known IoUs, and agreement with torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pri3d.metrics import ConfusionMatrix, iou_report, miou_original, miou_standard, per_class_iou


def _pixels_from_matrix(matrix: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth and predicted labels realising `matrix` (rows = gt, cols = prediction)."""
    gt, pred = [], []
    for g in range(matrix.shape[0]):
        for p in range(matrix.shape[1]):
            gt += [g] * int(matrix[g, p])
            pred += [p] * int(matrix[g, p])
    order = torch.randperm(len(gt), generator=torch.Generator().manual_seed(0))
    return torch.tensor(pred)[order], torch.tensor(gt)[order]


# classes: 0 ignore, 1..4; class 4 is absent from ground truth and prediction
HAND = np.array([
    [9, 1, 2, 0, 0],  # ignore-label pixels: never counted
    [0, 6, 2, 0, 0],  # class 1: TP 6, FN 2 (to class 2)
    [0, 1, 3, 0, 0],  # class 2: TP 3, FN 1
    [2, 0, 0, 4, 0],  # class 3: TP 4, 2 pixels predicted as the ignore class
    [0, 0, 0, 0, 0],  # class 4: absent everywhere
])  # fmt: skip


def test_hand_made_confusion_matrix():
    pred, gt = _pixels_from_matrix(HAND)
    confusion = ConfusionMatrix(5, ignore_index=0)
    confusion.update(pred[:20].reshape(4, 5), gt[:20].reshape(4, 5))  # any shape, several updates
    confusion.update(pred[20:], gt[20:])
    expected = HAND.copy()
    expected[0] = 0
    assert torch.equal(confusion.matrix, torch.from_numpy(expected))

    # standard: class 1 = 6 / (8 + 7 - 6), class 2 = 3 / (4 + 5 - 3), class 3 = 4 / (6 + 4 - 4)
    iou = per_class_iou(confusion.matrix)
    assert iou[1:4] == pytest.approx([6 / 9, 3 / 6, 4 / 6])
    assert math.isnan(iou[4])
    assert miou_standard(confusion.matrix) == pytest.approx((6 / 9 + 3 / 6 + 4 / 6) / 3)
    # original: the 2 ignore-class predictions of class 3 vanish (4 / 4 = 1) and class 4 counts as 0
    assert miou_original(confusion.matrix) == pytest.approx((6 / 9 + 3 / 6 + 1.0 + 0.0) / 4)

    report = iou_report(confusion.matrix, ["ignore", "a", "b", "c", "d"])
    assert report["miou"] == pytest.approx(miou_standard(confusion.matrix))
    assert report["predicted_ignore_pixels"] == 2 and report["labelled_pixels"] == 18
    assert report["pixel_accuracy"] == pytest.approx(13 / 18)
    rows = {r["name"]: r for r in report["classes"]}
    assert rows["d"]["iou"] is None and rows["d"]["iou_original"] == 0.0 and "ignore" not in rows
    assert rows["c"]["iou_original"] == pytest.approx(1.0)


def test_agrees_with_torchmetrics_on_random_predictions():
    torchmetrics = pytest.importorskip("torchmetrics")
    generator = torch.Generator().manual_seed(3)
    k = 21
    gt = torch.randint(0, k - 3, (6, 30, 40), generator=generator)  # classes 18..20 absent from gt
    pred = torch.where(torch.rand(gt.shape, generator=generator) < 0.6, gt,
                       torch.randint(0, k - 1, gt.shape, generator=generator))  # fmt: skip  # 20 never predicted
    confusion = ConfusionMatrix(k, ignore_index=0)
    for p, g in zip(pred, gt):
        confusion.update(p, g)
    per_class = torchmetrics.classification.MulticlassJaccardIndex(k, average="none", ignore_index=0)(
        pred, gt
    )
    ours = per_class_iou(confusion.matrix)
    present = ~np.isnan(ours)
    present[0] = False
    assert present[18] and present[19] and not present[20]  # predicted-only classes count (IoU 0)
    np.testing.assert_allclose(ours[present], per_class.numpy()[present], rtol=1e-6)
    macro = torchmetrics.classification.MulticlassJaccardIndex(k, average="macro", ignore_index=0)(pred, gt)
    assert miou_standard(confusion.matrix) == pytest.approx(float(macro), rel=1e-6)


def test_rejects_bad_input():
    confusion = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="differ"):
        confusion.update(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="outside"):
        confusion.update(torch.tensor([5]), torch.tensor([1]))
