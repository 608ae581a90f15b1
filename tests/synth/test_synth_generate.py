"""The generator writes ScanNet's formats, and what it writes is geometrically exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from pri3d.cli import main
from pri3d.geometry import backproject_depth, invert_rigid, pixel_correspondences, project_points
from pri3d.io.images import read_depth_png, read_label_png, read_rgb
from pri3d.io.scannet import (
    read_aggregation_json,
    read_label_map,
    read_matrix_txt,
    read_mesh_ply,
    read_segs_json,
)
from pri3d.io.sens import SensReader
from pri3d.labels import SCANNET20_NYU40_IDS
from pri3d.synth.generate import SynthConfig, build_scene, generate, intrinsics_for, scene_name
from pri3d.synth.render import render

CONFIG = SynthConfig(
    scenes=2, frames=40, seed=3, color_size=(120, 160), depth_size=(60, 80), frames_25k_every=10,
    depth_noise=0.0, depth_holes=0.0, invalid_pose_fraction=0.1, val_fraction=0.5,
)  # fmt: skip


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, CONFIG, workers=1, progress=False)
    return root


def _sens_frames(root: Path, scene: str):
    with SensReader(root / "scans" / scene / f"{scene}.sens") as sens:
        header = sens.header
        frames = [
            (f.camera_to_world.copy(), f.pose_valid, f.decode_depth(), f.decode_color())
            for f in sens.frames()
        ]
    return header, frames


def test_layout_and_scene_lists(synth_root: Path):
    assert (synth_root / "scannetv2_train.txt").read_text().split() == [scene_name(0)]
    assert (synth_root / "scannetv2_val.txt").read_text().split() == [scene_name(1)]
    for i in range(CONFIG.scenes):
        name = scene_name(i)
        scan = synth_root / "scans" / name
        for suffix in (
            ".sens",
            "_vh_clean_2.ply",
            "_vh_clean_2.0.010000.segs.json",
            ".aggregation.json",
            ".txt",
        ):
            assert (scan / f"{name}{suffix}").is_file()
        frames = synth_root / "scannet_frames_25k" / name
        stems = sorted(p.stem for p in (frames / "color").glob("*.jpg"))
        assert stems == [f"{f:06d}" for f in range(0, CONFIG.frames, CONFIG.frames_25k_every)]
        for sub, ext in (("depth", "png"), ("label", "png"), ("instance", "png"), ("pose", "txt")):
            assert sorted(p.stem for p in (frames / sub).glob(f"*.{ext}")) == stems
    assert not list(synth_root.rglob("*.tmp"))


def test_sens_matches_generator_and_frames_25k(synth_root: Path):
    _scene, poses, invalid = build_scene(CONFIG, 0)
    header, frames = _sens_frames(synth_root, scene_name(0))
    assert (header.color_height, header.color_width) == CONFIG.color_size
    assert (header.depth_height, header.depth_width) == CONFIG.depth_size
    np.testing.assert_allclose(header.intrinsic_depth[:3, :3], intrinsics_for(CONFIG.depth_size), rtol=1e-6)
    np.testing.assert_allclose(header.intrinsic_color[:3, :3], intrinsics_for(CONFIG.color_size), rtol=1e-6)
    assert len(frames) == CONFIG.frames
    assert invalid.any(), "the config asks for invalid poses"
    frames_dir = synth_root / "scannet_frames_25k" / scene_name(0)
    for f, (pose, pose_valid, depth, color) in enumerate(frames):
        assert pose_valid == (not invalid[f])
        if pose_valid:
            np.testing.assert_allclose(pose, poses[f], atol=1e-6)
        else:
            assert np.isneginf(pose).all()
        assert depth.shape == CONFIG.depth_size and color.shape == (*CONFIG.color_size, 3)
        if f % CONFIG.frames_25k_every == 0:
            stem = f"{f:06d}"
            np.testing.assert_array_equal(read_depth_png(frames_dir / "depth" / f"{stem}.png"), depth)
            stored = read_matrix_txt(frames_dir / "pose" / f"{stem}.txt")
            np.testing.assert_array_equal(stored, poses[f] if pose_valid else np.full((4, 4), -np.inf))
            assert np.abs(read_rgb(frames_dir / "color" / f"{stem}.jpg").astype(int) - color).mean() < 3


def test_labels_instances_and_mesh_annotations(synth_root: Path):
    scene, _, _ = build_scene(CONFIG, 0)
    name = scene_name(0)
    label_map = read_label_map(synth_root / "scannetv2-labels.combined.tsv")
    groups = read_aggregation_json(synth_root / "scans" / name / f"{name}.aggregation.json")
    vertices, _colors, faces = read_mesh_ply(synth_root / "scans" / name / f"{name}_vh_clean_2.ply")
    segments = read_segs_json(synth_root / "scans" / name / f"{name}_vh_clean_2.0.010000.segs.json")
    assert len(segments) == len(vertices) and faces.max() < len(vertices)
    by_object = {g["objectId"]: g for g in groups}
    for obj in scene.objects:
        assert label_map[by_object[obj.object_id]["label"]] == obj.nyu40_id
    # every vertex belongs to exactly one annotated object
    seg_owner = {s: g["objectId"] for g in groups for s in g["segments"]}
    assert set(np.unique(segments).tolist()) == set(seg_owner)

    frames_dir = synth_root / "scannet_frames_25k" / name
    nyu40_present = {o.nyu40_id for o in scene.objects}
    for path in sorted((frames_dir / "label").glob("*.png")):
        label = read_label_png(path)
        instance = read_label_png(frames_dir / "instance" / path.name)
        assert label.shape == CONFIG.color_size and instance.dtype == np.uint16
        assert set(np.unique(label).tolist()) <= nyu40_present
        np.testing.assert_array_equal(instance // 1000, label)
        for inst in np.unique(instance % 1000):
            assert scene.objects[inst - 1].nyu40_id == label[instance % 1000 == inst][0]


def test_depth_lies_on_the_mesh(synth_root: Path):
    """Back-projected depth of every frame lands on the written mesh (vertices 2 cm apart)."""
    name = scene_name(0)
    _, poses, _invalid = build_scene(CONFIG, 0)
    header, frames = _sens_frames(synth_root, name)
    vertices, _, _ = read_mesh_ply(synth_root / "scans" / name / f"{name}_vh_clean_2.ply")
    tree = cKDTree(vertices)
    k = torch.from_numpy(header.intrinsic_depth[:3, :3].astype(np.float64))
    for f in range(0, CONFIG.frames, 7):
        depth = torch.from_numpy(frames[f][2].astype(np.float64) / 1000.0)
        cam = backproject_depth(depth, k)[depth > 0]
        world = cam @ torch.from_numpy(poses[f][:3, :3]).T + torch.from_numpy(poses[f][:3, 3])
        dist, _ = tree.query(world.numpy())
        # half a grid diagonal (1.42 cm) plus the 1 mm depth quantisation at grazing angles
        assert np.quantile(dist, 0.99) < 0.016, f"frame {f}"


def test_reprojected_depth_agrees_with_other_view(synth_root: Path):
    """Frame i's depth moved into frame j equals frame j's depth there (inverse depth is exact to
    interpolate bilinearly on planes), except where something occludes it."""
    name = scene_name(0)
    scene, poses, invalid = build_scene(CONFIG, 0)
    _, frames = _sens_frames(synth_root, name)
    k = intrinsics_for(CONFIG.depth_size)
    h, w = CONFIG.depth_size
    pairs = [(i, i + 4) for i in range(0, CONFIG.frames - 4, 6) if not invalid[i] and not invalid[i + 4]]
    assert pairs
    checked = 0
    for i, j in pairs:
        di = torch.from_numpy(frames[i][2].astype(np.float64) / 1000.0)
        dj = frames[j][2].astype(np.float64) / 1000.0
        faces_j = render(scene, k, poses[j], h, w, shade=False)
        surface = faces_j.part * 6 + faces_j.face
        cam_i = backproject_depth(di, torch.from_numpy(k))[di > 0]
        to_j = invert_rigid(torch.from_numpy(poses[j])) @ torch.from_numpy(poses[i])
        cam_j = cam_i @ to_j[:3, :3].T + to_j[:3, 3]
        rc, z = project_points(torch.from_numpy(k), cam_j)
        rc, z = rc.numpy(), z.numpy()
        r0, c0 = np.floor(rc[:, 0]).astype(int), np.floor(rc[:, 1]).astype(int)
        inside = (z > 0) & (r0 >= 0) & (c0 >= 0) & (r0 < h - 1) & (c0 < w - 1)
        r0, c0, rc, z = r0[inside], c0[inside], rc[inside], z[inside]
        corners = [(r0, c0), (r0 + 1, c0), (r0, c0 + 1), (r0 + 1, c0 + 1)]
        same = np.all([surface[r, c] == surface[r0, c0] for r, c in corners], axis=0)
        same &= np.all([dj[r, c] > 0 for r, c in corners], axis=0)
        fr, fc = rc[:, 0] - r0, rc[:, 1] - c0
        inv = (
            (1 - fr) * (1 - fc) / dj[r0, c0]
            + fr * (1 - fc) / dj[r0 + 1, c0]
            + (1 - fr) * fc / dj[r0, c0 + 1]
            + fr * fc / dj[r0 + 1, c0 + 1]
        )
        error = np.abs(z - 1.0 / inv)[same]
        visible = error < 0.05  # farther apart means an occluder in front
        assert visible.mean() > 0.8
        # 1 mm depth quantisation in both frames
        assert np.quantile(error[visible], 0.99) < 0.004, (i, j)
        checked += visible.sum()
    assert checked > 1000


def test_same_point_same_colour_in_every_view():
    scene, poses, _ = build_scene(CONFIG, 1)
    k = intrinsics_for((120, 160))
    a, b = render(scene, k, poses[0], 120, 160), render(scene, k, poses[5], 120, 160)
    w2c = [invert_rigid(torch.from_numpy(poses[f])) for f in (0, 5)]
    pos1, pos2 = pixel_correspondences(
        torch.from_numpy(a.depth),
        torch.from_numpy(k),
        w2c[0],
        torch.from_numpy(b.depth),
        torch.from_numpy(k),
        w2c[1],
        0.01,
    )
    assert len(pos1) > 5000
    diff = np.abs(a.color[pos1[:, 0], pos1[:, 1]].astype(int) - b.color[pos2[:, 0], pos2[:, 1]].astype(int))
    # nearest-pixel matching samples textures a fraction of a pixel apart; shading is view-independent
    assert np.median(diff) <= 2 and diff.mean() < 8


def test_frames_25_apart_overlap_partly():
    config = SynthConfig(scenes=1, frames=200, seed=5, depth_size=(60, 80))
    scene, poses, _ = build_scene(config, 0)
    k = torch.from_numpy(intrinsics_for((60, 80)))
    fractions = []
    for i in range(0, 175, 25):
        d1 = torch.from_numpy(render(scene, k.numpy(), poses[i], 60, 80, shade=False).depth)
        d2 = torch.from_numpy(render(scene, k.numpy(), poses[i + 25], 60, 80, shade=False).depth)
        w2c1, w2c2 = invert_rigid(torch.from_numpy(poses[i])), invert_rigid(torch.from_numpy(poses[i + 25]))
        pos1, _ = pixel_correspondences(d1, k, w2c1, d2, k, w2c2, 0.05)
        fractions.append(len(pos1) / (d1 > 0).sum().item())
    assert 0.2 < np.median(fractions) < 0.95, fractions


def test_mesh_is_dense_and_coloured_like_the_frames(synth_root: Path):
    name = scene_name(0)
    scene, poses, invalid = build_scene(CONFIG, 0)
    vertices, colors, _ = read_mesh_ply(synth_root / "scans" / name / f"{name}_vh_clean_2.ply")
    spacing, _ = cKDTree(vertices).query(vertices, k=2)
    assert np.median(spacing[:, 1]) <= CONFIG.mesh_spacing + 1e-6
    f = int(np.flatnonzero(~invalid)[0])
    k = intrinsics_for((120, 160))
    view = render(scene, k, poses[f], 120, 160)
    cam = (vertices - poses[f][:3, 3]) @ poses[f][:3, :3]
    z = cam[:, 2]
    ahead = z > 0.1
    u = np.round(k[0, 0] * cam[ahead, 0] / z[ahead] + k[0, 2]).astype(int)
    v = np.round(k[1, 1] * cam[ahead, 1] / z[ahead] + k[1, 2]).astype(int)
    inside = (u >= 0) & (u < 160) & (v >= 0) & (v < 120)
    u, v, zv, vc = u[inside], v[inside], z[ahead][inside], colors[ahead][inside]
    seen = np.abs(view.depth[v, u] - zv) < 0.005
    assert seen.sum() > 500
    assert np.median(np.abs(view.color[v[seen], u[seen]].astype(int) - vc[seen].astype(int))) <= 3


def test_furniture_has_parts_and_scenes_cover_the_benchmark_classes():
    config = SynthConfig(scenes=5)
    classes = set()
    for i in range(5):
        scene, _, _ = build_scene(config, i)
        parts_per_object = np.bincount(scene.object_ids, minlength=len(scene.objects))
        for obj in scene.objects:
            classes.add(obj.nyu40_id)
            if obj.raw_category in ("chair", "office chair"):
                assert parts_per_object[obj.object_id] >= 6  # four legs, seat, back
            if obj.raw_category == "table":
                assert parts_per_object[obj.object_id] >= 5  # top and legs
    assert set(SCANNET20_NYU40_IDS) <= classes


def _main_looks(config: SynthConfig) -> dict[str, list[tuple[int, np.ndarray]]]:
    """(pattern, base colour) of each furniture object's main material, by raw category."""
    looks: dict[str, list[tuple[int, np.ndarray]]] = {}
    for i in range(config.scenes):
        scene, _, _ = build_scene(config, i)
        for obj in scene.objects:
            if obj.raw_category in (
                "wall",
                "floor",
                "ceiling",
                "door",
                "window",
                "picture",
                "curtain",
                "shower curtain",
            ):
                continue
            part = int(np.flatnonzero(scene.object_ids == obj.object_id)[0])
            material = scene.materials[scene.material_ids[part]]
            looks.setdefault(obj.raw_category, []).append((material.pattern, material.base))
    return looks


