"""The `pri3d` command. Each subcommand lives beside the code it drives and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

from pri3d import __version__

#: Modules that provide `register(subparsers)`; each adds one subcommand whose handler is `args.run`.
COMMAND_MODULES = (
    "pri3d.synth.cli",
    "pri3d.preprocess.cli",
    "pri3d.coco.cli",
    "pri3d.tasks.pretrain",
    "pri3d.tasks.moco",
    "pri3d.tasks.finetune_cli",
    "pri3d.tasks.eval_cli",
    "pri3d.tasks.export_cli",
    "pri3d.demo.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pri3d",
        description="3D-prior pre-training of 2D backbones (Pri3D): data, pre-training, fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"pri3d {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("pri3d: interrupted; finished work is kept and a re-run resumes it", file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:  # bad input or data, a full disk, a read-only folder: one line
        print(f"pri3d {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
