"""Semantic-segmentation networks: the original's UNet (``Semantic2D``) and smp's PSPNet/DeepLabV3/V3+.

Every network predicts K logits (K includes the ignore class 0, as the original UNet) and is trained
with cross-entropy ignoring label 0. ``forward(batch)`` returns the losses (for the training loop);
``logits(images, size)`` returns ``[B, K, *size]`` for evaluation.

State-dict layouts: ``Semantic2D`` keeps the original's ``backbone.encoder.*`` / ``backbone.decoder.*``
so Pri3D checkpoints transfer by name; the smp heads keep smp's own names (``encoder.*``,
``decoder.*``, ``segmentation_head.*``), so a checkpoint also loads into the plain smp model.

:func:`initialise` decides which weights of a file go where in these networks; reading the file,
recognising its layout, converting it and the strict checks are :mod:`pri3d.weights`'.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pri3d.labels import IGNORE_INDEX
from pri3d.models.registry import build_backbone
from pri3d.weights import (
    LoadReport,
    check_resnet_arch,
    check_state,
    detect_layout,
    imagenet_state,
    load_weights_file,
    shape_mismatches,
    skip_reason,
    to_torchvision,
    torchvision_state_for,
)

__all__ = [
    "SEGMENTATION_MODELS",
    "Semantic2D",
    "SmpSegmenter",
    "build_segmentation_model",
    "initialise",
]

#: The CLI's short names -> registered model names.
MODEL_ALIASES = {
    "unet": "Semantic2D",
    "pspnet": "PSPNet",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
}
#: ``finetune.backbone`` -> ResNet of the smp heads' encoder.
ENCODERS = {"Res50UNet": "resnet50", "Res18UNet": "resnet18", "resnet50": "resnet50", "resnet18": "resnet18"}


class SegmentationModel(nn.Module):
    """Base class: cross-entropy over ``logits`` with label 0 ignored."""

    def logits(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised RGB -> ``[B, K, *size]`` logits."""
        raise NotImplementedError

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Losses for a collated batch with ``image [B, 3, H, W]`` and ``label [B, H, W]``."""
        label = batch["label"]
        logits = self.logits(batch["image"], label.shape[-2:]).float()  # [B, K, H, W]
        labelled = (label != IGNORE_INDEX).sum()
        # sum / count rather than mean: a batch without labelled pixels gives 0, not NaN
        loss = F.cross_entropy(logits, label, ignore_index=IGNORE_INDEX, reduction="sum") / labelled.clamp(
            min=1
        )
        with torch.no_grad():
            correct = ((logits.argmax(1) == label) & (label != IGNORE_INDEX)).sum()
            accuracy = correct.float() / labelled.clamp(min=1)
        return {"total_loss": loss, "pixel_accuracy": accuracy}


class Semantic2D(SegmentationModel):
    """The original UNet head: a ResUNet whose ``conv0`` outputs K logits at stride 2.

    Logits are upsampled bilinearly (align_corners=True) to the label size, as the original.

    Args:
        backbone: ``Res50UNet`` or ``Res18UNet``.
        num_classes: K, including the ignore class.
    """

    def __init__(self, backbone: str = "Res50UNet", num_classes: int = 21) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, num_classes)
        self.backbone_name = backbone
        self.num_classes = num_classes

    def logits(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = self.backbone(images)  # [B, K, ~H/2, ~W/2]
        return F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=True)

    @property
    def encoder(self) -> nn.Module:
        return self.backbone.encoder


class SmpSegmenter(SegmentationModel):
    """A segmentation-models-pytorch network with a torchvision-layout ResNet encoder.

    The smp model's children are registered on this module under their own names (so the state
    dict is smp's); the smp object itself is kept outside the module tree only to call its forward.
    Inputs are zero-padded (after normalisation, i.e. with the mean colour) on the bottom/right to a
    multiple of the encoder's output stride and the logits cropped back.

    Args:
        arch: ``PSPNet``, ``DeepLabV3`` or ``DeepLabV3Plus``.
        encoder: ``resnet50`` or ``resnet18``.
        num_classes: K, including the ignore class.
    """

    def __init__(self, arch: str, encoder: str = "resnet50", num_classes: int = 21) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        common = {"encoder_name": encoder, "encoder_weights": None, "classes": num_classes}
        if arch == "PSPNet":
            # the original PSPNet: full ResNet dilated to output stride 8, PPM bins (1, 2, 3, 6), dropout 0.1
            net = smp.PSPNet(encoder_depth=5, output_stride=8, upsampling=8, psp_dropout=0.1, **common)
        elif arch == "DeepLabV3":
            net = smp.DeepLabV3(
                encoder_output_stride=16, decoder_atrous_rates=(6, 12, 18), decoder_aspp_dropout=0.1, **common
            )
        elif arch == "DeepLabV3Plus":
            net = smp.DeepLabV3Plus(
                encoder_output_stride=16,
                decoder_atrous_rates=(6, 12, 18),
                decoder_aspp_separable=False,
                decoder_aspp_dropout=0.1,
                **common,
            )
        else:
            raise ValueError(f"unknown smp architecture {arch!r}")
        for name, child in net.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_net", net)  # not a submodule: its children are registered above
        self.arch = arch
        self.num_classes = num_classes
        self.stride = int(net.encoder.output_stride)

    def logits(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = images.shape[-2:]
        pad_h, pad_w = -h % self.stride, -w % self.stride
        x = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
        out = self._net(x)[..., :h, :w]  # [B, K, H, W]
        if tuple(size) != (h, w):
            out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
        return out


SEGMENTATION_MODELS: dict[str, Callable[[str, int], SegmentationModel]] = {
    "Semantic2D": lambda backbone, k: Semantic2D(backbone, k),
    "PSPNet": lambda backbone, k: SmpSegmenter("PSPNet", _encoder(backbone), k),
    "DeepLabV3": lambda backbone, k: SmpSegmenter("DeepLabV3", _encoder(backbone), k),
    "DeepLabV3Plus": lambda backbone, k: SmpSegmenter("DeepLabV3Plus", _encoder(backbone), k),
}


def _encoder(backbone: str) -> str:
    if backbone not in ENCODERS:
        raise ValueError(f"finetune.backbone={backbone!r}: expected one of {sorted(ENCODERS)}")
    return ENCODERS[backbone]


def build_segmentation_model(name: str, backbone: str, num_classes: int) -> SegmentationModel:
    """Build ``Semantic2D`` (alias ``unet``), ``PSPNet``, ``DeepLabV3`` or ``DeepLabV3Plus`` (scratch init)."""
    name = MODEL_ALIASES.get(name, name)
    if name not in SEGMENTATION_MODELS:
        raise ValueError(
            f"finetune.model={name!r}: expected one of {', '.join(SEGMENTATION_MODELS)} "
            f"(or {', '.join(MODEL_ALIASES)})"
        )
    if name == "Semantic2D" and backbone not in ("Res50UNet", "Res18UNet"):
        raise ValueError(f"finetune.backbone={backbone!r}: the UNet takes Res50UNet or Res18UNet")
    return SEGMENTATION_MODELS[name](backbone, num_classes)


# ------------------------------------------------------------------------------------------------
# initialisation


def _encoder_module(model: SegmentationModel) -> nn.Module:
    return model.backbone.encoder if isinstance(model, Semantic2D) else model.encoder


def initialise(model: SegmentationModel, init: str | Path, strict: bool = False) -> LoadReport:
    """Initialise ``model`` from ``scratch``, ``imagenet`` or a weights file; report every key.

    A run folder is not read here: the task turns it into its newest checkpoint first.

    * ``imagenet``: torchvision's ImageNet ResNet weights (``IMAGENET1K_V1``, the original's) into the
      encoder, strictly.
    * a Pri3D/pri3d checkpoint (``backbone.encoder.*``) into the UNet: every key whose name and shape
      match is taken, i.e. the encoder and the decoder except ``conv0`` (the original's transfer);
      the rest is reported. The encoder must be complete. With ``strict`` every model key must come
      from the file (e.g. continuing from a fine-tuned checkpoint of the same model).
    * anything else (torchvision/timm/smp state dicts, exports, MoCo checkpoints) and every file for
      the smp heads: the ResNet encoder, loaded strictly; the rest reported.
    """
    if init == "scratch":
        return LoadReport(
            "scratch", "none", missing=dict.fromkeys(model.state_dict(), "scratch initialisation")
        )
    encoder = _encoder_module(model)
    if init == "imagenet":
        arch = "resnet50" if "layer1.0.conv3.weight" in encoder.state_dict() else "resnet18"
        state, url = imagenet_state(arch, "finetune.pretrain")
        return _load_encoder(model, encoder, state, url)
    path = Path(init)
    state, _ = load_weights_file(path)
    layout = detect_layout(state, str(path))
    check_resnet_arch(
        encoder.state_dict(),
        to_torchvision(state, str(path))[0],
        str(path),
        "the model's ResNet is set by backbone=Res18UNet|Res50UNet",
    )
    if isinstance(model, Semantic2D) and layout in ("pri3d", "unet"):
        if layout == "unet":
            state = {f"backbone.{k}": v for k, v in state.items()}
        return _load_by_name(model, state, str(path), layout, strict)
    if isinstance(model, SmpSegmenter) and layout == "smp":
        return _load_by_name(model, state, str(path), layout, strict)
    if strict:
        raise ValueError(
            f"finetune.strict_init: {path} ({layout} layout) holds only an encoder for this model"
        )
    return _load_encoder(model, encoder, state, str(path))


def _load_encoder(model: SegmentationModel, encoder: nn.Module, state: dict, source: str) -> LoadReport:
    tv, report = torchvision_state_for(encoder, state, source)
    own = encoder.state_dict()
    prefix = "backbone.encoder." if isinstance(model, Semantic2D) else "encoder."
    check_state(own, tv, source, "the encoder")
    encoder.load_state_dict(tv, strict=True)
    report.taken = [prefix + k for k in report.taken]
    report.missing = {
        k: "not an encoder weight: initialised from scratch"
        for k in model.state_dict()
        if not k.startswith(prefix)
    }
    return report


def _load_by_name(model: nn.Module, state: dict, source: str, layout: str, strict: bool) -> LoadReport:
    own = model.state_dict()
    report = LoadReport(source, layout)
    take = {}
    for key, value in state.items():
        if key not in own:
            report.skipped[key] = _why_not_in_model(key)
        elif value.shape != own[key].shape:
            report.skipped[key] = (
                f"shape {tuple(value.shape)} in the file, {tuple(own[key].shape)} in this model"
            )
        else:
            take[key] = value
            report.taken.append(key)
    for key in own:
        if key not in take:
            report.missing[key] = "not in the file (or another shape): initialised from scratch"
    encoder_gaps = [k for k in report.missing if k.startswith(("backbone.encoder.", "encoder."))]
    if strict and (report.missing or report.skipped):
        raise ValueError(f"{source} does not match the model strictly:\n{report.summary()}")
    if encoder_gaps:
        absent = [k for k in encoder_gaps if k not in state]
        reshaped = shape_mismatches({k: own[k] for k in encoder_gaps}, state)
        raise ValueError(
            f"{source}: incomplete encoder for this model: {len(absent)} keys missing (e.g. {absent[:3]}), "
            f"{len(reshaped)} of another shape (e.g. {reshaped[:3]})"
        )
    model.load_state_dict({**own, **take}, strict=True)
    return report


def _why_not_in_model(key: str) -> str:
    return f"not in this model: {skip_reason(key)}"
