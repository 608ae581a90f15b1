"""Registries of 2D backbones and 3D networks, built by name from a config.

The 3D networks are registered by import path so that ``spconv`` (an optional dependency) is
imported only when a 3D network is actually built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from torch import nn

from pri3d.models.resunet import Res18UNet, Res50UNet, ResUNet, load_imagenet

__all__ = ["available_backbones", "available_backbones3d", "build_backbone", "build_backbone3d"]

_BACKBONES_2D: dict[str, Callable[[int], ResUNet]] = {
    "Res18UNet": Res18UNet,
    "Res50UNet": Res50UNet,
}

# name -> "module:attribute". "ResUNet3D" is the original config's name for MinkUNet34C.
_BACKBONES_3D: dict[str, str] = {
    "MinkUNet34C": "pri3d.models.sparse_unet:MinkUNet34C",
    "ResUNet3D": "pri3d.models.sparse_unet:MinkUNet34C",
}


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`."""
    return sorted(_BACKBONES_2D)


def available_backbones3d() -> list[str]:
    """Names accepted by :func:`build_backbone3d`."""
    return sorted(_BACKBONES_3D)


def build_backbone(name: str, output_channels: int, pretrained: str | Path | None = None) -> ResUNet:
    """Build a 2D UNet backbone by name.

    Args:
        name: ``"Res18UNet"`` or ``"Res50UNet"``.
        output_channels: channels of the stride-2 output map (32 / 128 in the original recipe).
        pretrained: ``None`` (scratch init), ``"imagenet"`` (torchvision ImageNet weights for the
            encoder, downloaded if not cached) or a path to a local torchvision-layout ``.pth`` file.
    """
    if name not in _BACKBONES_2D:
        raise ValueError(f"unknown 2D backbone {name!r}; valid names: {available_backbones()}")
    model = _BACKBONES_2D[name](output_channels)
    if pretrained is not None:
        load_imagenet(model.encoder, None if str(pretrained) == "imagenet" else pretrained)
    return model


def build_backbone3d(name: str, in_channels: int = 3, out_channels: int = 96, **kwargs: object) -> nn.Module:
    """Build a 3D sparse network by name (``"MinkUNet34C"``, alias ``"ResUNet3D"``); needs spconv."""
    if name not in _BACKBONES_3D:
        raise ValueError(f"unknown 3D backbone {name!r}; valid names: {available_backbones3d()}")
    module_name, attr = _BACKBONES_3D[name].split(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(in_channels=in_channels, out_channels=out_channels, **kwargs)
