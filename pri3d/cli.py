"""The `pri3d` command. Each subcommand lives beside the code it drives and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pri3d import __version__

#: What a command interrupted by Ctrl-C or SIGTERM prints (exit 130).
INTERRUPTED = "pri3d: interrupted; finished work is kept and a re-run resumes it"

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
        with _sigterm_interrupts():
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:  # bad input or data, a full disk, a read-only folder: one line
        print(f"pri3d {args.command}: error: {error}", file=sys.stderr)
        return 1


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM raises KeyboardInterrupt, as Ctrl-C does.

    SIGTERM is what `kill`, `timeout`, a scheduler's preemption, a container stop and torchrun
    (stopping its ranks) send; its default action ends the process at once, skipping every command's
    cleanup (locks, temporary files, the run's log) and leaving `pri3d demo`'s run processes running.
    Installed only in the main thread (the only one that may set handlers), and not where SIGTERM was
    set to be ignored (as Python leaves an ignored SIGINT ignored); the handler in place before is put
    back afterwards.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    ):
        yield
        return
    owner = os.getpid()

    def interrupt(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            # a forked child (a DataLoader worker before it sets its own handlers) inherits this
            # handler: there SIGTERM keeps its default action, so that its parent can end it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if callable(signal.getsignal(signal.SIGCHLD)):
            # a SIGTERM to the whole process group (torchrun stopping a rank, `timeout`, a scheduler)
            # also ends the DataLoader workers, and PyTorch's SIGCHLD handler would raise "worker
            # killed by signal" over the interrupt while the command unwinds: the process is ending,
            # so stop watching its children
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
