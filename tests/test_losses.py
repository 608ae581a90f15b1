"""InfoNCE (single and batched), depth loss, feature-map indices."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pri3d.losses import DepthLoss, InfoNCE, batched_info_nce, feature_indices, info_nce


def _reference_info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """Loop form: for each row, -log softmax of its positive among all rows, both directions."""
    q = q / q.norm(dim=1, keepdim=True)
    k = k / k.norm(dim=1, keepdim=True)
    n = q.shape[0]
    total = q.new_zeros(())
    for i in range(n):
        q_to_k = torch.stack([q[i] @ k[j] / temperature for j in range(n)])
        k_to_q = torch.stack([k[i] @ q[j] / temperature for j in range(n)])
        total = total - torch.log_softmax(q_to_k, 0)[i] - torch.log_softmax(k_to_q, 0)[i]
    return total / (2 * n)


def test_info_nce_matches_loop_reference():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(7, 5, generator=gen), torch.randn(7, 5, generator=gen)
    torch.testing.assert_close(info_nce(q, k, 0.4), _reference_info_nce(q, k, 0.4))
    torch.testing.assert_close(info_nce(3 * q, 0.5 * k, 0.1), _reference_info_nce(q, k, 0.1))


def test_info_nce_hand_computed_2x2():
    # Orthonormal vectors with positives aligned: logits = I / T, every row is log(1 + e^{-1/T}).
    q = torch.eye(2)
    expected = math.log(1 + math.exp(-1 / 0.4))
    assert info_nce(q, q.clone(), 0.4).item() == pytest.approx(expected, rel=1e-6)
    # Swapped positives: logits put the wrong pair on the diagonal: log(1 + e^{1/T}).
    assert info_nce(q, q.flip(0), 0.4).item() == pytest.approx(math.log(1 + math.exp(1 / 0.4)), rel=1e-6)


def test_info_nce_shape_error():
    with pytest.raises(ValueError, match="equal shape"):
        info_nce(torch.randn(4, 3), torch.randn(5, 3))


def test_batched_info_nce_equals_per_pair_loss_when_all_valid():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(3, 6, 4, generator=gen), torch.randn(3, 6, 4, generator=gen)
    loss, per_pair = batched_info_nce(q, k, torch.ones(3, 6, dtype=torch.bool), 0.4)
    expected = torch.stack([info_nce(q[b], k[b], 0.4) for b in range(3)])
    torch.testing.assert_close(per_pair, expected)
    torch.testing.assert_close(loss, expected.mean())


def test_batched_info_nce_masking_equals_dropping_rows():
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 8, 4, generator=gen), torch.randn(2, 8, 4, generator=gen)
    valid = torch.tensor([[1, 0, 1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    # Invalid rows hold garbage: it must not leak in as a query or as a negative.
    q = torch.where(valid[..., None], q, torch.full_like(q, 1e3))
    loss, per_pair = batched_info_nce(q, k, valid, 0.4)
    expected = torch.stack([info_nce(q[b][valid[b]], k[b][valid[b]], 0.4) for b in range(2)])
    torch.testing.assert_close(per_pair, expected)
    torch.testing.assert_close(loss, expected.mean())


def test_batched_info_nce_ignores_pairs_without_matches():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(3, 5, 4, generator=gen, requires_grad=True)
    k = torch.randn(3, 5, 4, generator=gen, requires_grad=True)
    valid = torch.ones(3, 5, dtype=torch.bool)
    valid[1] = False
    loss, per_pair = batched_info_nce(q, k, valid, 0.4)
    reference, _ = batched_info_nce(q[[0, 2]], k[[0, 2]], valid[[0, 2]], 0.4)
    torch.testing.assert_close(loss, reference)
    assert per_pair[1].item() == 0.0
    loss.backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert q.grad[1].abs().max().item() == 0.0


def test_batched_info_nce_all_invalid_gives_zero_with_graph():
    q = torch.randn(2, 4, 3, requires_grad=True)
    k = torch.randn(2, 4, 3, requires_grad=True)
    loss, per_pair = batched_info_nce(q, k, torch.zeros(2, 4, dtype=torch.bool), 0.4)
    assert loss.item() == 0.0 and loss.requires_grad
    assert torch.equal(per_pair.detach(), torch.zeros(2))
    loss.backward()
    assert torch.equal(q.grad, torch.zeros_like(q))


def test_batched_info_nce_input_errors():
    q = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="bool"):
        batched_info_nce(q, q, torch.ones(2, 4), 0.4)
    with pytest.raises(ValueError, match="equal shape"):
        batched_info_nce(q, q[:, :3], torch.ones(2, 4, dtype=torch.bool), 0.4)


def test_info_nce_module_owns_its_temperature():
    gen = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 5, 4, generator=gen), torch.randn(2, 5, 4, generator=gen)
    valid = torch.ones(2, 5, dtype=torch.bool)
    loss = InfoNCE(temperature=0.1)
    assert loss.temperature == 0.1 and "temperature=0.1" in repr(loss)
    torch.testing.assert_close(loss(q, k, valid), batched_info_nce(q, k, valid, 0.1)[0])
    assert not loss.state_dict()  # nothing new in the pre-training module's state dict


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_info_nce_rejects_a_temperature_that_is_not_positive(temperature):
    """T <= 0 gives inf/NaN logits (or rewards pushing positives apart): refuse it before any step."""
    with pytest.raises(ValueError, match=r"temperature=.*expected a finite number > 0"):
        InfoNCE(temperature)
    q = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"temperature=.*expected a finite number > 0"):
        batched_info_nce(q, q, torch.ones(2, 4, dtype=torch.bool), temperature)
    with pytest.raises(ValueError, match=r"temperature=.*expected a finite number > 0"):
        info_nce(q[0], q[0], temperature)


def _depth(batch: int = 2, h: int = 24, w: int = 32) -> torch.Tensor:
    rows = torch.linspace(0, 1, h)[:, None]
    cols = torch.linspace(0, 1, w)[None, :]
    depth = 1.0 + rows + 0.5 * torch.sin(6 * cols)  # a smooth surface, 0.5 .. 2.5 m
    return depth.expand(batch, 1, h, w).clone()


def test_depth_loss_perfect_prediction_is_log_half():
    target = _depth()
    loss = DepthLoss()(target.clone(), target)
    # l_depth = log 0.5, l_grad = 2 log 0.5, l_normal = 0  ->  (3 log 0.5) / 3.
    assert loss.item() == pytest.approx(math.log(0.5), abs=1e-6)


def test_depth_loss_offset_raises_it_and_upsampling_is_applied():
    target = _depth()
    loss_fn = DepthLoss()
    offset = loss_fn(target + 0.3, target)
    # A constant offset leaves gradients and normals unchanged except at the zero-padded border.
    assert offset.item() > math.log(0.5) + 0.05
    half = F.interpolate(target, size=(12, 16), mode="bilinear", align_corners=True)
    assert loss_fn(half, target).item() > math.log(0.5)
    assert loss_fn(half, target).item() < offset.item()


def test_depth_loss_ignores_invalid_pixels():
    target = _depth()
    target[:, :, :, :12] = 0  # columns 0..11 invalid
    prediction = target.clone() + 0.1
    loss_fn = DepthLoss()
    base = loss_fn(prediction, target)
    # Changing the prediction deep inside the invalid region (beyond the 3x3 stencil of any
    # valid pixel) changes nothing; the original masked the same way.
    changed = prediction.clone()
    changed[:, :, :, :10] = torch.randn_like(changed[:, :, :, :10])
    assert loss_fn(changed, target).item() == pytest.approx(base.item(), abs=1e-6)
    # KITTI's -1 invalid value is masked too.
    kitti = torch.where(target > 0, target, torch.full_like(target, -1.0))
    assert loss_fn(changed, kitti).item() == pytest.approx(base.item(), abs=1e-6)


def test_depth_loss_gradients_and_empty_mask():
    target = _depth()
    prediction = (target[:, :, ::2, ::2] + 0.2 * torch.randn(2, 1, 12, 16)).requires_grad_()
    loss = DepthLoss()(prediction, target)
    loss.backward()
    assert torch.isfinite(prediction.grad).all() and prediction.grad.abs().sum() > 0

    empty = DepthLoss()(prediction, torch.zeros_like(target))
    assert empty.item() == 0.0 and empty.requires_grad


def _reference_depth_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss as written in the original: [B, 3, H, W] normal maps and cosine_similarity."""
    prediction = F.interpolate(prediction, size=target.shape[-2:], mode="bilinear", align_corners=True)
    mask = target > 0
    target = torch.where(mask, target, torch.zeros_like(target))
    sobel = DepthLoss().sobel
    grad_true, grad_pred = F.conv2d(target, sobel, padding=1), F.conv2d(prediction, sobel, padding=1)
    ones = torch.ones_like(target)
    cos = F.cosine_similarity(torch.cat([-grad_pred, ones], 1), torch.cat([-grad_true, ones], 1), dim=1)[
        :, None
    ]
    terms = torch.log((grad_pred - grad_true).abs() + 0.5)
    l_depth = torch.log((prediction - target).abs() + 0.5)[mask].mean()
    l_grad = terms[:, :1][mask].mean() + terms[:, 1:][mask].mean()
    return (l_depth + l_grad + (1 - cos)[mask].mean()) / 3


