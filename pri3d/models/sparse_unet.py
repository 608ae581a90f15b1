"""The 3D network of the geometric prior: a MinkUNet34C-layout sparse residual UNet on spconv 2.x.

Layout as the original's ``ResUNet3D`` (MinkowskiEngine MinkUNet34C, `model/backbone/resunet3d.py`):
a k5 stem, four stride-2 (k2 s2) downsamplings with BasicBlock stages of 32, 64, 128, 256 channels (2, 3, 4, 6
blocks), four k2 s2 transposed convolutions back to stride 1, each followed by a concatenation
with the skip of the same level and two BasicBlocks (256, 128, 96, 96 channels), then a linear
per-voxel layer (the 1×1 conv with bias) to ``out_channels`` (96).

spconv mapping: stride-1 3×3×3 (and the 5×5×5 stem) convolutions are submanifold convolutions,
so they only compute at active voxels as ME does; downsampling is ``SparseConv3d(k=2, s=2)`` (an
output voxel exists where any of its 2×2×2 children is active, ME's rule) and upsampling is
``SparseInverseConv3d`` with the downsampling's ``indice_key``, which restores exactly the finer
level's voxels in their original row order. Hence the output rows equal the input rows.

spconv CPU facts handled here (spconv 2.3.8):

* features must be float32 (float64 gives wrong results on CPU);
* coordinate tensors must be contiguous (a column-major int tensor, e.g. straight from
  ``nonzero()``, is read as garbage);
* backward through strided/inverse convolutions asks for the current CUDA stream; without CUDA
  that call is replaced by one returning 0 (the CPU "stream");
* the native CPU path's C++ scatter-add corrupts a row now and then when torch uses more than one
  thread (run-to-run differences of O(1) in the network output); importing this module routes the
  CPU gather and scatter-add through torch instead.

Both patches are applied once, at import, to ``spconv.pytorch.ops`` only.

Backends: the network's parameters are spconv modules, but the convolutions run through spconv,
through :mod:`pri3d.models.sparse_conv_torch` (torch ops on spconv's weights and offset
convention, for CPU and CUDA tensors) or through :mod:`pri3d.models.sparse_conv_triton`
(spconv-triton's Triton kernels on spconv's weights, CUDA tensors only). :func:`select_backend`
is the rule; with ``backend="auto"`` (the default) CPU tensors take the torch path (multi-threaded,
~2× faster than spconv's native CPU path for forward + backward; see docs/benchmarks.md), CUDA
tensors take spconv when the installed spconv is a CUDA build, else the triton path when
spconv-triton and triton are installed, else the torch path: spconv's CUDA wheels stop at CUDA
12.6, and the CPU-only ``spconv`` wheel that pri3d installs cannot convolve CUDA tensors.
``backend="torch"`` / ``"spconv"`` / ``"triton"`` force a path.
"""

from __future__ import annotations

import math

import spconv.cppconstants as spconv_constants
import spconv.pytorch as spconv
import spconv.pytorch.ops as spconv_ops
import torch
from spconv.core import ConvAlgo
from spconv.pytorch.conv import SparseConvolution
from torch import nn

from pri3d.models import sparse_conv_triton
from pri3d.models.sparse_conv_torch import TorchSparseTensor

__all__ = ["BACKENDS", "MinkUNet34C", "SparseBasicBlock", "resolve_backend", "select_backend"]

# Four stride-2 levels: shifting coordinates by a multiple of 2**4 keeps every level's
# floor(c / 2**l) grouping identical to ME's on the unshifted coordinates.
_LEVEL_ALIGN = 16


def _patch_spconv_stream_for_cpu() -> None:
    """Make spconv's ops use stream 0 when CUDA is unavailable (idempotent).

    ``spconv.pytorch.ops`` imported ``get_current_stream`` by name from ``spconv.pytorch.cppcore``;
    it asks torch for the current CUDA stream, which raises without an NVIDIA driver, and is called
    in the backward of strided/inverse convolutions even for CPU tensors.
    """
    if torch.cuda.is_available() or getattr(spconv_ops.get_current_stream, "_pri3d_cpu_stream", False):
        return

    def get_current_stream() -> int:
        return 0

    get_current_stream._pri3d_cpu_stream = True  # type: ignore[attr-defined]
    spconv_ops.get_current_stream = get_current_stream


