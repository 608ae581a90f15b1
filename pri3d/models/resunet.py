"""2D backbones: a torchvision-layout ResNet encoder with an up-projection decoder (stride-2 output).

The layout follows the original's ``Res18UNet`` / ``Res50UNet`` (its ``model/backbone/resunet.py``) so
that the 2D part of released Pri3D checkpoints loads strictly. State-dict keys of a backbone are

* ``encoder.<torchvision ResNet names>`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ...; no ``fc``),
* ``decoder.up{1..4}.{conv1,bn1,conv1_2,bn1_2,conv2,bn2}.*`` and ``decoder.conv0.{weight,bias}``,

which become ``backbone.encoder.*`` / ``backbone.decoder.*`` under the pre-training module.

Shapes for an input ``[B, 3, H, W]``: layer1..4 have strides 4, 8, 16, 32 (ceil division, as the
convolutions round up) and the decoder output is ``[B, output_channels, 2·H1, 2·W1]`` where
``H1 × W1`` is the size of layer1, i.e. stride 2 (120×160 for 240×320 inputs).

:func:`load_imagenet` fills an encoder with ImageNet weights; reading the file and the strict check
are :mod:`pri3d.weights`'.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet

from pri3d.weights import imagenet_state, load_strict, read_torch_file, with_batchnorm_counters

__all__ = [
    "Res18UNet",
    "Res50UNet",
    "ResNetEncoder",
    "ResUNet",
    "UNetDecoder",
    "load_imagenet",
]

Block = type[tv_resnet.BasicBlock] | type[tv_resnet.Bottleneck]

# name -> (block, blocks per layer)
_ARCHS: dict[str, tuple[Block, tuple[int, int, int, int]]] = {
    "resnet18": (tv_resnet.BasicBlock, (2, 2, 2, 2)),
    "resnet50": (tv_resnet.Bottleneck, (3, 4, 6, 3)),
}


class ResNetEncoder(nn.Module):
    """torchvision ResNet without ``fc``, returning the outputs of layer1..4.

    Built from torchvision's own ``BasicBlock``/``Bottleneck`` so every parameter and buffer name
    equals torchvision's (a torchvision state dict minus ``fc.*`` loads strictly).

    Args:
        arch: ``"resnet18"`` (BasicBlock [2, 2, 2, 2]) or ``"resnet50"`` (Bottleneck [3, 4, 6, 3]).
    """

    def __init__(self, arch: str = "resnet50") -> None:
        super().__init__()
        if arch not in _ARCHS:
            raise ValueError(f"unknown ResNet arch {arch!r}; expected one of {sorted(_ARCHS)}")
        block, layers = _ARCHS[arch]
        self.arch = arch
        self._inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        # Kept because the original has it; it has no parameters so it adds no state-dict keys.
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.channels: tuple[int, int, int, int] = tuple(64 * 2**i * block.expansion for i in range(4))
        self.reset_parameters()

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        # torchvision blocks put the stride on the 3x3 conv of the first block (ResNet v1.5).
        modules = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * block.expansion
        modules += [block(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def reset_parameters(self) -> None:
        """Scratch init of the original: conv ~ N(0, sqrt(2 / (k·k·C_out))), BN γ=1, β=0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, H, W]`` -> [layer1 ``[B, C1, H/4, W/4]``, ..., layer4 ``[B, C4, H/32, W/32]``]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]


