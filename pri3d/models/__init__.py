"""Networks: 2D UNet backbones (``resunet``) and the 3D sparse UNet (``sparse_unet``, needs spconv).

``sparse_unet`` is not imported here so that the 2D parts work without spconv installed; build 3D
networks through :func:`build_backbone3d` or import ``pri3d.models.sparse_unet`` directly.
"""

from pri3d.models.registry import (
    available_backbones,
    available_backbones3d,
    build_backbone,
    build_backbone3d,
)
from pri3d.models.resunet import Res18UNet, Res50UNet, ResNetEncoder, ResUNet, UNetDecoder, load_imagenet

__all__ = [
    "Res18UNet",
    "Res50UNet",
    "ResNetEncoder",
    "ResUNet",
    "UNetDecoder",
    "available_backbones",
    "available_backbones3d",
    "build_backbone",
    "build_backbone3d",
    "load_imagenet",
]
