"""MoCo frames: which frames an epoch holds, two crops per item drawn from (seed, epoch, index), unreadable
images skipped with their path, and the balanced 1:1 mix with another image folder, per micro-batch
on every rank."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pri3d.data.moco_frames import MoCoFrameOptions, MoCoFrames, collate_views
from pri3d.engine.sampler import GlobalBatchSampler

PAIRS = [("scene0000_00", 0, 4), ("scene0000_00", 0, 8), ("scene0000_00", 4, 8), ("scene0001_00", 0, 4)]


def _image(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def root(tmp_path) -> Path:
    """A pair list over 5 frames of 2 scenes, each frame a 24x32 JPEG."""
    (tmp_path / "splits").mkdir()
    lines = [f"{s}/color/{i}.jpg {s}/color/{j}.jpg 0.5\n" for s, i, j in PAIRS]
    (tmp_path / "splits" / "overlap30.txt").write_text("".join(lines))
    frames = {(s, f) for s, i, j in PAIRS for f in (i, j)}
    for n, (scene, frame) in enumerate(sorted(frames)):
        _image(tmp_path / scene / "color" / f"{frame}.jpg", (24, 32), n)
    return tmp_path


def _options(**kwargs) -> MoCoFrameOptions:
    return MoCoFrameOptions(resize=(12, 16), crop=8, **kwargs)


def test_first_of_pair_repeats_frames_and_each_once_lists_every_frame(root):
    first = MoCoFrames(root, options=_options())
    assert first.frames == [
        ("scene0000_00", 0),
        ("scene0000_00", 0),
        ("scene0000_00", 4),
        ("scene0001_00", 0),
    ]
    once = MoCoFrames(root, options=_options(frames="each_once"))
    assert once.frames == [
        ("scene0000_00", 0), ("scene0000_00", 4), ("scene0000_00", 8), ("scene0001_00", 0), ("scene0001_00", 4)
    ]  # fmt: skip
    assert len(first) == 4 and len(once) == 5 and not first.orders_epochs
    with pytest.raises(ValueError, match="frames='all': expected one of first_of_pair, each_once"):
        _options(frames="all")


def test_items_are_two_crops_drawn_from_seed_epoch_and_index(root):
    dataset = MoCoFrames(root, options=_options(seed=3))
    item = dataset[2]
    assert item["name"] == "scene0000_00/color/4.jpg" and item["source"] == 0 and item["index"] == 2
    assert item["image_q"].shape == item["image_k"].shape == (3, 8, 8)
    assert not torch.equal(item["image_q"], item["image_k"])
    again = MoCoFrames(root, options=_options(seed=3))[2]
    for key in ("image_q", "image_k", "shuffle_key"):
        assert torch.equal(item[key], again[key]), key
    dataset.set_epoch(1)
    assert not torch.equal(dataset[2]["image_q"], item["image_q"])
    # the same frame at another index (the first two pairs both start at frame 0) gets other crops
    assert not torch.equal(dataset[0]["image_q"], dataset[1]["image_q"])


def test_unreadable_frame_is_skipped_with_its_path_and_collate_drops_it(root):
    (root / "scene0000_00" / "color" / "4.jpg").write_bytes(b"not a jpeg")
    dataset = MoCoFrames(root, options=_options())
    broken = dataset[2]
    assert broken["index"] == 2 and "scene0000_00/color/4.jpg: cannot read the image" in broken["skip"]
    batch = collate_views([dataset[i] for i in range(4)])
    assert batch["batch_size"] == 3 and len(batch["skipped"]) == 1
    assert batch["image_q"].shape == (3, 3, 8, 8) and batch["shuffle_key"].shape == (3,)
    assert batch["index"].tolist() == [0, 1, 3] and "counts" not in batch


def test_missing_pair_list_and_empty_extra_folder_are_named(root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"overlap30_val\.txt: pair list not found"):
        MoCoFrames(root, "splits/overlap30_val.txt", _options())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"dataset\.extra_images=.*empty: no \.jpg/\.jpeg/\.png images"):
        MoCoFrames(root, options=_options(extra_images=str(tmp_path / "empty")))


def _extra_folder(base: Path, count: int) -> Path:
    folder = base / "extra"
    for n in range(count):  # nested class folders, mixed suffix case, other sizes than the frames
        _image(folder / f"class{n % 2}" / f"img{n}.{'JPG' if n % 2 else 'png'}", (20 + n, 30), 100 + n)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_balanced_mix_interleaves_and_oversamples_the_smaller_source(root, tmp_path):
    extra = _extra_folder(tmp_path, 11)
    dataset = MoCoFrames(root, options=_options(extra_images=str(extra), seed=5))
    assert dataset.orders_epochs and len(dataset.extra) == 11 and len(dataset) == 22
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        drawn = [dataset.source_item(i) for i in range(len(dataset))]
        assert [source for source, _ in drawn] == [0, 1] * 11
        assert sorted(item for source, item in drawn if source == 1) == list(range(11))
        frames = Counter(item for source, item in drawn if source == 0)  # 4 frames over 11 places
        assert set(frames) == set(range(4)) and max(frames.values()) - min(frames.values()) <= 1
    dataset.set_epoch(0)
    first = [dataset.source_item(i) for i in range(22)]
    dataset.set_epoch(1)
    assert [dataset.source_item(i) for i in range(22)] != first
    item = dataset[1]
    assert item["source"] == 1 and item["name"].startswith("class") and item["image_q"].shape == (3, 8, 8)
    batch = collate_views([dataset[i] for i in range(4)])
    assert batch["counts"] == {"extra_images": 2}


def test_balanced_mix_holds_both_sources_1_to_1_in_every_rank_micro_batch(root, tmp_path):
    dataset = MoCoFrames(root, options=_options(extra_images=str(_extra_folder(tmp_path, 7))))
    for rank in (0, 1):
        sampler = GlobalBatchSampler(len(dataset), 8, rank=rank, world_size=2, accumulate=2, shuffle=False)
        for micro in sampler:
            sources = [dataset.source_item(i)[0] for i in micro]
            assert sorted(sources) == [0, 1], (rank, micro)


def test_unbalanced_mix_is_one_list_for_the_shuffling_sampler(root, tmp_path):
    dataset = MoCoFrames(root, options=_options(extra_images=str(_extra_folder(tmp_path, 3)), balanced=False))
    assert not dataset.orders_epochs and len(dataset) == 4 + 3
    assert [dataset.source_item(i) for i in range(7)] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 0),
        (1, 1),
        (1, 2),
    ]
