"""Instance-segmentation datasets: targets from the COCO JSON, flips, COCO's own layout, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pri3d.coco.convert import encode_mask
from pri3d.data.insseg import annotation_file, build_insseg_dataset, collate_insseg


def test_scannet_samples_match_the_annotations(insseg_root, coco_dir):
    data = build_insseg_dataset("ScanNet", insseg_root, coco_dir, "val", train=False)
    assert data.num_classes == 18 and data.image_size() == (60, 80) and len(data) == len(data.coco.imgs)
    sample = data[0]
    image, target = sample["image"], sample["target"]
    assert (
        image.shape == (3, 60, 80) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    )
    annotations = data.coco.imgToAnns[sample["image_id"]]
    assert target["masks"].shape == (len(annotations), 60, 80) and target["masks"].dtype == torch.uint8
    for box, label, mask, annotation in zip(target["boxes"], target["labels"], target["masks"], annotations):
        x, y, w, h = annotation["bbox"]
        assert box.tolist() == [x, y, x + w, y + h]
        assert int(label) == annotation["category_id"]  # ScanNet's ids are already 1..18
        rows, cols = torch.nonzero(mask, as_tuple=True)
        assert [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] == box.tolist()
    batch = collate_insseg([data[0], {"skip": "broken.jpg: truncated"}, data[1]])
    assert batch["batch_size"] == 2 and batch["skipped"] == ["broken.jpg: truncated"]
    assert len(batch["images"]) == len(batch["targets"]) == 2


def test_training_flips_image_masks_and_boxes_together(insseg_root, coco_dir):
    plain = build_insseg_dataset("ScanNet", insseg_root, coco_dir, "train", train=False)
    flipping = build_insseg_dataset("ScanNet", insseg_root, coco_dir, "train", train=True, flip=True, seed=3)
    flipped = [i for i in range(len(flipping)) if not torch.equal(flipping[i]["image"], plain[i]["image"])]
    assert 0 < len(flipped) < len(flipping)  # p = 0.5
    assert torch.equal(flipping[flipped[0]]["image"], flipping[flipped[0]]["image"])  # (seed, epoch, index)
    a, b = plain[flipped[0]], flipping[flipped[0]]
    assert torch.equal(b["image"], a["image"].flip(-1)) and torch.equal(
        b["target"]["masks"], a["target"]["masks"].flip(-1)
    )
    for box, mask in zip(b["target"]["boxes"], b["target"]["masks"]):
        rows, cols = torch.nonzero(mask, as_tuple=True)
        assert [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] == box.tolist()


def _coco_tree(root):
    """A COCO-layout folder: val2017/*.jpg and annotations/instances_val2017.json with ids 1, 5, 90."""
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:20, 5:25] = True
    segmentation, bbox, area = encode_mask(mask)
    images, annotations = [], []
    for image_id in (7, 9, 11):
        Image.fromarray(np.full((40, 50, 3), 90, dtype=np.uint8)).save(
            root / "val2017" / f"{image_id:012d}.jpg"
        )
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 50, "height": 40})
    for ann_id, (image_id, category, crowd) in enumerate([(7, 90, 0), (7, 5, 1), (9, 5, 1)], start=1):
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": category,
                "iscrowd": crowd,
                "segmentation": segmentation,
                "bbox": bbox,
                "area": area,
            }
        )
    categories = [
        {"id": i, "name": n, "supercategory": "x"}
        for i, n in ((1, "person"), (5, "airplane"), (90, "toothbrush"))
    ]
    document = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(document))


def test_coco_layout_contiguous_labels_and_crowds(tmp_path):
    _coco_tree(tmp_path / "coco")
    assert (
        annotation_file("COCO", "", tmp_path / "coco", "val2017")
        == tmp_path / "coco/annotations/instances_val2017.json"
    )
    evaluation = build_insseg_dataset("COCO", tmp_path / "coco", "", "val2017", train=False)
    assert evaluation.category_ids == [1, 5, 90] and evaluation.class_names == (
        "person",
        "airplane",
        "toothbrush",
    )
    assert len(evaluation) == 3  # evaluation keeps every image
    target = evaluation[0]["target"]
    assert target["labels"].tolist() == [3]  # category 90 -> label 3; the crowd region is no target
    training = build_insseg_dataset("COCO", tmp_path / "coco", "", "val2017", train=True)
    assert [training.coco.imgs[i]["id"] for i in training.image_ids] == [7]  # 9: crowd only, 11: nothing
    assert "2 images without a non-crowd annotation left out" in training.notes[0]


def test_dataset_errors_say_what_to_do(insseg_root, coco_dir, tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"scannet_train40\.coco\.json not found; write it with `pri3d coco scannet --split train40",
    ):
        build_insseg_dataset("ScanNet", insseg_root, coco_dir, "train40", train=True)
    with pytest.raises(ValueError, match=r"dataset\.name='Pascal'"):
        build_insseg_dataset("Pascal", insseg_root, coco_dir, "val", train=False)
    with pytest.raises(FileNotFoundError, match="image folder"):
        build_insseg_dataset(
            "NYUv2", tmp_path / "nyu", coco_dir / "scannet_val.coco.json", "val", train=False
        )
    # an image whose size disagrees with the JSON is skipped with the reason
    _coco_tree(tmp_path / "coco")
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(
        tmp_path / "coco" / "val2017" / f"{7:012d}.jpg"
    )
    data = build_insseg_dataset("COCO", tmp_path / "coco", "", "val2017", train=False)
    assert "10×10, but" in data[0]["skip"] and "50×40" in data[0]["skip"]


def test_an_annotation_of_an_undeclared_category_is_an_error_naming_it(tmp_path):
    # Without the check the sample's target fails mid-run with a bare KeyError.
    _coco_tree(tmp_path / "coco")
    path = tmp_path / "coco" / "annotations" / "instances_val2017.json"
    document = json.loads(path.read_text())
    document["annotations"][0]["category_id"] = 91
    path.write_text(json.dumps(document))
    with pytest.raises(
        ValueError,
        match=r"instances_val2017\.json: annotation 1 \(image 7\) has category_id 91, "
        r"not among the file's categories \[1, 5, 90\]",
    ):
        build_insseg_dataset("COCO", tmp_path / "coco", "", "val2017", train=False)
