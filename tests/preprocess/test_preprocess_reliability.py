"""`pri3d preprocess scannet` on bad input and in bad conditions: degenerate frames, an output folder
that is read-only or in use by another run, and finished scenes changed after the fact.

The scans are tiny (two scenes of 8 frames at 12×16, no meshes) so that each run takes well under a
second.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import pri3d.cli
from pri3d.io.atomic import UnwritableFolderError
from pri3d.io.pairs import read_pair_list
from pri3d.io.scannet import write_label_tsv
from pri3d.io.sens import SensWriter
from pri3d.preprocess import scannet
from pri3d.preprocess.output_folder import LOCK_NAME, OutputFolderError, output_lock
from pri3d.preprocess.scannet import ScanNetOptions, preprocess_scannet

H, W = 12, 16
K = np.array([[14.0, 0, 7.5], [0, 14.0, 5.5], [0, 0, 1]])
SCENES = ("scene0000_00", "scene0001_00")
OPTIONS = ScanNetOptions(frame_skip=1, overlap_threshold=0.1)


def _pose(k: int) -> np.ndarray:
    angle = 0.05 * k
    pose = np.eye(4)
    pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    pose[:3, 3] = [0.05 * k, 0.0, 0.0]
    return pose


def _scans(root, poses: dict[int, np.ndarray] | None = None):
    """``root/scans`` with :data:`SCENES` (8 frames each; ``poses`` replaces some of the first's)."""
    rng = np.random.default_rng(0)
    for index, scene in enumerate(SCENES):
        (root / "scans" / scene).mkdir(parents=True)
        with SensWriter(
            root / "scans" / scene / f"{scene}.sens",
            sensor_name="test",
            intrinsic_color=K,
            intrinsic_depth=K,
            color_width=W,
            color_height=H,
            depth_width=W,
            depth_height=H,
        ) as sens:
            for k in range(8):
                pose = (poses or {}).get(k, _pose(k)) if index == 0 else _pose(k)
                depth = rng.integers(1500, 2500, size=(H, W)).astype(np.uint16)
                sens.write_frame(pose.astype(np.float32), np.full((H, W, 3), 30 * k, np.uint8), depth)
    write_label_tsv(
        root / "scannetv2-labels.combined.tsv",
        [{"id": 1, "raw_category": "wall", "category": "wall", "nyu40id": 1, "nyu40class": "wall"}],
    )
    return root / "scans"


def _run(scans, out, **kwargs):
    return preprocess_scannet(scans, out, OPTIONS, progress=False, **kwargs)


def test_an_absurd_pose_skips_its_frame_and_keeps_the_scene(tmp_path):
    # Before, the 1e30 translation overflowed the overlap's voxel keys and failed the whole scene
    # with a message that named no frame.
    absurd = _pose(3)
    absurd[:3, 3] = [1e30, 0.0, 0.0]
    scans = _scans(tmp_path, {3: absurd, 5: np.zeros((4, 4))})
    report = _run(scans, tmp_path / "out")
    assert report["scenes"]["failed"] == 0 and report["scenes"]["done"] == 2
    scene = report["per_scene"][SCENES[0]]
    assert scene["frames_exported"] == 6 and scene["frames_skipped"]["invalid_pose"] == 2
    assert scene["skipped_frames"] == {
        "3": "invalid_pose: camera 1e+30 m from the scene origin, beyond 1000 m",
        "5": "invalid_pose: all zero",
    }
    assert report["frames"]["skipped"]["invalid_pose"] == 2
    stored = json.loads((tmp_path / "out" / SCENES[0] / "scene_report.json").read_text())
    assert stored["skipped_frames"] == scene["skipped_frames"]
    assert stored["frames"] == [0, 1, 2, 4, 6, 7]


def test_a_second_run_on_the_same_output_folder_is_refused(tmp_path):
    scans, out = _scans(tmp_path), tmp_path / "out"
    out.mkdir()
    # Another process holds the folder, as a first `pri3d preprocess scannet` does for its lifetime.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pri3d.preprocess.output_folder import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('locked', flush=True)\n    sys.stdin.read()",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            OutputFolderError,
            match=rf"{re.escape(str(out))} is in use by another pri3d preprocess run \(pid {holder.pid} on ",
        ):
            _run(scans, out)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing was touched
    finally:
        holder.kill()  # the kernel releases the lock of a killed process: no stale lock is left
        holder.wait()
    assert _run(scans, out)["scenes"]["done"] == 2


def test_the_lock_is_held_for_the_whole_run_and_released_after_it(tmp_path, monkeypatch):
    scans, out = _scans(tmp_path), tmp_path / "out"
    refusals = []

    def build_pair_list_while_a_second_run_tries(*args, **kwargs):
        with pytest.raises(OutputFolderError, match=rf"pid {os.getpid()} on ") as refusal:
            _run(scans, out)
        refusals.append(refusal)
        return real_build(*args, **kwargs)

    real_build = scannet.build_pair_list
    monkeypatch.setattr(scannet, "build_pair_list", build_pair_list_while_a_second_run_tries)
    _run(scans, out)
    assert len(refusals) == 1
    with output_lock(out):  # free again
        pass


