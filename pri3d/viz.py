"""Segmentation figures: a class palette and side-by-side image / ground truth / prediction PNGs."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import torch

from pri3d.io.images import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["class_palette", "colorize", "denormalize", "save_segmentation_figure"]


def class_palette(num_classes: int, ignore_index: int | None = 0) -> np.ndarray:
    """Distinct fixed colours ``[num_classes, 3]`` uint8; the ignore class is black.

    Hues step by the golden ratio so neighbouring class ids get well-separated colours, with three
    alternating saturation/value levels; the same K always gives the same palette.
    """
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    golden = 0.618033988749895
    for c in range(num_classes):
        hue = (c * golden) % 1.0
        saturation, value = ((0.55, 0.75), (0.8, 0.95), (0.45, 0.55))[c % 3]
        palette[c] = np.round(np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255)
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        palette[ignore_index] = 0
    return palette


def colorize(labels: np.ndarray | torch.Tensor, palette: np.ndarray) -> np.ndarray:
    """Labels ``[H, W]`` -> RGB ``[H, W, 3]`` uint8."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    return palette[np.clip(labels, 0, len(palette) - 1)]


def denormalize(image: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised ``[3, H, W]`` -> RGB ``[H, W, 3]`` uint8."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    rgb = (image.detach().cpu().float() * std + mean).clamp(0, 1)
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_segmentation_figure(
    path: str | Path,
    image: torch.Tensor,
    label: torch.Tensor,
    prediction: torch.Tensor,
    class_names: tuple[str, ...] | list[str],
    ignore_index: int = 0,
    title: str = "",
) -> Path:
    """Write image | ground truth | prediction with a legend of the classes that appear.

    Args:
        image: ``[3, H, W]`` ImageNet-normalised RGB.
        label, prediction: ``[H, W]`` class ids.
        class_names: K names, index = class id.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    palette = class_palette(len(class_names), ignore_index)
    label_np, pred_np = np.asarray(label.cpu()), np.asarray(prediction.cpu())
    labelled = label_np != ignore_index
    accuracy = (pred_np[labelled] == label_np[labelled]).mean() if labelled.any() else float("nan")
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = (
        (denormalize(image), "image"),
        (colorize(label_np, palette), "ground truth (black = ignored)"),
        (colorize(pred_np, palette), f"prediction (pixel acc. {100 * accuracy:.1f}%)"),
    )
    for axis, (picture, name) in zip(axes, panels):
        axis.imshow(picture, interpolation="nearest")
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    shown = sorted(set(np.unique(label_np)) | set(np.unique(pred_np)))
    handles = [Patch(facecolor=palette[c] / 255.0, edgecolor="0.3", label=class_names[c]) for c in shown]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0.12, 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
