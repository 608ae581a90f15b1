"""atomic_write: complete or absent under the final name, unique temporaries, cleanup on failure."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

from pri3d.io.atomic import UnwritableFolderError, atomic_write, check_writable_folder, is_temporary


def test_the_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "report.json"
    with atomic_write(target) as file:
        file.write("{}")
        assert not target.exists()
        (temporary,) = tmp_path.iterdir()
        assert is_temporary(temporary) and temporary.name.startswith(".report.json.")
    assert target.read_text() == "{}" and list(tmp_path.iterdir()) == [target]


def test_a_failed_write_keeps_the_old_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target, "wb") as file:
        file.write(b"half of the new")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_a_failed_rename_removes_the_temporary(tmp_path, monkeypatch):
    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space"), atomic_write(tmp_path / "x.txt") as file:
        file.write("x")
    assert list(tmp_path.iterdir()) == []


def test_two_writers_of_one_target_never_share_a_temporary(tmp_path):
    target = tmp_path / "list.txt"
    first, second = atomic_write(target), atomic_write(target)
    assert first.tmp_path != second.tmp_path
    first.file.write("first")
    second.file.write("second")
    second.commit()
    first.commit()
    assert target.read_text() == "first" and list(tmp_path.iterdir()) == [target]


def test_read_modes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="mode 'r'"):
        atomic_write(tmp_path / "x", "r")


def test_an_output_folder_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "file").write_text("a regular file")
    with pytest.raises(UnwritableFolderError, match=r"train\.log_dir=.*file/run: cannot create the folder"):
        check_writable_folder(tmp_path / "file" / "run", "train.log_dir")


def test_an_output_folder_that_refuses_files_is_named(tmp_path, monkeypatch):
    """Permission bits do not stop root, read-only mounts and access lists do not show in them: the
    check writes a file. Here the write is made to fail, so the test also holds when run as root."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    check_writable_folder(tmp_path / "run", "train.log_dir", ("checkpoints",))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints"]  # the probe is gone

    def refuse(*args, dir=None, **kwargs):
        if Path(dir).name == "checkpoints":  # the folder itself is fine, its checkpoints/ is not
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    real = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(
        UnwritableFolderError,
        match=r"train\.log_dir=.*run: cannot write in .*checkpoints \(Permission denied\)",
    ):
        check_writable_folder(tmp_path / "run", "train.log_dir", ("checkpoints",))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_named(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(UnwritableFolderError, match=r"train\.log_dir=.*run: cannot write in"):
            check_writable_folder(folder, "train.log_dir")
    finally:
        folder.chmod(0o755)
