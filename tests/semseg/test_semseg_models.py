"""Segmentation networks: shapes, loss, and initialisation from every supported file with a key report."""

from __future__ import annotations

import re
import urllib.error

import pytest
import torch

from pri3d.models.registry import build_backbone
from pri3d.models.segmentation import (
    SEGMENTATION_MODELS,
    Semantic2D,
    SmpSegmenter,
    build_segmentation_model,
    initialise,
)


def _batch(b=2, h=60, w=80, k=21):
    generator = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(b, 3, h, w, generator=generator),
        "label": torch.randint(0, k, (b, h, w), generator=generator),
    }


@pytest.mark.parametrize("name", sorted(SEGMENTATION_MODELS))
def test_every_model_gives_logits_at_any_size_and_its_loss_ignores_label_0(name):
    model = build_segmentation_model(name, "Res18UNet", 21)
    batch = _batch(b=2, h=36, w=44)  # not a multiple of the output stride; ASPP's pooled BN needs b > 1
    assert model.logits(batch["image"], (36, 44)).shape == (2, 21, 36, 44)
    losses = model(batch)
    assert losses["total_loss"].ndim == 0 and torch.isfinite(losses["total_loss"])
    losses["total_loss"].backward()
    encoder = model.backbone.encoder if isinstance(model, Semantic2D) else model.encoder
    assert encoder.conv1.weight.grad is not None
    empty = {**batch, "label": torch.zeros_like(batch["label"])}  # nothing labelled: 0, not NaN
    assert model(empty)["total_loss"].item() == 0.0


def test_unet_logits_at_label_size_and_original_key_names():
    model = Semantic2D("Res18UNet", 21)
    assert model.logits(_batch()["image"], (60, 80)).shape == (2, 21, 60, 80)
    assert {k.split(".")[1] for k in model.state_dict()} == {"encoder", "decoder"}


@pytest.mark.parametrize("name", sorted(set(SEGMENTATION_MODELS) - {"Semantic2D"}))
def test_smp_heads_keep_smp_key_names(name):
    import segmentation_models_pytorch as smp

    model = build_segmentation_model(name, "Res18UNet", 21)
    assert isinstance(model, SmpSegmenter)
    plain = {
        "PSPNet": lambda: smp.PSPNet(
            "resnet18", None, encoder_depth=5, output_stride=8, upsampling=8, classes=21
        ),
        "DeepLabV3": lambda: smp.DeepLabV3(
            "resnet18", encoder_weights=None, encoder_output_stride=16, classes=21
        ),
        "DeepLabV3Plus": lambda: smp.DeepLabV3Plus(
            "resnet18", encoder_weights=None, decoder_aspp_separable=False, classes=21
        ),
    }
    assert model.arch in plain, f"add the plain smp {model.arch} this model must load into"
    plain[model.arch]().load_state_dict(model.state_dict(), strict=True)


def test_unknown_model_and_backbone():
    with pytest.raises(ValueError, match=r"finetune\.model='segformer'"):
        build_segmentation_model("segformer", "Res50UNet", 21)
    with pytest.raises(ValueError, match=r"finetune\.backbone='resnet50'"):
        build_segmentation_model("unet", "resnet50", 21)


def _pretrain_checkpoint(path):
    """A Pri3D pre-training checkpoint as the original writes it (2D, 3D, heads, Sobel buffer)."""
    unet = build_backbone("Res18UNet", 32)
    state = {f"backbone.{k}": v for k, v in unet.state_dict().items()}
    state.update(
        {
            "backbone3d.conv0p1s1.kernel": torch.randn(27, 3, 32),  # MinkowskiEngine layout
            "w2d.weight": torch.randn(64, 32),
            "w2d.bias": torch.zeros(64),
            "headnet.weight": torch.randn(1, 32, 1, 1),
            "headnet.bias": torch.zeros(1),
            "headloss.get_gradient.edge_conv.weight": torch.randn(2, 1, 3, 3),
        }
    )
    torch.save({"model": state, "step": 5}, path)
    return state


def test_unet_from_a_pri3d_checkpoint_takes_encoder_and_decoder_but_conv0(tmp_path):
    state = _pretrain_checkpoint(tmp_path / "pri3d.pth")
    model = Semantic2D("Res18UNet", 21)
    report = initialise(model, str(tmp_path / "pri3d.pth"))
    own = model.state_dict()
    assert set(report.missing) == {"backbone.decoder.conv0.weight", "backbone.decoder.conv0.bias"}
    assert report.skipped["backbone.decoder.conv0.weight"].startswith("shape (32, 32, 1, 1) in the file")
    assert "MinkowskiEngine" in report.skipped["backbone3d.conv0p1s1.kernel"]
    assert "Sobel" in report.skipped["headloss.get_gradient.edge_conv.weight"]
    assert report.skipped["w2d.weight"].startswith("not in this model")
    assert len(report.taken) == len(own) - 2
    for key in report.taken:
        assert torch.equal(own[key], state[key]), key
    assert "backbone.decoder.* " in report.summary() and "skipped" in report.summary()
    with pytest.raises(ValueError, match="does not match the model strictly"):
        initialise(Semantic2D("Res18UNet", 21), str(tmp_path / "pri3d.pth"), strict=True)


