"""Checkpoint interop: read any supported weights file, convert between layouts, report every key.

Layouts recognised by :func:`detect_layout` (the key each is recognised by):

| layout | example key | written by |
|---|---|---|
| ``pri3d`` | ``backbone.encoder.conv1.weight`` | `pri3d pretrain`, `pri3d finetune semseg` (UNet), the original Pri3D |
| ``unet`` | ``encoder.conv1.weight`` + ``decoder.up1.*`` | a bare :class:`~pri3d.models.resunet.ResUNet` |
| ``smp`` | ``encoder.conv1.weight`` + ``decoder.*``/``segmentation_head.*`` | `pri3d finetune semseg model=pspnet …` |
| ``torchvision`` | ``conv1.weight``, ``layer1.0.conv1.weight`` | torchvision, timm, smp encoders, our exports |
| ``moco`` | ``module.encoder_q.conv1.weight`` | MoCo v1/v2 (`main_moco.py`) |
| ``moco_pri3d`` | ``backbone.conv1.weight`` | the original's `mocov2_to_pri3d.py` (its wrong prefix, fixed here) |

Nothing is dropped silently: every conversion returns a :class:`LoadReport` listing the keys taken,
the keys skipped with the reason, and the model keys left at their initial value.
Files are read with ``torch.load(weights_only=True)`` (NumPy scalars allowed) or safetensors.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import nn

from pri3d import __version__
from pri3d.io.atomic import AtomicFile, atomic_write
from pri3d.io.images import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "LoadReport",
    "check_resnet_arch",
    "check_state",
    "checkpoint_task",
    "detect_layout",
    "export_detectron2",
    "export_pri3d",
    "export_torchvision",
    "import_original_pri3d",
    "load_backbone",
    "load_pri3d_2d",
    "load_weights_file",
    "mocov2_to_pri3d",
    "require_task",
    "resnet_arch",
    "resolve_weights_path",
    "shape_mismatches",
    "skip_reason",
    "to_detectron2",
    "to_torchvision",
    "torchvision_state_for",
]

# blocks per layer -> torchvision name, for BasicBlock (2 convs) and Bottleneck (3 convs) ResNets
_RESNETS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
_PRI3D_OTHER = {
    "backbone.decoder": "UNet decoder: not part of a torchvision ResNet",
    "backbone3d": "3D network (the original's are MinkowskiEngine-layout weights, not loadable by spconv)",
    "w2d": "pre-training projection head (2D features -> 64-d)",
    "w3d": "pre-training projection head (3D features -> 64-d)",
    "headnet": "pre-training depth head",
    "headloss": "frozen Sobel filter of the original's depth loss (a constant, not a weight)",
}


@dataclass
class LoadReport:
    """What a conversion or load did with each key.

    Attributes:
        source: the file read.
        layout: its detected layout (see the module docstring).
        taken: keys that were used, in the *target* naming.
        skipped: file key -> why it was not used.
        missing: target key -> why it has no value from the file (kept at its initial value).
    """

    source: str
    layout: str
    taken: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """Readable lines: counts per module prefix for taken keys, grouped reasons for the others."""
        lines = [f"{self.source} ({self.layout} layout): took {len(self.taken)} keys ({_group(self.taken)})"]
        for title, table in (("skipped", self.skipped), ("left at initialisation", self.missing)):
            by_reason: dict[str, list[str]] = defaultdict(list)
            for key, reason in table.items():
                by_reason[reason].append(key)
            for reason, keys in by_reason.items():
                lines.append(f"  {title} {len(keys)} keys ({_group(keys)}): {reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def _prefix(key: str) -> str:
    parts = key.split(".")
    depth = 2 if parts[0] in ("backbone", "module", "encoder", "decoder") and len(parts) > 2 else 1
    return ".".join(parts[:depth])


def _group(keys: list[str]) -> str:
    counts: dict[str, int] = defaultdict(int)
    for key in keys:
        counts[_prefix(key)] += 1
    return ", ".join(f"{p}.* {n}" for p, n in counts.items()) or "none"


# ------------------------------------------------------------------------------------------------
# reading


def _torch_load(path: Path):
    if path.stat().st_size == 0:
        raise ValueError(
            f"{path}: empty file (0 bytes); expected a torch weights file (e.g. an interrupted copy)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for unsafe or corrupt files
        if "numpy" not in str(error):
            first_line = (str(error).strip() or "no message").splitlines()[0]
            raise ValueError(f"{path}: cannot load as a weights-only torch file ({type(error).__name__}: "
                             f"{first_line})") from None  # fmt: skip
    # the original saves best_iou as a NumPy scalar; NumPy scalars and dtypes cannot run code
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray.scalar, np.dtype, *{type(np.dtype(t)) for t in "fdilbB?"}]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def resolve_weights_path(path: str | Path, option: str) -> Path:
    """A weights file, or a run folder's newest checkpoint (``checkpoints/last``, or ``last`` in it).

    ``option`` names the setting in error messages (e.g. ``finetune.pretrain``).
    """
    from pri3d.engine.checkpoint import latest_checkpoint

    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{option}={path}: a folder without checkpoints/last")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"{option}={path}: file not found")
    return path


def torchvision_state_for(module: nn.Module, state: dict[str, torch.Tensor], source: str):
    """``state`` in torchvision's ResNet layout (:func:`to_torchvision`) for loading into ``module``;
    BatchNorm counters that pre-0.4.1 torchvision files lack are taken from ``module`` for the
    BatchNorm layers the file has (so a file of another ResNet keeps its own layers)."""
    tv, report = to_torchvision(state, source)
    for key, value in module.state_dict().items():
        layer = key.removesuffix("num_batches_tracked")
        if layer != key and key not in tv and f"{layer}running_mean" in tv:
            tv[key] = value
    return tv, report


def shape_mismatches(own: dict, state: dict) -> list[str]:
    """``"key: file (shape) vs model (shape)"`` for each key of both whose shapes differ, in ``own``'s order."""
    return [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
            for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]  # fmt: skip


