"""`pri3d coco`: instance PNGs -> COCO JSON, checked against the generated frames with pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pri3d.cli import main
from pri3d.coco.convert import (
    NYUV2_9_NAMES,
    SCANNET18_NAMES,
    SCANNET18_NYU40_IDS,
    convert_nyuv2,
    convert_scannet,
    encode_mask,
)
from pri3d.io.coco import load_coco
from pri3d.io.images import read_label_png


def _placed_objects(frames_root: Path, scenes: list[str], min_area: int) -> dict[str, dict[int, int]]:
    """What the generator drew into each frame: {file_name: {label × 1000 + instance: pixels}} for the 18
    classes, from the instance PNGs directly."""
    placed = {}
    for scene in scenes:
        for path in sorted((frames_root / scene / "instance").glob("*.png")):
            values, counts = np.unique(read_label_png(path), return_counts=True)
            kept = {
                int(v): int(c)
                for v, c in zip(values, counts)
                if v // 1000 in SCANNET18_NYU40_IDS and v % 1000 and c >= min_area
            }
            placed[f"{scene}/color/{path.stem}.jpg"] = kept
    return placed


def test_scannet_annotations_are_the_generated_instances(insseg_root, coco_dir):
    frames = insseg_root / "scannet_frames_25k"
    scenes = (insseg_root / "scannetv2_train.txt").read_text().split()
    coco = load_coco(coco_dir / "scannet_train.coco.json")
    min_area = coco.dataset["info"]["min_area"]
    placed = _placed_objects(frames, scenes, min_area)
    assert [c["id"] for c in coco.dataset["categories"]] == list(range(1, 19))
    assert [c["name"] for c in coco.dataset["categories"]] == list(SCANNET18_NAMES)
    assert sorted(coco.imgs) == list(range(1, len(coco.imgs) + 1))
    assert sorted(coco.anns) == list(range(1, len(coco.anns) + 1))
    # every frame with a kept object is an image; frames without one are left out, as the original
    assert {img["file_name"] for img in coco.imgs.values()} == {k for k, v in placed.items() if v}
    assert len(coco.anns) == sum(len(v) for v in placed.values()) > 20
    for image in coco.imgs.values():
        instance = read_label_png(
            frames / image["file_name"].replace("color", "instance").replace(".jpg", ".png")
        )
        assert (image["height"], image["width"]) == instance.shape == (60, 80)
        found = {}
        for annotation in coco.imgToAnns[image["id"]]:
            mask = coco.annToMask(annotation).astype(bool)
            value = int(instance[mask][0])
            assert (instance == value).sum() == mask.sum() and (instance[mask] == value).all()  # exact mask
            nyu40 = SCANNET18_NYU40_IDS[annotation["category_id"] - 1]
            assert value // 1000 == nyu40 and annotation["iscrowd"] == 0
            rows, cols = np.nonzero(mask)
            x, y, w, h = annotation["bbox"]
            assert (x, y, x + w, y + h) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            assert annotation["area"] == mask.sum()
            found[value] = int(mask.sum())
        assert found == placed[image["file_name"]]
    report = json.loads((coco_dir / "scannet_train.coco.json.report.json").read_text())
    assert report["annotations"] == len(coco.anns) and sum(report["per_category"].values()) == len(coco.anns)
    assert report["masks_not_in_classes"] > 0  # walls and floors


def test_min_area_leaves_out_small_masks_and_empty_frames(insseg_root, coco_dir, tmp_path):
    report = convert_scannet(
        insseg_root, "train", tmp_path / "big.json", split_dir=insseg_root, min_area=400, progress=False
    )
    coco = load_coco(tmp_path / "big.json")
    small = load_coco(coco_dir / "scannet_train.coco.json")
    assert 0 < len(coco.anns) < len(small.anns)
    assert min(a["area"] for a in coco.anns.values()) >= 400
    assert report.masks_too_small > 0 and report.images + report.frames_without_annotations == report.frames
    assert len(coco.anns) == sum(
        len(v)
        for v in _placed_objects(
            insseg_root / "scannet_frames_25k", (insseg_root / "scannetv2_train.txt").read_text().split(), 400
        ).values()
    )


def test_polygons_rasterise_back_to_the_masks(insseg_root, coco_dir, tmp_path):
    rle = load_coco(coco_dir / "scannet_val.coco.json")
    convert_scannet(
        insseg_root,
        "val",
        tmp_path / "poly.json",
        split_dir=insseg_root,
        min_area=rle.dataset["info"]["min_area"],
        mask_format="polygon",
        progress=False,
    )
    poly = load_coco(tmp_path / "poly.json")
    assert len(poly.anns) == len(rle.anns)
    for a, b in zip(poly.anns.values(), rle.anns.values()):
        assert isinstance(a["segmentation"], list) and a["bbox"] == b["bbox"] and a["area"] == b["area"]
        exact, traced = rle.annToMask(b).astype(bool), poly.annToMask(a).astype(bool)
        assert (exact & ~traced).sum() == 0  # the outline covers every pixel; only holes are filled
    # a square with a hole: RLE keeps the hole, the polygon fills it
    square = np.zeros((12, 12), dtype=bool)
    square[2:10, 2:10] = True
    square[5, 5] = False
    polygons, bbox, area = encode_mask(square, "polygon")
    traced = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, 12, 12))).astype(bool)
    assert bbox == [2.0, 2.0, 8.0, 8.0] and area == 63 and traced.sum() == 64 and (traced >= square).all()
    segmentation, _, _ = encode_mask(square, "rle")
    assert (mask_utils.decode({**segmentation, "counts": segmentation["counts"].encode()}) == square).all()


def test_workers_give_the_same_file(insseg_root, coco_dir, tmp_path):
    one = json.loads((coco_dir / "scannet_train.coco.json").read_text())
    convert_scannet(
        insseg_root,
        "train",
        tmp_path / "w2.json",
        split_dir=insseg_root,
        min_area=one["info"]["min_area"],
        workers=2,
        progress=False,
    )
    two = json.loads((tmp_path / "w2.json").read_text())
    assert one["images"] == two["images"] and one["annotations"] == two["annotations"]


def _nyu_frame(root: Path, phase: str, frame_id: str, label: np.ndarray, instance: np.ndarray) -> None:
    for sub in ("color", "label", "instance"):
        (root / phase / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*label.shape, 3), dtype=np.uint8)).save(
        root / phase / "color" / f"nyu_rgb_{frame_id}.png"
    )
    Image.fromarray(label.astype(np.uint8)).save(root / phase / "label" / f"new_nyu_class13_{frame_id}.png")
    Image.fromarray(instance.astype(np.uint8)).save(root / phase / "instance" / f"{frame_id}.png")


def test_nyuv2_combines_label_and_instance_pngs(tmp_path):
    label = np.full((30, 40), 12, dtype=np.uint8)  # wall: not an instance class
    instance = np.ones((30, 40), dtype=np.uint8)
    label[5:15, 5:15], instance[5:15, 5:15] = 4, 1  # chair 1
    label[5:15, 20:30], instance[5:15, 20:30] = 4, 2  # chair 2
    label[18:28, 5:35], instance[18:28, 5:35] = 1, 1  # bed 1: same instance index as chair 1
    label[0:2, 0:2], instance[0:2, 0:2] = 13, 255  # a window of 4 pixels: under --min-area
    _nyu_frame(tmp_path / "nyu", "train", "0001", label, instance)
    _nyu_frame(tmp_path / "nyu", "train", "0002", np.full((30, 40), 12), np.ones((30, 40)))  # only wall
    report = convert_nyuv2(tmp_path / "nyu", "train", tmp_path / "nyu.json", min_area=50, progress=False)
    coco = load_coco(tmp_path / "nyu.json")
    assert [c["name"] for c in coco.dataset["categories"]] == list(NYUV2_9_NAMES)
    assert [img["file_name"] for img in coco.imgs.values()] == ["train/color/nyu_rgb_0001.png"]
    by_category = sorted((a["category_id"], a["area"]) for a in coco.anns.values())
    assert by_category == [(1, 300), (3, 100), (3, 100)]  # bed -> 1, chair -> 3
    assert report.masks_too_small == 1 and report.frames_without_annotations == 1


def test_conversion_errors_name_the_problem(insseg_root, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"--frames=.*scannet_frames_25k"):
        convert_scannet(tmp_path / "nowhere", "train", tmp_path / "x.json")
    with pytest.raises(ValueError, match="--split='bogus'"):
        convert_scannet(insseg_root, "bogus", tmp_path / "x.json", split_dir=insseg_root)
    with pytest.raises(ValueError, match="expected rle or polygon"):
        convert_scannet(insseg_root, "val", tmp_path / "x.json", split_dir=insseg_root, mask_format="bitmap")
    label = np.full((30, 40), 4, dtype=np.uint8)
    _nyu_frame(tmp_path / "nyu", "val", "0007", label, np.ones((30, 40)))
    Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8)).save(
        tmp_path / "nyu" / "val" / "color" / "nyu_rgb_0007.png"
    )
    with pytest.raises(ValueError, match=r"nyu_rgb_0007.png is 40×20 but .*0007.png is 40×30"):
        convert_nyuv2(tmp_path / "nyu", "val", tmp_path / "x.json", progress=False)
    assert main(["coco", "nyuv2", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "x.json")]) == 1
    assert "no nyu_rgb_<id>.png files" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_cli_writes_the_file_and_a_report(insseg_root, tmp_path, capsys):
    out = tmp_path / "cli" / "scannet_val.coco.json"
    argv = [
        "coco",
        "scannet",
        "--frames",
        str(insseg_root / "scannet_frames_25k"),
        "--split",
        "val",
        "--split-dir",
        str(insseg_root),
        "--out",
        str(out),
        "--min-area",
        "16",
        "--workers",
        "1",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "images" in printed and "per class:" in printed
    assert (
        len(load_coco(out).anns)
        == json.loads(out.with_name(out.name + ".report.json").read_text())["annotations"]
    )
    with pytest.raises(SystemExit):
        main(["coco", "scannet", "--help"])
    assert "--min-area" in capsys.readouterr().out


@pytest.mark.parametrize("frames", [".", "scannet_frames_25k"])
def test_data_with_its_own_scene_lists_uses_them_by_default(insseg_root, tmp_path, capsys, frames):
    out = tmp_path / "val.json"
    argv = [
        "coco",
        "scannet",
        "--frames",
        str(insseg_root / frames),
        "--split",
        "val",
        "--out",
        str(out),
        "--min-area",
        "16",
        "--workers",
        "1",
    ]
    assert main(argv) == 0
    assert f"(scene list: {insseg_root / 'scannetv2_val.txt'})" in capsys.readouterr().out
    assert json.loads(out.with_name(out.name + ".report.json").read_text())["scene_list"] == str(
        insseg_root / "scannetv2_val.txt"
    )


def test_data_without_scene_lists_names_the_shipped_lists(insseg_root, tmp_path, capsys):
    frames = tmp_path / "scannet_frames_25k"
    frames.mkdir()
    (frames / "scene0000_00").symlink_to(insseg_root / "scannet_frames_25k" / "scene0000_00")
    argv = ["coco", "scannet", "--frames", str(frames), "--split", "val", "--out", str(tmp_path / "x.json")]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert "scenes of " in error and "scannet_splits/scannetv2_val.txt are not under" in error
    assert "set --split-dir to a folder with your own scannetv2_<phase>.txt lists" in error
