"""`pri3d preprocess scannet` end to end on generated scans, checked against the generator's truth.

Three scans: scene0000_00 is whole, scene0001_00 has its .sens cut in the middle of a frame and
scene0002_00 has no mesh. All have some frames with invalid (-inf) poses.
"""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

import pri3d.cli
from pri3d.geometry import depth_to_world
from pri3d.io.chunk_boxes import read_chunk_boxes
from pri3d.io.images import read_depth_png
from pri3d.io.pairs import read_pair_list
from pri3d.io.point_cloud import load_point_cloud
from pri3d.io.scannet import read_matrix_txt
from pri3d.io.sens import SensReader
from pri3d.preprocess.cli import register, summary_lines
from pri3d.preprocess.overlap import overlap_matrix_kdtree, pair_scores, voxel_downsample
from pri3d.preprocess.scannet import ScanNetOptions, preprocess_scannet
from pri3d.synth.generate import SynthConfig, build_scene, generate
from pri3d.synth.mesh import tessellate

CONFIG = SynthConfig(
    scenes=3, frames=150, seed=3, color_size=(60, 80), depth_size=(60, 80), depth_noise=0.0,
    depth_holes=0.0, invalid_pose_fraction=0.1, degrees_per_frame=3.0,
)  # fmt: skip
SKIP = 5
GOOD, TRUNCATED, NO_MESH = "scene0000_00", "scene0001_00", "scene0002_00"


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, CONFIG, workers=1, progress=False)
    sens = root / "scans" / TRUNCATED / f"{TRUNCATED}.sens"
    data = sens.read_bytes()
    sens.write_bytes(data[: int(len(data) * 0.6)])  # the cut lands inside some frame's payload
    (root / "scans" / NO_MESH / f"{NO_MESH}_vh_clean_2.ply").unlink()
    return root / "scans"


@pytest.fixture(scope="module")
def run(scans, tmp_path_factory):
    """The whole command through its argparse parser, with two worker processes."""
    out = tmp_path_factory.mktemp("target")
    parser = argparse.ArgumentParser(prog="pri3d")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "preprocess",
            "scannet",
            "--scans",
            str(scans),
            "--out",
            str(out),
            "--frame-skip",
            str(SKIP),
            "--workers",
            "2",
            "--quiet",
        ]
    )
    code = args.run(args)
    return out, code, json.loads((out / "preprocess_report.json").read_text())


def _expected_invalid(index: int) -> int:
    _, _, invalid = build_scene(CONFIG, index)
    return int(invalid[::SKIP].sum())


@pytest.mark.slow
def test_report_counts_and_failures(run):
    out, code, report = run
    assert code == 1  # one scene failed
    assert report["scenes"] == {"selected": 3, "done": 2, "skipped_existing": 0, "failed": 1}
    (failure,) = report["failures"]
    assert failure["scene"] == TRUNCATED
    assert "SensFormatError" in failure["reason"] and f"{TRUNCATED}.sens: frame" in failure["reason"]
    good, no_mesh = report["per_scene"][GOOD], report["per_scene"][NO_MESH]
    for index, scene in ((0, good), (2, no_mesh)):
        assert scene["status"] == "done"
        assert scene["frames_read"] == len(range(0, CONFIG.frames, SKIP))
        assert scene["frames_skipped"]["invalid_pose"] == _expected_invalid(index)
        assert scene["frames_exported"] == scene["frames_read"] - _expected_invalid(index)
    assert _expected_invalid(0) + _expected_invalid(2) > 0  # the test exercises skipping
    assert report["frames"]["exported"] == good["frames_exported"] + no_mesh["frames_exported"]
    assert report["frames"]["skipped"]["invalid_pose"] == _expected_invalid(0) + _expected_invalid(2)
    assert no_mesh["pointcloud"].startswith("skipped:") and "mesh not found" in no_mesh["pointcloud"]
    assert good["pointcloud"].startswith("written (labelled")
    n_good, n_no_mesh = good["frames_exported"], no_mesh["frames_exported"]
    assert report["pairs"]["total"] == n_good * (n_good - 1) // 2 + n_no_mesh * (n_no_mesh - 1) // 2
    lines = summary_lines(report)
    assert any(line.startswith(f"FAILED {TRUNCATED}") for line in lines)
    # outputs appear only for complete scenes; the lock file stays (see output_folder.output_lock)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [GOOD, NO_MESH, "pointcloud", "splits", "preprocess_report.json", ".preprocess.lock"]
    )
    assert [p.name for p in (out / "pointcloud").iterdir()] == [f"{GOOD}.npz"]


