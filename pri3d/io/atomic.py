"""Atomic file writes: a file appears under its final name complete or not at all.

Every writer of pri3d goes through :func:`atomic_write`. The data goes to a temporary file with a
unique name beside the target (``.<name>.<random>.tmp``: two processes writing one target never
share a temporary file, and a listing of ``*.tmp`` finds what a killed writer left); on success it is
flushed to disk (``fsync``), renamed onto the target (``os.replace``, atomic on POSIX) and the rename
is made durable by syncing the folder. On an exception the temporary file is removed and the target
keeps its previous content.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["AtomicFile", "UnwritableFolderError", "atomic_write", "check_writable_folder", "is_temporary"]

_SUFFIX = ".tmp"


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is named as a temporary file of :func:`atomic_write`."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(_SUFFIX)


class AtomicFile:
    """An open temporary file that becomes ``path`` on :meth:`commit` and vanishes on :meth:`discard`.

    Used as a context manager it yields the open file object and commits on a clean exit, discards on
    an exception. Writers that keep a file open across calls (e.g. the ``.sens`` writer) hold the
    object and call :meth:`commit` / :meth:`discard` themselves.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "w", **open_kwargs) -> None:
        if "r" in mode or not any(flag in mode for flag in "wx"):
            raise ValueError(
                f"{path}: atomic writes open the file for writing ('w' or 'wb'), got mode {mode!r}"
            )
        self.path = Path(path)
        self.tmp_path = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}{_SUFFIX}")
        self.file: IO = open(self.tmp_path, mode, **open_kwargs)  # closed by commit() or discard()

    def commit(self) -> None:
        """Flush and sync the data, then move it onto ``path`` and sync the folder."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self.discard()
            raise
        _sync_folder(self.path.parent)

    def discard(self) -> None:
        """Close and delete the temporary file; ``path`` is left as it was."""
        self.file.close()
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> IO:
        return self.file

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_kwargs) -> AtomicFile:
    """Write ``path`` atomically: ``with atomic_write(path) as f: f.write(text)``.

    ``mode`` and ``open_kwargs`` are those of :func:`open` (``"w"`` text, ``"wb"`` bytes). The parent
    folder must exist.
    """
    return AtomicFile(path, mode, **open_kwargs)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename itself is still atomic
    finally:
        os.close(fd)


class UnwritableFolderError(ValueError):
    """An output folder that cannot be created or take new files (a ValueError, so that the ``pri3d``
    command prints it as one line)."""


def check_writable_folder(
    folder: str | os.PathLike[str], option: str, subfolders: tuple[str, ...] = ()
) -> Path:
    """Create the output ``folder`` if needed and check that it, and those of its ``subfolders`` that
    exist, take new files; raise :class:`UnwritableFolderError` naming ``option`` (the setting the
    folder came from, e.g. ``train.log_dir`` or ``--out``) otherwise.

    A file is created and removed rather than permission bits read: those say nothing about read-only
    mounts or access lists, and root ignores them. Commands run this before any work, so that an
    unwritable folder is not found at the first log line, checkpoint or scene.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UnwritableFolderError(
            f"{option}={folder}: cannot create the folder ({error.strerror or error})"
        ) from None
    for path in (folder, *(folder / name for name in subfolders)):
        if not path.is_dir():
            continue
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as error:
            raise UnwritableFolderError(
                f"{option}={folder}: cannot write in {path} ({error.strerror or error}); "
                f"choose another {option} or fix the folder's permissions"
            ) from None
    return folder
