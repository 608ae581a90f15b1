"""Which path the 3D network's convolutions take (every branch, without CUDA), and the parts of the
triton path that run without a GPU: its modules' settings and state-dict layout, the Triton cache
folder and the warm-up. The triton path's numbers are compared with the float64 reference in
test_sparse_conv_torch.py where a GPU is present."""

from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch

pytest.importorskip("spconv.pytorch")

from spconv.pytorch.conv import SparseConvolution

from pri3d.models import sparse_conv_triton, sparse_unet
from pri3d.models.sparse_unet import BACKENDS, MinkUNet34C, resolve_backend, select_backend

DEVICES = ("cpu", "cuda", "mps")


def _expected(backend: str, device: str, spconv_cuda: bool, triton: bool) -> str | None:
    """The rule of the backend option, written out case by case (None: refused)."""
    if backend == "torch":
        return "torch"
    if device != "cuda":
        return {"auto": "torch", "spconv": "spconv" if device == "cpu" else None, "triton": None}[backend]
    if backend == "auto":
        return "spconv" if spconv_cuda else "triton" if triton else "torch"
    if backend == "spconv":
        return "spconv" if spconv_cuda else None
    return "triton" if triton else None


@pytest.mark.parametrize(
    ("backend", "device", "spconv_cuda", "triton"),
    list(itertools.product(BACKENDS, DEVICES, [False, True], [False, True])),
)
def test_select_backend_every_branch(backend, device, spconv_cuda, triton):
    want = _expected(backend, device, spconv_cuda, triton)
    if want is not None:
        assert select_backend(backend, device, spconv_cuda, triton) == want
    else:
        with pytest.raises(ValueError, match=f"backend='{backend}'"):
            select_backend(backend, device, spconv_cuda, triton)


def test_select_backend_errors_say_what_is_missing():
    with pytest.raises(ValueError, match=r"needs cuda tensors, got cpu.*GPU-only"):
        select_backend("triton", "cpu", spconv_cuda=False, triton=True)
    with pytest.raises(ValueError, match=r"spconv-triton and triton.*pri3d\[triton\].*\.wheels/"):
        select_backend("triton", "cuda", spconv_cuda=True, triton=False)
    with pytest.raises(ValueError, match=r"CPU-only.*'triton'"):
        select_backend("spconv", "cuda", spconv_cuda=False, triton=True)
    with pytest.raises(ValueError, match=r"expected one of \('auto', 'torch', 'spconv', 'triton'\)"):
        select_backend("minkowski", "cuda", spconv_cuda=True, triton=True)


@pytest.mark.parametrize(("cpu_only_build", "triton"), list(itertools.product([True, False], repeat=2)))
def test_resolve_backend_reads_what_is_installed(monkeypatch, cpu_only_build, triton):
    monkeypatch.setattr(sparse_unet.spconv_constants, "CPU_ONLY_BUILD", cpu_only_build)
    monkeypatch.setattr(sparse_conv_triton, "available", lambda: triton)
    for backend, device in itertools.product(BACKENDS, ("cpu", "cuda")):
        want = _expected(backend, device, not cpu_only_build, triton)
        if want is not None:
            assert resolve_backend(backend, torch.device(device)) == want
    assert resolve_backend("auto", "cpu") == "torch"  # today's CPU default, whatever is installed


@pytest.mark.parametrize("missing", ["spconv_triton", "triton"])
def test_triton_availability_needs_both_packages(monkeypatch, missing):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == missing else find_spec(name)
    )
    assert not sparse_conv_triton.available()


def test_triton_backend_on_cpu_is_refused_before_any_work():
    net = MinkUNet34C(backend="triton")
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]])
    with pytest.raises(ValueError, match="backend='triton' needs cuda tensors"):
        net(coords, torch.zeros(2, 3))


def _conv_modules(net: MinkUNet34C) -> dict[str, SparseConvolution]:
    return {name: m for name, m in net.named_modules() if isinstance(m, SparseConvolution)}


def test_triton_counterparts_mirror_the_spconv_modules():
    """Each convolution's spconv-triton counterpart has its settings and kernel shape, holds no
    weights (meta device), and the network's state dict stays spconv's: it loads strictly into a
    torch-path network and back."""
    pytest.importorskip("spconv_triton.pytorch")
    net = MinkUNet34C(backend="triton")
    keys = list(net.state_dict())
    convs = _conv_modules(net)
    assert len(convs) == 1 + 4 + 4 + 2 * (2 + 3 + 4 + 6 + 2 * 4)  # stem, down, up, two per block
    for name, module in convs.items():
        twin = sparse_conv_triton._counterpart(module)
        assert sparse_conv_triton._counterpart(module) is twin  # built once per module
        for setting in (
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "dilation",
            "subm",
            "inverse",
            "transposed",
            "indice_key",
        ):
            assert getattr(twin, setting) == getattr(module, setting), f"{name}.{setting}"
        if not module.inverse:  # an inverse convolution takes its padding from the strided one
            assert twin.padding == module.padding, name
        assert twin.weight.shape == module.weight.shape and twin.weight.is_meta, name
        assert (twin.bias is None) == (module.bias is None), name
    assert list(net.state_dict()) == keys
    torch_net = MinkUNet34C(backend="torch")
    torch_net.load_state_dict(net.state_dict())
    net.load_state_dict(torch_net.state_dict())


def test_use_cache_dir_keeps_the_users_choice(monkeypatch, tmp_path):
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    assert (
        sparse_conv_triton.use_cache_dir(tmp_path / "run" / "triton_cache")
        == tmp_path / "run" / "triton_cache"
    )
    assert (
        sparse_conv_triton.use_cache_dir(tmp_path / "other") == tmp_path / "run" / "triton_cache"
    )  # the variable, once set, wins
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))
    assert sparse_conv_triton.use_cache_dir(tmp_path / "run") == tmp_path / "mine"


def test_warm_up_voxels_are_two_room_surfaces():
    coords, features = sparse_conv_triton._warm_up_voxels(torch.device("cpu"))
    x, y, z = sparse_conv_triton.WARM_UP_BOX
    per_view = x * y * z - (x - 2) * (y - 2) * (z - 2)  # the box minus its interior
    assert coords.shape == (2 * per_view, 4) and features.shape == (2 * per_view, 3)
    assert torch.unique(coords, dim=0).shape[0] == coords.shape[0]
    assert torch.equal(torch.bincount(coords[:, 0]), torch.tensor([per_view, per_view]))
    assert features.dtype == torch.float32 and 0 <= features.min() and features.max() < 1


def test_warm_up_leaves_the_network_and_rng_untouched(monkeypatch):
    """The warm-up trains a copy: parameters, gradients, BatchNorm statistics and the RNG stay as
    they were (checked on the torch path, which runs on CPU)."""
    monkeypatch.setattr(sparse_conv_triton, "WARM_UP_BOX", (6, 5, 4))
    torch.manual_seed(0)
    net = MinkUNet34C(backend="torch").eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    sparse_conv_triton.warm_up(net, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng)
    assert not net.training and all(p.grad is None for p in net.parameters())
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
