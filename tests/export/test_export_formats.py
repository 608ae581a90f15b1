"""Exports load strictly into torchvision, timm and smp; Detectron2 names; MoCo and original Pri3D imports."""

from __future__ import annotations

import argparse
import json
import pickle
import re

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file

from pri3d import load_backbone
from pri3d.cli import main
from pri3d.export import export_detectron2, export_pri3d, export_torchvision
from pri3d.models.registry import build_backbone
from pri3d.models.resunet import ResNetEncoder
from pri3d.tasks import export_cli
from pri3d.weights import detect_layout, load_weights_file

PRETRAIN_CONFIG = {
    "train": {"batch_size": 64, "max_steps": 0, "seed": 0},
    "optimizer": {"optimizer": "SGD", "lr": 0.1},
    "scheduler": {"scheduler": "PolyLR", "max_epochs": 5},
    "dataset": {"name": "ScanNet", "size": [240, 320]},
    "pretrain": {"backbone": "Res50UNet", "view_invariant": True, "geometric_prior": True},
}


def _pri3d_checkpoint(path, arch: str) -> dict[str, torch.Tensor]:
    """A Pri3D pre-training checkpoint: encoder + (stub) decoder, 3D network, heads, Sobel buffer."""
    torch.manual_seed(0)
    encoder = ResNetEncoder(arch).state_dict()
    for value in encoder.values():  # make the weights distinguishable from any fresh init
        if value.is_floating_point():
            value.normal_()
    state = {f"backbone.encoder.{k}": v for k, v in encoder.items()}
    state.update(
        {
            "backbone.decoder.conv0.weight": torch.randn(128, 128, 1, 1),
            "backbone.decoder.conv0.bias": torch.zeros(128),
            "backbone3d.conv0p1s1.kernel": torch.randn(27, 3, 32),
            "backbone3d.bn0.bn.weight": torch.ones(32),
            "w2d.weight": torch.randn(64, 128),
            "w2d.bias": torch.zeros(64),
            "headnet.weight": torch.randn(1, 128, 1, 1),
            "headnet.bias": torch.zeros(1),
            "headloss.get_gradient.edge_conv.weight": torch.randn(2, 1, 3, 3),
        }
    )
    torch.save({"model": state, "step": 1500, "config": PRETRAIN_CONFIG}, path)
    return encoder


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_layout_loads_strictly_into_torchvision_timm_and_smp(tmp_path, arch):
    import segmentation_models_pytorch as smp
    import timm

    encoder = _pri3d_checkpoint(tmp_path / "pri3d.pth", arch)
    pth, report = export_torchvision(tmp_path / "pri3d.pth", tmp_path / "r.pth")
    st, _ = export_torchvision(tmp_path / "pri3d.pth", tmp_path / "r.safetensors", fmt="safetensors")
    assert "MinkowskiEngine" in report.skipped["backbone3d.conv0p1s1.kernel"]
    assert "Sobel" in report.skipped["headloss.get_gradient.edge_conv.weight"]
    assert "decoder" in report.skipped["backbone.decoder.conv0.weight"]
    for weights in (torch.load(pth, weights_only=True), load_file(str(st))):
        assert weights.keys() == encoder.keys()
        tv = getattr(torchvision.models, arch)(weights=None)
        tv.fc = torch.nn.Identity()
        tv.load_state_dict(weights, strict=True)
        timm.create_model(arch, pretrained=False, num_classes=0).load_state_dict(weights, strict=True)
        smp_encoder = smp.encoders.get_encoder(arch, weights=None)
        smp_encoder.load_state_dict(dict(weights), strict=True)
        assert torch.equal(tv.layer3[1].conv1.weight, encoder["layer3.1.conv1.weight"])
        assert torch.equal(smp_encoder.bn1.running_var, encoder["bn1.running_var"])
    meta = json.loads((tmp_path / "r.safetensors.json").read_text())
    assert meta["architecture"] == arch and meta["input"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["input"]["channel_order"] == "RGB" and meta["pretraining"]["optimizer"]["lr"] == 0.1
    assert meta["pretraining"]["steps_done"] == 1500 and meta["source"]["layout"] == "pri3d"
    from safetensors import safe_open

    with safe_open(str(st), "pt") as handle:
        assert json.loads(handle.metadata()["pri3d"])["architecture"] == arch


def _detectron2_names(blocks: tuple[int, ...], convs: int) -> set[str]:
    """Detectron2's ResNet parameter/buffer names, written from its documented module structure."""
    norm = ("weight", "bias", "running_mean", "running_var")
    names = {"stem.conv1.weight", *(f"stem.conv1.norm.{n}" for n in norm)}
    for stage, count in enumerate(blocks, start=2):
        for b in range(count):
            for c in range(1, convs + 1):
                names |= {
                    f"res{stage}.{b}.conv{c}.weight",
                    *(f"res{stage}.{b}.conv{c}.norm.{n}" for n in norm),
                }
        if stage > 2 or convs == 3:  # R50 res2 projects 64 -> 256; R18 res2 keeps 64 channels
            names |= {f"res{stage}.0.shortcut.weight", *(f"res{stage}.0.shortcut.norm.{n}" for n in norm)}
    return names


@pytest.mark.parametrize("arch,blocks,convs", [("resnet50", (3, 4, 6, 3), 3), ("resnet18", (2, 2, 2, 2), 2)])
def test_detectron2_export_names_and_metadata(tmp_path, arch, blocks, convs):
    encoder = _pri3d_checkpoint(tmp_path / "pri3d.pth", arch)
    out, report = export_detectron2(tmp_path / "pri3d.pth", tmp_path / "d2.pkl")
    with open(out, "rb") as handle:
        data = pickle.load(handle)
    assert data["__author__"] == "pri3d" and data["matching_heuristics"] is True
    assert set(data["model"]) == _detectron2_names(blocks, convs)
    assert all(isinstance(v, np.ndarray) for v in data["model"].values())
    np.testing.assert_array_equal(
        data["model"]["res4.1.conv2.norm.running_mean"], encoder["layer3.1.bn2.running_mean"].numpy()
    )
    np.testing.assert_array_equal(data["model"]["stem.conv1.norm.bias"], encoder["bn1.bias"].numpy())
    config = json.loads((tmp_path / "d2.pkl.json").read_text())["detectron2_config"]
    assert config["INPUT.FORMAT"] == "RGB" and config["MODEL.RESNETS.STRIDE_IN_1X1"] is False
    assert config["MODEL.PIXEL_MEAN"] == pytest.approx([123.675, 116.28, 103.53])
    assert any("num_batches_tracked" in k for k in report.skipped)


def _moco_checkpoint(path, arch="resnet18"):
    encoder = torchvision.models.get_model(arch).state_dict()
    state = {f"module.encoder_q.{k}": v for k, v in encoder.items() if not k.startswith("fc.")}
    state.update(
        {
            "module.encoder_q.fc.0.weight": torch.randn(512, 512),
            "module.encoder_q.fc.2.weight": torch.randn(128, 512),
            "module.encoder_k.conv1.weight": torch.randn(64, 3, 7, 7),
            "module.queue": torch.randn(128, 16),
            "module.queue_ptr": torch.zeros(1, dtype=torch.long),
        }
    )
    torch.save({"epoch": 100, "arch": arch, "state_dict": state}, path)
    return {k: v for k, v in encoder.items() if not k.startswith("fc.")}


def test_moco_v2_checkpoint_to_pri3d_and_torchvision(tmp_path):
    encoder = _moco_checkpoint(tmp_path / "moco.pth.tar")
    out, report = export_pri3d(tmp_path / "moco.pth.tar", tmp_path / "moco_pri3d.pth")
    state, _ = load_weights_file(out)
    assert detect_layout(state) == "pri3d" and set(state) == {f"backbone.encoder.{k}" for k in encoder}
    assert "projection head" in report.skipped["module.encoder_q.fc.0.weight"]
    assert "key encoder" in report.skipped["module.queue"]
    unet = build_backbone("Res18UNet", 21)
    unet.encoder.load_state_dict(
        {k.removeprefix("backbone.encoder."): v for k, v in state.items()}, strict=True
    )
    pth, _ = export_torchvision(tmp_path / "moco.pth.tar", tmp_path / "moco_tv.pth")
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.load_state_dict(torch.load(pth, weights_only=True), strict=True)


def test_original_pri3d_checkpoint_exports_its_2d_part_which_initialises_semseg(tmp_path):
    pytest.importorskip("spconv")
    from pri3d.models.pri3d import Pri3D
    from pri3d.models.segmentation import Semantic2D, initialise

    source = Pri3D("Res18UNet", geometric_prior=True, depth=True)
    original = {k: v for k, v in source.state_dict().items() if not k.startswith("backbone3d.")}
    # the original's 3D weights have MinkowskiEngine shapes, and its depth loss holds a Sobel buffer
    original.update(
        {
            "backbone3d.conv0p1s1.kernel": torch.randn(125, 3, 32),
            "backbone3d.final.bias": torch.zeros(96),
            "headloss.get_gradient.edge_conv.weight": torch.randn(2, 1, 3, 3),
        }
    )
    torch.save({"step": 5, "model": original, "optimizer": {}, "scheduler": {}}, tmp_path / "original.pth")
    out, report = export_pri3d(tmp_path / "original.pth", tmp_path / "imported.pth")
    assert {k.split(".")[0] for k in report.skipped} == {"backbone3d", "headloss"}
    assert "MinkowskiEngine" in report.skipped["backbone3d.final.bias"]
    state, _ = load_weights_file(out)
    two_d = {k: v for k, v in original.items() if k.split(".")[0] in ("backbone", "w2d", "w3d", "headnet")}
    assert set(state) == set(two_d) and all(torch.equal(state[k], v) for k, v in two_d.items())

    # `pri3d finetune semseg init=imported.pth`: the UNet by name, except conv0 (32 features vs 21 logits)
    model = Semantic2D("Res18UNet", num_classes=21)
    init = initialise(model, out)
    unet = {k for k in model.state_dict() if not k.startswith("backbone.decoder.conv0.")}
    assert set(init.taken) == unet
    assert all(torch.equal(model.state_dict()[k], original[k]) for k in unet)
    assert set(init.missing) == {"backbone.decoder.conv0.weight", "backbone.decoder.conv0.bias"}
    assert "projection head" in init.skipped["w2d.weight"] and "depth head" in init.skipped["headnet.bias"]


def test_load_backbone_returns_ready_networks(tmp_path):
    encoder = _pri3d_checkpoint(tmp_path / "pri3d.pth", "resnet50")
    model = load_backbone(tmp_path / "pri3d.pth", "resnet50")
    assert isinstance(model, torchvision.models.ResNet)
    assert torch.equal(model.layer4[2].bn3.weight, encoder["layer4.2.bn3.weight"])
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2048)
    with pytest.raises(ValueError, match="holds a resnet50, not a resnet18"):
        load_backbone(tmp_path / "pri3d.pth", "resnet18")
    unet = build_backbone("Res18UNet", 21)
    torch.save({"model": {f"backbone.{k}": v for k, v in unet.state_dict().items()}}, tmp_path / "semseg.pth")
    loaded = load_backbone(tmp_path / "semseg.pth", "Res18UNet")
    assert loaded.output_channels == 21
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in unet.state_dict().items())


