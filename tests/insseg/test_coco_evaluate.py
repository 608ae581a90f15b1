"""COCO evaluation: the ground truth against itself is perfect; missing or wrong detections are not."""

from __future__ import annotations

import pytest

from pri3d.coco.evaluate import STAT_NAMES, evaluate_detections, gt_as_detections
from pri3d.io.coco import load_coco


def test_ground_truth_against_itself_gives_ap_one(coco_dir):
    coco = load_coco(coco_dir / "scannet_val.coco.json")
    report = evaluate_detections(coco, gt_as_detections(coco))
    for kind in ("bbox", "segm"):
        assert report[kind]["AP"] == report[kind]["AP50"] == report[kind]["AP75"] == 1.0
        per_class = report[kind]["per_class"]
        assert list(per_class) == [c["name"] for c in coco.dataset["categories"]]
        present = {name: v for name, v in per_class.items() if v["instances"]}
        assert present and all(v["AP50"] == v["AP"] == 1.0 for v in present.values())
        assert all(v["AP50"] is None for v in per_class.values() if not v["instances"])
        assert sum(v["instances"] for v in per_class.values()) == len(coco.anns)
        assert "Average Precision" in report[kind]["summary"]


def test_missing_and_displaced_detections_lower_the_scores(coco_dir):
    coco = load_coco(coco_dir / "scannet_val.coco.json")
    detections = gt_as_detections(coco)
    half = evaluate_detections(coco, detections[::2], iou_types=("bbox",))["bbox"]
    assert 0 < half["AP50"] < 1
    shifted = [{**d, "bbox": [d["bbox"][0] + d["bbox"][2] / 4, *d["bbox"][1:]]} for d in detections]
    moved = evaluate_detections(coco, shifted, iou_types=("bbox",))["bbox"]
    assert moved["AP50"] == 1.0 and moved["AP75"] == 0.0  # every box has IoU 0.75 / 1.25 = 0.6
    empty = evaluate_detections(coco, [])
    assert all(empty[k][n] == 0.0 for k in ("bbox", "segm") for n in STAT_NAMES)


def test_load_coco_names_the_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        load_coco(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        load_coco(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="missing annotations, categories"):
        load_coco(tmp_path / "partial.json")