def test_depth_loss_equals_the_formula_with_normal_maps():
    gen = torch.Generator().manual_seed(0)
    target = _depth() + 0.1 * torch.rand(2, 1, 24, 32, generator=gen)
    target[0, :, 5:9] = 0  # holes
    prediction = (target[:, :, ::2, ::2] + 0.3 * torch.randn(2, 1, 12, 16, generator=gen)).requires_grad_()
    got, want = DepthLoss()(prediction, target), _reference_depth_loss(prediction, target)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(*(torch.autograd.grad(loss, prediction)[0] for loss in (got, want)))


def test_depth_loss_has_no_state_dict_entries():
    assert DepthLoss().state_dict() == {}


def test_feature_indices_floor_and_original_rounding_agree():
    p = torch.arange(0, 480)
    pos = torch.stack([p, p.flip(0)], dim=-1)  # [480, 2] (row, col)
    idx = feature_indices(pos)
    assert torch.equal(idx, pos // 2)
    # The original: round((p - 0.5) / 2), round half to even.
    assert torch.equal(idx, torch.round((pos.double() - 0.5) / 2).long())
    assert idx.dtype == torch.int64


def test_feature_indices_clamps_and_accepts_float_positions():
    pos = torch.tensor([[[-1, 5], [239, 319]]])  # [1, 2, 2]
    assert feature_indices(pos, feature_hw=(100, 150)).tolist() == [[[0, 2], [99, 149]]]
    floats = torch.tensor([[2.4, 3.6]])  # nearest pixels (2, 4)
    assert feature_indices(floats).tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="row, col"):
        feature_indices(torch.zeros(3, 3))
