"""Pre-training error paths: a non-finite loss, unreadable samples, bad settings, and bf16 + channels_last."""

from __future__ import annotations

import argparse
import json
import math
import shutil

import pytest
import torch

from pri3d import cli
from pri3d.engine.checkpoint import latest_checkpoint, load_checkpoint
from pri3d.engine.config import load_config
from pri3d.engine.trainer import TrainingStopped
from pri3d.models.pri3d import Pri3D
from pri3d.tasks import pretrain as pretrain_task
from pri3d.tasks.pretrain import pretrain
from pri3d.tasks.pretrain_config import PretrainRunConfig


def test_non_finite_loss_stops_and_keeps_the_last_good_step(
    pretrain_root, tmp_path, monkeypatch, tiny_pretrain
):
    forward = Pri3D.forward
    calls = []

    def nan_at_third_step(self, batch):
        losses = forward(self, batch)
        calls.append(None)
        if len(calls) == 3:  # one forward per step here (batch 2, no accumulation)
            losses["total_loss"] = losses["total_loss"] * float("nan")
        return losses

    monkeypatch.setattr(Pri3D, "forward", nan_at_third_step)
    log_dir = tmp_path / "run"
    config = load_config(
        PretrainRunConfig,
        tiny_pretrain(pretrain_root, log_dir, "train.max_steps=5", "train.checkpoint_every=1"),
    )
    with pytest.raises(TrainingStopped, match=r"non-finite loss at step 2 .*total_loss.*nan") as stopped:
        pretrain(config)
    assert "lower optimizer.lr or check the data" in str(stopped.value)

    checkpoints = log_dir / "checkpoints"
    assert not (checkpoints / "step0000003.pth").exists()
    kept = load_checkpoint(checkpoints / "nonfinite-step0000002.pth")
    assert latest_checkpoint(checkpoints) == checkpoints / "nonfinite-step0000002.pth"
    last_good = load_checkpoint(checkpoints / "step0000002.pth")  # the regular checkpoint of step 2
    assert kept["step"] == last_good["step"] == 2
    assert kept["model"].keys() == last_good["model"].keys()
    for key, value in last_good["model"].items():
        assert torch.equal(kept["model"][key], value), key
        assert not value.is_floating_point() or torch.isfinite(value).all(), key
    # the reason is in the run's own log, not only in the exception
    assert "non-finite loss at step 2" in (log_dir / "train.log").read_text()


def test_non_finite_loss_from_the_command_line(pretrain_root, tmp_path, capsys, tiny_pretrain):
    """A learning rate of 1e30 blows the weights up after the first step: exit code 3 and the reason."""
    args = argparse.Namespace(
        overrides=tiny_pretrain(pretrain_root, tmp_path / "run", "train.max_steps=4", "optimizer.lr=1e30"),
        print_config=False,
    )
    assert pretrain_task.run(args) == 3
    message = capsys.readouterr().err
    assert "pri3d pretrain: stopped: non-finite loss at step 1" in message
    assert (tmp_path / "run" / "checkpoints" / "nonfinite-step0000001.pth").is_file()


def test_too_many_unreadable_samples_stop_with_their_reasons(pretrain_root, tmp_path, tiny_pretrain):
    root = tmp_path / "data"
    shutil.copytree(pretrain_root, root)
    corrupted = sorted(root.glob("*/color/*.jpg"))
    assert corrupted
    for path in corrupted:
        path.write_bytes(b"not a JPEG")
    config = load_config(
        PretrainRunConfig,
        tiny_pretrain(root, tmp_path / "run", "train.max_steps=5", "train.max_bad_samples=3"),
    )
    with pytest.raises(
        TrainingStopped, match=r"samples in a row failed to load \(train.max_bad_samples=3\)"
    ) as stopped:
        pretrain(config)
    reasons = str(stopped.value).splitlines()[1:]
    assert len(reasons) >= 3
    for reason in reasons:
        scene = reason.strip().split()[0]
        assert (root / scene).is_dir(), reason  # each reason names the scene and the frames
        assert "frames" in reason and "cannot identify image file" in reason, reason
    assert not list((tmp_path / "run" / "checkpoints").glob("step*.pth"))  # no step was trained


