"""`pri3d synth cityscapes`: Cityscapes' layout, labels read by CityscapesSemseg, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pri3d.cli import main
from pri3d.data.semseg import CITYSCAPES19_LABEL_IDS, CityscapesSemseg, SemsegOptions
from pri3d.io.images import read_label_png, read_rgb
from pri3d.synth.cityscapes import CITIES, CityscapesSynthConfig, generate_cityscapes, image_paths
from pri3d.synth.outdoor import BUILDING, CAR, ROAD, SKY

CONFIG = CityscapesSynthConfig(train=12, val=3, size=(48, 96))


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cityscapes")
    generate_cityscapes(out, CONFIG, progress=False)
    return out


def test_layout_is_cityscapes(cityscapes: Path):
    for split, count in (("train", CONFIG.train), ("val", CONFIG.val)):
        colors = sorted((cityscapes / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        labels = sorted((cityscapes / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))
        assert len(colors) == len(labels) == count
        for color, label in zip(colors, labels):
            city = color.parent.name
            assert city in CITIES[split] and label.parent.name == city
            stem = color.name.removesuffix("_leftImg8bit.png")
            assert label.name == f"{stem}_gtFine_labelIds.png"
            name, sequence, frame = stem.split("_")
            assert name == city and len(sequence) == len(frame) == 6 and frame == "000019"
    # 12 train images fill the first city (10 per city) and start the second
    assert {p.parent.name for p in (cityscapes / "leftImg8bit/train").glob("*/*.png")} == set(
        CITIES["train"][:2]
    )
    color, label = image_paths(cityscapes, "val", 0)
    assert read_rgb(color).shape == (*CONFIG.size, 3)
    assert read_label_png(label).dtype == np.uint8


def test_labels_load_through_cityscapessemseg(cityscapes: Path):
    ids = np.unique(np.concatenate([read_label_png(p).ravel() for p in cityscapes.glob("gtFine/*/*/*.png")]))
    assert {ROAD, BUILDING, CAR, SKY} <= set(ids.tolist())
    assert set(ids.tolist()) <= set(CITYSCAPES19_LABEL_IDS)
    options = SemsegOptions(size=(36, 72))
    train = CityscapesSemseg(cityscapes, "train", options)
    val = CityscapesSemseg(cityscapes, "val", options)
    assert (len(train), len(val)) == (CONFIG.train, CONFIG.val)
    sample = train[0]
    assert sample["image"].shape == (3, 36, 72) and sample["label"].shape == (36, 72)
    loaded = set(
        np.unique(np.concatenate([train[i]["label"].numpy().ravel() for i in range(len(train))])).tolist()
    )
    assert {CITYSCAPES19_LABEL_IDS.index(i) + 1 for i in (ROAD, BUILDING, CAR)} <= loaded


def test_generation_is_deterministic_resumes_and_refuses_other_settings(cityscapes: Path, tmp_path: Path):
    again = tmp_path / "again"
    summary = generate_cityscapes(
        again, CityscapesSynthConfig(train=2, val=1, size=CONFIG.size), progress=False
    )
    assert summary["generated"] == 3
    for split, index in (("train", 0), ("train", 1), ("val", 0)):
        for ours, theirs in zip(image_paths(again, split, index), image_paths(cityscapes, split, index)):
            assert ours.read_bytes() == theirs.read_bytes()
    # a missing label is regenerated, finished images are kept
    image_paths(again, "train", 1)[1].unlink()
    summary = generate_cityscapes(
        again, CityscapesSynthConfig(train=2, val=1, size=CONFIG.size), progress=False
    )
    assert (summary["generated"], summary["skipped_existing"]) == (1, 2)
    with pytest.raises(ValueError, match="size"):
        generate_cityscapes(again, CityscapesSynthConfig(train=2, val=1, size=(40, 80)), progress=False)


def test_cli_writes_cityscapes(tmp_path: Path, capsys):
    out = tmp_path / "cs"
    args = ["synth", "cityscapes", "--out", str(out), "--train", "2", "--val", "1", "--size", "24x48"]
    assert main([*args, "--workers", "1", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["generated"] == 3 and summary["cities"] == {"train": ["aachen"], "val": ["frankfurt"]}
    assert main(["synth", "cityscapes", "--out", str(out), "--train", "-1"]) == 1
    assert "train=-1" in capsys.readouterr().err
