"""Weights files: reading, recognising the layout, conversions, strict loading, and the module's place below the networks."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import pri3d
from pri3d.models.registry import build_backbone
from pri3d.weights import (
    check_state,
    checkpoint_task,
    detect_layout,
    load_strict,
    load_weights_file,
    to_detectron2,
    with_batchnorm_counters,
)

PACKAGE = Path(pri3d.__file__).parent


def test_readers_accept_numpy_scalars_and_reject_unknown_layouts(tmp_path):
    unet = build_backbone("Res18UNet", 21)
    state = {f"backbone.{k}": v for k, v in unet.state_dict().items()}
    torch.save(
        {"step": 3, "best_iou": np.float64(0.61), "model": state}, tmp_path / "checkpoint_finetune.pth"
    )
    loaded, extra = load_weights_file(tmp_path / "checkpoint_finetune.pth")
    assert loaded.keys() == state.keys() and float(extra["best_iou"]) == pytest.approx(0.61)
    with pytest.raises(ValueError, match="unrecognised weights layout"):
        detect_layout({"head.weight": torch.zeros(2)}, "other.pth")
    with pytest.raises(FileNotFoundError):
        load_weights_file(tmp_path / "missing.pth")


@pytest.mark.parametrize(
    ("keys", "layout"),
    [
        (["backbone.encoder.conv1.weight", "backbone3d.conv0p1s1.kernel"], "pri3d"),
        (["encoder.conv1.weight", "decoder.up1.conv1.weight"], "unet"),
        (["encoder.conv1.weight", "decoder.aspp.0.weight", "segmentation_head.0.weight"], "smp"),
        (["conv1.weight", "layer1.0.conv1.weight", "fc.weight"], "torchvision"),
        (["module.encoder_q.conv1.weight", "module.queue"], "moco"),
        (["backbone.conv1.weight", "backbone.layer1.0.conv1.weight"], "moco_pri3d"),
    ],
)
def test_each_layout_is_recognised_by_its_key(keys, layout):
    assert detect_layout(dict.fromkeys(keys, torch.zeros(1))) == layout


def test_the_task_of_a_checkpoint():
    assert checkpoint_task({"w2d.weight": torch.zeros(1)}, {}) == "pretrain"  # an original Pri3D one
    assert checkpoint_task({"detector.backbone.body.conv1.weight": torch.zeros(1)}, {}) == "insseg"
    assert (
        checkpoint_task(
            {"encoder.conv1.weight": torch.zeros(1)}, {"config": {"finetune": {"model": "PSPNet"}}}
        )
        == "semseg"
    )
    assert checkpoint_task({"conv1.weight": torch.zeros(1)}, {}) == ""  # another library's file says nothing


def test_detectron2_renames_follow_the_original_rules():
    names = {
        "conv1.weight": "stem.conv1.weight",
        "bn1.running_var": "stem.conv1.norm.running_var",
        "layer1.0.downsample.0.weight": "res2.0.shortcut.weight",
        "layer4.0.downsample.1.bias": "res5.0.shortcut.norm.bias",
        "layer2.1.bn3.weight": "res3.1.conv3.norm.weight",
    }
    state = {k: torch.full((1,), float(i)) for i, k in enumerate(names)}
    state["layer1.0.bn1.num_batches_tracked"] = torch.tensor(3)
    out, dropped = to_detectron2(state)
    assert dropped == ["layer1.0.bn1.num_batches_tracked"]
    # each key goes to its own name (a set comparison would not see two names swapped)
    assert {k: out[name].item() for k, name in names.items()} == {k: state[k].item() for k in names}


def test_batchnorm_counters_are_added_only_for_the_layers_the_file_has():
    own = nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm2d(2)).state_dict()
    old = {k: v for k, v in own.items() if k.startswith("0.") and not k.endswith("num_batches_tracked")}
    completed = with_batchnorm_counters(old, own)
    assert set(completed) == {*old, "0.num_batches_tracked"}  # layer 1 stays missing for the strict check


def test_strict_loading_names_the_file_what_and_the_keys_in_model_order():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    state = {"0.weight": torch.zeros(3, 2), "1.weight": torch.zeros(4, 4), "extra": torch.zeros(1)}
    with pytest.raises(ValueError) as err:
        load_strict(model, state, "f.pth", "the two layers")
    message = str(err.value)
    assert message.startswith("f.pth does not match the two layers: missing ['0.bias', '1.bias'] (2)")
    assert "unexpected ['extra'] (1)" in message and "1.weight: file (4, 4) vs model (4, 3)" in message
    check_state(model.state_dict(), model.state_dict(), "f.pth", "itself")  # an exact match passes
    with pytest.raises(ValueError, match=r"f\.pth does not match Sequential"):
        load_strict(model, {}, "f.pth")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_weights_sits_below_the_networks():
    allowed = {"torch", "torchvision", "safetensors", "numpy", "pri3d.io", *sys.stdlib_module_names}
    imported = _imports(PACKAGE / "weights.py")
    assert {m for m in imported if m.split(".")[0] != "pri3d" and m.split(".")[0] not in allowed} == set()
    assert {m for m in imported if m.startswith("pri3d") and not m.startswith("pri3d.io")} == set()


def test_lower_layers_import_nothing_above_them():
    """io, data, models and weights never import the exporters, the tasks or the COCO tools."""
    files = [
        PACKAGE / "weights.py",
        *(p for d in ("io", "data", "models") for p in (PACKAGE / d).rglob("*.py")),
    ]
    upward = {
        f"{path.relative_to(PACKAGE)}: {module}"
        for path in files
        for module in _imports(path)
        if module.startswith(("pri3d.export", "pri3d.tasks", "pri3d.coco"))
    }
    assert upward == set()
