"""`pri3d finetune <task>`: downstream fine-tuning; each task module adds its own sub-subcommand."""

from __future__ import annotations

import importlib

#: Modules with `register_finetune(subparsers)`.
TASK_MODULES = ("pri3d.tasks.semseg", "pri3d.tasks.insseg")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a pre-trained backbone on a downstream task",
        description="Fine-tune a backbone on a downstream task; `pri3d finetune TASK --help` lists its options.",
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK")
    for name in TASK_MODULES:
        importlib.import_module(name).register_finetune(tasks)
    parser.set_defaults(run=lambda args: parser.print_help() or 2)
