"""The Pri3D pre-training module: a 2D UNet, optionally a sparse 3D UNet, and the three losses.

State-dict layout follows the original so that released checkpoints' 2D parts load strictly:
`backbone.encoder.*`, `backbone.decoder.*` (2D), `w2d.*`, `w3d.*` (64-d projections of the
geometric-prior loss), `headnet.*` (depth head), `backbone3d.*` (3D network, spconv layout).

All correspondences arrive with the batch (computed in the DataLoader workers); the forward pass
only gathers features at them and evaluates batched losses (no loop over the batch).
"""

from __future__ import annotations

import torch
from torch import nn

from pri3d.losses import DepthLoss, InfoNCE, feature_indices
from pri3d.models.registry import build_backbone, build_backbone3d

#: Output channels of the 2D backbone during pre-training (the original's ``model/model.py``).
PRETRAIN_CHANNELS = {"Res50UNet": 128, "Res18UNet": 32}
PROJECTION_DIM = 64
FEATURE3D_DIM = 96


class Pri3D(nn.Module):
    """Pri3D pre-training (Hou et al., ICCV 2021).

    Args:
        backbone: 2D backbone name (Res50UNet, Res18UNet).
        pretrained: None/'scratch', 'imagenet', or a path to torchvision ResNet weights for the encoder.
        view_invariant: pixel <-> pixel InfoNCE between the two views.
        geometric_prior: pixel <-> voxel InfoNCE against a sparse 3D UNet (MinkUNet34C layout).
        depth: auxiliary depth prediction from the 2D features.
        temperature: InfoNCE temperature (0.4 in the released recipe).
    """

    def __init__(
        self,
        backbone: str = "Res50UNet",
        pretrained: str | None = None,
        view_invariant: bool = True,
        geometric_prior: bool = True,
        depth: bool = True,
        temperature: float = 0.4,
    ):
        super().__init__()
        if backbone not in PRETRAIN_CHANNELS:
            raise ValueError(f"pretrain.backbone={backbone!r}: expected one of {sorted(PRETRAIN_CHANNELS)}")
        if not (view_invariant or geometric_prior or depth):
            raise ValueError("at least one of pretrain.view_invariant, geometric_prior, depth must be on")
        channels = PRETRAIN_CHANNELS[backbone]
        self.view_invariant = view_invariant
        self.geometric_prior = geometric_prior
        self.use_depth = depth
        self.info_nce = InfoNCE(temperature)  # both contrastive losses; refuses T <= 0 here, not at step 0
        self.backbone = build_backbone(
            backbone, channels, None if pretrained in (None, "scratch") else pretrained
        )
        if geometric_prior:
            self.backbone3d = build_backbone3d("MinkUNet34C", in_channels=3, out_channels=FEATURE3D_DIM)
            self.w2d = nn.Linear(channels, PROJECTION_DIM)
            self.w3d = nn.Linear(FEATURE3D_DIM, PROJECTION_DIM)
        if depth:
            self.headnet = nn.Conv2d(channels, 1, kernel_size=1)
            self.depth_loss = DepthLoss()

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Losses for a collated batch (see `pri3d.data.collate.collate_pairs`).

        Returns `total_loss` = `contrastive_loss` + `depth_loss` and the parts `view_loss`,
        `geo_loss` (each present when enabled).
        """
        # two passes, as the original: BatchNorm sees each view's batch on its own
        features = [self.backbone(batch["color1"]), self.backbone(batch["color2"])]  # [B, C, H/2, W/2] each
        losses: dict[str, torch.Tensor] = {}
        contrastive = features[0].new_zeros(())
        if self.view_invariant:
            q = _gather_pixels(features[0], batch["match1"])  # [B, S, C]
            k = _gather_pixels(features[1], batch["match2"])  # [B, S, C]
            losses["view_loss"] = self.info_nce(q.float(), k.float(), batch["match_valid"])
            contrastive = contrastive + losses["view_loss"]
        if self.geometric_prior:
            geo = []
            for v, feature in zip((1, 2), features):
                if len(batch[f"voxels{v}"]):
                    # spconv computes in float32 only: keep the 3D network out of autocast
                    with torch.autocast(device_type=feature.device.type, enabled=False):
                        voxel_features = self.backbone3d(
                            batch[f"voxels{v}"], batch[f"voxel_colors{v}"].float()
                        )  # [N, 96]
                else:
                    # No pair of this micro-batch has a point cloud (MegaDepth pairs of a Mixture): every
                    # vp_valid row is False and points at row 0, so the loss below is 0. The zero-weighted
                    # parameter sum gives the 3D network zero gradients, so DDP ranks reduce the same tensors.
                    unused = sum(p.sum() for p in self.backbone3d.parameters())
                    voxel_features = feature.new_zeros(1, FEATURE3D_DIM) + 0.0 * unused  # [1, 96]
                q = self.w2d(_gather_pixels(feature, batch[f"vp_pixel{v}"]).float())  # [B, S, 64]
                k = self.w3d(voxel_features[batch[f"vp_voxel{v}"]])  # [B, S, 64]
                geo.append(self.info_nce(q, k, batch[f"vp_valid{v}"]))
            losses["geo_loss"] = (geo[0] + geo[1]) / 2  # weight ½ per view, as the original
            contrastive = contrastive + losses["geo_loss"]
        losses["contrastive_loss"] = contrastive
        total = contrastive
        if self.use_depth:
            depth_losses = [
                self.depth_loss(self.headnet(feature).float(), batch[f"depth{v}"])
                for v, feature in zip((1, 2), features)
            ]
            losses["depth_loss"] = (depth_losses[0] + depth_losses[1]) / 2
            total = total + losses["depth_loss"]
        losses["total_loss"] = total
        return losses


def _gather_pixels(features: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Features [B, C, h, w] at full-resolution pixels [B, S, 2] (row, col) -> [B, S, C]."""
    h, w = features.shape[-2:]
    idx = feature_indices(pixels, stride=2, feature_hw=(h, w))  # [B, S, 2] on the stride-2 map
    flat = idx[..., 0] * w + idx[..., 1]  # [B, S]
    gathered = features.flatten(2).gather(2, flat[:, None, :].expand(-1, features.shape[1], -1))  # [B, C, S]
    return gathered.transpose(1, 2)
