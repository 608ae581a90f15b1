"""The torch path of the 3D network: neighbour tables, each conv kind against dense convolutions,
block boundaries, the whole network against spconv's native CPU path, the backend option, and
(with a GPU) the torch path on CUDA against the same computation on CPU and the triton path against
the float64 reference."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pri3d.models import sparse_conv_torch
from pri3d.models.sparse_conv_torch import (
    TorchSparseTensor,
    downsample_map,
    sparse_conv,
    submanifold_map,
)

GRID = 8
TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture
def grid():
    """Random 30 % occupancy of an 8³ grid, batch 2, rows shuffled: coords [N, 4] int32, features [N, 3]."""
    gen = torch.Generator().manual_seed(0)
    occupied = torch.rand(2, GRID, GRID, GRID, generator=gen) < 0.3
    coords = occupied.nonzero().int()
    coords = coords[torch.randperm(coords.shape[0], generator=gen)].contiguous()
    features = torch.randn(coords.shape[0], 3, generator=gen, requires_grad=True)
    return coords, features


@pytest.fixture(params=[64, None], ids=["many-blocks", "default-blocks"])
def block_pairs(request, monkeypatch):
    """Run with tiny blocks (many blocks, some without pairs) and with the default sizes (CPU, CUDA)."""
    if request.param is not None:
        monkeypatch.setattr(sparse_conv_torch, "BLOCK_PAIRS", request.param)
        monkeypatch.setattr(sparse_conv_torch, "DEVICE_BLOCK_PAIRS", request.param)
    return request.param


@pytest.fixture(params=["pairs", "columns"])
def submanifold_path(request, monkeypatch):
    """Force per-offset GEMMs over pairs, or dense neighbourhood columns, for submanifold convs."""
    monkeypatch.setattr(sparse_conv_torch, "COLUMNS_MAX", 0 if request.param == "pairs" else 10**9)
    return request.param


def _to_dense(coords: torch.Tensor, features: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable scatter of [N, C] features to a dense [B, C, X, Y, Z] grid (zeros elsewhere)."""
    dense = features.new_zeros(2, size, size, size, features.shape[1])
    return dense.index_put(tuple(coords.long().t()), features).permute(0, 4, 1, 2, 3)


