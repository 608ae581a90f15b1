"""3D sparse UNet on spconv: each conv kind against dense convolutions, then the whole network."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

spconv = pytest.importorskip("spconv.pytorch")

from pri3d.models import build_backbone3d, sparse_unet  # noqa: E402
from pri3d.models.sparse_unet import MinkUNet34C  # noqa: E402

GRID = 8
TOL = {"rtol": 1e-4, "atol": 1e-5}
# A 30-layer network in float32 with outputs ~10: summation-order noise reaches ~1e-5.
NET_TOL = {"rtol": 1e-3, "atol": 1e-4}


@pytest.fixture
def grid():
    """Random 30 % occupancy of an 8³ grid, batch 2, rows shuffled: coords [N, 4] int32, features [N, 3]."""
    gen = torch.Generator().manual_seed(0)
    occupied = torch.rand(2, GRID, GRID, GRID, generator=gen) < 0.3
    coords = occupied.nonzero().int()
    coords = coords[torch.randperm(coords.shape[0], generator=gen)].contiguous()
    features = torch.randn(coords.shape[0], 3, generator=gen, requires_grad=True)
    return coords, features


def _to_dense(coords: torch.Tensor, features: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable scatter of [N, C] features to a dense [B, C, X, Y, Z] grid (zeros elsewhere)."""
    dense = features.new_zeros(2, size, size, size, features.shape[1])
    dense = dense.index_put(tuple(coords.long().t()), features)
    return dense.permute(0, 4, 1, 2, 3)


