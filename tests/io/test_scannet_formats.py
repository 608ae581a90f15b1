"""ScanNet mesh, segmentation, aggregation, label-table and matrix files.

(Named test_scannet_formats.py, not test_scannet.py, so the basename cannot clash with other test folders.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement, PlyListProperty

from pri3d.io.scannet import (
    LABEL_TSV_COLUMNS,
    SEGS_PARAMS,
    read_aggregation_json,
    read_label_map,
    read_matrix_txt,
    read_mesh_ply,
    read_segs_json,
    scene_mesh_paths,
    write_aggregation_json,
    write_label_tsv,
    write_matrix_txt,
    write_mesh_ply,
    write_segs_json,
)

SCANNET_PLY_HEADER = [
    "ply",
    "format binary_little_endian 1.0",
    "element vertex 50",
    "property float x",
    "property float y",
    "property float z",
    "property uchar red",
    "property uchar green",
    "property uchar blue",
    "property uchar alpha",
    "element face 80",
    "property list uchar int vertex_indices",
    "end_header",
]


def _mesh(num_vertices: int = 50, num_faces: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    vertices = rng.normal(size=(num_vertices, 3)).astype(np.float32)
    colors = rng.integers(0, 256, size=(num_vertices, 3), dtype=np.uint8)
    faces = rng.integers(0, num_vertices, size=(num_faces, 3))
    return vertices, colors, faces


def test_mesh_round_trip_is_exact(tmp_path: Path) -> None:
    vertices, colors, faces = _mesh()
    path = tmp_path / "scene0000_00_vh_clean_2.ply"
    write_mesh_ply(path, vertices, colors, faces)
    read_vertices, read_colors, read_faces = read_mesh_ply(path)
    assert (read_vertices.dtype, read_colors.dtype, read_faces.dtype) == (np.float32, np.uint8, np.int64)
    np.testing.assert_array_equal(read_vertices, vertices)
    np.testing.assert_array_equal(read_colors, colors)
    np.testing.assert_array_equal(read_faces, faces)


def test_mesh_layout_matches_scannet(tmp_path: Path) -> None:
    vertices, colors, faces = _mesh()
    path = tmp_path / "mesh.ply"
    write_mesh_ply(path, vertices, colors, faces)
    data = path.read_bytes()
    header_end = data.index(b"end_header\n") + len(b"end_header\n")
    assert data[:header_end].decode("ascii").splitlines() == SCANNET_PLY_HEADER
    # Body: 50 vertices of 3*4 + 4 bytes, 80 faces of 1 + 3*4 bytes, nothing else.
    assert len(data) - header_end == 50 * 16 + 80 * 13

    # plyfile's generic (non-memory-mapped) reader sees a true variable-length list property.
    ply = PlyData.read(str(path))
    face_property = ply["face"].properties[0]
    assert isinstance(face_property, PlyListProperty)
    assert (face_property.name, face_property.len_dtype, face_property.val_dtype) == (
        "vertex_indices",
        "u1",
        "i4",
    )
    assert ply["face"].data["vertex_indices"].dtype == object
    np.testing.assert_array_equal(np.stack(ply["face"].data["vertex_indices"]), faces)
    np.testing.assert_array_equal(ply["vertex"].data["alpha"], 255)
    np.testing.assert_array_equal(ply["vertex"].data["y"], vertices[:, 1])


def test_mesh_without_faces(tmp_path: Path) -> None:
    vertices, colors, _ = _mesh()
    empty = tmp_path / "empty_faces.ply"
    write_mesh_ply(empty, vertices, colors, np.zeros((0, 3), np.int64))
    assert read_mesh_ply(empty)[2].shape == (0, 3)

    # A point cloud with no face element at all.
    points = np.zeros(
        len(vertices), [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    )
    points["x"] = vertices[:, 0]
    cloud = tmp_path / "cloud.ply"
    PlyData([PlyElement.describe(points, "vertex")]).write(str(cloud))
    read_vertices, _, read_faces = read_mesh_ply(cloud)
    assert read_faces.shape == (0, 3) and read_faces.dtype == np.int64
    np.testing.assert_array_equal(read_vertices[:, 0], vertices[:, 0])


def test_mesh_reader_rejects_non_triangles(tmp_path: Path) -> None:
    vertex = np.zeros(
        4, [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    )
    polygons = np.empty(2, [("vertex_indices", object)])
    polygons["vertex_indices"] = [np.array([0, 1, 2]), np.array([0, 1, 2, 3])]
    path = tmp_path / "quads.ply"
    PlyData([PlyElement.describe(vertex, "vertex"), PlyElement.describe(polygons, "face")]).write(str(path))
    with pytest.raises(ValueError, match=r"quads\.ply: PLY faces must be triangles, .* \[3, 4\] vertices"):
        read_mesh_ply(path)


@pytest.mark.parametrize(
    ("vertices", "colors", "faces", "expected"),
    [
        (
            np.zeros((4, 2), np.float32),
            np.zeros((4, 3), np.uint8),
            np.zeros((0, 3), int),
            r"vertices must be float \[N, 3\]",
        ),
        (
            np.zeros((4, 3), np.float32),
            np.zeros((4, 3), np.float32),
            np.zeros((0, 3), int),
            r"colors must be uint8 \[4, 3\]",
        ),
        (
            np.zeros((4, 3), np.float32),
            np.zeros((4, 3), np.uint8),
            np.array([[0, 1, 4]]),
            r"face indices span 0\.\.4, expected 0\.\.3",
        ),
        (
            np.zeros((4, 3), np.float32),
            np.zeros((4, 3), np.uint8),
            np.zeros((2, 4), int),
            r"faces must be int \[F, 3\]",
        ),
    ],
)
def test_write_mesh_validates(tmp_path: Path, vertices, colors, faces, expected: str) -> None:
    with pytest.raises(ValueError, match=r"bad\.ply: " + expected):
        write_mesh_ply(tmp_path / "bad.ply", vertices, colors, faces)


def test_segs_round_trip_and_format(tmp_path: Path) -> None:
    seg_indices = np.random.default_rng(3).integers(0, 2000, size=500)
    path = tmp_path / "scene0000_00_vh_clean_2.0.010000.segs.json"
    write_segs_json(path, "scene0000_00", seg_indices)
    document = json.loads(path.read_text())
    assert document["params"] == SEGS_PARAMS
    assert document["params"]["kThresh"] == "0.0001"
    assert document["sceneId"] == "scene0000_00"
    assert document["segIndices"] == seg_indices.tolist()
    read = read_segs_json(path)
    assert read.dtype == np.int64
    np.testing.assert_array_equal(read, seg_indices)


def test_segs_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.segs.json"
    path.write_text('{"sceneId": "x"}')
    with pytest.raises(ValueError, match=r"broken\.segs\.json: missing key 'segIndices'"):
        read_segs_json(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.segs\.json: not valid JSON"):
        read_segs_json(path)
    with pytest.raises(ValueError, match=r"broken\.segs\.json: seg_indices must be int \[N\]"):
        write_segs_json(path, "x", np.zeros((2, 2), np.int64))


def test_aggregation_round_trip_and_format(tmp_path: Path) -> None:
    groups = [
        {"objectId": 0, "label": "chair", "segments": [3, 17, 22]},
        {"objectId": 1, "label": "kitchen counter", "segments": [5]},
        {"objectId": 2, "label": "wall", "segments": []},
    ]
    path = tmp_path / "scene0000_00.aggregation.json"
    write_aggregation_json(path, "scene0000_00", groups)
    document = json.loads(path.read_text())
    assert document["sceneId"] == "scannet.scene0000_00"
    assert document["appId"] == "pri3d.synth"
    assert document["segmentsFile"] == "scannet.scene0000_00_vh_clean_2.0.010000.segs.json"
    assert document["segGroups"][1] == {"id": 1, "objectId": 1, "segments": [5], "label": "kitchen counter"}
    assert read_aggregation_json(path) == groups


def test_aggregation_rejects_bad_groups(tmp_path: Path) -> None:
    path = tmp_path / "agg.json"
    with pytest.raises(ValueError, match=r"agg\.json: group 1: objectId 0 is used twice"):
        write_aggregation_json(path, "s", [{"objectId": 0, "label": "a", "segments": []}] * 2)
    with pytest.raises(ValueError, match=r"agg\.json: group 0: missing key 'label'"):
        write_aggregation_json(path, "s", [{"objectId": 0, "segments": []}])
    path.write_text('{"segGroups": [{"objectId": 0, "label": "a"}]}')
    with pytest.raises(ValueError, match=r"agg\.json: segGroups\[0\]: missing key 'segments'"):
        read_aggregation_json(path)


def test_label_tsv_round_trip(tmp_path: Path) -> None:
    rows = [
        {"id": 1, "raw_category": "wall", "category": "wall", "nyu40id": 1, "nyu40class": "wall"},
        {
            "id": 2,
            "raw_category": "chair",
            "category": "chair",
            "count": 4,
            "nyu40id": 5,
            "nyu40class": "chair",
            "eigen13id": 11,
        },
        {
            "id": 3,
            "raw_category": "kitchen cabinets",
            "category": "kitchen cabinet",
            "nyu40id": 3,
            "nyu40class": "cabinet",
        },
        {"id": 4, "raw_category": "object", "category": "object", "nyu40id": "", "nyu40class": ""},
    ]
    path = tmp_path / "scannetv2-labels.combined.tsv"
    write_label_tsv(path, rows)
    lines = path.read_text().splitlines()
    assert lines[0] == "\t".join(LABEL_TSV_COLUMNS)
    assert lines[0].startswith("id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class")
    assert all(len(line.split("\t")) == 17 for line in lines)
    assert read_label_map(path) == {"wall": 1, "chair": 5, "kitchen cabinets": 3}  # empty nyu40id skipped
    assert read_label_map(path, to="id") == {"wall": 1, "chair": 2, "kitchen cabinets": 3, "object": 4}
    assert read_label_map(path, to="eigen13id") == {"chair": 11}


def test_label_map_reads_scannet_style_file(tmp_path: Path) -> None:
    # Rows in the shape of the real scannetv2-labels.combined.tsv (including a quote mark in a name).
    lines = [
        "\t".join(LABEL_TSV_COLUMNS),
        "1\twall\twall\t8277\t1\t12\twall\twall\tWall\t\t\t\t\tn04546855\twall.n.01\twall\t1",
        "2\tchair\tchair\t4646\t5\t4\tchair\tchair\tChair\tchair\tchair\tchair\t03001627\tn03001627\tchair.n.01\tchair\t3",
        '40\t5" monitor\tmonitor\t2\t40\t7\tmonitor\totherprop\tObjects\t\t\t\t\t\t\tmisc\t40',
        "488\tpaper towel\tpaper towel\t35\t\t\t\t\t\t\t\t\t\t\t\t\t",
    ]
    path = tmp_path / "scannetv2-labels.combined.tsv"
    path.write_text("\n".join(lines) + "\n")
    assert read_label_map(path) == {"wall": 1, "chair": 5, '5" monitor': 40}
    assert read_label_map(path, to="mpcat40index") == {"wall": 1, "chair": 3, '5" monitor': 40}


def test_label_table_errors_name_file_and_column(tmp_path: Path) -> None:
    path = tmp_path / "labels.tsv"
    path.write_text("id\traw_category\tcategory\n1\twall\twall\n")
    with pytest.raises(ValueError, match=r"labels\.tsv: label table has no column 'nyu40id'"):
        read_label_map(path)
    path.write_text("raw_category\tnyu40id\nwall\tone\n")
    with pytest.raises(
        ValueError, match=r"labels\.tsv: line 2: column 'nyu40id' is 'one', expected an integer"
    ):
        read_label_map(path)
    with pytest.raises(
        ValueError, match=r"labels\.tsv: row 0: missing columns \['nyu40class'\], unknown columns \['nyu40'\]"
    ):
        write_label_tsv(path, [{"id": 1, "raw_category": "a", "category": "a", "nyu40id": 1, "nyu40": 1}])


@pytest.mark.parametrize("value", [41, -1, 255])
def test_label_table_rejects_nyu40_ids_outside_0_to_40(tmp_path: Path, value: int) -> None:
    # A wrong id would otherwise flow into every point cloud labelled with that category.
    path = tmp_path / "scannetv2-labels.combined.tsv"
    path.write_text(f"raw_category\tnyu40id\teigen13id\nwall\t1\t12\nlamp\t{value}\t14\n")
    with pytest.raises(
        ValueError,
        match=rf"scannetv2-labels\.combined\.tsv: line 3: raw_category 'lamp' has nyu40id {value}, "
        r"expected 0\.\.40",
    ):
        read_label_map(path)
    with pytest.raises(ValueError, match=r"line 3: raw_category 'lamp' has eigen13id 14, expected 0\.\.13"):
        read_label_map(path, to="eigen13id")


def test_matrix_round_trip_float32_and_inf(tmp_path: Path) -> None:
    pose = np.random.default_rng(4).normal(size=(4, 4)).astype(np.float32)
    pose[3] = [0, 0, 0, 1]
    path = tmp_path / "000000.txt"
    write_matrix_txt(path, pose)
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and all(len(line.split()) == 4 for line in lines)
    read = read_matrix_txt(path)
    assert read.dtype == np.float64 and read.shape == (4, 4)
    np.testing.assert_array_equal(read.astype(np.float32), pose)  # every float32 bit survives

    invalid = np.full((4, 4), -np.inf, np.float32)
    write_matrix_txt(path, invalid)
    assert path.read_text().split()[0] == "-inf"
    np.testing.assert_array_equal(read_matrix_txt(path), invalid)


def test_matrix_round_trip_float64_and_ints(tmp_path: Path) -> None:
    values = np.array([[0.1, 1 / 3, -2.5e-12], [1e300, np.inf, 0.0]])
    write_matrix_txt(tmp_path / "f64.txt", values)
    np.testing.assert_array_equal(read_matrix_txt(tmp_path / "f64.txt"), values)
    intrinsics = np.array([[577, 0, 319], [0, 577, 239], [0, 0, 1]])
    write_matrix_txt(tmp_path / "intrinsics_depth.txt", intrinsics)
    assert (tmp_path / "intrinsics_depth.txt").read_text().splitlines()[0] == "577 0 319"
    np.testing.assert_array_equal(read_matrix_txt(tmp_path / "intrinsics_depth.txt"), intrinsics)


def test_matrix_reads_scannet_pose_text(tmp_path: Path) -> None:
    path = tmp_path / "pose.txt"
    path.write_text("-0.955421 0.119616 -0.269932 2.655830 \n0.295248 0.388339 -0.872939 2.981598 \n\n")
    np.testing.assert_allclose(
        read_matrix_txt(path),
        [[-0.955421, 0.119616, -0.269932, 2.655830], [0.295248, 0.388339, -0.872939, 2.981598]],
    )


def test_matrix_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pose.txt"
    path.write_text("1 2 3\n4 5\n")
    with pytest.raises(ValueError, match=r"pose\.txt: line 2 has 2 values, earlier rows have 3"):
        read_matrix_txt(path)
    path.write_text("1 2 x\n")
    with pytest.raises(ValueError, match=r"pose\.txt: line 1: not a row of numbers"):
        read_matrix_txt(path)
    path.write_text("\n")
    with pytest.raises(ValueError, match=r"pose\.txt: no matrix rows found"):
        read_matrix_txt(path)
    with pytest.raises(ValueError, match=r"pose\.txt: expected a non-empty numeric \[R, C\] matrix"):
        write_matrix_txt(path, np.zeros(4))


def test_scene_mesh_paths(tmp_path: Path) -> None:
    paths = scene_mesh_paths(tmp_path / "scene0011_01", "scene0011_01")
    folder = tmp_path / "scene0011_01"
    assert paths == {
        "mesh": folder / "scene0011_01_vh_clean_2.ply",
        "segs": folder / "scene0011_01_vh_clean_2.0.010000.segs.json",
        "aggregation": folder / "scene0011_01.aggregation.json",
        "sens": folder / "scene0011_01.sens",
    }