def _at(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Features [N, C] of a dense [B, C, X, Y, Z] grid at coords [N, 4]."""
    return dense.permute(0, 2, 3, 4, 1)[tuple(coords.long().t())]


def _assert_same_grads(got: torch.Tensor, want: torch.Tensor, *inputs: torch.Tensor) -> None:
    upstream = torch.randn_like(want)
    for g, w in zip(
        torch.autograd.grad((got * upstream).sum(), inputs),
        torch.autograd.grad((want * upstream).sum(), inputs),
    ):
        torch.testing.assert_close(g, w, **TOL)


def test_submanifold_map_lists_every_neighbour_pair_once(grid):
    coords, _ = grid
    kernel_map = submanifold_map(coords, [GRID] * 3, 3)
    assert kernel_map.symmetric and kernel_map.centre == 13 and kernel_map.counts[13] == 0
    # brute force: output i reads input j through kernel index d when coords[j] = coords[i] + d - 1
    diff = coords[None, :, :].long() - coords[:, None, :].long()  # [N(out), N(in), 4]
    near = (diff[..., 0] == 0) & (diff[..., 1:].abs() <= 1).all(-1)
    kernel_index = ((diff[..., 1] + 1) * 3 + diff[..., 2] + 1) * 3 + diff[..., 3] + 1
    out_rows, in_rows = (near & (kernel_index != 13)).nonzero(as_tuple=True)
    expected = set(zip(kernel_index[out_rows, in_rows].tolist(), in_rows.tolist(), out_rows.tolist()))
    listed = torch.repeat_interleave(torch.arange(27), torch.tensor(kernel_map.counts))
    got = list(zip(listed.tolist(), kernel_map.in_rows.tolist(), kernel_map.out_rows.tolist()))
    assert len(got) == len(set(got)) and set(got) == expected


def test_downsample_map_sites_and_parents(grid):
    coords, _ = grid
    kernel_map, coarse, coarse_shape = downsample_map(coords, [GRID] * 3, 2)
    assert coarse_shape == [GRID // 2] * 3 and coarse.dtype == torch.int32
    occupied = _to_dense(coords, torch.ones(coords.shape[0], 1), GRID)
    assert sorted(coarse.tolist()) == F.max_pool3d(occupied, 2)[:, 0].nonzero().tolist()
    assert coarse.tolist() == sorted(coarse.tolist())  # rows in (b, x, y, z) order
    assert sorted(kernel_map.in_rows.tolist()) == list(range(coords.shape[0]))  # every child once
    parent = coarse[kernel_map.out_rows].long()
    child = coords[kernel_map.in_rows].long()
    assert torch.equal(parent[:, 0], child[:, 0]) and torch.equal(parent[:, 1:], child[:, 1:] // 2)


@pytest.mark.parametrize("kernel", [3, 5])
def test_submanifold_conv_matches_dense(grid, block_pairs, submanifold_path, kernel):
    coords, features = grid
    weight = torch.randn(
        4, kernel, kernel, kernel, 3, requires_grad=True
    )  # spconv layout [C_out, k, k, k, C_in]
    out = sparse_conv(features, weight, submanifold_map(coords, [GRID] * 3, kernel))
    dense = F.conv3d(_to_dense(coords, features, GRID), weight.permute(0, 4, 1, 2, 3), padding=kernel // 2)
    ref = _at(dense, coords)
    torch.testing.assert_close(out, ref, **TOL)
    _assert_same_grads(out, ref, features, weight)


def test_strided_and_inverse_conv_match_dense(grid, block_pairs):
    coords, features = grid
    down_weight = torch.randn(4, 2, 2, 2, 3, requires_grad=True)
    up_weight = torch.randn(5, 2, 2, 2, 4, requires_grad=True)  # inverse conv: [C_out, k, k, k, C_in]
    bias = torch.randn(5, requires_grad=True)
    kernel_map, coarse, _ = downsample_map(coords, [GRID] * 3, 2)
    coarse_features = sparse_conv(features, down_weight, kernel_map)
    fine = sparse_conv(coarse_features, up_weight, kernel_map.transposed(), bias)

    dense_coarse = F.conv3d(_to_dense(coords, features, GRID), down_weight.permute(0, 4, 1, 2, 3), stride=2)
    ref_coarse = _at(dense_coarse, coarse)
    torch.testing.assert_close(coarse_features, ref_coarse, **TOL)
    dense_fine = F.conv_transpose3d(
        _to_dense(coarse, ref_coarse, GRID // 2), up_weight.permute(4, 0, 1, 2, 3), bias, stride=2
    )
    ref_fine = _at(dense_fine, coords)
    torch.testing.assert_close(fine, ref_fine, **TOL)
    _assert_same_grads(fine, ref_fine, features, down_weight, up_weight, bias)


def test_float64_is_computed_in_float64(grid, submanifold_path):
    coords, features = grid
    weight = torch.randn(4, 3, 3, 3, 3, dtype=torch.float64)
    out = sparse_conv(features.double(), weight, submanifold_map(coords, [GRID] * 3, 3))
    ref = _at(
        F.conv3d(_to_dense(coords, features.double(), GRID), weight.permute(0, 4, 1, 2, 3), padding=1), coords
    )
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_strided_and_inverse_float64_is_computed_in_float64(grid):
    """The float64 torch path is the whole-network reference below: each conv kind in it is exact."""
    coords, features = grid
    features = features.detach().double()
    down_weight = torch.randn(4, 2, 2, 2, 3, dtype=torch.float64)
    up_weight = torch.randn(5, 2, 2, 2, 4, dtype=torch.float64)
    kernel_map, coarse, _ = downsample_map(coords, [GRID] * 3, 2)
    coarse_features = sparse_conv(features, down_weight, kernel_map)
    fine = sparse_conv(coarse_features, up_weight, kernel_map.transposed())
    dense_coarse = F.conv3d(_to_dense(coords, features, GRID), down_weight.permute(0, 4, 1, 2, 3), stride=2)
    dense_fine = F.conv_transpose3d(
        _to_dense(coarse, _at(dense_coarse, coarse), GRID // 2), up_weight.permute(4, 0, 1, 2, 3), stride=2
    )
    assert coarse_features.dtype == fine.dtype == torch.float64
    torch.testing.assert_close(coarse_features, _at(dense_coarse, coarse), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fine, _at(dense_fine, coords), rtol=1e-12, atol=1e-12)


def test_sparse_conv_input_errors(grid):
    coords, features = grid
    kernel_map = submanifold_map(coords, [GRID] * 3, 3)
    with pytest.raises(ValueError, match="27 offsets"):
        sparse_conv(features, torch.randn(4, 5, 5, 5, 3), kernel_map)
    with pytest.raises(ValueError, match="input voxels"):
        sparse_conv(features[:-1], torch.randn(4, 3, 3, 3, 3), kernel_map)
    with pytest.raises(ValueError, match="odd"):
        submanifold_map(coords, [GRID] * 3, 2)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: CUDA vs CPU: the same float32 sums in another order (other GEMM kernels); the absolute part is
#: relative to the largest value of the tensor (a near-zero sum of large terms keeps their rounding).
DEVICE_RTOL, DEVICE_ATOL = 1e-4, 1e-5


@pytest.fixture
def full_precision():
    """float32 matmuls without TF32 on CUDA for the duration of a test."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(precision)


def _search_lookup(monkeypatch) -> None:
    """Force the binary search in sorted keys instead of the dense key -> row table."""
    monkeypatch.setattr(sparse_conv_torch, "TABLE_CELLS", 0)
    monkeypatch.setattr(sparse_conv_torch, "TABLE_CELLS_PER_VOXEL", 0)


def _map_tensors(kernel_map) -> list[torch.Tensor]:
    return [kernel_map.in_rows.cpu(), kernel_map.out_rows.cpu(), torch.tensor(kernel_map.counts)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_maps_are_the_same_on_every_device_and_lookup(grid, device, monkeypatch):
    """Table and binary-search lookups, on CPU and CUDA, give identical pairs in identical order."""
    coords, _ = grid
    want = {k: _map_tensors(submanifold_map(coords, [GRID] * 3, k)) for k in (3, 5)}
    want_down, want_coarse, _ = downsample_map(coords, [GRID] * 3, 2)
    for lookup in ("table", "search"):
        if lookup == "search":
            _search_lookup(monkeypatch)
        for kernel in (3, 5):
            kernel_map = submanifold_map(coords.to(device), [GRID] * 3, kernel)
            assert kernel_map.in_rows.device.type == device
            for got, expected in zip(_map_tensors(kernel_map), want[kernel]):
                assert torch.equal(got, expected), (lookup, kernel)
            table = kernel_map.neighbour_table()
            assert table.device.type == device
            assert torch.equal(table.cpu(), submanifold_map(coords, [GRID] * 3, kernel).neighbour_table())
    down, coarse, _ = downsample_map(coords.to(device), [GRID] * 3, 2)
    assert coarse.device.type == device and torch.equal(coarse.cpu(), want_coarse)
    for got, expected in zip(_map_tensors(down), _map_tensors(want_down)):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("lookup", ["table", "search"])
def test_every_tensor_is_made_on_the_inputs_device(grid, block_pairs, submanifold_path, lookup, monkeypatch):
    """With a default device of "meta", a tensor made without ``device=`` would be a meta tensor and
    mixing it with the CPU inputs would fail: every conv kind, forward and backward, still runs on
    CPU, with the same results (a CPU stand-in for running on CUDA)."""
    if lookup == "search":
        _search_lookup(monkeypatch)
    coords, features = grid
    features = features.detach()
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(4, 3, 3, 3, 3, generator=gen), torch.randn(6, 2, 2, 2, 4, generator=gen)]
    weights.append(torch.randn(5, 2, 2, 2, 6, generator=gen))

    def run():
        x = features.clone().requires_grad_()
        params = [w.clone().requires_grad_() for w in weights]
        down_map, _, _ = downsample_map(coords, [GRID] * 3, 2)
        out = sparse_conv(x, params[0], submanifold_map(coords, [GRID] * 3, 3))
        out = sparse_conv(sparse_conv(out, params[1], down_map), params[2], down_map.transposed())
        return [out, *torch.autograd.grad(out.square().sum(), [x, *params])]

    want = run()
    with torch.device("meta"):
        got = run()
    for g, w in zip(got, want):
        assert g.device.type == "cpu" and torch.equal(g, w)


@needs_cuda
@pytest.mark.parametrize("kernel", [3, 5])
def test_convs_on_cuda_match_cpu(grid, block_pairs, submanifold_path, kernel, full_precision):
    """Each conv kind, forward and gradients, on CUDA against the same call on CPU."""
    coords, features = grid
    features = features.detach()
    gen = torch.Generator().manual_seed(1)
    weights = [
        torch.randn(4, kernel, kernel, kernel, 3, generator=gen),  # submanifold
        torch.randn(6, 2, 2, 2, 4, generator=gen),  # strided
        torch.randn(5, 2, 2, 2, 6, generator=gen),  # inverse of the strided one
    ]
    bias = torch.randn(5, generator=gen)

    def run(device: str):
        x = features.to(device).requires_grad_()
        params = [w.to(device).requires_grad_() for w in [*weights, bias]]
        subm_map = submanifold_map(coords.to(device), [GRID] * 3, kernel)
        down_map, _, _ = downsample_map(coords.to(device), [GRID] * 3, 2)
        out = sparse_conv(x, params[0], subm_map)
        out = sparse_conv(out.relu(), params[1], down_map)
        out = sparse_conv(out, params[2], down_map.transposed(), params[3])
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device)
        grads = torch.autograd.grad((out * upstream).sum(), [x, *params])
        return [t.cpu() for t in (out, *grads)]

    for got, want in zip(run("cuda"), run("cpu")):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=DEVICE_RTOL, atol=DEVICE_ATOL * float(want.abs().max()))