def check_state(own: dict, state: dict, source: str, what: str) -> None:
    """``ValueError`` naming ``source``, ``what`` and the keys unless ``state`` has exactly the keys and
    shapes of ``own`` (tensors or arrays; only their shapes are read). Keys are listed in ``own``'s
    (the model's) order, so the first ones shown are the first layers that differ."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = shape_mismatches(own, state)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{source} does not match {what}: missing {missing[:5]} ({len(missing)}), unexpected "
            f"{unexpected[:5]} ({len(unexpected)}), shape mismatches {mismatched[:5]}"
        )


def check_resnet_arch(own: dict, tv: dict[str, torch.Tensor], source: str, hint: str) -> None:
    """``ValueError`` when the torchvision-layout encoder ``tv`` is another ResNet than ``own`` (a model's
    encoder state), e.g. a ResNet-18 file for a ResNet-50 model: names both, the first keys whose
    shapes differ, and ``hint`` (how to choose the model's ResNet)."""
    found, expected = resnet_arch(tv), resnet_arch(own)
    if found != expected:
        raise ValueError(
            f"{source} holds a {found} encoder, this model has a {expected} ({hint}); shapes differ, e.g. "
            f"{shape_mismatches(own, tv)[:3]}"
        )


def load_weights_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a weights file; returns (flat state dict of tensors, the rest of the file's top level).

    Accepts ``.safetensors`` and torch files holding a state dict directly or under ``model``,
    ``state_dict`` or ``model_state`` (pri3d/Pri3D, MoCo, DeepLab checkpoints); a ``module.``
    prefix from DataParallel is kept (MoCo's layout relies on it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), {}
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict (a state dict or a checkpoint), got {type(obj).__name__}")
    extra: dict = {}
    for name in ("model", "state_dict", "model_state"):
        if isinstance(obj.get(name), dict):
            extra = {k: v for k, v in obj.items() if k != name}
            obj = obj[name]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{path}: no tensors found (top-level keys: {sorted(obj)[:8]})")
    return state, extra


#: task -> (what its checkpoints are, the task's name, what to do with such a checkpoint)
_TASKS = {
    "pretrain": ("a Pri3D pre-training checkpoint", "pre-training", "use it as init= of `pri3d finetune "
                 "semseg` or `pri3d finetune insseg`, or convert it with `pri3d export`"),
    "semseg": ("a pri3d semantic segmentation checkpoint", "semantic segmentation",
               "evaluate it with `pri3d eval semseg`"),
    "insseg": ("a pri3d instance segmentation checkpoint", "instance segmentation",
               "evaluate it with `pri3d eval insseg`"),
}  # fmt: skip


def checkpoint_task(state: dict[str, torch.Tensor], extra: dict) -> str:
    """The task a checkpoint was trained for: ``pretrain``, ``semseg``, ``insseg``, or ``""`` for a plain
    state dict that does not say (e.g. another library's file, or an original Pri3D fine-tuned one).

    pri3d checkpoints store their run config (``extra["config"]``); an original Pri3D pre-training
    checkpoint has none, but its heads (``w2d``, ``w3d``, ``headnet``) and 3D network give it away.
    """
    config = extra.get("config") if isinstance(extra.get("config"), dict) else {}
    if "pretrain" in config or any(k.split(".")[0] in ("w2d", "w3d", "headnet", "backbone3d") for k in state):
        return "pretrain"
    if any(k.startswith("detector.") for k in state):
        return "insseg"
    return "semseg" if "model" in (config.get("finetune") or {}) else ""


def require_task(path: str | Path, state: dict[str, torch.Tensor], extra: dict, task: str) -> None:
    """``ValueError`` naming what ``path`` is and what to do with it, when it is another task's checkpoint."""
    found = checkpoint_task(state, extra)
    if found and found != task:
        what, _, use = _TASKS[found]
        wanted = _TASKS[task][1]
        article = "an" if wanted[0] in "aeiou" else "a"
        raise ValueError(f"{path} is {what}, not {article} {wanted} one; {use}")


def detect_layout(state: dict[str, torch.Tensor], source: str = "state dict") -> str:
    """The layout name of ``state`` (see the module docstring); ValueError when none fits."""
    keys = set(state)
    if "module.encoder_q.conv1.weight" in keys:
        return "moco"
    if "backbone.encoder.conv1.weight" in keys:
        return "pri3d"
    if "backbone.conv1.weight" in keys:
        return "moco_pri3d"
    if "encoder.conv1.weight" in keys:
        return "unet" if "decoder.up1.conv1.weight" in keys else "smp"
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
        return "torchvision"
    raise ValueError(
        f"{source}: unrecognised weights layout (first keys: {sorted(keys)[:5]}); expected a pri3d/Pri3D, "
        "torchvision, timm, smp or MoCo checkpoint"
    )


def resnet_arch(state: dict[str, torch.Tensor]) -> str:
    """torchvision name (resnet18 … resnet152) of a torchvision-layout ResNet state dict."""
    counts = []
    for layer in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{layer}\.(\d+)\.", k))}
        counts.append(max(blocks) + 1 if blocks else 0)
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    name = _RESNETS.get((kind, tuple(counts)))
    if name is None:
        raise ValueError(f"not a standard ResNet: {kind} blocks per layer {counts}")
    return name


# ------------------------------------------------------------------------------------------------
# conversions


def mocov2_to_pri3d(state: dict[str, torch.Tensor], source: str = "MoCo checkpoint"):
    """MoCo v1/v2 query encoder -> ``backbone.encoder.*`` (pri3d layout); returns (state, report).

    The original's `mocov2_to_pri3d.py` wrote ``backbone.<name>``, which the UNet (``backbone.encoder.*``)
    cannot load, and its shape-filtered loader then loaded nothing without a word. Here the prefix is
    right; the MLP head ``fc.*``, the key encoder and the queue are skipped and reported.
    """
    layout = detect_layout(state, source)
    prefix = {"moco": "module.encoder_q.", "moco_pri3d": "backbone."}.get(layout)
    if prefix is None:
        raise ValueError(f"{source}: expected a MoCo checkpoint, found the {layout} layout")
    report = LoadReport(source, layout)
    out = {}
    for key, value in state.items():
        name = key.removeprefix(prefix) if key.startswith(prefix) else None
        if name is None:
            report.skipped[key] = "MoCo key encoder / queue: not part of the query encoder"
        elif name.startswith("fc."):
            report.skipped[key] = "MoCo projection head (fc): not part of the backbone"
        else:
            out[f"backbone.encoder.{name}"] = value
            report.taken.append(f"backbone.encoder.{name}")
    return out, report


def to_torchvision(state: dict[str, torch.Tensor], source: str = "state dict"):
    """Any recognised layout -> torchvision ResNet names without ``fc``; returns (state, report)."""
    layout = detect_layout(state, source)
    if layout in ("moco", "moco_pri3d"):
        state, first = mocov2_to_pri3d(state, source)
        skipped = first.skipped
    else:
        skipped = {}
    prefix = {"pri3d": "backbone.encoder.", "moco": "backbone.encoder.", "moco_pri3d": "backbone.encoder.",
              "unet": "encoder.", "smp": "encoder.", "torchvision": ""}[layout]  # fmt: skip
    report = LoadReport(source, layout, skipped=dict(skipped))
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            report.skipped[key] = skip_reason(key)
            continue
        name = key[len(prefix) :]
        if name.startswith("fc."):
            report.skipped[key] = "classifier (fc): not part of the exported backbone"
            continue
        out[name] = value
        report.taken.append(name)
    if not out:
        raise ValueError(f"{source}: no ResNet encoder weights found ({layout} layout)")
    try:
        resnet_arch(out)
    except ValueError as error:  # an incomplete encoder: say whose
        raise ValueError(f"{source} ({layout} layout): {error}") from None
    return out, report


def skip_reason(key: str) -> str:
    """Why ``key`` of a Pri3D/segmentation checkpoint is not part of a ResNet encoder."""
    for prefix, reason in _PRI3D_OTHER.items():
        if key == prefix or key.startswith(prefix + "."):
            return reason
    if key.startswith(("decoder.", "segmentation_head.", "classification_head.")):
        return "segmentation decoder/head: not part of a torchvision ResNet"
    return "not part of the ResNet encoder"


def import_original_pri3d(state: dict[str, torch.Tensor], source: str = "Pri3D checkpoint"):
    """An original (or pri3d) Pri3D checkpoint -> the 2D part in pri3d's ``Pri3D`` layout.

    Keeps ``backbone.*`` (encoder and decoder), ``w2d.*``, ``w3d.*`` and ``headnet.*``; skips, with a
    report, ``backbone3d.*`` (MinkowskiEngine kernel layout: not loadable into spconv) and
    ``headloss.*`` (the frozen Sobel filter, a constant that pri3d's depth loss builds itself).
    """
    layout = detect_layout(state, source)
    if layout != "pri3d":
        raise ValueError(
            f"{source}: expected a Pri3D checkpoint (backbone.encoder.*), found the {layout} layout"
        )
    report = LoadReport(source, layout)
    out = {}
    for key, value in state.items():
        if key.startswith(("backbone.", "w2d.", "w3d.", "headnet.")):
            out[key] = value
            report.taken.append(key)
        else:
            report.skipped[key] = skip_reason(key)
    return out, report


def load_pri3d_2d(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load the 2D part of a Pri3D checkpoint strictly into ``model.backbone``, ``w2d``, ``w3d``, ``headnet``.

    Each submodule the model has must match the file exactly (``strict=True``); returns the names of
    the submodules loaded. Submodules the model lacks (e.g. ``w2d`` without the geometric prior) and
    the 3D network are left alone.
    """
    loaded = []
    for name in ("backbone", "w2d", "w3d", "headnet"):
        module = getattr(model, name, None)
        if module is None:
            continue
        part = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
        if not part:
            raise ValueError(f"the checkpoint has no {name}.* weights but the model has {name}")
        module.load_state_dict(part, strict=True)
        loaded.append(name)
    return loaded


_D2_RENAMES = (
    (re.compile(r"^layer(\d)"), lambda m: f"res{int(m.group(1)) + 1}"),
    (re.compile(r"\bbn(\d)\b"), lambda m: f"conv{m.group(1)}.norm"),
    (re.compile(r"\bdownsample\.0\b"), lambda m: "shortcut"),
    (re.compile(r"\bdownsample\.1\b"), lambda m: "shortcut.norm"),
)


def to_detectron2(state: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], list[str]]:
    """torchvision ResNet names -> Detectron2's (spec §6); returns (arrays, dropped keys).

    ``conv1``/``bn1`` -> ``stem.conv1``/``stem.conv1.norm``; ``layer1..4`` -> ``res2..5``;
    ``bn{i}`` -> ``conv{i}.norm``; ``downsample.0/1`` -> ``shortcut``/``shortcut.norm``.
    ``num_batches_tracked`` is dropped (Detectron2's FrozenBatchNorm has no such buffer).
    """
    out, dropped = {}, []
    for key, value in state.items():
        if key.endswith("num_batches_tracked") or key.startswith("fc."):
            dropped.append(key)
            continue
        out[_detectron2_name(key)] = value.detach().cpu().numpy()
    return out, dropped


def _detectron2_name(key: str) -> str:
    name = key if key.startswith("layer") else f"stem.{key}"
    for pattern, repl in _D2_RENAMES:
        name = pattern.sub(repl, name)
    return name


# ------------------------------------------------------------------------------------------------
# writing: every export is read back and checked against the architecture it claims before it is
# put in place, so a file that exists is a file that loads


def _torchvision_resnet_state(arch: str) -> dict[str, torch.Tensor]:
    """Parameters and buffers (shapes only, on the meta device) of torchvision's ``arch`` without ``fc``."""
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(weights=None)
    model.fc = nn.Identity()
    return model.state_dict()


def _check_finite(state: dict, source: str) -> None:
    bad = [
        k
        for k, v in state.items()
        if (t := torch.as_tensor(v)).is_floating_point() and not t.isfinite().all()
    ]
    if bad:
        raise ValueError(f"{source}: non-finite values (NaN or inf) in {len(bad)} tensors: {bad[:5]}")


def _check_resnet(state: dict, arch: str, source: str) -> None:
    check_state(_torchvision_resnet_state(arch), state, source, f"torchvision's {arch} without fc")
    _check_finite(state, source)


def _check_unet_decoder(state: dict, arch: str, source: str) -> None:
    """The ``backbone.decoder.*`` part of a pri3d-layout ``state`` against the UNet decoder of ``arch``."""
    from pri3d.models.resunet import ResNetEncoder, UNetDecoder

    decoder = {
        k.removeprefix("backbone.decoder."): v for k, v in state.items() if k.startswith("backbone.decoder.")
    }
    if arch not in ("resnet18", "resnet50"):
        raise ValueError(
            f"{source}: a UNet decoder with a {arch} encoder; the UNet takes resnet18 or resnet50"
        )
    if "conv0.weight" not in decoder:
        raise ValueError(f"{source}: UNet decoder without backbone.decoder.conv0.weight")
    with torch.device("meta"):
        channels = ResNetEncoder(arch).channels[-1]
        own = UNetDecoder(channels, decoder["conv0.weight"].shape[0]).state_dict()
    check_state(own, decoder, source, f"the {arch} UNet decoder (backbone.decoder.*)")


def _write_verified(out: Path, write: Callable[[IO[bytes]], None], verify: Callable[[Path], None],
                    meta: dict | None = None) -> None:  # fmt: skip
    """``write`` into a temporary file beside ``out``, ``verify`` it as read back, then move it (and
    the ``<out>.json`` metadata) into place; on a failed check nothing is left behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    target = AtomicFile(out, "wb")
    try:
        write(target.file)
        target.file.flush()
        verify(target.tmp_path)
    except ValueError as error:
        target.discard()
        raise ValueError(f"{error}; nothing written to {out}") from None
    except BaseException:
        target.discard()
        raise
    target.commit()
    if meta is not None:
        with atomic_write(_sidecar(out)) as handle:
            handle.write(json.dumps(meta, indent=2) + "\n")


def _metadata(arch: str, source: Path, layout: str, extra: dict, report: LoadReport) -> dict:
    config = extra.get("config") if isinstance(extra.get("config"), dict) else None
    recipe: dict
    if config and "pretrain" in config:
        recipe = {k: config.get(k) for k in ("pretrain", "optimizer", "scheduler", "dataset")}
        recipe["train"] = {k: config["train"].get(k) for k in ("batch_size", "max_steps", "seed")}
        recipe["steps_done"] = extra.get("step")
    elif config:
        recipe = {"note": "fine-tuned checkpoint", "config": config}
    else:
        recipe = {
            "note": f"{layout} checkpoint without a stored config (e.g. an original Pri3D or MoCo file)"
        }
    return {
        "format": "torchvision-resnet",
        "architecture": arch,
        "excluded": ["fc"],
        "input": {
            "channel_order": "RGB",
            "value_range": "[0, 1] before normalisation",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "pretraining_resolution_hw": (config or {}).get("dataset", {}).get("size"),
        },
        "load_with": {
            "torchvision": f"m = torchvision.models.{arch}(); m.fc = torch.nn.Identity(); "
            "m.load_state_dict(sd, strict=True)",
            "timm": f"timm.create_model('{arch}', num_classes=0).load_state_dict(sd, strict=True)",
            "smp": f"smp.encoders.get_encoder('{arch}', weights=None).load_state_dict(sd, strict=True)",
            "pri3d": f"pri3d.load_backbone(path, '{arch}')",
        },
        "pretraining": recipe,
        "source": {"path": str(source), "layout": layout, "sha256": _sha256(source)},
        "conversion": {"taken": len(report.taken), "skipped": report.skipped},
        "pri3d_version": __version__,
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_torchvision(source: str | Path, out: str | Path, fmt: str = "pth") -> tuple[Path, LoadReport]:
    """Write the ResNet encoder of ``source`` in torchvision layout (``.pth`` or ``.safetensors``).

    A JSON file beside it (``<out>.json``) records the architecture, the input normalisation, the
    pre-training recipe (when the checkpoint stores its config) and what the conversion skipped.
    """
    if fmt not in ("pth", "safetensors"):
        raise ValueError(f"format {fmt!r}: expected pth or safetensors")
    from safetensors.torch import load_file, save

    source, out = Path(source), Path(out)
    state, extra = load_weights_file(source)
    tv, report = to_torchvision(state, str(source))
    arch = resnet_arch(tv)
    meta = _metadata(arch, source, report.layout, extra, report)
    tv = {k: v.detach().contiguous().clone() for k, v in tv.items()}

    def write(handle: IO[bytes]) -> None:
        if fmt == "safetensors":
            handle.write(save(tv, metadata={"format": "pt", "pri3d": json.dumps(meta)}))
        else:
            torch.save(tv, handle)

    def verify(path: Path) -> None:
        written = load_file(str(path)) if fmt == "safetensors" else torch.load(path, weights_only=True)
        _check_resnet(written, arch, str(source))

    _write_verified(out, write, verify, meta)
    return out, report


def export_detectron2(source: str | Path, out: str | Path) -> tuple[Path, LoadReport]:
    """Write a Detectron2 ``.pkl`` (``{'model', '__author__', 'matching_heuristics'}``) plus ``<out>.json``.

    The weights use torchvision's conventions (RGB input, torchvision mean/std, stride on the 3×3
    conv), so Detectron2 must be configured accordingly; the JSON lists the config lines.
    """
    source, out = Path(source), Path(out)
    state, extra = load_weights_file(source)
    tv, report = to_torchvision(state, str(source))
    arch = resnet_arch(tv)
    arrays, dropped = to_detectron2(tv)
    for key in dropped:
        report.skipped[key] = "num_batches_tracked: Detectron2's FrozenBatchNorm has no such buffer"
    meta = _metadata(arch, source, report.layout, extra, report)
    depth = int(arch.removeprefix("resnet"))
    meta["format"] = "detectron2"
    meta["detectron2_config"] = {
        "MODEL.RESNETS.DEPTH": depth,
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
        "MODEL.PIXEL_MEAN": [255 * m for m in IMAGENET_MEAN],
        "MODEL.PIXEL_STD": [255 * s for s in IMAGENET_STD],
        "INPUT.FORMAT": "RGB",
        **({"MODEL.RESNETS.RES2_OUT_CHANNELS": 64} if depth in (18, 34) else {}),
    }

    def write(handle: IO[bytes]) -> None:
        pickle.dump({"model": arrays, "__author__": "pri3d", "matching_heuristics": True,
                     "pri3d_metadata": meta["detectron2_config"]}, handle)  # fmt: skip

    def verify(path: Path) -> None:
        with open(path, "rb") as handle:
            written = pickle.load(handle)["model"]
        expected = {_detectron2_name(k): v for k, v in _torchvision_resnet_state(arch).items()
                    if not k.endswith("num_batches_tracked")}  # fmt: skip
        check_state(expected, written, str(source), f"Detectron2's {arch} (torchvision's, renamed)")
        _check_finite(written, str(source))

    _write_verified(out, write, verify, meta)
    return out, report


def export_pri3d(source: str | Path, out: str | Path) -> tuple[Path, LoadReport]:
    """Import an original Pri3D or a MoCo checkpoint into pri3d's layout (``{'model': ...}``).

    The result initialises `pri3d finetune semseg init=OUT` and loads with :func:`load_pri3d_2d`.
    """
    source, out = Path(source), Path(out)
    state, _ = load_weights_file(source)
    layout = detect_layout(state, str(source))
    if layout in ("moco", "moco_pri3d"):
        converted, report = mocov2_to_pri3d(state, str(source))
    elif layout == "pri3d":
        converted, report = import_original_pri3d(state, str(source))
    else:
        tv, report = to_torchvision(state, str(source))
        converted = {f"backbone.encoder.{k}": v for k, v in tv.items()}

    def write(handle: IO[bytes]) -> None:
        torch.save(
            {"model": converted, "import_report": report.to_dict(), "pri3d_version": __version__}, handle
        )

    def verify(path: Path) -> None:
        written = torch.load(path, weights_only=True)["model"]
        tv, _ = to_torchvision(written, str(source))
        arch = resnet_arch(tv)
        _check_resnet(tv, arch, str(source))
        if any(k.startswith("backbone.decoder.") for k in written):
            _check_unet_decoder(written, arch, str(source))
        _check_finite(written, str(source))

    _write_verified(out, write, verify)
    return out, report


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# ------------------------------------------------------------------------------------------------
# users' own code


def load_backbone(path: str | Path, arch: str = "resnet50") -> nn.Module:
    """A ready network from any supported weights file.

    Args:
        path: a pri3d/Pri3D checkpoint, an export, a MoCo checkpoint, a torchvision/timm state dict.
        arch: ``resnet18``/``resnet50`` (… ``resnet152``) for a torchvision ``ResNet`` whose ``fc`` is
            ``nn.Identity`` (so ``model(x)`` gives pooled features ``[B, 2048]`` for R50), or
            ``Res18UNet``/``Res50UNet`` for the UNet (encoder and decoder; needs a UNet checkpoint).

    The weights load with ``strict=True``; a file of another architecture raises ``ValueError``.
    """
    import torchvision

    state, _ = load_weights_file(path)
    if arch in ("Res18UNet", "Res50UNet"):
        from pri3d.models.registry import build_backbone

        layout = detect_layout(state, str(path))
        prefix = {"pri3d": "backbone.", "unet": ""}.get(layout)
        if prefix is None:
            raise ValueError(f"{path}: {arch} needs a UNet checkpoint (encoder and decoder), found {layout}")
        unet = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix + "encoder.")
                or k.startswith(prefix + "decoder.")}  # fmt: skip
        if "decoder.conv0.weight" not in unet:
            raise ValueError(f"{path}: no UNet decoder weights (decoder.conv0.weight)")
        model = build_backbone(arch, unet["decoder.conv0.weight"].shape[0])
        _load_strict(model, unet, path, arch)
        return model
    tv, _ = to_torchvision(state, str(path))
    found = resnet_arch(tv)
    if found != arch:
        raise ValueError(f"{path} holds a {found}, not a {arch}")
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = nn.Identity()
    _load_strict(model, tv, path, arch)
    return model


def _load_strict(model: nn.Module, state: dict, path, arch: str) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{path} does not match {arch}: {error}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not match {arch}: missing {result.missing_keys[:5]} "
            f"({len(result.missing_keys)}), unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})"
        )
