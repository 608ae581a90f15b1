"""Files for other libraries, and ready networks from any weights file.

Exports: torchvision layout (``.pth`` or ``.safetensors``, plus JSON metadata), Detectron2 ``.pkl``,
and pri3d's own layout from original Pri3D or MoCo checkpoints; each is read back and checked
against the architecture it claims before it is put in place. :func:`load_backbone` builds a
torchvision ResNet or a pri3d UNet from any supported file.

Reading, recognising and converting weights files is :mod:`pri3d.weights`, below the networks. This
module sits above them (it builds them to check and to load).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch
from torch import nn

from pri3d import __version__
from pri3d.io.atomic import AtomicFile, atomic_write
from pri3d.io.images import IMAGENET_MEAN, IMAGENET_STD
from pri3d.models.registry import build_backbone
from pri3d.models.resunet import ResNetEncoder, UNetDecoder
from pri3d.weights import (
    LoadReport,
    check_state,
    detect_layout,
    detectron2_name,
    import_original_pri3d,
    load_strict,
    load_weights_file,
    mocov2_to_pri3d,
    resnet_arch,
    to_detectron2,
    to_torchvision,
)

__all__ = [
    "export_detectron2",
    "export_pri3d",
    "export_torchvision",
    "load_backbone",
]


# ------------------------------------------------------------------------------------------------
# writing: every export is read back and checked against the architecture it claims before it is
# put in place, so a file that exists is a file that loads


def _torchvision_resnet(arch: str) -> nn.Module:
    """torchvision's ``arch`` without weights, its ``fc`` replaced by ``nn.Identity`` (pooled features out)."""
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = nn.Identity()
    return model


def _torchvision_resnet_state(arch: str) -> dict[str, torch.Tensor]:
    """Parameters and buffers (shapes only, on the meta device) of torchvision's ``arch`` without ``fc``."""
    with torch.device("meta"):
        return _torchvision_resnet(arch).state_dict()


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


def _write_verified(
    out: Path, write: Callable[[IO[bytes]], None], verify: Callable[[Path], None], meta: dict | None = None
) -> None:
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


def _read_encoder(source: Path) -> tuple[dict[str, torch.Tensor], str, dict, LoadReport]:
    """The ResNet encoder of the weights file ``source`` in torchvision layout, its architecture, the
    rest of the file's top level and the conversion report."""
    state, extra = load_weights_file(source)
    tv, report = to_torchvision(state, str(source))
    return tv, resnet_arch(tv), extra, report


def export_torchvision(source: str | Path, out: str | Path, fmt: str = "pth") -> tuple[Path, LoadReport]:
    """Write the ResNet encoder of ``source`` in torchvision layout (``.pth`` or ``.safetensors``).

    A JSON file beside it (``<out>.json``) records the architecture, the input normalisation, the
    pre-training recipe (when the checkpoint stores its config) and what the conversion skipped.
    """
    if fmt not in ("pth", "safetensors"):
        raise ValueError(f"format {fmt!r}: expected pth or safetensors")
    from safetensors.torch import load_file, save

    source, out = Path(source), Path(out)
    tv, arch, extra, report = _read_encoder(source)
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
    tv, arch, extra, report = _read_encoder(source)
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
        pickle.dump(
            {
                "model": arrays,
                "__author__": "pri3d",
                "matching_heuristics": True,
                "pri3d_metadata": meta["detectron2_config"],
            },
            handle,
        )

    def verify(path: Path) -> None:
        with open(path, "rb") as handle:
            written = pickle.load(handle)["model"]
        expected = {
            detectron2_name(k): v
            for k, v in _torchvision_resnet_state(arch).items()
            if not k.endswith("num_batches_tracked")
        }
        check_state(expected, written, str(source), f"Detectron2's {arch} (torchvision's, renamed)")
        _check_finite(written, str(source))

    _write_verified(out, write, verify, meta)
    return out, report


def export_pri3d(source: str | Path, out: str | Path) -> tuple[Path, LoadReport]:
    """Import an original Pri3D or a MoCo checkpoint into pri3d's layout (``{'model': ...}``).

    Kept: ``backbone.*`` (encoder and decoder), ``w2d.*``, ``w3d.*``, ``headnet.*``, as they are. pri3d
    reads the result as ``init=OUT`` of `pri3d finetune semseg` (:func:`pri3d.models.segmentation.initialise`:
    the UNet's encoder and decoder by name and shape, the heads reported as skipped) and of `pri3d finetune
    insseg` (:func:`pri3d.models.mask_rcnn.initialise_body`: the encoder), and through :func:`load_backbone`.
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
    state, _ = load_weights_file(path)
    if arch in ("Res18UNet", "Res50UNet"):
        layout = detect_layout(state, str(path))
        prefix = {"pri3d": "backbone.", "unet": ""}.get(layout)
        if prefix is None:
            raise ValueError(f"{path}: {arch} needs a UNet checkpoint (encoder and decoder), found {layout}")
        unet = {
            k[len(prefix) :]: v
            for k, v in state.items()
            if k.startswith(prefix + "encoder.") or k.startswith(prefix + "decoder.")
        }
        if "decoder.conv0.weight" not in unet:
            raise ValueError(f"{path}: no UNet decoder weights (decoder.conv0.weight)")
        model = build_backbone(arch, unet["decoder.conv0.weight"].shape[0])
        load_strict(model, unet, str(path), arch)
        return model
    tv, _ = to_torchvision(state, str(path))
    found = resnet_arch(tv)
    if found != arch:
        raise ValueError(f"{path} holds a {found}, not a {arch}")
    model = _torchvision_resnet(arch)
    load_strict(model, tv, str(path), arch)
    return model
