"""Semantic-segmentation datasets: ScanNet frames_25k (generated), NYUv2/KITTI/Cityscapes layouts, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pri3d.data.semseg import SemsegOptions, build_semseg_dataset, collate_semseg
from pri3d.io.scene_lists import shipped_split_dir
from pri3d.labels import nyu40_to_scannet20_lut

SMALL = SemsegOptions(size=(60, 80))


def test_scannet_frames_map_nyu40_to_the_20_benchmark_classes(semseg_root):
    train = build_semseg_dataset("ScanNet", semseg_root, "train", SMALL, split_dir=semseg_root)
    val = build_semseg_dataset(
        "ScanNet", semseg_root / "scannet_frames_25k", "val", SMALL, split_dir=semseg_root
    )
    assert (len(train), len(val), train.num_classes) == (16, 8, 21)
    assert train.train and not val.train
    sample = val[0]
    assert sample["image"].shape == (3, 60, 80) and sample["image"].dtype == torch.float32
    assert sample["label"].shape == (60, 80) and sample["label"].dtype == torch.int64
    assert abs(float(sample["image"].mean())) < 3  # ImageNet-normalised
    _, label_file = val.items[0]
    raw = np.asarray(Image.open(label_file))
    assert torch.equal(sample["label"], torch.from_numpy(nyu40_to_scannet20_lut()[raw].astype(np.int64)))
    assert "ScanNet val: 1 scenes" in val.notes[0]


def test_resizes_to_the_configured_size(semseg_root):
    dataset = build_semseg_dataset(
        "ScanNet", semseg_root, "val", SemsegOptions(size=(30, 40)), split_dir=semseg_root
    )
    sample = dataset[1]
    assert sample["image"].shape == (3, 30, 40) and sample["label"].shape == (30, 40)


def test_shipped_lists_against_other_data_name_the_missing_scenes(semseg_root):
    with pytest.raises(FileNotFoundError, match=r"1198 of 1201 scenes .* dataset.split_dir"):
        build_semseg_dataset("ScanNet", semseg_root, "train", SMALL, split_dir=shipped_split_dir())


def test_data_efficient_split_is_derived_by_image_count_when_not_listed(semseg_root):
    dataset = build_semseg_dataset("ScanNet", semseg_root, "train40", SMALL, split_dir=semseg_root)
    assert len(dataset) == 8 and "holding 40% of its images" in dataset.notes[0]  # the first of 2 scenes
    with pytest.raises(ValueError, match=r"train\.phase='training'"):
        build_semseg_dataset("ScanNet", semseg_root, "training", SMALL, split_dir=semseg_root)


def test_a_broken_frame_is_skipped_and_reported(semseg_root, tmp_path):
    dataset = build_semseg_dataset("ScanNet", semseg_root, "val", SMALL, split_dir=semseg_root)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    dataset.items = [(broken, dataset.items[0][1]), *dataset.items[1:3]]
    batch = collate_semseg([dataset[i] for i in range(3)])
    assert batch["batch_size"] == 2 and batch["image"].shape == (2, 3, 60, 80)
    assert len(batch["skipped"]) == 1 and "broken.jpg" in batch["skipped"][0]


def test_label_values_above_40_skip_the_frame_naming_the_label_file(semseg_root, tmp_path):
    # The lookup table would turn them into "ignore" without a word.
    dataset = build_semseg_dataset("ScanNet", semseg_root, "val", SMALL, split_dir=semseg_root)
    color, label = dataset.items[0]
    array = np.asarray(Image.open(label)).copy()
    array[0, :3] = [41, 200, 41]
    bad = tmp_path / "bad_label.png"
    Image.fromarray(array).save(bad)
    dataset.items[0] = (color, bad)
    batch = collate_semseg([dataset[0], dataset[1]])
    assert batch["batch_size"] == 1
    (reason,) = batch["skipped"]
    assert reason == f"{bad}: label values [41, 200] are not NYU40 ids (expected 0..40)"


def test_a_truncated_label_png_is_reported_under_its_own_name(semseg_root, tmp_path):
    dataset = build_semseg_dataset("ScanNet", semseg_root, "val", SMALL, split_dir=semseg_root)
    color, label = dataset.items[0]
    truncated = tmp_path / "truncated.png"
    data = label.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    dataset.items[0] = (color, truncated)
    reason = dataset[0]["skip"]
    assert reason.startswith(f"{truncated}: ") and "truncated" in reason and str(color) not in reason


def test_augmentation_depends_only_on_seed_epoch_and_index(semseg_root):
    options = SemsegOptions(size=(60, 80), augment=True, seed=1)
    dataset = build_semseg_dataset("ScanNet", semseg_root, "train", options, split_dir=semseg_root)
    first = [dataset[i]["image"] for i in range(6)]
    again = [dataset[i]["image"] for i in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    dataset.set_epoch(1)
    assert not all(torch.equal(a, dataset[i]["image"]) for i, a in enumerate(first))


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_nyuv2_layout(tmp_path):
    for i in (1, 2):
        _png(tmp_path / "val" / "color" / f"nyu_rgb_{i:04d}.png", np.full((12, 16, 3), 100, np.uint8))
        _png(tmp_path / "val" / "label" / f"new_nyu_class13_{i:04d}.png", np.full((12, 16), 4, np.uint8))
    dataset = build_semseg_dataset("NYUv2", tmp_path, "val", SemsegOptions(size=(6, 8)))
    assert len(dataset) == 2 and dataset.num_classes == 14 and dataset.class_names[4] == "chair"
    assert dataset[0]["label"].unique().tolist() == [4]


def test_cityscapes_layout_maps_label_ids_to_train_ids(tmp_path):
    label = np.full((20, 40), 26, np.uint8)  # car
    label[:, :10] = 7  # road
    label[:, 10:12] = 3  # "out of roi": ignored
    _png(
        tmp_path / "leftImg8bit" / "val" / "bonn" / "bonn_000000_000019_leftImg8bit.png",
        np.zeros((20, 40, 3), np.uint8),
    )
    _png(tmp_path / "gtFine" / "val" / "bonn" / "bonn_000000_000019_gtFine_labelIds.png", label)
    dataset = build_semseg_dataset("Cityscapes", tmp_path, "val", SemsegOptions(size=(10, 20)))
    assert dataset.num_classes == 20 and not dataset.train
    values = dataset[0]["label"]
    assert values[:, 0].unique().tolist() == [1] and values[:, -1].unique().tolist() == [14]
    assert values[:, 5].unique().tolist() == [0]


def test_kitti_first_40_are_val_at_full_resolution_and_train_crops_anywhere(tmp_path):
    for i in range(43):
        _png(tmp_path / "image_2" / f"{i:06d}_10.png", np.full((30, 50, 3), i, np.uint8))
        _png(tmp_path / "semantic" / f"{i:06d}_10.png", np.full((30, 50), 26, np.uint8))
    options = SemsegOptions(size=(10, 12), augment=True, random_crop=True)
    val = build_semseg_dataset("KITTI", tmp_path, "val", options)
    train = build_semseg_dataset("KITTI", tmp_path, "train", options)
    assert (len(val), len(train)) == (40, 3) and val.full_resolution
    assert val[0]["image"].shape == (3, 30, 50) and val[0]["label"].unique().tolist() == [14]
    assert train[0]["image"].shape == (3, 10, 12) and train[0]["label"].shape == (10, 12)
    # crop origins cover the whole image (the original drew them from the top-left quarter only)
    rows = np.arange(30, dtype=np.uint8)[:, None, None].repeat(50, 1).repeat(3, 2) * 8
    _png(tmp_path / "image_2" / "000042_10.png", rows)
    crop_only = build_semseg_dataset(
        "KITTI", tmp_path, "train", SemsegOptions(size=(10, 12), random_crop=True)
    )
    tops = set()
    for epoch in range(40):
        crop_only.set_epoch(epoch)
        tops.add(round(float(crop_only[2]["image"][0, 0, 0]), 3))
    assert len(tops) > 12  # 21 possible top rows


def test_unknown_dataset_and_missing_folder():
    with pytest.raises(ValueError, match="ScanNet, NYUv2, KITTI, Cityscapes"):
        build_semseg_dataset("ADE20K", ".", "train", SMALL)
    with pytest.raises(FileNotFoundError, match=r"dataset\.path=/nonexistent"):
        build_semseg_dataset("ScanNet", "/nonexistent", "train", SMALL)