@pytest.mark.slow
def test_frames_equal_the_generator_and_the_sens(run, scans):
    out, _, _ = run
    _, poses, invalid = build_scene(CONFIG, 0)
    kept = [f for f in range(0, CONFIG.frames, SKIP) if not invalid[f]]
    assert sorted(int(p.stem) for p in (out / GOOD / "pose").iterdir()) == kept
    with SensReader(scans / GOOD / f"{GOOD}.sens") as sens:
        stored = {frame.index: frame for frame in sens.frames(step=SKIP)}
        header = sens.header
    for f in kept:
        pose = read_matrix_txt(out / GOOD / "pose" / f"{f}.txt")
        np.testing.assert_array_equal(pose.astype(np.float32), poses[f].astype(np.float32))
        np.testing.assert_array_equal(
            read_depth_png(out / GOOD / "depth" / f"{f}.png"), stored[f].decode_depth()
        )
        assert (out / GOOD / "color" / f"{f}.jpg").read_bytes() == stored[f].color_bytes
    intrinsic = read_matrix_txt(out / GOOD / "intrinsic" / "intrinsic_depth.txt")
    np.testing.assert_array_equal(intrinsic.astype(np.float32), header.intrinsic_depth)


def _clouds_from_exported_files(folder, frames):
    """Independent path: exported depth PNG + pose + intrinsics through geometry.depth_to_world."""
    intrinsic = torch.from_numpy(read_matrix_txt(folder / "intrinsic" / "intrinsic_depth.txt"))
    raw, clouds = [], []
    for f in frames:
        depth = torch.from_numpy(read_depth_png(folder / "depth" / f"{f}.png").astype(np.float64) / 1000)
        pose = torch.from_numpy(read_matrix_txt(folder / "pose" / f"{f}.txt"))
        points, valid = depth_to_world(depth, intrinsic, pose)
        raw.append(points[valid].numpy())
        clouds.append(voxel_downsample(raw[-1]))
    return raw, clouds


@pytest.mark.slow
def test_pairs_match_the_kdtree_definition(run):
    out, _, report = run
    folder = out / GOOD
    frames = sorted(int(p.stem) for p in (folder / "pose").iterdir())
    raw, clouds = _clouds_from_exported_files(folder, frames)
    first, second, scores = pair_scores(overlap_matrix_kdtree(clouds))
    pairs = read_pair_list(folder / "overlap.txt")
    assert (
        (folder / "overlap.txt")
        .read_text()
        .splitlines()[0]
        .startswith(f"{GOOD}/color/{frames[first[0]]}.jpg ")
    )
    assert [(scene, i, j) for scene, i, j, _ in pairs] == [
        (GOOD, frames[i], frames[j]) for i, j in zip(first, second)
    ]
    written = np.array([pair.score for pair in pairs])
    np.testing.assert_allclose(written, scores, atol=2e-6)  # 6 decimals in the file
    assert ((written >= 0) & (written <= 1)).all()
    assert written.max() > 0.3 > written.min()  # both kinds of pairs occur

    # the combined list: every pair >= 0.3 of every finished scene, paths relative to TARGET
    listed = read_pair_list(out / "splits" / "overlap30.txt")
    expected = [
        pair
        for scene in (GOOD, NO_MESH)
        for pair in read_pair_list(out / scene / "overlap.txt")
        if pair.score >= 0.3
    ]
    assert listed == expected
    assert report["pairs"]["at_threshold"] == len(listed) == report["pair_list"]["pairs"]
    for scene, i, j, _ in listed:
        assert (out / scene / "color" / f"{i}.jpg").is_file() and (
            out / scene / "color" / f"{j}.jpg"
        ).is_file()

    # chunk boxes: the frame's valid points padded by the margin
    boxes = read_chunk_boxes(folder / "chunk_boxes.txt")
    assert list(boxes) == frames
    for f, points in zip(frames, raw):
        np.testing.assert_allclose(boxes[f][:3], points.min(axis=0) - 0.1, atol=1e-4)
        np.testing.assert_allclose(boxes[f][3:], points.max(axis=0) + 0.1, atol=1e-4)


