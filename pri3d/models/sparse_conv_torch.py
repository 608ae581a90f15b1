"""Sparse 3D convolutions in plain torch ops: the torch path of the 3D network, for CPU and CUDA tensors.

spconv's CPU build only has its native algorithm: neighbour tables built by single-threaded C++,
then per kernel offset one gather, one small GEMM and one scatter-add (the last one serial, and
racy in spconv's own code, see :mod:`pri3d.models.sparse_unet`); and spconv's CUDA builds stop at
CUDA 12.6, so with a CUDA 13 PyTorch (or the CPU-only ``spconv`` wheel) spconv cannot convolve
CUDA tensors at all. Here every step is a torch op (multi-threaded on CPU, a kernel on CUDA), and
every tensor it creates lives on the device of the features and voxel indices:

* **Neighbour tables** come from linear voxel keys: sort them once, then ``searchsorted`` the keys
  shifted by each kernel offset. A submanifold kernel's pairs for offsets ``o`` and ``-o`` are the
  same voxel pairs read in both directions, so only half of the offsets are searched. A strided
  convolution with kernel = stride is ``unique`` of the coarse keys (each fine voxel has exactly
  one parent and one kernel offset); its inverse is the same table with the roles swapped.
* **A convolution** runs block by block over the output rows (about ``BLOCK_PAIRS`` pairs per
  block, so that the block's intermediates stay in cache and no large buffer is allocated): one
  ``index_select`` gathers the block's input rows, one GEMM per kernel offset writes the products
  into a contiguous buffer, and one CSR sparse × dense product sums them into the block's output
  rows (a segment sum instead of a serial scatter-add). The centre offset of a submanifold kernel
  maps every voxel to itself: a plain GEMM, no gather.
* **Backward** is the same convolution on the transposed map with the transposed kernel (for a
  submanifold kernel: the same map with the kernel flipped) for the input gradient, and per block
  two gathers and one GEMM per offset for the weight gradient. Gathered inputs are recomputed, not
  kept, which saves ~200 MB per convolution at 60k voxels.

Everything stays in the features' dtype (float32 in the network; autocast is disabled inside
the convolution, forward and backward). Kernels use spconv's layout and
offset convention, so the same parameters give the same results on both paths: a weight
``[C_out, kx, ky, kz, C_in]``, whose per-offset ``[C_out, C_in]`` matrices the GEMMs read as strided
views (transposed for the forward) and the weight gradient is written into, so no convolution copies
its weight or its gradient; a submanifold or strided convolution reads input voxel
``stride * q + d - r`` for kernel index ``d`` (``r = k // 2`` for submanifold, 0 for strided), as
``conv3d`` with padding ``r``; an inverse convolution writes ``conv_transpose3d``'s output.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

__all__ = [
    "KernelMap",
    "TorchSparseTensor",
    "downsample_map",
    "sparse_conv",
    "submanifold_map",
]


#: Neighbours are looked up in a dense int32 table over the grid (batch × padded x·y·z cells) when
#: it has at most max(TABLE_CELLS, TABLE_CELLS_PER_VOXEL × N) cells (1 KB per voxel: small next to
#: the activations a voxel keeps for backward), else found by binary search in the sorted keys
#: (~10× slower).
TABLE_CELLS = 2**25
TABLE_CELLS_PER_VOXEL = 256

#: Largest C_in × K convolved as dense neighbourhood columns (see `_uses_columns`).
COLUMNS_MAX = 512

#: Pairs per block of output rows on CPU: a block's gathered inputs and products (~4 MB each at 32
#: channels, ~16 MB at 128) stay in the last-level cache between the gather, the GEMMs and the sum.
BLOCK_PAIRS = 32768

#: Pairs per block on other devices (CUDA): no cache to fit, but every block costs a few kernel
#: launches per kernel offset, so blocks are larger (buffers of ~128 MB at 32 channels).
DEVICE_BLOCK_PAIRS = 2**20


def _block_pairs(device: torch.device) -> int:
    return BLOCK_PAIRS if device.type == "cpu" else DEVICE_BLOCK_PAIRS


@dataclass(eq=False)
class _Block:
    """Output rows ``rows`` and their pairs ``pairs`` (a range of the blocked pair order)."""

    rows: tuple[int, int]
    pairs: tuple[int, int]
    segments: list[tuple[int, int, int]]  # (kernel index, start, end) relative to pairs[0]
    crow: torch.Tensor  # CSR row pointers of the block's [rows, pairs] sum matrix
    columns: torch.Tensor
    sum_matrices: dict = field(default_factory=dict)

    def sum_matrix(self, dtype: torch.dtype) -> torch.Tensor:
        """CSR of ones ``[rows, pairs]``: output row r sums the products of its pairs."""
        if dtype not in self.sum_matrices:
            shape = (self.rows[1] - self.rows[0], self.pairs[1] - self.pairs[0])
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                device = self.crow.device  # explicit: a default device must not move it
                ones = torch.ones(shape[1], dtype=dtype, device=device)
                self.sum_matrices[dtype] = torch.sparse_csr_tensor(
                    self.crow, self.columns, ones, shape, device=device, check_invariants=False
                )
        return self.sum_matrices[dtype]


@dataclass(eq=False)
class _Layout:
    """Pairs reordered by (block of output rows, kernel index), with each block's sum matrix."""

    in_rows: torch.Tensor  # [P]
    out_rows: torch.Tensor  # [P]
    blocks: list[_Block]
    max_pairs: int


