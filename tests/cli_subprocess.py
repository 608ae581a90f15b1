"""`pri3d` in child processes, for the tests that kill a run (SIGKILL + resume) or need several ranks (DDP).

The children import this checkout (``PYTHONPATH``) and use one OpenMP thread each, so two ranks on
the two CI cores do not oversubscribe them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def start_pri3d(args: list[str]) -> subprocess.Popen:
    """``pri3d ARGS`` started in the background; stdout and stderr merged, as text, in ``.stdout``."""
    return subprocess.Popen(
        [sys.executable, "-m", "pri3d.cli", *args],
        env=_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_pri3d_ddp(args: list[str]) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m pri3d.cli ARGS`` to its end (at most 300 s), its
    output captured."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pri3d.cli", *args],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
