"""Weights files: read them, recognise their layout, convert between layouts, load strictly with a report.

Layouts recognised by :func:`detect_layout` (the key each is recognised by):

| layout | example key | written by |
|---|---|---|
| ``pri3d`` | ``backbone.encoder.conv1.weight`` | `pri3d pretrain`, `pri3d finetune semseg` (UNet), the original Pri3D |
| ``unet`` | ``encoder.conv1.weight`` + ``decoder.up1.*`` | a bare :class:`~pri3d.models.resunet.ResUNet` |
| ``smp`` | ``encoder.conv1.weight`` + ``decoder.*``/``segmentation_head.*`` | `pri3d finetune semseg model=pspnet …` |
| ``torchvision`` | ``conv1.weight``, ``layer1.0.conv1.weight`` | torchvision, timm, smp encoders, our exports |
| ``moco`` | ``module.encoder_q.conv1.weight`` | MoCo v1/v2 (`main_moco.py`), `pri3d moco` (also ``encoder_q.*``) |
| ``moco_pri3d`` | ``backbone.conv1.weight`` | the original's `mocov2_to_pri3d.py` (its wrong prefix, fixed here) |

Nothing is dropped silently: every conversion returns a :class:`LoadReport` listing the keys taken,
the keys skipped with the reason, and the model keys left at their initial value.
Files are read with ``torch.load(weights_only=True)`` (NumPy scalars allowed) or safetensors.

Who does what: this module knows files and key names only, so it sits below the networks and
imports none of them (nor the tasks, the engine or the exporters). The network modules apply
weights to their own models through it (:func:`pri3d.models.segmentation.initialise`,
:func:`pri3d.models.mask_rcnn.initialise_body`, :func:`pri3d.models.resunet.load_imagenet`);
:mod:`pri3d.export` writes files for other libraries and builds ready networks (``load_backbone``);
the tasks turn a run folder into its newest checkpoint before any of this reads it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "LoadReport",
    "WeightsUnavailable",
    "check_resnet_arch",
    "check_state",
    "checkpoint_task",
    "detect_layout",
    "detectron2_name",
    "imagenet_state",
    "import_original_pri3d",
    "load_strict",
    "load_weights_file",
    "mocov2_to_pri3d",
    "read_torch_file",
    "require_task",
    "resnet_arch",
    "shape_mismatches",
    "skip_reason",
    "to_detectron2",
    "to_torchvision",
    "torchvision_state_for",
    "with_batchnorm_counters",
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


def _cause(error: Exception) -> str:
    """``"<type>: <first line of the message>"``: enough to tell causes apart in a one-line error."""
    return f"{type(error).__name__}: {(str(error).strip() or 'no message').splitlines()[0]}"


def read_torch_file(path: Path):
    """The object in a torch file, read with ``weights_only=True``; NumPy scalars are allowed.

    An empty, truncated or unsafe file is a ``ValueError`` naming ``path``.
    """
    if path.stat().st_size == 0:
        raise ValueError(
            f"{path}: empty file (0 bytes); expected a torch weights file (e.g. an interrupted copy)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for unsafe or corrupt files
        if "numpy" not in str(error):
            raise ValueError(f"{path}: cannot load as a weights-only torch file ({_cause(error)})") from None
    # the original saves best_iou as a NumPy scalar; NumPy scalars and dtypes cannot run code
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray.scalar, np.dtype, *{type(np.dtype(t)) for t in "fdilbB?"}]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


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
    obj = read_torch_file(path)
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


class WeightsUnavailable(FileNotFoundError):
    """Weights that are neither on disk nor downloadable (a ``FileNotFoundError``, which the `pri3d`
    command prints as one line without a traceback)."""


def imagenet_state(arch: str, option: str) -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's ``IMAGENET1K_V1`` state dict of ``arch`` (with ``fc``) and its URL.

    Read through torchvision's own loader: the file ``<torch.hub.get_dir()>/checkpoints/<name>``
    (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``), downloaded
    there first when absent. ``option`` is the setting that asked for ImageNet weights
    (``pretrain.pretrained``, ``finetune.pretrain``); errors name it with its alternatives.

    Raises:
        WeightsUnavailable: the file is not in the cache and the download failed (e.g. offline).
        ValueError: the cached file cannot be read (e.g. a truncated download).
    """
    import torchvision

    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    name = weights.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    had_file = cached.is_file()
    try:
        state = weights.get_state_dict(progress=True, weights_only=True, map_location="cpu")
    except Exception as error:  # urllib, socket, ssl, os and unpickling errors, depending on the cause
        if had_file or cached.is_file():
            # only the type: torch's unpickling message advises weights_only=False, wrong for a broken file
            raise ValueError(
                f"{option}=imagenet: {cached} (torchvision's {arch} ImageNet weights in the torch hub "
                f"cache) cannot be read as a torch weights file ({type(error).__name__}); delete it to "
                f"download it again, or use {option}=scratch or {option}=PATH with a local torchvision ResNet file"
            ) from None
        raise WeightsUnavailable(
            f"{option}=imagenet: torchvision's {arch} ImageNet weights are not in the torch hub cache "
            f"(looked for {cached}) and downloading {weights.url} failed ({_cause(error)}). "
            f"Without internet: use {option}=scratch, or copy {name} to {cached} (TORCH_HOME moves the "
            f"cache), or pass a local torchvision ResNet file as {option}=PATH"
        ) from None
    return state, weights.url