def test_the_command_prints_a_locked_folder_as_one_line(tmp_path, capsys):
    scans, out = _scans(tmp_path), tmp_path / "out"
    out.mkdir()
    with output_lock(out):
        code = pri3d.cli.main(["preprocess", "scannet", "--scans", str(scans), "--out", str(out), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"error: {out} is in use by another pri3d preprocess run" in err and "Traceback" not in err


def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path):
    scans, out = _scans(tmp_path), tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running with permission to write anywhere (root): chmod does not stop writes")
        with pytest.raises(
            UnwritableFolderError,
            match=rf"--out={re.escape(str(out))}: cannot write in {re.escape(str(out))} \(Permission denied\)",
        ):
            _run(scans, out)
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    # The same as above where the tests run as root: the write probe fails as on a read-only folder.
    scans, out = _scans(tmp_path), tmp_path / "out"
    (out / "splits").mkdir(parents=True)

    def refuse_in_splits(dir=None, **kwargs):
        if os.path.basename(dir) == "splits":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), dir)
        return real_temporary_file(dir=dir, **kwargs)

    real_temporary_file = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse_in_splits)
    with pytest.raises(
        UnwritableFolderError,
        match=rf"--out=.*: cannot write in {re.escape(str(out / 'splits'))} \(Permission denied\)",
    ):
        _run(scans, out)
    assert sorted(p.name for p in out.iterdir()) == ["splits"]


def test_an_output_folder_that_cannot_be_created_is_one_clear_error(tmp_path):
    scans = _scans(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(
        UnwritableFolderError,
        match=rf"--out={re.escape(str(tmp_path / 'file' / 'out'))}: cannot create the folder",
    ):
        _run(scans, tmp_path / "file" / "out")


def test_a_finished_scene_that_lost_files_is_redone(tmp_path):
    # A "finished" scene holding fewer frames than its pairs name is what two colliding runs left.
    scans, out = _scans(tmp_path), tmp_path / "out"
    first = _run(scans, out)
    first_list = read_pair_list(out / "splits" / "overlap10.txt")
    (out / SCENES[0] / "depth" / "4.png").unlink()
    overlap = out / SCENES[1] / "overlap.txt"
    overlap.write_text("".join(overlap.read_text().splitlines(keepends=True)[:3]))
    cut = overlap.stat().st_size
    report = _run(scans, out)
    assert report["scenes"] == {"selected": 2, "done": 2, "skipped_existing": 0, "failed": 0}
    assert report["redone"] == [
        {"scene": SCENES[0], "reason": "its scene_report.json lists files it lacks: depth/4.png"},
        {
            "scene": SCENES[1],
            "reason": f"overlap.txt has {cut} bytes, not the "
            f"{first['per_scene'][SCENES[1]]['file_bytes']['overlap.txt']} its "
            "scene_report.json records",
        },
    ]
    assert (out / SCENES[0] / "depth" / "4.png").is_file()
    assert report["pairs"] == first["pairs"]
    listed = read_pair_list(out / "splits" / "overlap10.txt")
    assert listed == first_list
    assert all(
        (out / s / "color" / f"{i}.jpg").is_file() and (out / s / "color" / f"{j}.jpg").is_file()
        for s, i, j, _ in listed
    )
    again = _run(scans, out)
    assert again["scenes"]["skipped_existing"] == 2 and again["redone"] == []


def test_a_scene_report_without_its_frame_list_is_redone(tmp_path):
    scans, out = _scans(tmp_path), tmp_path / "out"
    _run(scans, out)
    path = out / SCENES[0] / "scene_report.json"
    stored = json.loads(path.read_text())
    del stored["frames"]  # as written by pri3d before finished scenes were verified
    path.write_text(json.dumps(stored))
    report = _run(scans, out)
    assert [entry["scene"] for entry in report["redone"]] == [SCENES[0]]
    assert "does not list its frames" in report["redone"][0]["reason"]
    assert report["scenes"]["done"] == 1 and report["scenes"]["skipped_existing"] == 1


def test_a_scene_report_that_is_not_json_is_redone(tmp_path):
    scans, out = _scans(tmp_path), tmp_path / "out"
    _run(scans, out)
    (out / SCENES[1] / "scene_report.json").write_text('{"scene": "scene0001_00", "sta')  # cut short
    report = _run(scans, out)
    assert [entry["scene"] for entry in report["redone"]] == [SCENES[1]]
    assert report["redone"][0]["reason"].startswith("its scene_report.json is not valid JSON")
    assert json.loads((out / SCENES[1] / "scene_report.json").read_text())["status"] == "done"
