"""`pri3d` in child processes, for the tests that kill or signal a run or need several ranks (DDP).

The children import this checkout (``PYTHONPATH``) and use one OpenMP thread each, so two ranks on
the two CI cores do not oversubscribe them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env(path: tuple[Path, ...] = ()) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (REPO, *path))), "OMP_NUM_THREADS": "1"}


def start_python(args: list[str], path: tuple[Path, ...] = (), new_session: bool = False) -> subprocess.Popen:
    """``python ARGS`` started in the background, with ``path`` importable besides this checkout (a
    test's own module, for a spawned worker) and, with ``new_session``, in a process group of its
    own; stdout and stderr merged, as text, in ``.stdout``."""
    return subprocess.Popen(
        [sys.executable, *args],
        env=_env(path),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,
    )


def start_pri3d(args: list[str]) -> subprocess.Popen:
    """``pri3d ARGS`` started in the background (see :func:`start_python`)."""
    return start_python(["-m", "pri3d.cli", *args])


def run_pri3d_ddp(args: list[str]) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m pri3d.cli ARGS`` to its end (at most 300 s), its
    output captured."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pri3d.cli", *args],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
