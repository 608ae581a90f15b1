"""Pre-training losses: symmetric InfoNCE (single, batched over pairs, and as a module) and the depth loss.

Each loss takes features (plus correspondence indices or a validity mask) and returns a scalar; none
samples, moves devices or knows about the training loop. Pixel conventions are those stated in
:mod:`pri3d.geometry` (row, col order; pixel centres at integer coordinates; depth 0 = invalid).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DepthLoss", "InfoNCE", "batched_info_nce", "feature_indices", "info_nce"]


def _check_temperature(temperature: float) -> float:
    # logits / T: T = 0 makes them inf (NaN loss at the first step), T < 0 rewards pulling positives
    # apart and still looks finite; either silently wastes a run, so refuse it where the loss is made
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"InfoNCE temperature={temperature}: expected a finite number > 0 (0.4 in the recipe)"
        )
    return float(temperature)


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.4) -> torch.Tensor:
    """Symmetric InfoNCE between two aligned sets of vectors (the original ``ContrastiveLoss``).

    Row i of ``q`` and row i of ``k`` are a positive pair; the other rows of the same set are the
    negatives. Both sets are L2-normalised, logits = q·kᵀ / T, and the loss is the mean of the
    cross-entropies q→k and k→q with targets 0..M-1.

    Args:
        q: ``[M, C]`` features of view/modality A.
        k: ``[M, C]`` features of view/modality B, aligned with ``q``.
        temperature: T (``nceT`` = 0.4 in the original recipe).

    Returns:
        scalar loss (computed in float32).
    """
    _check_temperature(temperature)
    if q.dim() != 2 or q.shape != k.shape:
        raise ValueError(
            f"q and k must both be [M, C] of equal shape, got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    # Logits of unit vectors over T = 0.4 need float32 softmax precision, also under autocast.
    with torch.autocast(q.device.type, enabled=False):
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k.float(), dim=1)
        logits = q @ k.t() / temperature  # [M, M]
        targets = torch.arange(q.shape[0], device=q.device)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def batched_info_nce(
    q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, temperature: float = 0.4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE for B pairs at once, negatives only within each pair, with a validity mask.

    For pair b, the valid rows ``valid[b]`` of ``q[b]`` and ``k[b]`` are the matches (correspondences
    padded to a fixed M). Invalid rows are neither queries nor negatives (their logits are set to
    -inf), so for every pair the result equals :func:`info_nce` on that pair's valid rows alone.

    Normalisation: the loss is the mean, over the pairs that have at least one valid row, of each
    pair's symmetric InfoNCE (itself a mean over its valid rows). If no pair has a valid row the
    loss is 0, still connected to the graph of ``q`` and ``k``. The original instead skipped a pair
    without matches but still divided by the batch size (the view loss, diluting the others), or
    crashed (the geometric-prior loss); here such pairs simply do not count.

    Args:
        q: ``[B, M, C]`` features of view/modality A.
        k: ``[B, M, C]`` features of view/modality B; row i of ``k[b]`` matches row i of ``q[b]``.
        valid: ``[B, M]`` bool, True where row i of pair b is a real correspondence.
        temperature: T (0.4 in the original recipe).

    Returns:
        (loss scalar, per_pair ``[B]``): ``per_pair[b]`` is pair b's InfoNCE, 0 for a pair with no
        valid row. Both carry gradients; detach ``per_pair`` for logging.
    """
    _check_temperature(temperature)
    if q.dim() != 3 or q.shape != k.shape:
        raise ValueError(
            f"q and k must both be [B, M, C] of equal shape, got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if valid.shape != q.shape[:2] or valid.dtype != torch.bool:
        raise ValueError(
            f"valid must be a bool [B, M] = {tuple(q.shape[:2])} mask, got {valid.dtype} {tuple(valid.shape)}"
        )
    with torch.autocast(q.device.type, enabled=False):  # float32 logits, as in info_nce
        q = F.normalize(q.float(), dim=2)
        k = F.normalize(k.float(), dim=2)
        logits = torch.bmm(q, k.transpose(1, 2)) / temperature  # [B, M(q), M(k)]
        positives = torch.diagonal(logits, dim1=1, dim2=2)  # [B, M]
        n_valid = valid.sum(dim=1)  # [B]
        has_valid = n_valid > 0  # [B]
        # A pair with no valid row would give all -inf rows (NaN); leave it unmasked, it is dropped below.
        keep = valid | ~has_valid[:, None]  # [B, M]
        # [B, M]: log-partition of each query row over the kept keys, and of each key column.
        q_to_k = torch.logsumexp(logits.masked_fill(~keep[:, None, :], float("-inf")), dim=2)
        k_to_q = torch.logsumexp(logits.masked_fill(~keep[:, :, None], float("-inf")), dim=1)
        row_loss = 0.5 * (q_to_k + k_to_q) - positives  # [B, M]
        row_loss = torch.where(valid, row_loss, torch.zeros_like(row_loss))
        per_pair = row_loss.sum(dim=1) / n_valid.clamp(min=1).to(row_loss.dtype)  # [B], 0 where no valid row
        # Dividing by the number of pairs with matches (not B); no host sync, and 0 with a graph if none.
        loss = per_pair.sum() / has_valid.sum().clamp(min=1).to(per_pair.dtype)
        return loss, per_pair


class InfoNCE(nn.Module):
    """:func:`batched_info_nce` with its temperature fixed (and checked) when the loss is built.

    Args:
        temperature: T, a finite number > 0 (the original's ``nceT`` = 0.4).

    ``forward(q [B, M, C], k [B, M, C], valid [B, M] bool)`` returns the loss scalar; no state dict
    entries.
    """

    def __init__(self, temperature: float = 0.4) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return batched_info_nce(q, k, valid, self.temperature)[0]

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class DepthLoss(nn.Module):
    """Depth + gradient + normal loss of Hu et al. ("Revisiting Single Image Depth Estimation").

    The prediction is bilinearly upsampled (align_corners=True) to the target size; x/y gradients
    of both maps come from fixed 3×3 Sobel kernels (zero padding 1); normals are (−∂x, −∂y, 1).
    Over the valid pixels (target > 0, which also excludes KITTI's −1):

    * l_depth  = mean log(|d − d̂| + 0.5)
    * l_grad   = mean log(|∂x d − ∂x d̂| + 0.5) + mean log(|∂y d − ∂y d̂| + 0.5)
    * l_normal = mean (1 − cos(n, n̂))

    and the loss is (l_depth + l_grad + l_normal) / 3. Means are taken over all valid pixels of the
    batch together (the original masked the whole batch at once). A perfect prediction gives
    log 0.5 ≈ −0.693 (the loss can be negative). A batch without valid pixels gives 0 (kept in the
    graph). Gradients next to holes still see the invalid zeros through the Sobel stencil, as in
    the original; only the centre pixel is masked.

    The Sobel kernels are a non-persistent buffer: unlike the original's
    ``headloss.get_gradient.edge_conv.weight`` they do not appear in the state dict.
    """

    def __init__(self) -> None:
        super().__init__()
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.register_buffer(
            "sobel", torch.stack([sobel_x, sobel_x.t()])[:, None], persistent=False
        )  # [2,1,3,3]

    def gradients(self, depth: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` -> ``[B, 2, H, W]`` (∂x along columns, ∂y along rows)."""
        return F.conv2d(depth, self.sobel.to(depth.dtype), padding=1)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``prediction`` ``[B, 1, h, w]`` against the depth ``target`` ``[B, 1, H, W]`` (metres).

        ``[B, H, W]`` maps are accepted too. Returns a scalar.
        """
        if prediction.dim() == 3:
            prediction = prediction[:, None]
        if target.dim() == 3:
            target = target[:, None]
        if prediction.dim() != 4 or prediction.shape[1] != 1 or target.shape[:2] != prediction.shape[:2]:
            raise ValueError(
                f"prediction [B, 1, h, w] and target [B, 1, H, W] expected, got "
                f"{tuple(prediction.shape)} and {tuple(target.shape)}"
            )
        # The log terms and normals are computed in float32 even under autocast.
        with torch.autocast(prediction.device.type, enabled=False):
            prediction = prediction.float()
            target = target.float()
            if prediction.shape[-2:] != target.shape[-2:]:
                prediction = F.interpolate(
                    prediction, size=target.shape[-2:], mode="bilinear", align_corners=True
                )
            mask = target > 0  # [B, 1, H, W]; False for NaN and for KITTI's -1
            target = torch.where(mask, target, 0.0)
            count = mask.sum().clamp(min=1).to(prediction.dtype)  # every term is a mean over `mask`
            zero = prediction.new_zeros(())

            grad_true = self.gradients(target)  # [B, 2, H, W]
            grad_pred = self.gradients(prediction)
            l_depth = torch.where(mask, torch.log((prediction - target).abs() + 0.5), zero).sum()
            # x and y terms summed over the same mask: mean over ∂x + mean over ∂y
            l_grad = torch.where(mask, torch.log((grad_pred - grad_true).abs() + 0.5), zero).sum()
            # cosine of the normals (-∂x, -∂y, 1), written out: no [B, 3, H, W] normal maps (~5× faster)
            dot = (grad_pred * grad_true).sum(1, keepdim=True) + 1  # [B, 1, H, W]
            norms = torch.sqrt(
                (grad_pred.square().sum(1, keepdim=True) + 1) * (grad_true.square().sum(1, keepdim=True) + 1)
            )
            l_normal = torch.where(mask, 1 - dot / norms, zero).sum()
            return (l_depth + l_grad + l_normal) / (3 * count)


def feature_indices(
    pixel_pos: torch.Tensor, stride: int = 2, feature_hw: tuple[int, int] | None = None
) -> torch.Tensor:
    """Indices into a stride-``stride`` feature map of full-resolution (row, col) pixel positions.

    With pixel centres at integer coordinates (see :mod:`pri3d.geometry`), the cell of a 2×
    (align_corners=False) downsampled map covering full-resolution pixel p is ``floor(p / stride)``.
    Floating positions are first rounded to their pixel (``floor(x + 0.5)``).

    Relation to the original: it computes ``round((p − 0.5) / 2)`` (round-half-to-even) on integer
    positions. For integer p ≥ 0, (p − 0.5) / 2 is k − 0.25 or k + 0.25 (p = 2k or 2k + 1), never a
    tie, and rounds to k = floor(p / 2): the two agree exactly for stride 2.

    Args:
        pixel_pos: ``[..., 2]`` (row, col) pixel indices at full resolution.
        stride: downsampling factor of the feature map.
        feature_hw: (H', W') of the feature map; if given, indices are clamped to it (needed only
            when the feature map is smaller than ceil(H / stride), e.g. cropped inputs).

    Returns:
        ``[..., 2]`` int64 (row, col) indices into the feature map.
    """
    if pixel_pos.shape[-1] != 2:
        raise ValueError(f"pixel_pos must be [..., 2] (row, col), got {tuple(pixel_pos.shape)}")
    if pixel_pos.is_floating_point():
        pixel_pos = torch.floor(pixel_pos + 0.5)
    idx = torch.div(pixel_pos.long(), stride, rounding_mode="floor")
    if feature_hw is None:
        return idx.clamp(min=0)
    upper = torch.tensor([feature_hw[0] - 1, feature_hw[1] - 1], device=idx.device)
    return torch.minimum(idx.clamp(min=0), upper)