def test_export_refuses_an_unknown_layout(tmp_path):
    torch.save({"head.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="unrecognised weights layout"):
        export_torchvision(tmp_path / "other.pth", tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


def test_export_cli_prints_the_key_report(tmp_path, capsys):
    _pri3d_checkpoint(tmp_path / "pri3d.pth", "resnet18")
    parser = argparse.ArgumentParser(prog="pri3d")
    export_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "export",
            "safetensors",
            str(tmp_path / "pri3d.pth"),
            str(tmp_path / "r18.safetensors"),
            "--report",
            str(tmp_path / "report.json"),
        ]
    )
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert re.search(r"took \d+ keys", printed) and "skipped" in printed and "r18.safetensors.json" in printed
    assert json.loads((tmp_path / "report.json").read_text())["layout"] == "pri3d"


def test_export_cli_reads_a_run_folders_newest_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    _pri3d_checkpoint(run / "checkpoints" / "step0000005.pth", "resnet18")
    (run / "checkpoints" / "last").write_text("step0000005.pth\n")
    parser = argparse.ArgumentParser(prog="pri3d")
    export_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "torchvision", str(run), str(tmp_path / "r18.pth")])
    assert args.run(args) == 0
    direct, _ = export_cli.export_torchvision(
        run / "checkpoints" / "step0000005.pth", tmp_path / "direct.pth"
    )
    exported, expected = torch.load(tmp_path / "r18.pth"), torch.load(direct)
    assert exported.keys() == expected.keys() and all(torch.equal(exported[k], expected[k]) for k in expected)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"IN=.*empty: a folder without checkpoints/last"):
        args.run(parser.parse_args(["export", "torchvision", str(empty), str(tmp_path / "x.pth")]))


