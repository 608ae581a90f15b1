"""`pri3d eval <task>`: evaluate a fine-tuned checkpoint; each task module adds its sub-subcommand."""

from __future__ import annotations

import importlib

#: Modules with `register_eval(subparsers)`.
TASK_MODULES = ("pri3d.tasks.semseg", "pri3d.tasks.insseg")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a fine-tuned checkpoint",
        description="Evaluate a fine-tuned checkpoint; `pri3d eval TASK --help` lists its options.",
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK")
    for name in TASK_MODULES:
        importlib.import_module(name).register_eval(tasks)
    parser.set_defaults(run=lambda args: parser.print_help() or 2)