@pytest.mark.slow
def test_point_cloud_labels_equal_the_generator(run):
    out, _, _ = run
    scene, _, _ = build_scene(CONFIG, 0)
    mesh = tessellate(scene, spacing=CONFIG.mesh_spacing)
    object_of_vertex = mesh.segment_object[mesh.segments]  # [N] object id
    nyu40 = np.array([obj.nyu40_id for obj in scene.objects])
    cloud = load_point_cloud(out / "pointcloud" / f"{GOOD}.npz")
    np.testing.assert_array_equal(cloud["points"], mesh.vertices)
    np.testing.assert_array_equal(cloud["colors"], mesh.colors)
    np.testing.assert_array_equal(cloud["semantic"], nyu40[object_of_vertex])
    np.testing.assert_array_equal(cloud["instance"], object_of_vertex + 1)


@pytest.mark.slow
def test_resume_skips_finished_scenes_and_a_new_threshold_only_rebuilds_the_list(run, scans, tmp_path):
    first_out, _, _ = run
    out = tmp_path / "target"
    shutil.copytree(first_out, out)
    pose_file = out / GOOD / "pose" / "0.txt"
    before = pose_file.stat().st_mtime_ns
    (out / f"{TRUNCATED}.tmp").mkdir()  # debris of an interrupted run
    report = preprocess_scannet(
        scans, out, ScanNetOptions(frame_skip=SKIP, overlap_threshold=0.5), progress=False
    )
    assert report["scenes"] == {"selected": 3, "done": 0, "skipped_existing": 2, "failed": 1}
    assert pose_file.stat().st_mtime_ns == before
    assert not (out / f"{TRUNCATED}.tmp").exists()
    assert report["per_scene"][GOOD]["frames_exported"] == run[2]["per_scene"][GOOD]["frames_exported"]
    assert report["frames"] == run[2]["frames"] and report["pairs"]["total"] == run[2]["pairs"]["total"]
    listed = read_pair_list(out / "splits" / "overlap50.txt")
    assert listed and all(pair.score >= 0.5 for pair in listed)
    assert report["pairs"]["at_threshold"] == len(listed)

    with pytest.raises(ValueError, match="frame_skip=5, this run asks frame_skip=10"):
        preprocess_scannet(scans, out, ScanNetOptions(frame_skip=10), progress=False)


@pytest.mark.slow
def test_unknown_label_fails_only_that_scene(scans, tmp_path):
    bad_scans = tmp_path / "scans"
    shutil.copytree(scans / GOOD, bad_scans / GOOD)
    shutil.copytree(scans / NO_MESH, bad_scans / NO_MESH)
    aggregation = bad_scans / GOOD / f"{GOOD}.aggregation.json"
    document = json.loads(aggregation.read_text())
    document["segGroups"][0]["label"] = "flux capacitor"
    aggregation.write_text(json.dumps(document))
    out = tmp_path / "target"
    report = preprocess_scannet(
        bad_scans,
        out,
        ScanNetOptions(frame_skip=10),
        labels=scans.parent / "scannetv2-labels.combined.tsv",
        progress=False,
    )
    assert report["scenes"]["failed"] == 1 and report["scenes"]["done"] == 1
    assert "flux capacitor" in report["failures"][0]["reason"]
    assert not (out / GOOD).exists() and not (out / f"{GOOD}.tmp").exists()
    assert not (out / "pointcloud" / f"{GOOD}.npz").exists()


def test_user_errors_are_one_line(capsys, tmp_path):
    code = pri3d.cli.main(
        ["preprocess", "scannet", "--scans", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "scans folder not found" in err
    frames_25k = tmp_path / "scannet_frames_25k" / "scene0000_00" / "color"
    frames_25k.mkdir(parents=True)
    code = pri3d.cli.main(
        ["preprocess", "scannet", "--scans", str(frames_25k.parent.parent), "--out", str(tmp_path)]
    )
    assert code == 1 and "pre-training needs the raw scans" in capsys.readouterr().err
    assert pri3d.cli.main(["preprocess"]) == 2  # no dataset: help


def test_parser_defaults():
    parser = argparse.ArgumentParser(prog="pri3d")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["preprocess", "scannet", "--scans", "s", "--out", "o", "--scenes", "a,b"])
    assert (args.frame_skip, args.overlap_threshold, args.scenes, args.labels) == (25, 0.3, ["a", "b"], None)
    assert args.run.__name__ == "run_scannet" and args.workers >= 1