def test_class_looks_make_colour_name_the_class():
    pooled = _main_looks(SynthConfig(scenes=5))
    looks = _main_looks(SynthConfig(scenes=5, class_looks=True))
    assert pooled.keys() == looks.keys()
    spread = {}
    for raw, items in looks.items():
        assert len({pattern for pattern, _ in items}) == 1  # one pattern per class
        bases = np.stack([base for _, base in items])
        spread[raw] = np.abs(bases - bases.mean(0)).max()
        assert spread[raw] < 0.25  # instances vary a little around the class's colour
    means = {raw: np.mean([base for _, base in items], 0) for raw, items in looks.items()}
    names = sorted(means)
    distances = [np.abs(means[a] - means[b]).max() for i, a in enumerate(names) for b in names[i + 1 :]]
    assert np.median(distances) > 0.15  # classes look different
    # the default pool: one class's instances take several patterns
    assert max(len({pattern for pattern, _ in items}) for items in pooled.values()) > 1


def test_deterministic_whatever_the_workers(tmp_path: Path):
    config = SynthConfig(
        scenes=2, frames=6, seed=11, depth_size=(30, 40), color_size=(30, 40), frames_25k_every=3
    )
    generate(tmp_path / "a", config, workers=1, progress=False)
    generate(tmp_path / "b", config, workers=2, progress=False)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_resume_skips_finished_scenes_and_refuses_other_settings(tmp_path: Path):
    config = SynthConfig(scenes=2, frames=4, depth_size=(30, 40), color_size=(30, 40))
    generate(tmp_path, config, progress=False)
    sens = tmp_path / "scans" / scene_name(0) / f"{scene_name(0)}.sens"
    before = sens.stat().st_mtime_ns
    summary = generate(tmp_path, config, progress=False)
    assert summary["generated"] == 0 and summary["skipped_existing"] == 2
    assert sens.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="frames"):
        generate(
            tmp_path,
            SynthConfig(scenes=2, frames=5, depth_size=(30, 40), color_size=(30, 40)),
            progress=False,
        )


def test_cli_synth_with_preview(tmp_path: Path, capsys):
    out = tmp_path / "data"
    code = main(
        [
            "synth",
            "scannet",
            "--out",
            str(out),
            "--scenes",
            "1",
            "--frames",
            "4",
            "--frames-25k-every",
            "2",
            "--color-size",
            "60x80",
            "--depth-size",
            "30x40",
            "--workers",
            "1",
            "--quiet",
            "--preview",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["generated"] == 1
    assert (out / "preview.png").stat().st_size > 10_000


def test_cli_rejects_bad_options_with_a_clear_message(tmp_path: Path, capsys):
    assert main(["synth", "scannet", "--out", str(tmp_path), "--depth-holes", "1.5"]) == 1
    assert "depth_holes=1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", "scannet", "--out", str(tmp_path), "--color-size", "640by480"])
    assert "HEIGHTxWIDTH" in capsys.readouterr().err