# ------------------------------------------------------------------------------------------------
# recognising


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
    heads = any(k.split(".")[0] in ("w2d", "w3d", "headnet", "backbone3d") for k in state)
    if "pretrain" in config or "moco" in config or heads:  # `pri3d pretrain`, `pri3d moco`, the original
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
    if "module.encoder_q.conv1.weight" in keys or "encoder_q.conv1.weight" in keys:
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


def skip_reason(key: str) -> str:
    """Why ``key`` of a Pri3D/segmentation checkpoint is not part of a ResNet encoder."""
    for prefix, reason in _PRI3D_OTHER.items():
        if key == prefix or key.startswith(prefix + "."):
            return reason
    if key.startswith(("decoder.", "segmentation_head.", "classification_head.")):
        return "segmentation decoder/head: not part of a torchvision ResNet"
    return "not part of the ResNet encoder"


# ------------------------------------------------------------------------------------------------
# conversions


def mocov2_to_pri3d(state: dict[str, torch.Tensor], source: str = "MoCo checkpoint"):
    """MoCo v1/v2 query encoder -> ``backbone.encoder.*`` (pri3d layout); returns (state, report).

    The original's `mocov2_to_pri3d.py` wrote ``backbone.<name>``, which the UNet (``backbone.encoder.*``)
    cannot load, and its shape-filtered loader then loaded nothing without a word. Here the prefix is
    right; the MLP head ``fc.*``, the key encoder and the queue are skipped and reported.
    """
    layout = detect_layout(state, source)
    moco = "module.encoder_q." if "module.encoder_q.conv1.weight" in state else "encoder_q."
    prefix = {"moco": moco, "moco_pri3d": "backbone."}.get(layout)
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
    prefix = {
        "pri3d": "backbone.encoder.",
        "moco": "backbone.encoder.",
        "moco_pri3d": "backbone.encoder.",
        "unet": "encoder.",
        "smp": "encoder.",
        "torchvision": "",
    }[layout]
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


def with_batchnorm_counters(state: dict[str, torch.Tensor], own: dict) -> dict[str, torch.Tensor]:
    """``state`` plus the BatchNorm ``num_batches_tracked`` counters that pre-0.4.1 torchvision files
    lack, taken from ``own`` (the target's state dict) for the BatchNorm layers ``state`` has, so a
    file of another ResNet keeps its own layers and fails the strict check on them."""
    out = dict(state)
    for key, value in own.items():
        layer = key.removesuffix("num_batches_tracked")
        if layer != key and key not in out and f"{layer}running_mean" in out:
            out[key] = value
    return out


def torchvision_state_for(module: nn.Module, state: dict[str, torch.Tensor], source: str):
    """``state`` in torchvision's ResNet layout (:func:`to_torchvision`) for loading into ``module``,
    completed by :func:`with_batchnorm_counters`; returns (state, report)."""
    tv, report = to_torchvision(state, source)
    return with_batchnorm_counters(tv, module.state_dict()), report


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


_D2_RENAMES = (
    (re.compile(r"^layer(\d)"), lambda m: f"res{int(m.group(1)) + 1}"),
    (re.compile(r"\bbn(\d)\b"), lambda m: f"conv{m.group(1)}.norm"),
    (re.compile(r"\bdownsample\.0\b"), lambda m: "shortcut"),
    (re.compile(r"\bdownsample\.1\b"), lambda m: "shortcut.norm"),
)


def to_detectron2(state: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], list[str]]:
    """torchvision ResNet names -> Detectron2's, as the original's ``torchvision_to_detectron.py``
    renames them (its differences: ``docs/deviations.md``); returns (arrays, dropped keys).

    ``conv1``/``bn1`` -> ``stem.conv1``/``stem.conv1.norm``; ``layer1..4`` -> ``res2..5``;
    ``bn{i}`` -> ``conv{i}.norm``; ``downsample.0/1`` -> ``shortcut``/``shortcut.norm``.
    ``num_batches_tracked`` is dropped (Detectron2's FrozenBatchNorm has no such buffer).
    """
    out, dropped = {}, []
    for key, value in state.items():
        if key.endswith("num_batches_tracked") or key.startswith("fc."):
            dropped.append(key)
            continue
        out[detectron2_name(key)] = value.detach().cpu().numpy()
    return out, dropped


def detectron2_name(key: str) -> str:
    """Detectron2's name of the torchvision ResNet key ``key`` (see :func:`to_detectron2`)."""
    name = key if key.startswith("layer") else f"stem.{key}"
    for pattern, repl in _D2_RENAMES:
        name = pattern.sub(repl, name)
    return name


# ------------------------------------------------------------------------------------------------
# strict loading


def shape_mismatches(own: dict, state: dict) -> list[str]:
    """``"key: file (shape) vs model (shape)"`` for each key of both whose shapes differ, in ``own``'s order."""
    return [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]


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


def load_strict(model: nn.Module, state: dict, source: str, what: str | None = None) -> None:
    """``load_state_dict(strict=True)`` with a ``ValueError`` that names the file, ``what`` (default:
    the model's class) and the keys."""
    check_state(model.state_dict(), state, source, what or type(model).__name__)
    model.load_state_dict(state, strict=True)
