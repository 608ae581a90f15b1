"""Checkpoints: written atomically, loaded without executing code, complete enough to resume exactly.

A checkpoint is a dict with `model`, `optimizer`, `scheduler`, `bn_scheduler`, `step`, `epoch`,
`batch_in_epoch`, `config` (resolved, plain dict), `rng` (Python, NumPy and torch states) and
`pri3d_version`. `<dir>/last` names the newest checkpoint; it is replaced only after the checkpoint
file itself is complete, so a crash at any moment leaves a loadable `last`. A run folder stands for its
newest checkpoint wherever weights are read (:func:`resolve_weights_path`). A finished run's
checkpoint may have its optimizer state dropped (:func:`drop_optimizer_state`): it then still
initialises and evaluates models but no longer resumes. A write that fails (a full disk) removes its
temporary file; temporaries left by a killed process are removed by :func:`remove_temporaries`.
"""

from __future__ import annotations

import errno
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from pri3d import __version__
from pri3d.io.atomic import atomic_write


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


class CheckpointDiskFull(OSError):
    """No space left for a checkpoint; the message names the folder and the space needed."""


def save_checkpoint(directory: str | Path, name: str, state: dict) -> Path:
    """Write `state` to `directory/name` via a temporary file and point `directory/last` at it.

    Raises :class:`CheckpointDiskFull` when the disk is full, with `last` still naming the previous
    checkpoint and no partial file left behind.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    state = {**state, "pri3d_version": __version__}
    try:
        _save_atomically(state, path)
        with atomic_write(directory / "last") as pointer:
            pointer.write(name + "\n")
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise CheckpointDiskFull(
            f"no space left on the device of {directory} while writing {name}: it needs about "
            f"{_tensor_bytes(state) / 2**20:.1f} MB, {shutil.disk_usage(directory).free / 2**20:.1f} MB "
            "are free; free some space (train.keep_checkpoints=N keeps only the newest N checkpoints) "
            "and run again to resume from the last complete checkpoint"
        ) from None
    return path


def remove_temporaries(directory: str | Path) -> list[Path]:
    """Delete the ``*.tmp`` files a killed write left in ``directory`` (those of `atomic_write`, and
    ``<name>.tmp`` of earlier pri3d versions); returns them.

    Only call this while no other process writes checkpoints there (at the start of a run): a
    leftover holds the disk space that the next write needs.
    """
    leftovers = sorted(Path(directory).glob("*.tmp"))
    for path in leftovers:
        path.unlink()
    return leftovers


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
    with atomic_write(path, "wb") as handle:  # a failed write (a full disk) removes its temporary
        torch.save(state, handle)


def _tensor_bytes(value) -> int:
    """Bytes of the tensors in a nested state (the bulk of a checkpoint file)."""
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint `directory/last` points to, or None when there is none."""
    pointer = Path(directory) / "last"
    if not pointer.is_file():
        return None
    path = Path(directory) / pointer.read_text().strip()
    if not path.is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which does not exist")
    return path


def resolve_weights_path(path: str | Path, option: str) -> Path:
    """A weights file, or a run folder's newest checkpoint (``checkpoints/last``, or ``last`` in it).

    ``option`` names the setting in error messages (e.g. ``finetune.pretrain``).
    """
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{option}={path}: a folder without checkpoints/last")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"{option}={path}: file not found")
    return path


def resolve_init(value: str, option: str) -> str | Path:
    """A fine-tuning ``init``: ``scratch`` and ``imagenet`` as they are, anything else the weights file
    it names (:func:`resolve_weights_path`: a run folder gives its newest checkpoint)."""
    return value if value in ("scratch", "imagenet") else resolve_weights_path(value, option)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint on CPU with `weights_only=True` (a file from elsewhere cannot run code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"{path}: cannot load checkpoint ({type(error).__name__}: {error})") from None
