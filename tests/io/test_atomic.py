"""atomic_write: complete or absent under the final name, unique temporaries, cleanup on failure."""

from __future__ import annotations

import os

import pytest

from pri3d.io.atomic import atomic_write, is_temporary


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