@dataclass(eq=False)
class KernelMap:
    """Input row -> output row pairs of one sparse convolution, grouped by kernel offset.

    Attributes:
        in_rows, out_rows: ``[P]`` int64; pairs of kernel index ``k`` are rows
            ``sum(counts[:k]) : sum(counts[:k + 1])``.
        counts: ``K`` pair counts, one per kernel index (spconv's flattened ``(kx, ky, kz)``).
        n_in, n_out: number of input and output voxels.
        centre: kernel index that maps every voxel to itself (submanifold kernels; these pairs are
            not listed but done as one GEMM), or None.
        symmetric: the pairs of kernel index k are those of K - 1 - k read backwards (submanifold
            kernels), so the transposed convolution runs on this map with the kernel flipped.
    """

    in_rows: torch.Tensor
    out_rows: torch.Tensor
    counts: list[int]
    n_in: int
    n_out: int
    centre: int | None = None
    symmetric: bool = False
    _layout: _Layout | None = field(default=None, repr=False)
    _transposed: KernelMap | None = field(default=None, repr=False)
    _table: torch.Tensor | None = field(default=None, repr=False)

    @property
    def volume(self) -> int:
        """K, the number of kernel offsets."""
        return len(self.counts)

    def transposed(self) -> KernelMap:
        """The map of the transposed convolution (output rows become input rows), built once."""
        if self._transposed is None:
            self._transposed = KernelMap(
                self.out_rows, self.in_rows, self.counts, self.n_out, self.n_in, self.centre, self.symmetric
            )
            self._transposed._transposed = self
        return self._transposed

    def layout(self) -> _Layout:
        """The blocked pair order used by the convolution, built once."""
        if self._layout is None:
            self._layout = _block_layout(self)
        return self._layout

    def neighbour_table(self) -> torch.Tensor:
        """``[n_out, K]`` int64 input row of every (output, kernel index), ``n_in`` where there is
        none (the centre column is the output row itself), built once; for submanifold maps."""
        if self._table is None:
            device = self.in_rows.device
            table = torch.full((self.n_out, self.volume), self.n_in, dtype=torch.int64, device=device)
            table[self.out_rows, _kernel_indices(self.counts, device)] = self.in_rows
            table[:, self.centre] = torch.arange(self.n_out, device=device)
            self._table = table
        return self._table