def _as_torch(t: object) -> torch.Tensor:
    """Zero-copy torch view of a CPU ``cumm.tensorview.Tensor``."""
    return torch.from_numpy(t.numpy_view())  # type: ignore[attr-defined]


class _SpconvOpsWithTorchCpuGatherScatter:
    """``SpconvOps`` with the CPU gather / scatter-add of the native conv path done by torch.

    spconv 2.3.8's ``SpconvOps.scatter_add_cpu`` intermittently loses or corrupts rows when torch
    runs with more than one thread (found here: a few % of calls, each one a whole wrong row;
    upstream traveller59/spconv#679 reports the resulting run-to-run differences, also on CPU).
    Every other attribute is the original C++ op.
    """

    _pri3d_cpu_fix = True

    def __init__(self, ops: object) -> None:
        self._ops = ops

    def __getattr__(self, name: str) -> object:
        return getattr(self._ops, name)

    @staticmethod
    def gather_cpu(buffer: object, features: object, indices: object) -> None:
        """``buffer[:n] = features[indices]`` with n = len(indices)."""
        idx = _as_torch(indices).long()
        out = _as_torch(buffer)[: idx.shape[0]]
        torch.index_select(_as_torch(features), 0, idx, out=out)

    @staticmethod
    def scatter_add_cpu(out: object, buffer: object, indices: object) -> None:
        """``out[indices] += buffer[:n]`` with n = len(indices)."""
        idx = _as_torch(indices).long()
        # index_put_ with accumulate is ~5x faster than index_add_ on CPU (torch 2.x).
        _as_torch(out).index_put_((idx,), _as_torch(buffer)[: idx.shape[0]], accumulate=True)


def _patch_spconv_cpu_gather_scatter() -> None:
    """Route spconv's CPU gather / scatter-add through torch (idempotent, any machine)."""
    if not getattr(spconv_ops.SpconvOps, "_pri3d_cpu_fix", False):
        spconv_ops.SpconvOps = _SpconvOpsWithTorchCpuGatherScatter(spconv_ops.SpconvOps)


_patch_spconv_stream_for_cpu()
_patch_spconv_cpu_gather_scatter()

SparseTensor = spconv.SparseConvTensor | TorchSparseTensor  # or spconv-triton's SparseConvTensor
BACKENDS = ("auto", "torch", "spconv", "triton")


def spconv_has_cuda() -> bool:
    """Whether the installed spconv is a CUDA build (the ``spconv`` wheel on PyPI is CPU-only)."""
    return not spconv_constants.CPU_ONLY_BUILD


