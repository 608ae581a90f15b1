"""The demo's figures: training curves, mIoU bars, correspondences, feature PCA, segmentation overlays.

Each function takes plain arrays (no models, no file formats) and writes one PNG with matplotlib's
Agg backend; the demo gathers the arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = [
    "PcaBasis",
    "correspondence_figure",
    "feature_pca_figure",
    "miou_bar_figure",
    "pca_rgb",
    "segmentation_figure",
    "training_curves_figure",
]


class PcaBasis(NamedTuple):
    mean: np.ndarray
    components: np.ndarray
    low: np.ndarray
    high: np.ndarray


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def training_curves_figure(
    pretrain: dict[str, tuple[np.ndarray, np.ndarray]],
    finetune: dict[str, list[tuple[np.ndarray, np.ndarray]]],
    path: Path,
) -> Path:
    """Pre-training total loss per run, and fine-tuning loss per initialisation (mean over its runs).

    ``pretrain``: name -> (steps, loss); ``finetune``: name -> one (steps, loss) per run.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, (steps, loss) in pretrain.items():
        left.plot(steps, loss, marker=".", label=name)
    left.set(title="pre-training", xlabel="step", ylabel="total loss")
    left.legend(fontsize="small")
    for name, runs in finetune.items():
        length = min(len(steps) for steps, _ in runs)
        steps = runs[0][0][:length]
        losses = np.stack([loss[:length] for _, loss in runs])
        (line,) = right.plot(steps, losses.mean(0), marker=".", label=f"{name} (mean of {len(runs)} runs)")
        right.fill_between(steps, losses.min(0), losses.max(0), color=line.get_color(), alpha=0.2)
    right.set(title="semantic segmentation fine-tuning", xlabel="step", ylabel="cross-entropy")
    right.legend()
    return _save(fig, path)


def miou_bar_figure(results: dict[str, list[float]], path: Path, title: str = "") -> Path:
    """Mean mIoU per initialisation with error bars (± one standard deviation) and each seed's dot."""
    names = list(results)
    means = [float(np.mean(results[n])) for n in names]
    stds = [float(np.std(results[n])) for n in names]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ax.bar(
        names,
        [100 * m for m in means],
        yerr=[100 * s for s in stds],
        capsize=6,
        color=[colors[i % len(colors)] for i in range(len(names))],
        alpha=0.75,
    )
    for i, name in enumerate(names):
        values = 100 * np.asarray(results[name])
        ax.scatter(
            np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)),
            values,
            color="black",
            s=12,
            zorder=3,
        )
    ax.set(ylabel="val mIoU (%)", title=title or "held-out scenes: mean ± std over seeds")
    return _save(fig, path)


def correspondence_figure(
    image1: np.ndarray,
    image2: np.ndarray,
    pixels1: np.ndarray,
    pixels2: np.ndarray,
    path: Path,
    title: str = "",
    count: int = 40,
    seed: int = 0,
) -> Path:
    """Two views side by side with lines between ``count`` matched pixels (``[N, 2]`` as (x, y))."""
    h, w = image1.shape[:2]
    canvas = np.concatenate([image1, image2], axis=1)
    pick = np.random.default_rng(seed).permutation(len(pixels1))[:count]
    fig, ax = plt.subplots(figsize=(10, 10 * h / (2 * w) + 0.6))
    ax.imshow(canvas)
    colors = plt.cm.hsv(np.linspace(0, 1, len(pick), endpoint=False))
    for color, i in zip(colors, pick):
        (x1, y1), (x2, y2) = pixels1[i], pixels2[i]
        ax.plot([x1, x2 + w], [y1, y2], color=color, linewidth=0.8)
        ax.scatter([x1, x2 + w], [y1, y2], color=[color], s=8)
    ax.set_axis_off()
    ax.set_title(title or f"{len(pick)} of {len(pixels1)} pixel correspondences from depth and poses")
    return _save(fig, path)


def pca_rgb(features: np.ndarray, basis: PcaBasis | None = None) -> tuple[np.ndarray, PcaBasis]:
    """Features ``[C, H, W]`` -> RGB ``[H, W, 3]`` in [0, 1] by their first three principal components.

    The components and the 1st/99th percentiles that map them to [0, 1] come from ``features``
    unless ``basis`` (returned by an earlier call) is given, so several images share one colouring.
    """
    c, h, w = features.shape
    flat = features.reshape(c, -1).T.astype(np.float64)
    if basis is None:
        mean = flat.mean(0)
        _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
        projected = (flat - mean) @ vt[:3].T
        basis = PcaBasis(
            mean, vt[:3], np.percentile(projected, 1, axis=0), np.percentile(projected, 99, axis=0)
        )
    projected = (flat - basis.mean) @ basis.components.T
    rgb = np.clip((projected - basis.low) / np.maximum(basis.high - basis.low, 1e-8), 0, 1)
    if rgb.shape[1] < 3:  # fewer than three channels: pad with grey
        rgb = np.concatenate([rgb, np.full((len(rgb), 3 - rgb.shape[1]), 0.5)], axis=1)
    return rgb.reshape(h, w, 3), basis


def feature_pca_figure(images: list[np.ndarray], features: dict[str, list[np.ndarray]], path: Path) -> Path:
    """Rows: images; columns: the image, then each model's features coloured by PCA (basis per model,
    shared by that model's rows, so the same colour means the same feature direction)."""
    rows, cols = len(images), 1 + len(features)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 1.9 * rows + 0.4), squeeze=False)
    for r, image in enumerate(images):
        axes[r, 0].imshow(image)
    axes[0, 0].set_title("image")
    for c, (name, maps) in enumerate(features.items(), start=1):
        basis = None
        for r, fmap in enumerate(maps):
            rgb, basis = pca_rgb(fmap, basis)
            axes[r, c].imshow(rgb)
        axes[0, c].set_title(name)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle("learned features, first three principal components as RGB")
    return _save(fig, path)


def segmentation_figure(
    images: list[np.ndarray],
    truth: list[np.ndarray],
    predictions: dict[str, list[np.ndarray]],
    path: Path,
    title: str = "",
    alpha: float = 0.6,
) -> Path:
    """Rows: images; columns: the image, then the ground truth and each model's prediction (RGB
    label images) laid over it with opacity ``alpha``."""
    rows, cols = len(images), 2 + len(predictions)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 1.9 * rows + 0.4), squeeze=False)
    for r in range(rows):
        image = images[r].astype(np.float64)
        axes[r, 0].imshow(images[r])
        for c, labels in enumerate([truth[r], *(maps[r] for maps in predictions.values())], start=1):
            axes[r, c].imshow(((1 - alpha) * image + alpha * labels).round().astype(np.uint8))
    for c, name in enumerate(["image", "ground truth", *predictions]):
        axes[0, c].set_title(name)
    for ax in axes.ravel():
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return _save(fig, path)
