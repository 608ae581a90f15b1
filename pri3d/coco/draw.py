"""Figures of instances: ground truth | prediction, masks and boxes drawn over the image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from pri3d.viz import class_palette

__all__ = ["draw_instances", "save_instance_figure"]

_MIN_SIDE = 240  # smaller images are enlarged (nearest) so that captions stay readable


def draw_instances(
    image: torch.Tensor, instances: dict[str, torch.Tensor], class_names: tuple[str, ...], scale: int = 1
) -> torch.Tensor:
    """Masks (50 % opacity) and captioned boxes over ``image``.

    Args:
        image: ``[3, H, W]`` uint8 RGB.
        instances: ``masks`` [N, H, W] bool, ``boxes`` [N, 4] (x1, y1, x2, y2), ``labels`` [N] in 1..K,
            optional ``scores`` [N].
        class_names: K names; label l is ``class_names[l - 1]``.
        scale: integer enlargement (nearest) of the picture, masks and boxes.
    Returns ``[3, scale·H, scale·W]`` uint8.
    """
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    palette = class_palette(len(class_names) + 1, ignore_index=None)
    picture = image.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    labels = instances["labels"].tolist()
    if not labels:
        return picture
    colours = [tuple(int(c) for c in palette[label]) for label in labels]
    masks = instances["masks"].bool().repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    picture = draw_segmentation_masks(picture, masks, alpha=0.5, colors=colours)
    scores = instances.get("scores")
    captions = [
        class_names[label - 1] + ("" if scores is None else f" {float(scores[i]):.2f}")
        for i, label in enumerate(labels)
    ]
    return draw_bounding_boxes(
        picture, instances["boxes"].float() * scale, labels=captions, colors=colours, width=2
    )


def save_instance_figure(
    path: str | Path,
    image: torch.Tensor,
    truth: dict[str, torch.Tensor],
    prediction: dict[str, torch.Tensor],
    class_names: tuple[str, ...],
    title: str = "",
) -> Path:
    """Write ground truth | prediction side by side as a PNG.

    Args:
        image: ``[3, H, W]`` float RGB in [0, 1].
        truth, prediction: as :func:`draw_instances` (prediction with ``scores``).
    """
    height, width = image.shape[-2:]
    scale = max(1, math.ceil(_MIN_SIDE / min(height, width)))
    rgb = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    panels = [
        draw_instances(rgb, truth, class_names, scale),
        draw_instances(rgb, prediction, class_names, scale),
    ]
    gap = torch.full((3, panels[0].shape[1], 4), 255, dtype=torch.uint8)
    body = torch.cat([panels[0], gap, panels[1]], dim=2)
    band = 16
    figure = F.pad(body, (0, 0, band, 0), value=255).permute(1, 2, 0).numpy()
    canvas = Image.fromarray(np.ascontiguousarray(figure))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), f"ground truth ({len(truth['labels'])})  {title}", fill=(0, 0, 0))
    draw.text((panels[0].shape[2] + 8, 2), f"prediction ({len(prediction['labels'])})", fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
