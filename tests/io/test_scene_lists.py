"""ScanNet scene lists: which folder is read, the shipped lists, data-efficient phases, presence check."""

from __future__ import annotations

from pathlib import Path

import pytest

from pri3d.io.scene_lists import (
    DATA_EFFICIENT_PERCENTS,
    data_efficient_scenes,
    require_scenes,
    scannet_scene_list,
    scene_list_dir,
    shipped_split_dir,
)


def _frames(root: Path, images: dict[str, int]) -> Path:
    """A scannet_frames_25k folder with ``images[scene]`` colour frames per scene."""
    frames = root / "scannet_frames_25k"
    for scene, count in images.items():
        (frames / scene / "color").mkdir(parents=True)
        for i in range(count):
            (frames / scene / "color" / f"{i:06d}.jpg").touch()
    return frames


def test_shipped_lists_are_nested_prefixes_of_the_train_list():
    folder = shipped_split_dir()
    train = (folder / "scannetv2_train.txt").read_text().split()
    assert len(train) == 1201 and len((folder / "scannetv2_val.txt").read_text().split()) == 312
    previous: list[str] = []
    for percent in DATA_EFFICIENT_PERCENTS:
        scenes, source = scannet_scene_list(f"train{percent}", folder, Path("."))
        assert scenes == train[: len(scenes)] and len(scenes) > len(previous), source
        previous = scenes


def test_the_named_folder_then_the_datas_own_lists_then_the_shipped_ones(tmp_path):
    frames = _frames(tmp_path / "data", {"a": 1})
    assert scene_list_dir(frames, "") == shipped_split_dir()
    (tmp_path / "data" / "scannetv2_val.txt").write_text("a\n")  # beside scannet_frames_25k, as synth
    assert scene_list_dir(frames, None) == scene_list_dir(tmp_path / "data", None) == tmp_path / "data"
    assert scannet_scene_list("val", None, frames) == (["a"], str(tmp_path / "data" / "scannetv2_val.txt"))
    (frames / "scannetv2_train.txt").write_text("a\n")  # inside it wins over the folder above
    assert scene_list_dir(frames, None) == frames
    assert scene_list_dir(frames, tmp_path / "mine") == tmp_path / "mine"


def test_a_missing_data_efficient_list_is_derived_by_image_count(tmp_path):
    frames = _frames(tmp_path, {"a": 2, "b": 6, "c": 2})
    (frames / "scannetv2_train.txt").write_text("a\nb\nc\n")
    assert data_efficient_scenes(["a", "b", "c"], frames, 20) == ["a"]  # 2 of 10 images
    assert data_efficient_scenes(["a", "b", "c"], frames, 21) == ["a", "b"]
    scenes, source = scannet_scene_list("train50", None, frames)
    assert scenes == ["a", "b"] and "holding 50% of its images" in source


def test_bad_phases_and_folders_name_the_option(tmp_path):
    frames = _frames(tmp_path, {"a": 1})
    with pytest.raises(ValueError, match=r"train\.phase='dev'"):
        scannet_scene_list("dev", shipped_split_dir(), frames)
    with pytest.raises(FileNotFoundError, match=r"--split-dir=.*folder not found"):
        scannet_scene_list("val", tmp_path / "none", frames, split_option="--split-dir")


def test_scenes_missing_from_the_data_name_the_list_read_and_the_way_out(tmp_path):
    frames = _frames(tmp_path, {"a": 1})
    require_scenes(["a"], "list.txt", frames)
    with pytest.raises(FileNotFoundError) as error:
        require_scenes(["a", "x", "y"], "official.txt", frames, option="--split-dir")
    message = str(error.value)
    assert message.startswith(f"2 of 3 scenes of official.txt are not under {frames} (e.g. x, y)")
    assert "set --split-dir to a folder with your own scannetv2_<phase>.txt lists" in message
