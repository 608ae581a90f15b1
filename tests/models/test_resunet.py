"""2D UNet backbones: shapes, exact state-dict layout, parameter counts, ImageNet loading."""

from __future__ import annotations

import math
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from pri3d.models import (
    Res18UNet,
    Res50UNet,
    ResNetEncoder,
    available_backbones,
    build_backbone,
    load_imagenet,
)

_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _expected_decoder_keys() -> list[str]:
    keys = []
    for i in range(1, 5):
        for conv, bn in (("conv1", "bn1"), ("conv1_2", "bn1_2"), ("conv2", "bn2")):
            keys.append(f"up{i}.{conv}.weight")
            keys += [f"up{i}.{bn}.{name}" for name in _BN_KEYS]
    return [*keys, "conv0.weight", "conv0.bias"]


def _expected_keys(tv_model: nn.Module) -> list[str]:
    encoder = [f"encoder.{k}" for k in tv_model.state_dict() if not k.startswith("fc.")]
    return encoder + [f"decoder.{k}" for k in _expected_decoder_keys()]


class _Wrapper(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone


@pytest.mark.parametrize("name", available_backbones())
def test_state_dict_layout(name):
    with torch.device("meta"):
        model = build_backbone(name, 32)
        tv_model = torchvision.models.get_model(model.encoder.arch)
    assert list(model.state_dict()) == _expected_keys(tv_model)
    wrapped = list(_Wrapper(model).state_dict())
    assert wrapped[0] == "backbone.encoder.conv1.weight"
    assert "backbone.decoder.up4.bn1_2.running_var" in wrapped
    assert wrapped[-2:] == ["backbone.decoder.conv0.weight", "backbone.decoder.conv0.bias"]


# the sizes of the original's networks at their pre-training output channels
@pytest.mark.parametrize(
    ("name", "channels", "params_m"), [("Res18UNet", 32, 20.7), ("Res50UNet", 128, 175.0)]
)
def test_param_count(name, channels, params_m):
    with torch.device("meta"):
        model = build_backbone(name, channels)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == pytest.approx(params_m * 1e6, rel=0.01)


def test_default_output_channels_are_the_pretraining_ones():
    with torch.device("meta"):
        assert (Res18UNet().output_channels, Res50UNet().output_channels) == (32, 128)


def test_res18_output_shape_and_layer_strides():
    model = Res18UNet().eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        feats = model.encoder(x)
        out = model(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, 64, 16, 20),
        (2, 128, 8, 10),
        (2, 256, 4, 5),
        (2, 512, 2, 3),
    ]
    assert out.shape == (2, 32, 32, 40)


@pytest.mark.parametrize("name", available_backbones())
def test_every_backbone_gives_a_stride_2_map(name):
    model = build_backbone(name, 16).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 80))
    assert out.shape == (1, 16, 32, 40)


def test_odd_input_size_and_backward():
    model = Res18UNet(output_channels=16)
    x = torch.randn(2, 3, 61, 83)
    out = model(x)
    # layer1 of 61x83 is 16x21 (ceil twice); the output is twice that.
    assert out.shape == (2, 16, 32, 42)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_channels_last_input_matches_contiguous():
    torch.manual_seed(0)
    model = Res18UNet().eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_scratch_init():
    encoder = ResNetEncoder("resnet18")
    conv = encoder.layer4[0].conv2  # 3x3, 512 out: std sqrt(2 / (9 * 512))
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 512)), rel=0.02)
    assert conv.weight.mean().abs().item() < 1e-3
    for m in encoder.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


def test_load_imagenet_from_local_file(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    nn.init.normal_(reference.bn1.running_mean)  # make buffers distinguishable from the defaults
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)

    model = build_backbone("Res18UNet", 32, pretrained=path)
    loaded = model.encoder.state_dict()
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_load_imagenet_accepts_files_without_num_batches_tracked(tmp_path):
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if "num_batches" not in k}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    encoder = load_imagenet(ResNetEncoder("resnet18"), path)
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"])


def test_load_imagenet_reports_file_and_keys(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    del state["layer2.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"broken\.pth") as err:
        load_imagenet(ResNetEncoder("resnet18"), path)
    assert "layer2.0.conv1.weight" in str(err.value)
    assert "extra.weight" in str(err.value)

    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"conv1.weight: file \(64, 3, 3, 3\) vs model \(64, 3, 7, 7\)"):
        load_imagenet(ResNetEncoder("resnet18"), path)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_imagenet(ResNetEncoder("resnet18"), tmp_path / "missing.pth")


def test_registry_errors():
    with pytest.raises(ValueError, match="Res18UNet"):
        build_backbone("Res34UNet", 32)
    with pytest.raises(ValueError, match="resnet50"):
        ResNetEncoder("resnet34")


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty torch hub cache under ``tmp_path`` and no network: a download raises URLError."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_imagenet_offline_names_the_cache_file_and_the_ways_out(hub_cache):
    with pytest.raises(FileNotFoundError) as err:  # the CLI prints FileNotFoundError as one line
        build_backbone("Res18UNet", 32, pretrained="imagenet")
    message = str(err.value)
    assert str(hub_cache / "resnet18-f37072fd.pth") in message
    assert "URLError" in message and "Temporary failure in name resolution" in message
    assert "pretrain.pretrained=scratch" in message and "pretrain.pretrained=PATH" in message


def test_imagenet_weights_in_the_hub_cache_load_without_network(hub_cache):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    hub_cache.mkdir(parents=True)
    torch.save(reference.state_dict(), hub_cache / "resnet18-f37072fd.pth")
    model = build_backbone("Res18UNet", 32, pretrained="imagenet")
    assert torch.equal(model.encoder.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_a_broken_file_in_the_hub_cache_is_named(hub_cache):
    hub_cache.mkdir(parents=True)
    (hub_cache / "resnet18-f37072fd.pth").write_bytes(b"<html>captive portal</html>")
    with pytest.raises(ValueError, match=r"resnet18-f37072fd\.pth.*delete it"):
        load_imagenet(ResNetEncoder("resnet18"))