def test_mocov2_checkpoints_load_into_the_encoder_with_the_original_bug_fixed(tmp_path):
    encoder = build_backbone("Res18UNet", 32).encoder.state_dict()
    moco = {f"module.encoder_q.{k}": v for k, v in encoder.items()}
    moco.update(
        {
            "module.encoder_q.fc.0.weight": torch.randn(512, 512),
            "module.queue": torch.randn(128, 8),
            "module.encoder_k.conv1.weight": torch.randn(64, 3, 7, 7),
        }
    )
    torch.save({"state_dict": moco, "epoch": 100, "arch": "resnet18"}, tmp_path / "moco.pth.tar")
    # what the original's mocov2_to_pri3d.py writes: `backbone.<name>` (its loader then took nothing)
    torch.save({f"backbone.{k}": v for k, v in encoder.items()}, tmp_path / "moco_pri3d.pth")
    reports = {}
    for name in ("moco.pth.tar", "moco_pri3d.pth"):
        model = Semantic2D("Res18UNet", 21)
        reports[name] = report = initialise(model, str(tmp_path / name))
        assert len(report.taken) == len(encoder)
        for key, value in encoder.items():
            assert torch.equal(model.backbone.encoder.state_dict()[key], value)
        assert all(k.startswith("backbone.decoder.") for k in report.missing)
    skipped = reports["moco.pth.tar"].skipped
    assert "projection head" in skipped["module.encoder_q.fc.0.weight"] and "module.queue" in skipped


def test_smp_head_from_torchvision_weights(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = build_segmentation_model("deeplabv3plus", "Res18UNet", 21)
    report = initialise(model, str(tmp_path / "r18.pth"))
    assert set(report.skipped) == {"fc.weight", "fc.bias"}
    assert torch.equal(model.encoder.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert all(k.startswith(("decoder.", "segmentation_head.")) for k in report.missing)


def test_incomplete_encoder_is_an_error(tmp_path):
    state = _pretrain_checkpoint(tmp_path / "pri3d.pth")
    del state["backbone.encoder.layer2.0.conv1.weight"]
    torch.save({"model": state}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="incomplete encoder"):
        initialise(Semantic2D("Res18UNet", 21), str(tmp_path / "broken.pth"))


@pytest.mark.parametrize("name", sorted(SEGMENTATION_MODELS))
def test_imagenet_init_offline_names_the_cache_file_and_the_ways_out(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    model = build_segmentation_model(name, "Res18UNet", 21)
    with pytest.raises(FileNotFoundError) as err:
        initialise(model, "imagenet")
    message = str(err.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "URLError" in message and "finetune.pretrain=scratch" in message
    assert "finetune.pretrain=PATH" in message


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno 101] Network is unreachable")


@pytest.mark.parametrize("name", sorted(SEGMENTATION_MODELS))
def test_init_of_another_resnet_names_the_keys_and_both_shapes(name, tmp_path):
    _pretrain_checkpoint(tmp_path / "r18.pth")  # a Res18UNet pre-training checkpoint
    with pytest.raises(ValueError) as err:
        initialise(build_segmentation_model(name, "Res50UNet", 21), str(tmp_path / "r18.pth"))
    message = str(err.value)
    assert "r18.pth" in message and "holds a resnet18 encoder, this model has a resnet50" in message
    assert re.search(r"layer1\.0\.conv1\.weight: file \(64, 64, 3, 3\) vs model \(64, 64, 1, 1\)", message)


def test_init_with_a_wrong_shape_names_the_key_and_both_shapes(tmp_path):
    state = _pretrain_checkpoint(tmp_path / "pri3d.pth")
    state["backbone.encoder.layer3.1.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    torch.save({"model": state}, tmp_path / "reshaped.pth")
    with pytest.raises(ValueError, match="incomplete encoder") as err:
        initialise(Semantic2D("Res18UNet", 21), str(tmp_path / "reshaped.pth"))
    assert "0 keys missing" in str(err.value) and "1 of another shape" in str(err.value)
    assert "backbone.encoder.layer3.1.conv2.weight: file (256, 256, 1, 1) vs model (256, 256, 3, 3)" in str(
        err.value
    )
