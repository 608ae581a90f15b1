"""`pri3d export FORMAT IN OUT`: convert checkpoints for other libraries (see `pri3d.export`).

    pri3d export torchvision runs/pretrain/checkpoints/step0001500.pth r50_pri3d.pth
    pri3d export safetensors pri3d_original.pth r50_pri3d.safetensors
    pri3d export detectron2 r50_pri3d.pth r50_pri3d.pkl
    pri3d export pri3d moco_v2_800ep.pth.tar moco_as_pri3d.pth

IN may be a pri3d checkpoint or run folder (its newest checkpoint), an original Pri3D checkpoint, a
MoCo v1/v2 checkpoint, or a torchvision/timm/smp state dict. Every skipped key is listed with the
reason.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pri3d.engine.checkpoint import resolve_weights_path
from pri3d.export import export_detectron2, export_pri3d, export_torchvision
from pri3d.io.atomic import atomic_write

FORMATS = {
    "torchvision": "torchvision ResNet state dict (.pth, no fc) + OUT.json metadata",
    "safetensors": "the same tensors as .safetensors + OUT.json metadata",
    "detectron2": "Detectron2 .pkl (res2..res5 names, RGB/torchvision normalisation) + OUT.json",
    "pri3d": "pri3d-layout checkpoint from an original Pri3D or MoCo file (init= of pri3d finetune)",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="convert a checkpoint to torchvision / safetensors / Detectron2 / pri3d layout",
        description="Convert IN to FORMAT: " + "; ".join(f"{k}: {v}" for k, v in FORMATS.items()) + ".",
    )
    parser.add_argument("format", choices=sorted(FORMATS), help="output format")
    parser.add_argument(
        "input", type=Path, metavar="IN", help="checkpoint, run folder or state dict to convert"
    )
    parser.add_argument("output", type=Path, metavar="OUT", help="file to write")
    parser.add_argument("--report", type=Path, help="also write the full key report (taken/skipped) as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    source = resolve_weights_path(args.input, "IN")
    if args.format == "detectron2":
        out, report = export_detectron2(source, args.output)
    elif args.format == "pri3d":
        out, report = export_pri3d(source, args.output)
    else:
        fmt = "safetensors" if args.format == "safetensors" else "pth"
        out, report = export_torchvision(source, args.output, fmt=fmt)
    print(report.summary())
    if args.report:
        with atomic_write(args.report) as handle:
            handle.write(json.dumps(report.to_dict(), indent=1) + "\n")
    print(f"wrote {out}" + ("" if args.format == "pri3d" else f" and {out.name}.json"))
    return 0