def _kernel_indices(counts: list[int], device: torch.device) -> torch.Tensor:
    """``[sum(counts)]`` int64: the kernel index of every pair, pairs grouped by kernel index."""
    return torch.repeat_interleave(
        torch.arange(len(counts), device=device), torch.tensor(counts, dtype=torch.int64, device=device)
    )


def _block_layout(kernel_map: KernelMap) -> _Layout:
    volume, n_out = kernel_map.volume, kernel_map.n_out
    device = kernel_map.in_rows.device
    total = kernel_map.in_rows.numel()
    rows_per_block = max(1, _block_pairs(device) * n_out // max(total, 1))
    n_blocks = -(-n_out // rows_per_block)
    kernel_index = _kernel_indices(kernel_map.counts, device)  # [P]
    block = kernel_map.out_rows // rows_per_block  # [P]
    order = torch.argsort(block * volume + kernel_index, stable=True)
    in_rows, out_rows = kernel_map.in_rows[order], kernel_map.out_rows[order]
    # per block: pair count, and per (block, kernel index) counts
    pair_counts = torch.bincount(block, minlength=n_blocks).tolist()
    kernel_counts = torch.bincount(block * volume + kernel_index, minlength=n_blocks * volume)
    kernel_counts = kernel_counts.view(n_blocks, volume).tolist()
    blocks, start = [], 0
    for b in range(n_blocks):
        end = start + pair_counts[b]
        r0, r1 = b * rows_per_block, min(n_out, (b + 1) * rows_per_block)
        local = out_rows[start:end] - r0
        crow = torch.zeros(r1 - r0 + 1, dtype=torch.int64, device=device)
        torch.cumsum(torch.bincount(local, minlength=r1 - r0), 0, out=crow[1:])
        blocks.append(
            _Block(
                (r0, r1), (start, end), _segments(kernel_counts[b]), crow, torch.argsort(local, stable=True)
            )
        )
        start = end
    return _Layout(in_rows, out_rows, blocks, max(pair_counts, default=0))


def _padded_keys(
    indices: torch.Tensor, spatial_shape: list[int], margin: int
) -> tuple[torch.Tensor, list[int]]:
    """Linear keys of ``[N, 4]`` (b, x, y, z) voxels in a grid padded by ``margin`` on every side.

    With the padding, key(v + o) = key(v) + key offset of o for |o| <= margin: no wrap-around.
    Returns keys ``[N]`` int64 and the padded extents (x, y, z).
    """
    dims = [s + 2 * margin for s in spatial_shape]
    c = indices.long()
    keys = ((c[:, 0] * dims[0] + c[:, 1] + margin) * dims[1] + c[:, 2] + margin) * dims[2] + c[:, 3] + margin
    return keys, dims


def submanifold_map(indices: torch.Tensor, spatial_shape: list[int], kernel_size: int) -> KernelMap:
    """Pairs of a submanifold convolution (output voxels = input voxels) with an odd cubic kernel.

    Args:
        indices: ``[N, 4]`` int (b, x, y, z), non-negative, unique rows.
        spatial_shape: grid extent (x, y, z); every coordinate lies inside it.
        kernel_size: odd k; kernel index d = (dx, dy, dz) reads voxel v + d - k // 2.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"a submanifold kernel must have an odd size, got {kernel_size}")
    r = kernel_size // 2
    n = indices.shape[0]
    volume = kernel_size**3
    centre = volume // 2
    device = indices.device
    keys, dims = _padded_keys(indices, spatial_shape, r)
    grid = torch.arange(kernel_size, device=device) - r
    offsets = torch.cartesian_prod(grid, grid, grid)[:centre]  # [H, 3]: kernel indices 0 .. centre-1
    shifts = (offsets[:, 0] * dims[1] + offsets[:, 1]) * dims[2] + offsets[:, 2]  # [H] key offsets
    queries = keys[None, :] + shifts[:, None]  # [H, N]: key of v + o for every voxel v
    cells = (int(indices[:, 0].max()) + 1 if n else 0) * math.prod(dims)
    if cells <= max(TABLE_CELLS, TABLE_CELLS_PER_VOXEL * n):  # dense key -> row table: one gather per query
        table = torch.full((cells,), -1, dtype=torch.int32, device=device)
        table[keys] = torch.arange(n, dtype=torch.int32, device=device)
        # [H, N] row of v + o, -1 where inactive (index_select is ~10x faster than table[queries])
        neighbours = table.index_select(0, queries.flatten()).view(queries.shape)
    else:  # binary search in the sorted keys
        sorted_keys, order = torch.sort(keys)
        position = torch.searchsorted(sorted_keys, queries).clamp_(max=n - 1)
        neighbours = torch.where(sorted_keys[position] == queries, order[position], -1)
    half, row = (neighbours >= 0).nonzero(as_tuple=True)  # pairs in (kernel index, row) order
    neighbour = neighbours[half, row].long()  # row + o
    counts = torch.bincount(half, minlength=centre).tolist()
    # Kernel index d < centre reads v + o_d; its mirror K - 1 - d (offset -o_d) is the same pair
    # read the other way: the same pairs, kernel indices in reverse order.
    mirror_in = torch.cat(torch.split(row, counts)[::-1])
    mirror_out = torch.cat(torch.split(neighbour, counts)[::-1])
    return KernelMap(
        in_rows=torch.cat([neighbour, mirror_in]),
        out_rows=torch.cat([row, mirror_out]),
        counts=[*counts, 0, *counts[::-1]],
        n_in=n,
        n_out=n,
        centre=centre,
        symmetric=True,
    )


def downsample_map(
    indices: torch.Tensor, spatial_shape: list[int], stride: int
) -> tuple[KernelMap, torch.Tensor, list[int]]:
    """Pairs of a strided convolution whose kernel equals its stride (k = s, no padding).

    Output voxel q exists where any of its s³ children is active (as spconv's and ME's rule);
    child ``s * q + d`` contributes through kernel index d.

    Returns:
        the map, the output voxels ``[M, 4]`` int32 (b, x, y, z), sorted by (b, x, y, z), and
        their grid extent.
    """
    if any(extent % stride for extent in spatial_shape):
        raise ValueError(f"spatial shape {spatial_shape} is not divisible by the stride {stride}")
    coarse_shape = [extent // stride for extent in spatial_shape]
    c = indices.long()
    coarse = torch.cat([c[:, :1], torch.div(c[:, 1:], stride, rounding_mode="floor")], dim=1)
    d = c[:, 1:] - stride * coarse[:, 1:]
    kernel_index = (d[:, 0] * stride + d[:, 1]) * stride + d[:, 2]  # [N]
    keys, _ = _padded_keys(coarse, coarse_shape, 0)
    unique_keys, parent = torch.unique(keys, return_inverse=True)  # sorted: (b, x, y, z) order
    sx, sy, sz = coarse_shape
    out_indices = torch.stack(
        [
            unique_keys // (sx * sy * sz),
            unique_keys // (sy * sz) % sx,
            unique_keys // sz % sy,
            unique_keys % sz,
        ],
        dim=1,
    ).to(torch.int32)
    order = torch.argsort(kernel_index, stable=True)
    kernel_map = KernelMap(
        in_rows=order,
        out_rows=parent[order],
        counts=torch.bincount(kernel_index, minlength=stride**3).tolist(),
        n_in=indices.shape[0],
        n_out=unique_keys.numel(),
    )
    return kernel_map, out_indices, coarse_shape


def _segments(counts: list[int]) -> list[tuple[int, int, int]]:
    """(kernel index, start, end) of every non-empty run of pairs grouped by kernel index."""
    segments, start = [], 0
    for k, count in enumerate(counts):
        if count:
            segments.append((k, start, start + count))
        start += count
    return segments


def _forward_kernels(weight: torch.Tensor) -> list[torch.Tensor]:
    """Per kernel index k, the ``[C_in, C_out]`` matrix of ``[C_out, K, C_in]`` weight: views, no copy."""
    return [weight[:, k].t() for k in range(weight.shape[1])]


def _convolve(features: torch.Tensor, kernels: list[torch.Tensor], kernel_map: KernelMap) -> torch.Tensor:
    """``[n_in, C_in]`` features, per kernel index a ``[C_in, C_out]`` matrix -> ``[n_out, C_out]``,
    block by block."""
    layout = kernel_map.layout()
    c_in, c_out = kernels[0].shape
    out = features.new_empty(kernel_map.n_out, c_out)
    gathered_buffer = features.new_empty(layout.max_pairs, c_in)
    products_buffer = features.new_empty(layout.max_pairs, c_out)
    for block in layout.blocks:
        (r0, r1), (p0, p1) = block.rows, block.pairs
        out_block = out[r0:r1]
        if kernel_map.centre is not None:  # submanifold: input rows = output rows
            torch.mm(features[r0:r1], kernels[kernel_map.centre], out=out_block)
        if p1 == p0:
            if kernel_map.centre is None:
                out_block.zero_()
            continue
        gathered = torch.index_select(features, 0, layout.in_rows[p0:p1], out=gathered_buffer[: p1 - p0])
        products = products_buffer[: p1 - p0]
        for k, start, end in block.segments:
            torch.mm(gathered[start:end], kernels[k], out=products[start:end])
        if kernel_map.centre is not None:
            out_block.addmm_(block.sum_matrix(features.dtype), products)
        else:
            torch.mm(block.sum_matrix(features.dtype), products, out=out_block)
    return out


def _weight_gradient(features: torch.Tensor, grad_out: torch.Tensor, kernel_map: KernelMap) -> torch.Tensor:
    """``[C_out, K, C_in]``: sum over the pairs of kernel index k of ``grad_out[out]ᵀ · x[in]``."""
    layout = kernel_map.layout()
    grad = features.new_zeros(grad_out.shape[1], kernel_map.volume, features.shape[1])
    gathered_buffer = features.new_empty(layout.max_pairs, features.shape[1])
    grad_buffer = features.new_empty(layout.max_pairs, grad_out.shape[1])
    for block in layout.blocks:
        p0, p1 = block.pairs
        if p1 == p0:
            continue
        gathered = torch.index_select(features, 0, layout.in_rows[p0:p1], out=gathered_buffer[: p1 - p0])
        grad_products = torch.index_select(grad_out, 0, layout.out_rows[p0:p1], out=grad_buffer[: p1 - p0])
        for k, start, end in block.segments:
            grad[:, k].addmm_(grad_products[start:end].t(), gathered[start:end])
    if kernel_map.centre is not None:
        torch.mm(grad_out.t(), features, out=grad[:, kernel_map.centre])
    return grad


def _uses_columns(features: torch.Tensor, kernel_map: KernelMap) -> bool:
    """Few input channels (the 3-channel stem): a dense GEMM over gathered neighbourhoods beats
    per-offset GEMMs with an inner dimension of 3, though it also multiplies the missing ones."""
    return kernel_map.centre is not None and features.shape[1] * kernel_map.volume <= COLUMNS_MAX


def _columns(padded: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``[rows, K * C_in]`` neighbourhoods of ``table`` ``[rows, K]`` rows of ``padded`` (last row 0)."""
    return padded.index_select(0, table.flatten()).view(table.shape[0], -1)


def _convolve_columns(features: torch.Tensor, weight: torch.Tensor, kernel_map: KernelMap) -> torch.Tensor:
    """``_convolve`` of a submanifold map as neighbourhood columns ``[rows, K * C_in]`` @ ``[K * C_in, C_out]``."""
    table = kernel_map.neighbour_table()
    padded = torch.cat([features, features.new_zeros(1, features.shape[1])])
    out = features.new_empty(kernel_map.n_out, weight.shape[0])
    flat = weight.view(weight.shape[0], -1).t()  # [K * C_in, C_out]
    rows = max(1, _block_pairs(features.device) // kernel_map.volume)
    for r0 in range(0, kernel_map.n_out, rows):
        torch.mm(_columns(padded, table[r0 : r0 + rows]), flat, out=out[r0 : r0 + rows])
    return out


def _weight_gradient_columns(
    features: torch.Tensor, grad_out: torch.Tensor, kernel_map: KernelMap
) -> torch.Tensor:
    table = kernel_map.neighbour_table()
    padded = torch.cat([features, features.new_zeros(1, features.shape[1])])
    grad = features.new_zeros(grad_out.shape[1], kernel_map.volume * features.shape[1])
    rows = max(1, _block_pairs(features.device) // kernel_map.volume)
    for r0 in range(0, kernel_map.n_out, rows):
        grad.addmm_(grad_out[r0 : r0 + rows].t(), _columns(padded, table[r0 : r0 + rows]))
    return grad.view(grad_out.shape[1], kernel_map.volume, features.shape[1])


class _SparseConv(torch.autograd.Function):
    """Gather - per-offset GEMM - segment sum; see the module docstring."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, weight: torch.Tensor, kernel_map: KernelMap) -> torch.Tensor:
        features = features.contiguous()  # weight: [C_out, K, C_in], spconv's layout, contiguous
        ctx.save_for_backward(features, weight)
        ctx.kernel_map = kernel_map
        with torch.autocast(features.device.type, enabled=False):  # products in the features' dtype
            if _uses_columns(features, kernel_map):
                return _convolve_columns(features, weight, kernel_map)
            return _convolve(features, _forward_kernels(weight), kernel_map)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _SparseConv._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: torch.Tensor):
        features, weight = ctx.saved_tensors
        kernel_map: KernelMap = ctx.kernel_map
        grad_out = grad_out.to(features.dtype).contiguous()
        grad_features = grad_weight = None
        if ctx.needs_input_grad[1]:
            if _uses_columns(features, kernel_map):
                grad_weight = _weight_gradient_columns(features, grad_out, kernel_map)
            else:
                grad_weight = _weight_gradient(features, grad_out, kernel_map)
        if ctx.needs_input_grad[0]:
            # the transposed convolution: per kernel index the [C_out, C_in] matrix, a view of the
            # weight; for a submanifold kernel the transposed pairs of k are the pairs of K - 1 - k
            volume = kernel_map.volume
            if kernel_map.symmetric:
                kernels = [weight[:, volume - 1 - k] for k in range(volume)]
                grad_features = _convolve(grad_out, kernels, kernel_map)
            else:
                kernels = [weight[:, k] for k in range(volume)]
                grad_features = _convolve(grad_out, kernels, kernel_map.transposed())
        return grad_features, grad_weight, None


def sparse_conv(
    features: torch.Tensor, weight: torch.Tensor, kernel_map: KernelMap, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Sparse convolution of ``[n_in, C_in]`` features with a spconv-layout kernel.

    Args:
        features: ``[n_in, C_in]`` rows in the order of the map's input voxels, on the device of
            the map (built from voxel indices on that device).
        weight: ``[C_out, kx, ky, kz, C_in]`` (spconv's layout), K = kx·ky·kz = ``kernel_map.volume``;
            for an inverse convolution the inverse module's own weight with the transposed map.
        kernel_map: from :func:`submanifold_map`, :func:`downsample_map` or ``.transposed()``.
        bias: optional ``[C_out]``.

    Returns:
        ``[n_out, C_out]`` in the order of the map's output voxels.
    """
    c_out, c_in = weight.shape[0], weight.shape[-1]
    volume = math.prod(weight.shape[1:-1])
    if volume != kernel_map.volume or features.shape != (kernel_map.n_in, c_in):
        raise ValueError(
            f"kernel {tuple(weight.shape)} and features {tuple(features.shape)} do not fit a map with "
            f"{kernel_map.volume} offsets and {kernel_map.n_in} input voxels"
        )
    if features.device != kernel_map.in_rows.device or weight.device != features.device:
        raise ValueError(
            f"features ({features.device}), kernel ({weight.device}) and the map's voxel indices "
            f"({kernel_map.in_rows.device}) must be on one device"
        )
    out = _SparseConv.apply(features, weight.reshape(c_out, volume, c_in), kernel_map)
    return out if bias is None else out + bias


@dataclass
class TorchSparseTensor:
    """Voxel features plus the kernel maps built so far, the torch path's ``SparseConvTensor``.

    Attributes:
        features: ``[N, C]``.
        indices: ``[N, 4]`` int32 (b, x, y, z), non-negative, inside ``spatial_shape``; on the
            features' device (CPU or CUDA).
        spatial_shape: grid extent (x, y, z).
        batch_size: B.
        maps: kernel maps by spconv ``indice_key``, shared by every tensor derived from one input
            (as spconv's ``indice_dict``): a submanifold key holds its :class:`KernelMap`, a strided
            key ``(map, fine indices, fine spatial_shape)`` for its inverse convolution.
    """

    features: torch.Tensor
    indices: torch.Tensor
    spatial_shape: list[int]
    batch_size: int
    maps: dict = field(default_factory=dict)

    def replace_feature(self, features: torch.Tensor) -> TorchSparseTensor:
        """The same voxels with new ``[N, C']`` features."""
        return TorchSparseTensor(features, self.indices, self.spatial_shape, self.batch_size, self.maps)

    def conv(self, module) -> TorchSparseTensor:
        """Apply a spconv convolution module (its weights and settings) on the torch path.

        Supported: ``SubMConv3d`` with an odd cubic kernel, ``SparseConv3d`` with kernel = stride and
        no padding, ``SparseInverseConv3d`` of such a convolution (same ``indice_key``); dilation 1.
        """
        kernel = _cubic(module.kernel_size, "kernel_size", module)
        if any(d != 1 for d in module.dilation):
            raise NotImplementedError(f"{module}: the torch path supports dilation 1 only")
        key = module.indice_key
        if module.subm:
            kernel_map = self.maps.get(key) if key is not None else None
            if kernel_map is None:
                kernel_map = submanifold_map(self.indices, self.spatial_shape, kernel)
                if key is not None:
                    self.maps[key] = kernel_map
            elif kernel_map.volume != kernel**3 or kernel_map.n_in != self.features.shape[0]:
                raise ValueError(
                    f"indice_key {key!r} is shared by convolutions of different kernels or levels"
                )
            return self.replace_feature(sparse_conv(self.features, module.weight, kernel_map, module.bias))
        if module.inverse:
            if key not in self.maps or not isinstance(self.maps[key], tuple):
                raise ValueError(
                    f"{module}: inverse convolution needs the strided convolution with indice_key {key!r} first"
                )
            kernel_map, fine_indices, fine_shape = self.maps[key]
            features = sparse_conv(self.features, module.weight, kernel_map.transposed(), module.bias)
            return TorchSparseTensor(features, fine_indices, fine_shape, self.batch_size, self.maps)
        stride = _cubic(module.stride, "stride", module)
        if stride != kernel or any(p != 0 for p in module.padding) or module.transposed:
            raise NotImplementedError(
                f"{module}: the torch path supports strided convolutions with kernel = stride and no padding only"
            )
        kernel_map, coarse, coarse_shape = downsample_map(self.indices, self.spatial_shape, stride)
        if key is not None:
            self.maps[key] = (kernel_map, self.indices, self.spatial_shape)
        features = sparse_conv(self.features, module.weight, kernel_map, module.bias)
        return TorchSparseTensor(features, coarse, coarse_shape, self.batch_size, self.maps)


def _cubic(values, name: str, module) -> int:
    values = list(values)
    if len(set(values)) != 1:
        raise NotImplementedError(f"{module}: the torch path supports cubic {name} only, got {values}")
    return int(values[0])