@needs_cuda
def test_sparse_conv_device_mismatch(grid):
    coords, features = grid
    with pytest.raises(ValueError, match="one device"):
        sparse_conv(
            features.cuda(), torch.randn(4, 3, 3, 3, 3).cuda(), submanifold_map(coords, [GRID] * 3, 3)
        )


spconv = pytest.importorskip("spconv.pytorch")

from pri3d.models import sparse_unet  # noqa: E402
from pri3d.models.sparse_unet import MinkUNet34C, resolve_backend  # noqa: E402


def test_spconv_modules_run_on_the_cpu_path(grid):
    """The module adapter reads spconv's settings: same results as spconv for each conv kind."""
    coords, features = grid
    features = features.detach()
    subm = spconv.SubMConv3d(3, 4, 3, bias=True, indice_key="s")
    down = spconv.SparseConv3d(4, 6, 2, stride=2, bias=False, indice_key="d")
    up = spconv.SparseInverseConv3d(6, 4, 2, indice_key="d", bias=False)
    subm_again = spconv.SubMConv3d(4, 4, 3, bias=False, indice_key="s")  # reuses the table of "s"
    ours = TorchSparseTensor(features, coords, [GRID] * 3, 2)
    ref = spconv.SparseConvTensor(features, coords, [GRID] * 3, 2)
    for module in (subm, down, up, subm_again):
        ours, ref = ours.conv(module), module(ref)
    assert torch.equal(ours.indices, coords)
    torch.testing.assert_close(ours.features, ref.features, **TOL)
    with pytest.raises(NotImplementedError, match="kernel = stride"):
        TorchSparseTensor(features, coords, [GRID] * 3, 2).conv(spconv.SparseConv3d(3, 4, 3, stride=2))
    with pytest.raises(ValueError, match="indice_key 'x'"):
        TorchSparseTensor(features, coords, [GRID] * 3, 2).conv(
            spconv.SparseInverseConv3d(3, 4, 2, indice_key="x")
        )


