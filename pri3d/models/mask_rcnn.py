"""torchvision's Mask R-CNN R50-FPN as pri3d fine-tunes it: built without weights, its ResNet-50 body
loaded strictly from a Pri3D checkpoint, an export or ImageNet, frozen stages and FrozenBN as the
original's Detectron2 configs (see :mod:`pri3d.tasks.insseg` for the recipe).

:func:`initialise_body` decides where a file's weights go in the detector; reading the file,
converting it to torchvision's layout and the strict check are :mod:`pri3d.weights`'.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pri3d.engine.distributed import DistEnv
from pri3d.io.images import IMAGENET_MEAN, IMAGENET_STD
from pri3d.weights import (
    LoadReport,
    check_resnet_arch,
    imagenet_state,
    load_strict,
    load_weights_file,
    torchvision_state_for,
)

if TYPE_CHECKING:
    from pri3d.tasks.insseg_config import InssegFinetuneConfig

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


def build_detector(num_classes: int, finetune: InssegFinetuneConfig, sizes: dict) -> nn.Module:
    """torchvision's ``maskrcnn_resnet50_fpn`` without weights, K + 1 outputs (background), ImageNet RGB
    normalisation, the recipe's RPN proposals, RoI sampling and test thresholds. Normalisation layers
    are trainable BatchNorm here; :func:`finalise_backbone` freezes them once the body is initialised."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    return maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes + 1,
        min_size=sizes["min_size_train"], max_size=sizes["max_size"],
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
        box_batch_size_per_image=finetune.batch_size_per_image, box_score_thresh=finetune.score_thresh_test,
        box_detections_per_img=finetune.detections_per_image,
        rpn_post_nms_top_n_train=finetune.proposals_train, rpn_post_nms_top_n_test=finetune.proposals_test,
    )  # fmt: skip


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
    detector: nn.Module, finetune: InssegFinetuneConfig, env: DistEnv | None = None
) -> None:
    """Frozen stages (``freeze_at``: no gradients, FrozenBN) and the normalisation of the rest."""
    body = detector.backbone.body
    for stage in _STAGES[: finetune.freeze_at]:
        for name in stage:
            module = getattr(body, name)
            setattr(body, name, _freeze_batchnorm(module))
            for parameter in getattr(body, name).parameters():
                parameter.requires_grad_(False)
    if finetune.norm == "frozen":
        _freeze_batchnorm(body)
    elif env is not None and env.distributed and env.device.type == "cuda":
        detector.backbone.body = nn.SyncBatchNorm.convert_sync_batchnorm(body)


def initialise_body(detector: nn.Module, init: str | Path) -> LoadReport:
    """Load the ResNet-50 body from ``scratch``, ``imagenet`` or a weights file, strictly (a run folder
    is not read here: the task turns it into its newest checkpoint first)."""
    body = detector.backbone.body
    others = {f"detector.{k}": "FPN, RPN and RoI heads: initialised from scratch"
              for k in detector.state_dict() if not k.startswith("backbone.body.")}  # fmt: skip
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
