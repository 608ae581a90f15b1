"""Checkpoints: written atomically, loaded without executing code, complete enough to resume exactly.

A checkpoint is a dict with `model`, `optimizer`, `scheduler`, `bn_scheduler`, `step`, `epoch`,
`batch_in_epoch`, `config` (resolved, plain dict), `rng` (Python, NumPy and torch states) and
`pri3d_version`. `<dir>/last` names the newest checkpoint; it is replaced only after the checkpoint
file itself is complete, so a crash at any moment leaves a loadable `last`. A finished run's
checkpoint may have its optimizer state dropped (:func:`drop_optimizer_state`): it then still
initialises and evaluates models but no longer resumes.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from pri3d import __version__


def rng_state() -> dict:
    np_state = np.random.get_state()  # noqa: NPY002 -- the global state is what third-party code draws from
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def save_checkpoint(directory: str | Path, name: str, state: dict) -> Path:
    """Write `state` to `directory/name` via a temporary file and point `directory/last` at it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    _save_atomically({**state, "pri3d_version": __version__}, path)
    pointer = directory / "last.tmp"
    pointer.write_text(name + "\n")
    _fsync_replace(pointer, directory / "last")
    return path


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` regular checkpoints (``step*.pth``, ``epoch*.pth``) in
    ``directory``; the one ``last`` points to and ``nonfinite-*`` ones always stay. Returns the deleted."""
    if keep < 1:
        raise ValueError(f"keep={keep}: keep at least one checkpoint")
    directory = Path(directory)
    last = latest_checkpoint(directory)
    regular = [p for pattern in ("step*.pth", "epoch*.pth") for p in directory.glob(pattern)]
    regular.sort(key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
    deleted = [p for p in regular[keep:] if p != last]
    for path in deleted:
        path.unlink()
    return deleted


def drop_optimizer_state(path: str | Path) -> int:
    """Rewrite the checkpoint at ``path`` without its ``optimizer`` entry (SGD momentum is as large as
    the model); returns the bytes saved. Meant for finished runs: the result cannot resume training."""
    path = Path(path)
    state = load_checkpoint(path)
    if "optimizer" not in state:
        return 0
    before = path.stat().st_size
    del state["optimizer"]
    _save_atomically(state, path)
    return before - path.stat().st_size


def _save_atomically(state: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    _fsync_replace(tmp, path)


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint `directory/last` points to, or None when there is none."""
    pointer = Path(directory) / "last"
    if not pointer.is_file():
        return None
    path = Path(directory) / pointer.read_text().strip()
    if not path.is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which does not exist")
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint on CPU with `weights_only=True` (a file from elsewhere cannot run code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"{path}: cannot load checkpoint ({type(error).__name__}: {error})") from None