_SUFFIX = {"torchvision": "pth", "safetensors": "safetensors", "detectron2": "pkl", "pri3d": "pth"}


@pytest.mark.parametrize("fmt", sorted(_SUFFIX))
def test_export_refuses_weights_its_target_cannot_load_and_writes_nothing(tmp_path, capsys, fmt):
    state = torchvision.models.resnet18().state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)  # a 3x3 conv in resnet18
    del state["layer3.1.bn1.running_var"]
    torch.save(state, tmp_path / "bad.pth")
    out = tmp_path / "out" / f"r18.{_SUFFIX[fmt]}"
    assert main(["export", fmt, str(tmp_path / "bad.pth"), str(out)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("pri3d export: error: ") and "resnet18" in error
    assert re.search(
        r"(layer2\.0|res3\.0)\.conv1\.weight: file \(128, 64, 1, 1\) vs model \(128, 64, 3, 3\)", error
    )
    assert re.search(r"missing \['(layer3\.1\.bn1|res4\.1\.conv1\.norm)\.running_var'\]", error)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no file, no partial file, no JSON


@pytest.mark.parametrize("fmt", sorted(_SUFFIX))
def test_export_refuses_non_finite_weights(tmp_path, capsys, fmt):
    state = torchvision.models.resnet18().state_dict()
    state["layer4.1.bn2.running_var"][3] = float("nan")
    state["conv1.weight"][0, 0, 0, 0] = float("inf")
    torch.save(state, tmp_path / "nan.pth")
    out = tmp_path / "out" / f"r18.{_SUFFIX[fmt]}"
    assert main(["export", fmt, str(tmp_path / "nan.pth"), str(out)]) == 1
    error = capsys.readouterr().err
    assert "non-finite" in error and re.search(r"(layer4\.1\.bn2|res5\.1\.conv2\.norm)\.running_var", error)
    assert re.search(r"\b(stem\.)?conv1\.weight", error)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_an_empty_or_truncated_checkpoint_is_named(tmp_path, capsys):
    (tmp_path / "empty.pth").write_bytes(b"")
    assert main(["export", "torchvision", str(tmp_path / "empty.pth"), str(tmp_path / "x.pth")]) == 1
    assert f"{tmp_path / 'empty.pth'}: empty file (0 bytes)" in capsys.readouterr().err
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "r18.pth").read_bytes()[:1000])
    assert main(["export", "torchvision", str(tmp_path / "cut.pth"), str(tmp_path / "x.pth")]) == 1
    assert f"{tmp_path / 'cut.pth'}: cannot load as a weights-only torch file" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()
