"""Labelled scene clouds from mesh + segs + aggregation + label table, and the .npz format."""

from __future__ import annotations

import numpy as np
import pytest

from pri3d.io.point_cloud import load_point_cloud, save_point_cloud
from pri3d.io.scannet import write_aggregation_json, write_mesh_ply, write_segs_json
from pri3d.preprocess.pointcloud import scene_point_cloud

SCENE = "scene0007_00"
LABELS = {"chair": 5, "table": 7, "wall": 1}


def _write_scan(folder, groups, segments=(0, 0, 1, 1, 2, 2, 3, 3)):
    folder.mkdir(parents=True, exist_ok=True)
    n = len(segments)
    vertices = np.arange(3 * n, dtype=np.float32).reshape(n, 3) / 10
    colors = (np.arange(3 * n).reshape(n, 3) * 7 % 256).astype(np.uint8)
    write_mesh_ply(folder / f"{SCENE}_vh_clean_2.ply", vertices, colors, np.array([[0, 1, 2]]))
    write_segs_json(folder / f"{SCENE}_vh_clean_2.0.010000.segs.json", SCENE, np.array(segments))
    write_aggregation_json(folder / f"{SCENE}.aggregation.json", SCENE, groups)
    return vertices, colors


def test_labels_follow_segments_and_groups(tmp_path):
    groups = [
        {"objectId": 0, "label": "wall", "segments": [0, 3]},
        {"objectId": 1, "label": "chair", "segments": [2, 9]},  # segment 9 has no vertices
    ]
    vertices, colors = _write_scan(tmp_path, groups)
    cloud, note = scene_point_cloud(tmp_path, SCENE, LABELS)
    assert note == "labelled"
    np.testing.assert_array_equal(cloud["points"], vertices)
    np.testing.assert_array_equal(cloud["colors"], colors)
    np.testing.assert_array_equal(cloud["semantic"], [1, 1, 0, 0, 5, 5, 1, 1])
    np.testing.assert_array_equal(cloud["instance"], [1, 1, 0, 0, 2, 2, 1, 1])
    assert cloud["semantic"].dtype == np.int32 and cloud["instance"].dtype == np.int32


def test_later_group_wins_a_shared_segment(tmp_path):
    groups = [
        {"objectId": 0, "label": "table", "segments": [1]},
        {"objectId": 4, "label": "chair", "segments": [1]},
    ]
    _write_scan(tmp_path, groups)
    cloud, _ = scene_point_cloud(tmp_path, SCENE, LABELS)
    np.testing.assert_array_equal(cloud["semantic"][2:4], [5, 5])
    np.testing.assert_array_equal(cloud["instance"][2:4], [5, 5])


def test_unknown_raw_category_is_an_error_naming_it(tmp_path):
    _write_scan(tmp_path, [{"objectId": 0, "label": "flux capacitor", "segments": [0]}])
    with pytest.raises(ValueError, match=r"aggregation\.json: raw categories \['flux capacitor'\]"):
        scene_point_cloud(tmp_path, SCENE, LABELS)


def test_missing_annotation_gives_an_unlabelled_cloud_and_missing_mesh_raises(tmp_path):
    _write_scan(tmp_path, [])
    (tmp_path / f"{SCENE}.aggregation.json").unlink()
    cloud, note = scene_point_cloud(tmp_path, SCENE, LABELS)
    assert note == f"unlabelled: no {SCENE}.aggregation.json"
    assert not cloud["semantic"].any() and not cloud["instance"].any()
    (tmp_path / f"{SCENE}_vh_clean_2.ply").unlink()
    with pytest.raises(FileNotFoundError, match="mesh not found"):
        scene_point_cloud(tmp_path, SCENE, LABELS)


def test_segment_count_must_match_the_mesh(tmp_path):
    _write_scan(tmp_path, [])
    write_segs_json(tmp_path / f"{SCENE}_vh_clean_2.0.010000.segs.json", SCENE, np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="3 segment ids for the 8 vertices"):
        scene_point_cloud(tmp_path, SCENE, LABELS)


def test_npz_round_trip_without_pickle(tmp_path):
    groups = [{"objectId": 0, "label": "wall", "segments": [0]}]
    _write_scan(tmp_path / "scan", groups)
    cloud, _ = scene_point_cloud(tmp_path / "scan", SCENE, LABELS)
    path = tmp_path / "pointcloud" / f"{SCENE}.npz"
    save_point_cloud(path, cloud)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    loaded = load_point_cloud(path)
    for name, array in cloud.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["colors", "instance", "points", "semantic"]
    with pytest.raises(ValueError, match="'colors' has shape"):
        save_point_cloud(path, {**cloud, "colors": cloud["colors"][:3]})


def test_a_cut_short_cloud_is_an_error_naming_the_file(tmp_path):
    groups = [{"objectId": 0, "label": "wall", "segments": [0]}]
    _write_scan(tmp_path / "scan", groups)
    cloud, _ = scene_point_cloud(tmp_path / "scan", SCENE, LABELS)
    path = tmp_path / f"{SCENE}.npz"
    save_point_cloud(path, cloud)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{SCENE}\.npz: not a readable point cloud \.npz"):
        load_point_cloud(path)
    with pytest.raises(FileNotFoundError):
        load_point_cloud(tmp_path / "absent.npz")
