"""ScanNet scene lists: ``scannetv2_<phase>.txt`` files, one scene name per line.

Which lists a command reads (`pri3d finetune semseg` ``dataset.split_dir``, `pri3d coco scannet`
``--split-dir``, the semantic-segmentation dataset's ``split_dir``):

1. the folder the user names;
2. else the data's own lists, when the ``scannet_frames_25k`` folder or the folder above it holds
   ``scannetv2_*.txt`` files (as `pri3d synth` writes them: the official lists name none of its
   scenes);
3. else the official lists shipped with pri3d (train 1201, val 312, test 100 scenes, plus the
   original's data-efficient ``scannetv2_train_<percent>.txt`` lists).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = [
    "DATA_EFFICIENT_PERCENTS",
    "data_efficient_scenes",
    "read_scene_list",
    "require_scenes",
    "scannet_frames_root",
    "scannet_scene_list",
    "scene_list_dir",
    "shipped_split_dir",
]

#: Data-efficient ScanNet phases (percent of training *images*, as the original's lists).
DATA_EFFICIENT_PERCENTS = (1, 5, 10, 20, 40, 60, 80)


def shipped_split_dir() -> Path:
    """The ScanNet scene lists shipped with pri3d (train/val/test/trainval + data-efficient lists)."""
    return Path(str(resources.files("pri3d.data") / "scannet_splits"))


def read_scene_list(path: str | os.PathLike[str]) -> list[str]:
    """Scene names of a list file, in file order (blank lines ignored)."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def scannet_frames_root(path: str | os.PathLike[str], option: str = "dataset.path") -> Path:
    """``path`` itself, or ``path/scannet_frames_25k`` when ``path`` is the folder above it.

    ``option`` names the setting ``path`` came from, for the error when the folder does not exist.
    """
    path = Path(path)
    if (path / "scannet_frames_25k").is_dir():
        return path / "scannet_frames_25k"
    if not path.is_dir():
        raise FileNotFoundError(f"{option}={path}: folder not found (expected scannet_frames_25k)")
    return path


def scene_list_dir(path: str | os.PathLike[str], split_dir: str | os.PathLike[str] | None) -> Path:
    """The folder of scene lists for the ``scannet_frames_25k`` data at ``path`` (module docstring)."""
    if split_dir:
        return Path(split_dir)
    root = scannet_frames_root(path)
    for folder in (root, root.parent) if root.name == "scannet_frames_25k" else (root,):
        if any(folder.glob("scannetv2_*.txt")):
            return folder
    return shipped_split_dir()


def data_efficient_scenes(
    train_scenes: list[str], frames_root: Path, percent: float, total_images: int | None = None
) -> list[str]:
    """The shortest prefix of ``train_scenes`` holding ``percent`` % of the training images.

    This is how the original's data-efficient lists were built (`count_images.py`): walk the train
    list in file order, adding scenes until the image count reaches ``percent/100 × total_images``
    (``total_images`` defaults to the images of all listed scenes found under ``frames_root``).
    """
    counts = [len(list((frames_root / s / "color").glob("*.jpg"))) for s in train_scenes]
    total = sum(counts) if total_images is None else total_images
    target = percent / 100.0 * total
    chosen, running = [], 0
    for scene, count in zip(train_scenes, counts):
        if running >= target:
            break
        chosen.append(scene)
        running += count
    return chosen


def scannet_scene_list(
    phase: str,
    split_dir: str | os.PathLike[str] | None,
    frames_root: Path,
    phase_option: str = "train.phase",
    split_option: str = "dataset.split_dir",
) -> tuple[list[str], str]:
    """Scene names of ``phase`` (train, val, test, trainval, train1 … train80) and where they came from.

    The lists are read from ``split_dir``, or when it is empty from the folder :func:`scene_list_dir`
    picks for ``frames_root``. A data-efficient phase ``train<p>`` reads ``scannetv2_train_<p>.txt``
    there or in its ``data_efficient_by_images/``, and when neither exists is derived from
    ``scannetv2_train.txt`` by image count (as the original built them). ``phase_option`` and
    ``split_option`` name the settings ``phase`` and ``split_dir`` came from, for errors.
    """
    folder = scene_list_dir(frames_root, split_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{split_option}={folder}: folder not found")
    if phase in ("train", "val", "test", "trainval"):
        path = folder / f"scannetv2_{phase}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: scene list for {phase_option}={phase} not found")
        return read_scene_list(path), str(path)
    if phase.startswith("train") and phase[5:].isdigit():
        percent = int(phase[5:])
        for path in (
            folder / f"scannetv2_train_{percent}.txt",
            folder / "data_efficient_by_images" / f"scannetv2_train_{percent}.txt",
        ):
            if path.is_file():
                return read_scene_list(path), str(path)
        train_list = folder / "scannetv2_train.txt"
        if not train_list.is_file():
            raise FileNotFoundError(
                f"{folder}: no scannetv2_train_{percent}.txt and no scannetv2_train.txt to derive it from"
            )
        scenes = data_efficient_scenes(read_scene_list(train_list), frames_root, percent)
        return scenes, f"first {len(scenes)} scenes of {train_list} holding {percent}% of its images"
    raise ValueError(
        f"{phase_option}={phase!r}: expected train, val, test, trainval or train<percent> "
        f"(shipped: {', '.join(f'train{p}' for p in DATA_EFFICIENT_PERCENTS)})"
    )


def require_scenes(
    scenes: list[str], source: str, frames_root: Path, option: str = "dataset.split_dir"
) -> None:
    """Raise FileNotFoundError unless every scene of a list read from ``source`` is a folder of
    ``frames_root``; the message says which lists were read and how to give others."""
    missing = [s for s in scenes if not (frames_root / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(scenes)} scenes of {source} are not under {frames_root} (e.g. "
            f"{', '.join(missing[:3])}); set {option} to a folder with your own scannetv2_<phase>.txt "
            f"lists, or put them in {frames_root} or the folder above it, where they are read by default"
        )
