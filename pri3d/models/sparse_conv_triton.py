"""The triton path of the 3D network: spconv modules' weights convolved by spconv-triton's Triton kernels.

`spconv-triton <https://pypi.org/project/spconv-triton/>`_ (``pip install "pri3d[triton]"``) keeps
spconv 2.x's module API, kernel layout ``[C_out, kx, ky, kz, C_in]`` and neighbour rules, and runs
on CUDA builds of PyTorch that spconv has no wheel for (CUDA 13). The network's parameters stay
spconv modules (one state-dict layout for every path); each convolution is handed to a
spconv-triton module with the same settings that holds no weights of its own (built on the meta
device) and receives the spconv module's weight at call time.

Only CUDA tensors: spconv-triton refuses CPU tensors in its GEMM entry points, and Triton's CPU
interpreter (``TRITON_INTERPRET=1``) cannot run its autotuned kernels without a GPU driver.

Triton compiles and autotunes each kernel on first use (autotune keys are the channel counts and
kernel volume, not the voxel count). :func:`use_cache_dir` fixes where the results go and
:func:`warm_up` fills the cache with one forward + backward on a copy of the network, so that a run
with several processes warms it once (rank 0 first) instead of every rank autotuning at step 0.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import weakref
from pathlib import Path

import torch
from torch import nn

__all__ = ["available", "conv", "sparse_tensor", "use_cache_dir", "warm_up"]

#: Box room of the warm-up: its six faces are 33,088 voxels, about one view's crop at 2 cm (35k).
WARM_UP_BOX = (100, 80, 50)

# spconv module -> its weightless spconv-triton counterpart (dies with the module)
_COUNTERPARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def available() -> bool:
    """Whether spconv-triton and triton are installed (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("spconv_triton", "triton"))


def sparse_tensor(features: torch.Tensor, indices: torch.Tensor, spatial_shape: list[int], batch_size: int):
    """spconv-triton's ``SparseConvTensor`` of ``[N, C]`` features at ``[N, 4]`` int32 (b, x, y, z) indices."""
    import spconv_triton.pytorch as spconv_triton

    return spconv_triton.SparseConvTensor(features, indices, spatial_shape, batch_size)


def _counterpart(module: nn.Module) -> nn.Module:
    """The spconv-triton module with ``module``'s settings (no weights: built on the meta device)."""
    counterpart = _COUNTERPARTS.get(module)
    if counterpart is not None:
        return counterpart
    import spconv_triton.pytorch as spconv_triton

    name = type(module).__name__
    settings = dict(bias=module.bias is not None, indice_key=module.indice_key)
    with torch.device("meta"):
        if name in ("SubMConv3d", "SparseConv3d"):
            counterpart = getattr(spconv_triton, name)(
                module.in_channels,
                module.out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                **settings,
            )
        elif name == "SparseInverseConv3d":
            counterpart = spconv_triton.SparseInverseConv3d(
                module.in_channels, module.out_channels, module.kernel_size, **settings
            )
        else:
            raise NotImplementedError(
                f"{module}: the triton path supports SubMConv3d, SparseConv3d and SparseInverseConv3d"
            )
    _COUNTERPARTS[module] = counterpart
    return counterpart


def conv(module: nn.Module, x):
    """Apply a spconv convolution module (its weight and settings) to a spconv-triton sparse tensor.

    The convolution is differentiable whenever autograd records (spconv, like spconv-triton,
    skips autograd for modules in eval mode; the torch path does not, and neither does this).
    """
    training = module.training or torch.is_grad_enabled()
    return _counterpart(module)._conv_forward(training, x, module.weight, module.bias)


def use_cache_dir(default: str | Path) -> Path:
    """Point Triton's compile and autotune cache at ``$TRITON_CACHE_DIR`` if set, else at ``default``.

    Returns the folder in use. Triton reads the variable at each compilation, so this holds for
    kernels compiled after the call.
    """
    folder = os.environ.get("TRITON_CACHE_DIR") or str(Path(default).resolve())
    os.environ["TRITON_CACHE_DIR"] = folder
    return Path(folder)


def _warm_up_voxels(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views' voxels: the faces of a ``WARM_UP_BOX`` room each, colour = position (no RNG drawn)."""
    extent = torch.tensor(WARM_UP_BOX, device=device)
    grid = torch.stack(
        torch.meshgrid(*(torch.arange(int(side), device=device) for side in WARM_UP_BOX), indexing="ij"), -1
    ).reshape(-1, 3)
    surface = grid[((grid == 0) | (grid == extent - 1)).any(1)]
    batch = torch.arange(2, device=device).repeat_interleave(surface.shape[0])[:, None]
    coords = torch.cat([batch, surface.repeat(2, 1)], dim=1)
    features = (coords[:, 1:] / extent).float()
    return coords, features


def warm_up(network: nn.Module, device: torch.device) -> None:
    """Compile and autotune the Triton kernels of ``network``'s forward + backward on ``device``.

    Runs one training step's forward + backward of a copy of the network (``network``'s parameters,
    gradients and BatchNorm statistics stay untouched) on ``WARM_UP_BOX`` voxels of two views.
    """
    replica = copy.deepcopy(network).to(device).train()
    coords, features = _warm_up_voxels(device)
    replica(coords, features).square().mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