def select_backend(backend: str, device_type: str, spconv_cuda: bool, triton: bool) -> str:
    """The path (``"torch"``, ``"spconv"`` or ``"triton"``) for option ``backend`` on ``device_type``.

    Args:
        backend: one of :data:`BACKENDS`.
        device_type: the tensors' ``torch.device.type`` (``"cpu"``, ``"cuda"``, ...).
        spconv_cuda: the installed spconv is a CUDA build (:func:`spconv_has_cuda`).
        triton: spconv-triton and triton are installed (:func:`sparse_conv_triton.available`).

    ``"auto"``: on CUDA spconv if it is a CUDA build, else triton if installed, else the torch
    path; the torch path on CPU and any other device. ``"spconv"`` runs on CPU, and on CUDA with a
    CUDA build; ``"triton"`` on CUDA with spconv-triton installed; otherwise a ValueError naming
    what is missing.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    cuda = device_type == "cuda"
    if backend == "auto":
        if cuda and spconv_cuda:
            return "spconv"
        return "triton" if cuda and triton else "torch"
    if backend == "spconv" and not (device_type == "cpu" or (cuda and spconv_cuda)):
        if cuda:
            raise ValueError(
                "backend='spconv' on cuda tensors needs a CUDA build of spconv, but the installed "
                "spconv is CPU-only: install the build for your CUDA (e.g. `pip install spconv-cu126`; "
                "spconv has none past CUDA 12.6) or use backend='auto', 'triton' or 'torch'"
            )
        raise ValueError(f"backend='spconv': spconv does not run on {device_type} tensors; use 'torch'")
    if backend == "triton" and not cuda:
        raise ValueError(
            f"backend='triton' needs cuda tensors, got {device_type}: spconv-triton's kernels are GPU-only "
            "(Triton's CPU interpreter cannot run them); use backend='auto' or 'torch'"
        )
    if backend == "triton" and not triton:
        raise ValueError(
            "backend='triton' needs spconv-triton and triton: `pip install \"pri3d[triton]\"` (offline: "
            "`pip install .wheels/spconv_triton-*.whl`); triton comes with CUDA builds of PyTorch"
        )
    return backend


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """:func:`select_backend` for tensors on ``device`` with what is installed here."""
    device = torch.device(device)
    return select_backend(backend, device.type, spconv_has_cuda(), sparse_conv_triton.available())


def _conv(module: SparseConvolution, x: SparseTensor, path: str) -> SparseTensor:
    """Apply a spconv convolution module on ``path`` (:func:`resolve_backend`'s answer, which also
    chose ``x``'s type)."""
    if path == "torch":
        return x.conv(module)
    if path == "triton":
        return sparse_conv_triton.conv(module, x)
    return module(x)


class SparseBasicBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN plus identity (or linear+BN projection when channels change), ReLU.

    Args:
        in_channels, out_channels: feature widths.
        indice_key: spconv key shared by all submanifold k3 convs of one level, so the neighbour
            table of that level is built once per forward.
        algo: spconv algorithm (``None`` = spconv's default; the CPU build only has Native).
    """

    def __init__(self, in_channels: int, out_channels: int, indice_key: str, algo: ConvAlgo | None = None):
        super().__init__()
        subm = dict(kernel_size=3, bias=False, indice_key=indice_key, algo=algo)
        self.conv1 = spconv.SubMConv3d(in_channels, out_channels, **subm)
        self.norm1 = nn.BatchNorm1d(out_channels)
        self.conv2 = spconv.SubMConv3d(out_channels, out_channels, **subm)
        self.norm2 = nn.BatchNorm1d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if in_channels != out_channels:
            # A 1x1x1 convolution is a per-voxel linear map.
            self.downsample = nn.Sequential(
                nn.Linear(in_channels, out_channels, bias=False), nn.BatchNorm1d(out_channels)
            )

    def forward(self, x: SparseTensor, path: str) -> SparseTensor:
        """Features ``[N, C_in]`` -> ``[N, C_out]`` on the same voxels, convolved on ``path``."""
        out = _conv(self.conv1, x, path)
        out = out.replace_feature(self.relu(self.norm1(out.features)))
        out = _conv(self.conv2, out, path)
        identity = x.features if self.downsample is None else self.downsample(x.features)
        return out.replace_feature(self.relu(self.norm2(out.features) + identity))


def _stage(
    in_channels: int, out_channels: int, blocks: int, key: str, algo: ConvAlgo | None
) -> nn.Sequential:
    layers = [SparseBasicBlock(in_channels, out_channels, key, algo)]
    layers += [SparseBasicBlock(out_channels, out_channels, key, algo) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _run_stage(stage: nn.Sequential, x: SparseTensor, path: str) -> SparseTensor:
    for block in stage:
        x = block(x, path)
    return x


class MinkUNet34C(nn.Module):
    """Sparse residual UNet (MinkUNet34C layout) mapping per-voxel features to ``out_channels``.

    Args:
        in_channels: input feature width (3: vertex RGB / 255).
        out_channels: output feature width (96).
        algo: spconv algorithm for every conv; ``None`` keeps spconv's default (Native on the CPU
            build, implicit GEMM on CUDA builds).
        backend: which path convolves: ``"auto"`` (the default: :mod:`pri3d.models.sparse_conv_torch`
            for CPU tensors; for CUDA tensors spconv if it is a CUDA build, else spconv-triton if
            installed, else the torch path), ``"torch"`` (the torch path on any device), ``"spconv"``
            (spconv on CPU and CUDA; a ValueError at forward time for CUDA tensors when spconv is a
            CPU-only build) or ``"triton"`` (spconv-triton, CUDA tensors only). See
            :func:`select_backend`. All paths share the parameters and give the same results up to
            float32 rounding. Can be changed after construction (``net.backend = "spconv"``).

    Module names follow ME's MinkUNet (``conv0p1s1``, ``bn0``, ``block1`` ... ``final``); the kernel
    layout is spconv's ``[C_out, kx, ky, kz, C_in]``, so ME checkpoints do not load as they are.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 96,
        algo: ConvAlgo | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.backend = backend

        def down(c_in: int, c_out: int, key: str) -> spconv.SparseConv3d:
            return spconv.SparseConv3d(c_in, c_out, 2, stride=2, bias=False, indice_key=key, algo=algo)

        def up(c_in: int, c_out: int, key: str) -> spconv.SparseInverseConv3d:
            return spconv.SparseInverseConv3d(c_in, c_out, 2, indice_key=key, bias=False, algo=algo)

        self.relu = nn.ReLU(inplace=True)
        self.conv0p1s1 = spconv.SubMConv3d(in_channels, 32, 5, bias=False, indice_key="subm1_k5", algo=algo)
        self.bn0 = nn.BatchNorm1d(32)
        self.conv1p1s2 = down(32, 32, "down1")
        self.bn1 = nn.BatchNorm1d(32)
        self.block1 = _stage(32, 32, 2, "subm2", algo)
        self.conv2p2s2 = down(32, 32, "down2")
        self.bn2 = nn.BatchNorm1d(32)
        self.block2 = _stage(32, 64, 3, "subm4", algo)
        self.conv3p4s2 = down(64, 64, "down3")
        self.bn3 = nn.BatchNorm1d(64)
        self.block3 = _stage(64, 128, 4, "subm8", algo)
        self.conv4p8s2 = down(128, 128, "down4")
        self.bn4 = nn.BatchNorm1d(128)
        self.block4 = _stage(128, 256, 6, "subm16", algo)

        self.convtr4p16s2 = up(256, 256, "down4")
        self.bntr4 = nn.BatchNorm1d(256)
        self.block5 = _stage(256 + 128, 256, 2, "subm8", algo)
        self.convtr5p8s2 = up(256, 128, "down3")
        self.bntr5 = nn.BatchNorm1d(128)
        self.block6 = _stage(128 + 64, 128, 2, "subm4", algo)
        self.convtr6p4s2 = up(128, 96, "down2")
        self.bntr6 = nn.BatchNorm1d(96)
        self.block7 = _stage(96 + 32, 96, 2, "subm2", algo)
        self.convtr7p2s2 = up(96, 96, "down1")
        self.bntr7 = nn.BatchNorm1d(96)
        self.block8 = _stage(96 + 32, 96, 2, "subm1", algo)
        self.final = nn.Linear(96, out_channels, bias=True)
        self.reset_parameters()

    @property
    def backend(self) -> str:
        """``"auto"``, ``"torch"``, ``"spconv"`` or ``"triton"``; see the class docstring."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"backend={value!r}: expected one of {BACKENDS}")
        self._backend = value

    def reset_parameters(self) -> None:
        """Kaiming normal (fan_out, ReLU) on all kernels, BN γ=1 β=0, as the original."""
        for m in self.modules():
            if isinstance(m, SparseConvolution):
                # spconv kernels are [C_out, kx, ky, kz, C_in]; torch's fan rule would misread them.
                fan_out = m.out_channels * math.prod(m.kernel_size)
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _bn_relu(self, x: SparseTensor, bn: nn.BatchNorm1d) -> SparseTensor:
        return x.replace_feature(self.relu(bn(x.features)))

    def _to_sparse(self, coords: torch.Tensor, features: torch.Tensor, path: str) -> SparseTensor:
        if coords.dim() != 2 or coords.shape[1] != 4 or coords.is_floating_point():
            raise ValueError(
                f"coords must be an integer [N, 4] (batch, x, y, z) tensor, got {coords.dtype} "
                f"{tuple(coords.shape)}"
            )
        if features.dim() != 2 or features.shape != (coords.shape[0], self.in_channels):
            raise ValueError(
                f"features must be [N, {self.in_channels}] with N = {coords.shape[0]} rows of "
                f"coords, got {tuple(features.shape)}"
            )
        if coords.shape[0] == 0:
            raise ValueError("the 3D network needs at least one voxel, got N = 0")
        if coords.device != features.device:
            raise ValueError(
                f"coords ({coords.device}) and features ({features.device}) must be on one device"
            )
        # float64 (with float64 parameters) is for reference computations; spconv computes it wrongly
        # on CPU and spconv-triton's kernels take float32, so only the torch path takes it.
        allowed = (torch.float32, torch.float64) if path == "torch" else (torch.float32,)
        if features.dtype not in allowed:
            raise TypeError(
                f"features must be {' or '.join(str(d) for d in allowed)} on the {path} path (float64 "
                f"only on the torch path), got {features.dtype}"
            )
        coords = coords.long()
        batch = coords[:, 0]
        if int(batch.min()) < 0:
            raise ValueError("batch indices in coords[:, 0] must be >= 0")
        batch_size = int(batch.max()) + 1
        # spconv wants non-negative coordinates inside spatial_shape; shift by a multiple of the
        # coarsest stride (exact ME grouping) and pad the extent to it (every level divides evenly).
        origin = torch.div(coords[:, 1:].min(0).values, _LEVEL_ALIGN, rounding_mode="floor") * _LEVEL_ALIGN
        local = coords[:, 1:] - origin
        extent = (local.max(0).values + _LEVEL_ALIGN) // _LEVEL_ALIGN * _LEVEL_ALIGN
        sx, sy, sz = (int(v) for v in extent)
        keys = ((batch * sx + local[:, 0]) * sy + local[:, 1]) * sz + local[:, 2]
        if torch.unique(keys).numel() != keys.numel():
            raise ValueError("coords contain duplicate voxels; deduplicate (e.g. sparse_quantize) first")
        indices = torch.cat([batch[:, None], local], dim=1).to(torch.int32).contiguous()
        if path == "torch":
            return TorchSparseTensor(features.contiguous(), indices, [sx, sy, sz], batch_size)
        if path == "triton":
            return sparse_conv_triton.sparse_tensor(features.contiguous(), indices, [sx, sy, sz], batch_size)
        return spconv.SparseConvTensor(features.contiguous(), indices, [sx, sy, sz], batch_size)

    def forward_sparse(self, coords: torch.Tensor, features: torch.Tensor) -> SparseTensor:
        """Like :meth:`forward`, but returns the output sparse tensor (spconv's ``SparseConvTensor``,
        :class:`~pri3d.models.sparse_conv_torch.TorchSparseTensor` on the torch path, spconv-triton's
        ``SparseConvTensor`` on the triton path).

        Its ``indices`` ``[N, 4]`` int32 equal ``coords`` row for row, except that x, y, z are
        shifted by ``-floor(min / 16) * 16`` per axis (spconv needs non-negative coordinates).
        """
        # the features' dtype throughout: spconv's CPU kernels only compute float32 correctly, the
        # torch path keeps the features' dtype (autocast would hand it float16 / bfloat16 GEMMs), and
        # spconv-triton would run float16 under autocast in training mode
        path = resolve_backend(self.backend, features.device)
        with torch.autocast(features.device.type, enabled=False):
            x = self._to_sparse(coords, features, path)
            p1 = self._bn_relu(_conv(self.conv0p1s1, x, path), self.bn0)

            out = self._bn_relu(_conv(self.conv1p1s2, p1, path), self.bn1)
            b1p2 = _run_stage(self.block1, out, path)
            out = self._bn_relu(_conv(self.conv2p2s2, b1p2, path), self.bn2)
            b2p4 = _run_stage(self.block2, out, path)
            out = self._bn_relu(_conv(self.conv3p4s2, b2p4, path), self.bn3)
            b3p8 = _run_stage(self.block3, out, path)
            out = self._bn_relu(_conv(self.conv4p8s2, b3p8, path), self.bn4)
            out = _run_stage(self.block4, out, path)

            for convtr, bn, skip, block in (
                (self.convtr4p16s2, self.bntr4, b3p8, self.block5),
                (self.convtr5p8s2, self.bntr5, b2p4, self.block6),
                (self.convtr6p4s2, self.bntr6, b1p2, self.block7),
                (self.convtr7p2s2, self.bntr7, p1, self.block8),
            ):
                out = _conv(convtr, out, path)
                # The inverse conv restores the skip level's voxels in the skip's row order.
                out = out.replace_feature(torch.cat([self.relu(bn(out.features)), skip.features], dim=1))
                out = _run_stage(block, out, path)
            return out.replace_feature(self.final(out.features))

    def forward(self, coords: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Per-voxel features of a batch of sparse voxel sets.

        Args:
            coords: ``[N, 4]`` int voxel coordinates (batch, x, y, z); unique rows; any integer
                range (negative allowed).
            features: ``[N, in_channels]`` float32 input features (float64 too on the torch path,
                with the network in float64: the reference the tests compare float32 against).

        Returns:
            ``[N, out_channels]`` features, row i belonging to ``coords[i]``, in the features' dtype:
            autocast of the features' device type (CPU or CUDA) is disabled inside, on every backend.
        """
        return self.forward_sparse(coords, features).features