class _UpProjection(nn.Module):
    """Bilinear resize, then ReLU(conv5-BN-ReLU-conv3-BN (x) + conv5-BN (x)); ``C_in -> C_out``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv1_2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1_2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(in_channels, out_channels, kernel_size=5, padding=2, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``[B, C_in, h, w]`` -> ``[B, C_out, *size]``."""
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        main = self.bn1_2(self.conv1_2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = self.bn2(self.conv2(x))
        return F.relu(main + shortcut)


class UNetDecoder(nn.Module):
    """Up-projection decoder from the four encoder outputs to a stride-2 map.

    up1..up3 halve the channels and are added to layer3, layer2, layer1; up4 halves them again at
    twice the layer1 size (stride 2, no skip); ``conv0`` is a linear 1×1 conv with bias.
    Convolutions keep PyTorch's default init, as the original.

    Args:
        in_channels: channels N of layer4 (512 for R18, 2048 for R50); up-channels N/2 .. N/16.
        output_channels: channels of the output map.
    """

    def __init__(self, in_channels: int, output_channels: int) -> None:
        super().__init__()
        n = in_channels
        self.up1 = _UpProjection(n, n // 2)
        self.up2 = _UpProjection(n // 2, n // 4)
        self.up3 = _UpProjection(n // 4, n // 8)
        self.up4 = _UpProjection(n // 8, n // 16)
        self.conv0 = nn.Conv2d(n // 16, output_channels, kernel_size=1, bias=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[layer1 ``[B, N/8, H1, W1]``, ..., layer4 ``[B, N, H4, W4]``] -> ``[B, out, 2·H1, 2·W1]``."""
        c1, c2, c3, c4 = features
        # Target sizes come from the skip tensors, so odd input sizes line up exactly.
        x = self.up1(c4, c3.shape[-2:]) + c3
        x = self.up2(x, c2.shape[-2:]) + c2
        x = self.up3(x, c1.shape[-2:]) + c1
        x = self.up4(x, (2 * c1.shape[-2], 2 * c1.shape[-1]))
        return self.conv0(x)


class ResUNet(nn.Module):
    """ResNet encoder + up-projection decoder: ``[B, 3, H, W]`` -> ``[B, output_channels, ~H/2, ~W/2]``.

    Args:
        arch: encoder architecture, ``"resnet18"`` or ``"resnet50"``.
        output_channels: channels of the stride-2 output (``conv0``).
    """

    def __init__(self, arch: str, output_channels: int) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(arch)
        self.decoder = UNetDecoder(self.encoder.channels[-1], output_channels)
        self.output_channels = output_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` (normalised RGB, any memory format) -> ``[B, C, 2·ceil(H/4), 2·ceil(W/4)]``."""
        return self.decoder(self.encoder(x))


class Res18UNet(ResUNet):
    """ResNet-18 UNet: up-channels 512→256→128→64→32, 32-d output by default (≈20.7 M parameters)."""

    def __init__(self, output_channels: int = 32) -> None:
        super().__init__("resnet18", output_channels)


class Res50UNet(ResUNet):
    """ResNet-50 UNet: up-channels 2048→1024→512→256→128, 128-d output by default (≈175 M parameters)."""

    def __init__(self, output_channels: int = 128) -> None:
        super().__init__("resnet50", output_channels)


def load_imagenet(
    encoder: ResNetEncoder, weights: str | Path | None = None, option: str = "pretrain.pretrained"
) -> ResNetEncoder:
    """Load ImageNet weights into ``encoder`` strictly, after dropping ``fc.*``.

    Args:
        encoder: the encoder to fill in place.
        weights: a local torchvision-layout ``.pth`` state dict, or ``None`` to use torchvision's
            ``IMAGENET1K_V1`` weights of the encoder's arch (the original's ``resnet18-5c106cde`` /
            ``resnet50-19c8e357`` weights) through :func:`pri3d.weights.imagenet_state`.
        option: the setting that chose these weights, named in errors.

    Files are read by :func:`pri3d.weights.read_torch_file` (``weights_only=True``); errors name the
    file. Missing ``num_batches_tracked`` buffers
    (pre-0.4.1 torchvision files lack them) are filled with the encoder's current value; any other
    missing, unexpected or mis-shaped key raises ``ValueError`` naming the source and the keys.

    Returns:
        ``encoder`` (for chaining).
    """
    if weights is None:
        state, source = imagenet_state(encoder.arch, option)
    else:
        source = str(weights)
        if not Path(weights).is_file():
            raise FileNotFoundError(f"{option}={source}: ImageNet weights file not found")
        state = read_torch_file(Path(weights))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: expected a plain state dict of tensors (torchvision layout)")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    state = with_batchnorm_counters(state, encoder.state_dict())
    load_strict(encoder, state, source, f"a torchvision {encoder.arch} without fc")
    return encoder
