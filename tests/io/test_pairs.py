"""Pair lists: round trip, the original's frame paths, and errors that name the file and line."""

from __future__ import annotations

import pytest

from pri3d.io.pairs import FramePair, pair_line, read_pair_list


def test_round_trip(tmp_path):
    pairs = [FramePair("scene0000_00", 0, 25, 0.5), FramePair("scene0001_02", 100, 1250, 0.031416)]
    path = tmp_path / "overlap30.txt"
    path.write_text("".join(pair_line(p) for p in pairs) + "\n")
    assert pair_line(pairs[0]) == "scene0000_00/color/0.jpg scene0000_00/color/25.jpg 0.500000\n"
    assert read_pair_list(path) == pairs
    path.write_text("")
    assert read_pair_list(path) == []  # a scene without overlapping frames


def test_the_originals_paths_read_the_same(tmp_path):
    path = tmp_path / "overlap30.txt"
    path.write_text("scene0000_00/pcd/25.npz scene0000_00/pcd/50.npz 0.42\n")
    assert read_pair_list(path) == [FramePair("scene0000_00", 25, 50, 0.42)]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("s/color/0.jpg s/color/25.jpg", "2 fields"),
        ("s/color/0.jpg s/color/x.jpg 0.5", "invalid literal"),
        ("s/color/0.jpg s/color/25.jpg high", "could not convert"),
        ("0.jpg 25.jpg 0.5", "index out of range"),
        ("a/color/0.jpg b/color/25.jpg 0.5", "one scene, got a and b"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path, line, why):
    path = tmp_path / "list.txt"
    path.write_text(f"s/color/0.jpg s/color/5.jpg 0.9\n\n{line}\n")
    with pytest.raises(ValueError, match=f"list.txt:3: .*{why}"):
        read_pair_list(path)


def test_a_missing_list_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"none\.txt: pair list not found"):
        read_pair_list(tmp_path / "none.txt")