def _at(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Features [N, C] of a dense [B, C, X, Y, Z] grid at coords [N, 4]."""
    return dense.permute(0, 2, 3, 4, 1)[tuple(coords.long().t())]


def _kernel_as_conv3d(weight: torch.Tensor) -> torch.Tensor:
    """spconv kernel [C_out, kx, ky, kz, C_in] -> conv3d weight [C_out, C_in, kx, ky, kz]."""
    return weight.permute(0, 4, 1, 2, 3)


def _grads(loss: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("kernel", [3, 5])
def test_submanifold_conv_matches_dense(grid, kernel):
    coords, features = grid
    conv = spconv.SubMConv3d(3, 4, kernel, bias=False)
    out = conv(spconv.SparseConvTensor(features, coords, [GRID] * 3, 2))
    assert torch.equal(out.indices, coords)  # submanifold: output sites = input sites, same order
    ref = _at(
        F.conv3d(_to_dense(coords, features, GRID), _kernel_as_conv3d(conv.weight), padding=kernel // 2),
        coords,
    )
    torch.testing.assert_close(out.features, ref, **TOL)

    upstream = torch.randn_like(ref)
    for got, want in zip(
        _grads((out.features * upstream).sum(), features, conv.weight),
        _grads((ref * upstream).sum(), features, conv.weight),
    ):
        torch.testing.assert_close(got, want, **TOL)


def test_strided_and_inverse_conv_match_dense(grid):
    coords, features = grid
    down = spconv.SparseConv3d(3, 4, 2, stride=2, bias=False, indice_key="down")
    up = spconv.SparseInverseConv3d(4, 5, 2, indice_key="down", bias=False)
    coarse = down(spconv.SparseConvTensor(features, coords, [GRID] * 3, 2))
    fine = up(coarse)

    # Output sites: the coarse voxels whose 2x2x2 block holds any input voxel.
    occupied = _to_dense(coords, torch.ones(coords.shape[0], 1), GRID)
    expected_sites = F.max_pool3d(occupied, 2)[:, 0].nonzero().tolist()
    assert sorted(coarse.indices.tolist()) == sorted(expected_sites)
    dense_coarse = F.conv3d(_to_dense(coords, features, GRID), _kernel_as_conv3d(down.weight), stride=2)
    ref_coarse = _at(dense_coarse, coarse.indices)
    torch.testing.assert_close(coarse.features, ref_coarse, **TOL)

    assert torch.equal(fine.indices, coords)  # inverse conv restores the input sites in input order
    # Inverse kernel [C_out, k, k, k, C_in] -> conv_transpose3d weight [C_in, C_out, k, k, k].
    dense_fine = F.conv_transpose3d(
        _to_dense(coarse.indices, ref_coarse, GRID // 2), up.weight.permute(4, 0, 1, 2, 3), stride=2
    )
    ref_fine = _at(dense_fine, coords)
    torch.testing.assert_close(fine.features, ref_fine, **TOL)

    upstream = torch.randn_like(ref_fine)
    params = (features, down.weight, up.weight)
    for got, want in zip(
        _grads((fine.features * upstream).sum(), *params), _grads((ref_fine * upstream).sum(), *params)
    ):
        torch.testing.assert_close(got, want, **TOL)


def test_spconv_patches_are_installed_once():
    sparse_unet._patch_spconv_cpu_gather_scatter()
    sparse_unet._patch_spconv_stream_for_cpu()
    assert not isinstance(spconv.ops.SpconvOps._ops, sparse_unet._SpconvOpsWithTorchCpuGatherScatter)
    if not torch.cuda.is_available():
        assert spconv.ops.get_current_stream() == 0


def test_submanifold_conv_is_deterministic_with_threads():
    """Regression: spconv's own CPU scatter-add corrupts rows now and then with > 1 thread.

    Without the patch this fails in most runs (about 8 in 10 here); with it, never.
    """
    gen = torch.Generator().manual_seed(1)
    coords = (torch.rand(2, 32, 32, 32, generator=gen) < 0.1).nonzero().int().contiguous()
    features = torch.randn(coords.shape[0], 8, generator=gen)
    conv = spconv.SubMConv3d(8, 16, 3, bias=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        with torch.no_grad():
            outs = [conv(spconv.SparseConvTensor(features, coords, [32] * 3, 2)).features for _ in range(40)]
    finally:
        torch.set_num_threads(threads)
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


def test_patched_gather_scatter_semantics():
    from spconv.pytorch.cppcore import torch_tensor_to_tv

    gen = torch.Generator().manual_seed(2)
    source = torch.randn(50, 4, generator=gen)
    indices = torch.randperm(50, generator=gen)[:20].int()
    buffer = torch.zeros(30, 4)  # spconv's buffers are sized for the largest offset
    spconv.ops.SpconvOps.gather_cpu(
        torch_tensor_to_tv(buffer), torch_tensor_to_tv(source), torch_tensor_to_tv(indices)
    )
    assert torch.equal(buffer[:20], source[indices.long()]) and not buffer[20:].any()

    out = torch.randn(50, 4, generator=gen)
    expected = out.clone()
    expected[indices.long()] += buffer[:20]
    spconv.ops.SpconvOps.scatter_add_cpu(
        torch_tensor_to_tv(out), torch_tensor_to_tv(buffer), torch_tensor_to_tv(indices)
    )
    torch.testing.assert_close(out, expected)


def _voxels(n_per_item: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique voxels, many on a floor plane, for a batch of 2, in random row order; RGB features."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(2):
        pts = torch.randint(-12, 12, (3 * n_per_item, 3), generator=gen)
        pts[:n_per_item, 2] = torch.randint(-1, 1, (n_per_item,), generator=gen)
        pts = torch.unique(pts, dim=0)
        pts = pts[torch.randperm(pts.shape[0], generator=gen)[:n_per_item]]
        rows.append(torch.cat([torch.full((pts.shape[0], 1), b), pts], dim=1))
    coords = torch.cat(rows).int()
    return coords, torch.rand(coords.shape[0], 3, generator=gen)


def test_network_forward_backward_on_cpu():
    torch.manual_seed(0)
    coords, features = _voxels(250)
    net = MinkUNet34C()
    out = net(coords, features)
    assert out.shape == (coords.shape[0], 96)
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_network_output_rows_follow_input_rows():
    torch.manual_seed(0)
    coords, features = _voxels(150)
    net = MinkUNet34C()  # train mode: BN uses batch statistics, which do not depend on row order
    with torch.no_grad():
        out = net.forward_sparse(coords, features)
        origin = torch.div(coords[:, 1:].min(0).values, 16, rounding_mode="floor") * 16
        assert torch.equal(out.indices[:, 0], coords[:, 0])
        assert torch.equal(out.indices[:, 1:], coords[:, 1:] - origin)

        perm = torch.randperm(coords.shape[0])
        torch.testing.assert_close(net(coords[perm], features[perm]), out.features[perm], **NET_TOL)
        # Shifting by a multiple of 16 (the coarsest stride) must not change anything.
        shifted = coords + torch.tensor([0, 16, -32, 48], dtype=torch.int32)
        torch.testing.assert_close(net(shifted, features), out.features, **NET_TOL)
        # A column-major coords tensor (e.g. straight from nonzero()) is made contiguous.
        torch.testing.assert_close(net(coords.t().contiguous().t(), features), out.features, **NET_TOL)


def test_network_init_and_size():
    net = MinkUNet34C()
    conv = net.block4[0].conv2.weight  # [256, 3, 3, 3, 256]: fan_out = 256 * 27
    assert conv.std().item() == pytest.approx(math.sqrt(2 / (256 * 27)), rel=0.02)
    assert torch.equal(net.bn0.weight, torch.ones(32)) and torch.equal(net.bn0.bias, torch.zeros(32))
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(37.85e6, rel=0.01)


def test_network_input_errors():
    net = MinkUNet34C()
    coords, features = _voxels(20)
    with pytest.raises(TypeError, match=r"float32 or torch\.float64 on the torch path"):
        net(coords, features.half())
    with pytest.raises(TypeError, match=r"must be torch\.float32 on the spconv path"):
        MinkUNet34C(backend="spconv")(coords, features.double())
    with pytest.raises(ValueError, match="duplicate"):
        net(torch.cat([coords, coords[:1]]), torch.cat([features, features[:1]]))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        net(coords, features[:, :2])
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        net(coords[:, 1:], features)
    with pytest.raises(ValueError, match="at least one voxel"):
        net(coords[:0], features[:0])


def test_registry_builds_3d_network():
    assert isinstance(build_backbone3d("ResUNet3D", 3, 96), MinkUNet34C)
    with pytest.raises(ValueError, match="MinkUNet34C"):
        build_backbone3d("PointNet")