def test_a_pair_list_that_is_all_unreadable_stops_without_weights(
    pretrain_root, tmp_path, capsys, tiny_pretrain
):
    """Fewer bad samples than train.max_bad_samples, but not one usable: exit 3, not success."""
    root = tmp_path / "data"
    shutil.copytree(pretrain_root, root)
    for path in root.glob("*/color/*.jpg"):
        path.write_bytes(b"not a JPEG")
    overrides = tiny_pretrain(root, tmp_path / "run", "train.max_steps=2", "train.checkpoint_every=1")
    assert cli.main(["pretrain", *overrides]) == 3
    message = capsys.readouterr().err
    assert "stopped: the run ended with no usable sample in 2 steps (4 samples skipped)" in message
    assert "cannot identify image file" in message  # the reasons come along
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pth"))


@pytest.mark.parametrize("temperature", ["0", "-1"])
def test_a_temperature_that_is_not_positive_is_refused_before_any_work(tmp_path, capsys, temperature):
    """T = 0 was a NaN loss at step 0 with advice to lower the lr; T < 0 trained the wrong way."""
    log_dir = tmp_path / "run"
    assert cli.main(["pretrain", f"train.log_dir={log_dir}", f"pretrain.nceT={temperature}"]) == 1
    assert f"pretrain.nceT={float(temperature)}: expected a finite number > 0" in capsys.readouterr().err
    assert not log_dir.exists()


def test_an_output_folder_that_cannot_be_written_stops_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("a regular file, not a folder")
    log_dir = tmp_path / "file" / "run"
    assert cli.main(["pretrain", f"train.log_dir={log_dir}", f"dataset.path={tmp_path / 'absent'}"]) == 1
    message = capsys.readouterr().err
    assert f"pri3d pretrain: error: train.log_dir={log_dir}: cannot create the folder" in message
    assert "Traceback" not in message and "absent" not in message  # refused before the data is read


def test_a_scene_without_a_point_cloud_trains_and_is_counted(pretrain_root, tmp_path, tiny_pretrain):
    """It used to stop the run at the same step on every resume (no pointcloud/<scene>.npz)."""
    root = tmp_path / "data"
    shutil.copytree(pretrain_root, root)
    (root / "pointcloud" / "scene0001_00.npz").unlink()
    log_dir = tmp_path / "run"
    config = load_config(
        PretrainRunConfig, tiny_pretrain(root, log_dir, "train.max_steps=3", "train.batch_size=4")
    )
    pretrain(config)
    lines = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert all(math.isfinite(m["train/geo_loss"]) for m in lines)
    assert lines[-1]["train/pairs_without_point_cloud"] > 0
    log = (log_dir / "train.log").read_text()
    assert "1 scene has no point cloud" in log and "scene0001_00 (105 pairs)" in log
    assert load_checkpoint(latest_checkpoint(log_dir / "checkpoints"))["step"] == 3


def test_bf16_and_channels_last_train_with_finite_losses(pretrain_root, tmp_path, tiny_pretrain):
    log_dir = tmp_path / "run"
    config = load_config(
        PretrainRunConfig,
        tiny_pretrain(
            pretrain_root, log_dir, "train.max_steps=3", "train.bf16=true", "train.channels_last=true"
        ),
    )
    pretrain(config)
    lines = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    for metrics in lines:
        for key in ("train/total_loss", "train/view_loss", "train/geo_loss", "train/depth_loss"):
            assert math.isfinite(metrics[key]), (key, metrics)
    state = load_checkpoint(latest_checkpoint(log_dir / "checkpoints"))
    assert state["step"] == 3 and state["config"]["train"]["bf16"] is True
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
