"""torchvision's Mask R-CNN R50-FPN as pri3d fine-tunes it: built without weights, its ResNet-50 body
loaded strictly from a Pri3D checkpoint, an export or ImageNet, frozen stages and FrozenBN as the
original's Detectron2 configs (see :mod:`pri3d.tasks.insseg` for the recipe, which the task passes
here as plain values).

:func:`initialise_body` decides where a file's weights go in the detector; reading the file,
converting it to torchvision's layout and the strict check are :mod:`pri3d.weights`'.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pri3d.io.images import IMAGENET_MEAN, IMAGENET_STD
from pri3d.weights import (
    LoadReport,
    check_resnet_arch,
    imagenet_state,
    load_strict,
    load_weights_file,
    torchvision_state_for,
)

__all__ = ["InstanceSegmenter", "build_detector", "finalise_backbone", "initialise_body"]


class InstanceSegmenter(nn.Module):
    """A torchvision Mask R-CNN behind the Trainer's interface (a collated batch in, losses out).

    ``detector`` keeps torchvision's key names: ``state_dict`` minus the ``detector.`` prefix loads into
    ``maskrcnn_resnet50_fpn(num_classes=K + 1)`` (``strict=False`` only for the BatchNorm counters
    ``num_batches_tracked``, which FrozenBN layers do not have).
    """

    def __init__(self, detector: nn.Module, min_size_train: tuple[int, ...], min_size_test: int) -> None:
        super().__init__()
        self.detector = detector
        self.min_size_train, self.min_size_test = tuple(min_size_train), min_size_test

    def _device(self) -> torch.device:
        return next(self.detector.parameters()).device

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Training losses of ``batch`` (``images``: list of [3, H, W] in [0, 1]; ``targets``)."""
        device = self._device()
        images = [image.to(device) for image in batch["images"]]
        targets = [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]
        self.detector.transform.min_size = self.min_size_train  # one drawn per image
        losses = self.detector(images, targets)
        losses["total_loss"] = sum(losses.values())
        return losses

    @torch.no_grad()
    def predict(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections per image at its own resolution: boxes [N, 4] xyxy, labels, scores, masks [N, 1, H, W]."""
        was_training = self.training
        self.eval()
        self.detector.transform.min_size = (self.min_size_test,)
        device = self._device()
        outputs = self.detector([image.to(device) for image in images])
        self.train(was_training)
        return outputs


def build_detector(
    num_classes: int,
    min_size_train: tuple[int, ...],
    max_size: int,
    batch_size_per_image: int = 32,
    score_thresh: float = 0.5,
    detections_per_image: int = 100,
    proposals_train: int = 1000,
    proposals_test: int = 1000,
) -> nn.Module:
    """torchvision's ``maskrcnn_resnet50_fpn`` without weights, K + 1 outputs (background), ImageNet RGB
    normalisation. Normalisation layers are trainable BatchNorm here; :func:`finalise_backbone` freezes
    them once the body is initialised.

    Args:
        num_classes: K, without the background.
        min_size_train: the shorter sides drawn from in training (:class:`InstanceSegmenter` sets
            the test size).
        max_size: the most pixels on the longer side.
        batch_size_per_image: RoIs sampled per training image.
        score_thresh: the test score below which detections are dropped.
        detections_per_image: the most detections kept per test image.
        proposals_train, proposals_test: RPN proposals kept after NMS.

    The defaults are the original's ScanNet config.
    """
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    return maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes + 1,
        min_size=min_size_train,
        max_size=max_size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        box_batch_size_per_image=batch_size_per_image,
        box_score_thresh=score_thresh,
        box_detections_per_img=detections_per_image,
        rpn_post_nms_top_n_train=proposals_train,
        rpn_post_nms_top_n_test=proposals_test,
    )


_STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))


def _freeze_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm2d inside replaced by a FrozenBatchNorm2d of the same statistics."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, name).copy_(getattr(module, name).detach())
        return frozen
    for name, child in module.named_children():
        setattr(module, name, _freeze_batchnorm(child))
    return module


def finalise_backbone(
    detector: nn.Module, freeze_at: int = 2, frozen_bn: bool = True, sync_bn: bool = False
) -> None:
    """Frozen stages and the normalisation of the rest of the ResNet body.

    Args:
        freeze_at: stages without gradients and with FrozenBN: 0 none, 1 the stem, 2 stem + res2, …
        frozen_bn: FrozenBN in the whole body (the ScanNet/NYU configs); else trainable BatchNorm.
        sync_bn: trainable BatchNorm becomes SyncBatchNorm (for DDP on CUDA).
    """
    body = detector.backbone.body
    for stage in _STAGES[:freeze_at]:
        for name in stage:
            module = getattr(body, name)
            setattr(body, name, _freeze_batchnorm(module))
            for parameter in getattr(body, name).parameters():
                parameter.requires_grad_(False)
    if frozen_bn:
        _freeze_batchnorm(body)
    elif sync_bn:
        detector.backbone.body = nn.SyncBatchNorm.convert_sync_batchnorm(body)


def initialise_body(detector: nn.Module, init: str | Path) -> LoadReport:
    """Load the ResNet-50 body from ``scratch``, ``imagenet`` or a weights file, strictly (a run folder
    is not read here: the task turns it into its newest checkpoint first)."""
    body = detector.backbone.body
    others = {
        f"detector.{k}": "FPN, RPN and RoI heads: initialised from scratch"
        for k in detector.state_dict()
        if not k.startswith("backbone.body.")
    }
    if init == "scratch":
        missing = {f"detector.backbone.body.{k}": "scratch initialisation" for k in body.state_dict()}
        return LoadReport("scratch", "none", missing={**missing, **others})
    if init == "imagenet":
        state, source = imagenet_state("resnet50", "finetune.pretrain")
    else:
        state, _ = load_weights_file(init)
        source = str(init)
    tv, report = torchvision_state_for(body, state, source)
    check_resnet_arch(body.state_dict(), tv, source, "Mask R-CNN here is R50-FPN: give a ResNet-50 file")
    load_strict(body, tv, source, "the Mask R-CNN ResNet-50 body")
    report.taken = [f"detector.backbone.body.{k}" for k in report.taken]
    report.missing = others
    return report