def _voxels(n_per_item: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique voxels, many on a floor plane, batch of 2, random row order; RGB features."""
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


def _smooth(net: MinkUNet34C) -> MinkUNet34C:
    """``net`` with every ReLU replaced by SiLU, in place.

    At a ReLU's kink the gradient jumps between 0 and 1, and among the network's ~10⁶ pre-activations
    some lie within float32 rounding of 0: one summation order passes their gradient, another blocks
    it. On this test's input one of 8 row orders of the same voxels moves a parameter's gradient by
    9 % of its largest entry on one CPU (`benchmarks/gradient_orders.py`), and another CPU's GEMM
    order does the same (~1 % on an Intel Xeon). No tolerance in units of rounding bounds that. With
    a smooth activation the gradients are continuous in every rounding, and the comparison tests what
    it is for: the convolutions, which are the same modules either way.
    """
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.ReLU):
                setattr(module, name, torch.nn.SiLU())
    return net


def _outputs_and_grads(
    net: MinkUNet34C, coords: torch.Tensor, features: torch.Tensor, upstream: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output features [N, 96] and every parameter's gradient of ``(out * upstream).sum()``, in float64."""
    net.zero_grad()
    out = net.forward_sparse(coords, features).features
    (out * upstream.to(out.dtype)).sum().backward()
    grads = {name: p.grad.double() for name, p in net.named_parameters()}
    return out.detach().double(), grads


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def _float32_noise(reference: MinkUNet34C, coords, features, upstream, draws: int = 2) -> tuple[float, float]:
    """How far the float64 network's output and gradients move (largest relative norm over outputs,
    and over parameters) when its input features and parameters are each rounded to float32 once:
    multiplied by 1 + 2⁻²⁴·ε, ε ~ N(0, 1). Any float32 evaluation carries at least this error, and
    this measure of it is computed in float64, so it is the same on every CPU."""
    want_out, want_grads = _outputs_and_grads(reference, coords, features, upstream)
    out_noise = grad_noise = 0.0
    for draw in range(draws):
        gen = torch.Generator().manual_seed(100 + draw)

        def rounded(t: torch.Tensor, gen: torch.Generator = gen) -> torch.Tensor:
            return t * (1 + 2**-24 * torch.randn(t.shape, generator=gen, dtype=torch.float64))

        perturbed = copy.deepcopy(reference)
        with torch.no_grad():
            for p in perturbed.parameters():
                p.copy_(rounded(p))
        out, grads = _outputs_and_grads(perturbed, coords, rounded(features), upstream)
        out_noise = max(out_noise, _relative(out, want_out))
        grad_noise = max(grad_noise, *(_relative(grads[n], want_grads[n]) for n in want_grads))
    return out_noise, grad_noise


#: A float32 evaluation of the whole network may differ from the float64 reference by this many times
#: the measured float32 noise. `benchmarks/gradient_orders.py` on an AMD Zen 4 (one thread): the torch
#: path's gradients are 2.2-2.9x the noise in 8 row orders with SiLU; one flipped ReLU gives 6,700x.
NOISE_FACTOR = 20


@pytest.mark.parametrize("backend", ["torch", "spconv"])
def test_network_cpu_paths_match_float64_reference(backend):
    """Outputs and gradients of the whole network in float32, on the torch CPU path and on spconv's
    native CPU path, against the same network in float64 on the torch path (itself checked conv by
    conv against dense float64 convolutions), within NOISE_FACTOR times the measured float32 noise.

    One thread: spconv's native CPU kernels are only reliable single-threaded (see sparse_unet).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        coords, features = _voxels(250)
        net = _smooth(MinkUNet34C(backend=backend))
        reference = _smooth(MinkUNet34C(backend="torch"))
        reference.load_state_dict(net.state_dict())
        reference.double()
        upstream = torch.randn(
            coords.shape[0], 96, generator=torch.Generator().manual_seed(1), dtype=torch.float64
        )
        out_noise, grad_noise = _float32_noise(reference, coords, features.double(), upstream)
        want_out, want_grads = _outputs_and_grads(reference, coords, features.double(), upstream)
        out, grads = _outputs_and_grads(net, coords, features, upstream)
    finally:
        torch.set_num_threads(threads)
    assert 0 < out_noise < 1e-5 and 0 < grad_noise < 1e-4  # the reference itself is well conditioned
    assert _relative(out, want_out) <= NOISE_FACTOR * out_noise
    for name, want in want_grads.items():
        error = _relative(grads[name], want)
        assert error <= NOISE_FACTOR * grad_noise, f"{name}: {error:.2e} > {NOISE_FACTOR} × {grad_noise:.2e}"


def test_network_cpu_path_is_deterministic_with_threads():
    """Forward and backward give bit-identical results run to run (no racy scatter-add)."""
    coords, features = _voxels(200, seed=3)
    net = MinkUNet34C()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        runs = []
        for _ in range(2):
            out = net(coords, features)
            grads = torch.autograd.grad(
                out.square().sum(), [net.conv0p1s1.weight, net.block8[1].conv2.weight]
            )
            runs.append((out, *grads))
    finally:
        torch.set_num_threads(threads)
    for first, second in zip(*runs):
        assert torch.equal(first, second)


def test_backend_option_is_validated():
    with pytest.raises(ValueError, match="backend='minkowski'"):
        MinkUNet34C(backend="minkowski")
    net = MinkUNet34C()
    assert net.backend == "auto"
    with pytest.raises(ValueError, match="backend='cpu'"):
        net.backend = "cpu"
    assert net.backend == "auto" and "backend" not in dict(net.named_buffers())
    with pytest.raises(ValueError, match="expected one of"):
        resolve_backend("minkowski", torch.device("cpu"))


@pytest.mark.parametrize("cpu_only_build", [True, False], ids=["spconv-cpu-only", "spconv-cuda"])
def test_backend_resolution(monkeypatch, cpu_only_build):
    """Which path each option takes per device; no tensors, so no GPU needed."""
    monkeypatch.setattr(sparse_unet.spconv_constants, "CPU_ONLY_BUILD", cpu_only_build)
    monkeypatch.setattr(sparse_unet.sparse_conv_triton, "available", lambda: False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert [resolve_backend(b, cpu) for b in ("auto", "torch", "spconv")] == ["torch", "torch", "spconv"]
    assert resolve_backend("torch", cuda) == "torch"
    if cpu_only_build:
        assert resolve_backend("auto", cuda) == "torch"
        with pytest.raises(ValueError, match=r"backend='spconv'.*CPU-only.*pip install spconv-cu"):
            resolve_backend("spconv", cuda)
    else:
        assert resolve_backend("auto", cuda) == resolve_backend("spconv", cuda) == "spconv"
    assert resolve_backend("auto", torch.device("mps")) == "torch"
    with pytest.raises(ValueError, match="backend='spconv'"):
        resolve_backend("spconv", torch.device("mps"))


def test_auto_backend_takes_the_torch_path_on_cpu(monkeypatch):
    """``"auto"`` (the default) convolves CPU tensors with torch ops, whatever spconv's build;
    ``"spconv"`` goes through spconv's native CPU path."""
    coords, features = _voxels(20)
    net = MinkUNet34C()
    for cpu_only_build in (True, False):
        monkeypatch.setattr(sparse_unet.spconv_constants, "CPU_ONLY_BUILD", cpu_only_build)
        assert isinstance(net.forward_sparse(coords, features), TorchSparseTensor)
    net.backend = "spconv"
    assert isinstance(net.forward_sparse(coords, features), spconv.SparseConvTensor)


#: Parameters whose gradients the CUDA test compares: each conv kind, each level, a BN, the head.
_GRADIENTS_CHECKED = (
    "conv0p1s1.weight",
    "conv1p1s2.weight",
    "block1.0.conv1.weight",
    "block4.5.conv2.weight",
    "convtr4p16s2.weight",
    "convtr7p2s2.weight",
    "block8.1.conv2.weight",
    "bn0.weight",
    "final.weight",
)


@needs_cuda
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "under-autocast"])
def test_network_torch_path_on_cuda_matches_cpu(full_precision, autocast):
    """The torch path on CUDA (what ``"auto"`` picks with the CPU-only spconv wheel): the same
    outputs and gradients as the same network on CPU; under CUDA fp16 autocast it still computes
    in float32.

    Outputs are compared in training and eval mode, gradients in eval mode only: through BN with
    batch statistics over the few voxels of the coarse levels they are ill-conditioned (on CPU,
    float32 and float64 gradients differ by ~1e-2 of their maximum here; ~1e-6 in eval mode).
    """
    torch.manual_seed(0)
    coords, features = _voxels(250)
    net = MinkUNet34C(backend="torch")
    reference = copy.deepcopy(net)
    net.cuda()
    for train in (True, False):
        net.train(train)
        reference.train(train)
        with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
            out = net.forward_sparse(coords.cuda(), features.cuda())
        assert isinstance(out, TorchSparseTensor) and out.features.is_cuda
        assert out.features.dtype == torch.float32
        assert out.indices.is_cuda
        assert all(m.in_rows.is_cuda for m in out.maps.values() if not isinstance(m, tuple))
        ref = reference(coords, features)
        scale = ref.abs().max()
        torch.testing.assert_close(
            out.features.detach().cpu() / scale, ref.detach() / scale, rtol=0, atol=1e-4, msg=f"train={train}"
        )
    upstream = torch.randn(ref.shape)
    (out.features * upstream.cuda()).sum().backward()
    (ref * upstream).sum().backward()
    cuda_params, cpu_params = dict(net.named_parameters()), dict(reference.named_parameters())
    for name in _GRADIENTS_CHECKED:
        got, want = cuda_params[name].grad.cpu(), cpu_params[name].grad
        assert got.dtype == torch.float32
        scale = want.abs().max()
        torch.testing.assert_close(got / scale, want / scale, rtol=0, atol=1e-4, msg=name)


