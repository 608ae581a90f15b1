"""The output folder of a preprocessing run is held by one run at a time.

Two runs writing one folder corrupt each other's scenes: the second removes the temporary scene
folders the first is writing into, and both rename half-written folders into place as finished.
:func:`output_lock` makes the second run stop at once with a message instead. The lock is ``flock``
on ``<folder>/.preprocess.lock``: the kernel drops it when the holding process ends, however it
ends, so a crashed or killed run leaves no stale lock to clear by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "OutputFolderError", "output_lock"]

#: The lock file, left in place between runs (see :func:`output_lock`).
LOCK_NAME = ".preprocess.lock"


class OutputFolderError(ValueError):
    """The output folder cannot be used: another run holds it, or its lock file cannot be opened.

    A ValueError like the other bad-argument errors, so that the ``pri3d`` command prints it as one
    line instead of a traceback.
    """


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``folder`` for this process during the ``with`` block.

    Raises :class:`OutputFolderError` naming the folder and the holder's pid and host when another
    process holds it. The lock file is not removed afterwards: a run that had opened it just before
    the removal would lock a file that the next run no longer sees, and both would go ahead.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise OutputFolderError(f"{path}: cannot open the lock file ({error.strerror or error})") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 256, 0).decode("utf-8", "replace").strip()
            raise OutputFolderError(
                f"{folder} is in use by another pri3d preprocess run ({holder or 'pid not yet recorded'}); "
                "wait for it to end, or use another output folder"
            ) from None
        except OSError as error:  # e.g. a file system without locks
            raise OutputFolderError(
                f"{path}: cannot lock the output folder ({error.strerror or error})"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield folder
    finally:
        os.close(descriptor)  # releases the lock