@needs_cuda
def test_network_auto_backend_on_cuda():
    """``"auto"`` takes spconv on CUDA only with a CUDA build of spconv, else spconv-triton where
    installed, else the torch path; forcing ``"spconv"`` with the CPU-only build is refused before
    anything runs."""
    coords, features = _voxels(100)
    net = MinkUNet34C().cuda()
    out = net.forward_sparse(coords.cuda(), features.cuda())
    assert out.features.is_cuda
    if sparse_unet.spconv_has_cuda():
        assert isinstance(out, spconv.SparseConvTensor)
        return
    if sparse_unet.sparse_conv_triton.available():
        assert type(out).__module__.startswith("spconv_triton")
    else:
        assert isinstance(out, TorchSparseTensor)
    net.backend = "spconv"
    with pytest.raises(ValueError, match="pip install spconv-cu"):
        net(coords.cuda(), features.cuda())


@needs_cuda
@pytest.mark.skipif(not sparse_unet.sparse_conv_triton.available(), reason="needs spconv-triton and triton")
def test_network_triton_on_cuda_matches_float64_reference():
    """The triton path (spconv-triton, float32, TF32 off) against the float64 torch path on the same
    weights, loaded strictly from the triton network's state dict: outputs and gradients within
    NOISE_FACTOR times the measured float32 noise, as the CPU paths."""
    torch.manual_seed(0)
    coords, features = _voxels(250)
    net = _smooth(MinkUNet34C(backend="triton")).cuda()
    reference = _smooth(MinkUNet34C(backend="torch"))
    reference.load_state_dict({k: v.cpu() for k, v in net.state_dict().items()})
    reference.double()
    upstream = torch.randn(
        coords.shape[0], 96, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    out_noise, grad_noise = _float32_noise(reference, coords, features.double(), upstream)
    want_out, want_grads = _outputs_and_grads(reference, coords, features.double(), upstream)
    out, grads = _outputs_and_grads(net, coords.cuda(), features.cuda(), upstream.cuda())
    assert _relative(out.cpu(), want_out) <= NOISE_FACTOR * out_noise
    for name, want in want_grads.items():
        error = _relative(grads[name].cpu(), want)
        assert error <= NOISE_FACTOR * grad_noise, f"{name}: {error:.2e} > {NOISE_FACTOR} × {grad_noise:.2e}"


@needs_cuda
@pytest.mark.skipif(not sparse_unet.spconv_has_cuda(), reason="needs a CUDA build of spconv")
def test_network_spconv_on_cuda_matches_cpu():
    torch.manual_seed(0)
    coords, features = _voxels(100)
    net = MinkUNet34C(backend="spconv").cuda()
    out = net(coords.cuda(), features.cuda())
    reference = MinkUNet34C()
    reference.load_state_dict(net.state_dict())
    ref = reference(coords, features)
    scale = ref.abs().max()
    torch.testing.assert_close(out.detach().cpu() / scale, ref.detach() / scale, rtol=0, atol=1e-3)
