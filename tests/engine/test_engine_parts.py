"""Config overrides, the sampler's rank/accumulation split, schedules and checkpoint files."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue
from torch import nn

from pri3d.engine.checkpoint import (
    CheckpointDiskFull,
    drop_optimizer_state,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    resolve_init,
    resolve_weights_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pri3d.engine.config import ConfigError, TrainConfig, expand_overrides, load_config
from pri3d.engine.distributed import DistEnv
from pri3d.engine.sampler import GlobalBatchSampler
from pri3d.engine.schedules import BNMomentumScheduler, build_optimizer, build_scheduler
from pri3d.engine.trainer import Trainer, TrainingStopped
from pri3d.tasks.pretrain_config import PretrainRunConfig


def test_overrides_in_the_original_style():
    c = load_config(
        PretrainRunConfig,
        [
            "train.batch_size=8",
            "pretrain.backbone=Res18UNet",
            "pretrain.geometric_prior=False",
            "dataset.size=[120,160]",
        ],
    )
    assert c.train.batch_size == 8 and c.pretrain.backbone == "Res18UNet"
    assert c.pretrain.geometric_prior is False and c.dataset.size == [120, 160]


def test_a_task_schema_that_leaves_the_run_name_folder_or_batch_unset_fails_to_load():
    """No value fits every task: the base leaves them to each task's schema."""

    @dataclass
    class Unnamed:
        train: TrainConfig = field(default_factory=TrainConfig)

    with pytest.raises(MissingMandatoryValue, match=r"train\.exp_name"):
        load_config(Unnamed, [])


def test_short_forms_expand_to_presets_then_explicit_overrides():
    presets = {
        "dataset": {"a": {"dataset.path": "data/a", "dataset.size": [2, 3]}},
        "model": {"m": {"finetune.model": "M", "train.flag": True}},
    }
    items = ["model=m", "train.batch_size=4", "dataset=A", "init=run", "dataset.split=val", "out=x"]
    overrides, extras = expand_overrides(items, presets, {"init": "finetune.pretrain"})
    assert overrides == [
        "dataset.path=data/a",
        "dataset.size=[2, 3]",
        "finetune.model=M",
        "train.flag=true",
        "train.batch_size=4",
        "finetune.pretrain=run",
        "train.phase=val",
    ]
    assert extras == {"out": "x"}
    at_eval, _ = expand_overrides(["dataset=a", "dataset.split=val"], presets, {}, True, ("dataset.path",))
    assert at_eval == ["dataset.size=[2, 3]", "finetune.eval_phase=val"]
    with pytest.raises(ValueError, match=r"model='z': expected one of m"):
        expand_overrides(["model=z"], presets, {})
    with pytest.raises(ValueError, match="must look like key=value"):
        expand_overrides(["dataset"], presets, {})


def test_unknown_key_names_the_nearest_valid_one():
    with pytest.raises(ConfigError, match=r"did you mean train\.batch_size"):
        load_config(PretrainRunConfig, ["train.batchsize=8"])
    with pytest.raises(ConfigError, match="bad value"):
        load_config(PretrainRunConfig, ["train.batch_size=eight"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(PretrainRunConfig, ["train.batch_size"])


def test_ranks_and_accumulation_see_the_same_micro_batches():
    one = GlobalBatchSampler(40, 8, accumulate=2, seed=3)
    ranks = [GlobalBatchSampler(40, 8, rank=r, world_size=2, seed=3) for r in range(2)]
    for s in (one, *ranks):
        s.set_epoch(1)
    single = list(one)
    split = [list(r) for r in ranks]
    assert len(single) == 10 and all(len(b) == 4 for b in single)
    assert single[0::2] == split[0] and single[1::2] == split[1]
    flat = [i for b in single for i in b]
    assert len(set(flat)) == 40  # a permutation, no repeats within an epoch


def test_sampler_resumes_mid_epoch_and_changes_order_per_epoch():
    s = GlobalBatchSampler(30, 6, seed=0)
    s.set_epoch(0)
    full = list(s)
    s.set_epoch(0, start_batch=2)
    assert list(s) == full[2:] and len(s) == 3
    s.set_epoch(1)
    assert list(s) != full


def test_sampler_rejects_indivisible_batches():
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchSampler(40, 6, world_size=4)


def test_poly_schedule_and_bn_momentum():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1))
    config = load_config(PretrainRunConfig, ["scheduler.max_epochs=2"])
    opt = build_optimizer(model.parameters(), config.optimizer)
    sched = build_scheduler(opt, config.scheduler, steps_per_epoch=5, total_steps=10)
    bn = BNMomentumScheduler(model)
    lrs, moms = [], []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(model[1].momentum)
        opt.step()
        sched.step()
        bn.step()
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.1 * (1 - 5 / 11) ** 0.9)
    assert moms[0] == 0.5 and bn.momentum(20) == 0.25 and bn.momentum(400) == 0.001
    state = bn.state_dict()
    other = BNMomentumScheduler(model)
    other.load_state_dict(state)
    assert other.step_count == 10


def test_constant_bn_momentum_reaches_every_batchnorm_at_every_step():
    model = nn.Sequential(
        nn.BatchNorm1d(2),
        nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)),
        nn.BatchNorm3d(1),
        nn.SyncBatchNorm(1),
    )
    bn = BNMomentumScheduler.constant(model, 0.01)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 4 and all(m.momentum == 0.01 for m in norms)
    assert bn.momentum(0) == bn.momentum(10**6) == 0.01
    for m in norms:
        m.momentum = 0.5
    bn.load_state_dict({"step_count": 10**6})  # resumed far into a run
    assert all(m.momentum == 0.01 for m in norms)


def test_poly_schedule_ends_at_a_shorter_total():
    """A run cut short (train.max_steps) anneals over its own length, not the epochs it never runs."""
    config = load_config(PretrainRunConfig, ["scheduler.max_epochs=4"])
    opt = build_optimizer(nn.Linear(1, 1).parameters(), config.optimizer)
    sched = build_scheduler(opt, config.scheduler, steps_per_epoch=100, total_steps=6)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 5 / 7) ** 0.9)  # the last step's lr


def test_checkpoint_is_atomic_and_loads_safely(tmp_path):
    torch.manual_seed(7)
    state = {"model": {"w": torch.randn(3)}, "step": 4, "rng": rng_state()}
    save_checkpoint(tmp_path, "a.pth", state)
    expected = torch.rand(2)
    save_checkpoint(tmp_path, "b.pth", {**state, "step": 5})
    assert latest_checkpoint(tmp_path).name == "b.pth"
    assert not list(tmp_path.glob("*.tmp"))
    loaded = load_checkpoint(tmp_path / "a.pth")
    assert loaded["step"] == 4 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(2), expected)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad\.pth"):
        load_checkpoint(tmp_path / "bad.pth")


def test_weights_are_read_from_a_file_or_a_run_folders_newest_checkpoint(tmp_path):
    newest = save_checkpoint(tmp_path / "run" / "checkpoints", "step0000002.pth", {"step": 2})
    assert resolve_weights_path(tmp_path / "run", "init") == newest
    assert resolve_weights_path(tmp_path / "run" / "checkpoints", "init") == newest
    assert resolve_weights_path(newest, "init") == newest
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^init=.*empty: a folder without checkpoints/last$"):
        resolve_weights_path(tmp_path / "empty", "init")
    with pytest.raises(FileNotFoundError, match=r"^finetune\.pretrain=.*none\.pth: file not found$"):
        resolve_init(str(tmp_path / "none.pth"), "finetune.pretrain")
    assert resolve_init("scratch", "finetune.pretrain") == "scratch"
    assert resolve_init("imagenet", "finetune.pretrain") == "imagenet"
    assert resolve_init(str(tmp_path / "run"), "finetune.pretrain") == newest


def test_prune_checkpoints_keeps_the_newest_and_the_last(tmp_path):

    for i, name in enumerate(["step0000010.pth", "epoch001.pth", "step0000020.pth", "step0000030.pth"]):
        save_checkpoint(tmp_path, name, {"step": i})
        os.utime(tmp_path / name, ns=(i * 10**9, i * 10**9))  # distinct, ordered times
    (tmp_path / "nonfinite-step0000031.pth").write_bytes(b"x")
    (tmp_path / "last").write_text("step0000010.pth\n")  # `last` may point at an older file (resumed run)
    deleted = prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in deleted) == ["epoch001.pth"]
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        "nonfinite-step0000031.pth",
        "step0000010.pth",
        "step0000020.pth",
        "step0000030.pth",
    ]
    with pytest.raises(ValueError, match="keep=0"):
        prune_checkpoints(tmp_path, keep=0)


class _Points(torch.utils.data.Dataset):
    def __init__(self, unreadable: Collection[int] = ()) -> None:
        self.unreadable = unreadable  # indices that fail to load, as `ScanNetPairs` reports them

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> torch.Tensor | dict:
        if index in self.unreadable:
            return {"skip": f"point {index}: unreadable"}
        return torch.full((1,), float(index))

    def set_epoch(self, epoch: int) -> None:
        pass


class _Fit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"total_loss": (self.linear(batch["x"]) - 1).pow(2).mean()}


def _collate_points(samples):
    good = [s for s in samples if isinstance(s, torch.Tensor)]
    batch = {"batch_size": len(good), "skipped": [s["skip"] for s in samples if isinstance(s, dict)]}
    return {**batch, "x": torch.stack(good), "counts": {"points_used": len(good)}} if good else batch


def _fit_trainer(log_dir, max_steps: int, *extra: str, unreadable: Collection[int] = ()) -> Trainer:
    """A Trainer fitting `_Fit` to `_Points` (3 batches of 2 per epoch) for ``max_steps`` steps."""
    config = load_config(
        PretrainRunConfig,
        [
            f"train.log_dir={log_dir}",
            "train.batch_size=2",
            "train.workers=0",
            f"train.max_steps={max_steps}",
            "scheduler.max_epochs=1",
            "train.checkpoint_every=0",
            "train.report_batch=1",
            "logging.tensorboard=false",
            *extra,
        ],
    )
    return Trainer(
        _Fit(), _Points(unreadable), _collate_points, config, DistEnv(0, 1, 0, torch.device("cpu"))
    )


def _fit(log_dir, max_steps: int) -> dict:
    """Run a fresh `_fit_trainer` (resuming in ``log_dir``) to the end; returns the last logged metrics."""
    with _fit_trainer(log_dir, max_steps) as trainer:
        trainer.resume_if_possible()
        return trainer.fit()


def test_max_steps_sets_the_run_length_across_epochs(tmp_path):
    """train.max_steps beyond one epoch runs on into later epochs, the poly schedule ending at its last step."""
    with _fit_trainer(tmp_path, max_steps=7) as trainer:
        assert trainer.steps_per_epoch == 3 and trainer.total_steps == 7
        last = trainer.fit()
    assert trainer.step == 7 and trainer.epoch == 2  # two whole epochs and one step of the third
    assert last["train/lr"] == pytest.approx(0.1 * (1 - 7 / 8) ** 0.9)


def test_the_log_stays_open_after_fit_for_the_runner_and_closes_with_the_block(tmp_path):
    """A runner's final evaluation logs through the trainer after fit(); leaving the block closes the log."""
    with _fit_trainer(tmp_path, 2) as trainer:
        trainer.fit()
        trainer.logger.metrics(trainer.step, {"val/score": 0.5})
        trainer.logger.info("eval final (step 2)")
    assert not trainer.logger.text.handlers and trainer.logger._metrics.closed
    assert (tmp_path / "train.log").read_text().count("eval final (step 2)") == 1
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 2] and lines[-1] == {"step": 2, "val/score": 0.5}


def test_the_config_is_recorded_as_yaml_that_loads_back_and_in_the_log(tmp_path):
    with _fit_trainer(tmp_path, 2, "train.seed=7") as trainer:
        trainer.record_config()
    reloaded = load_config(PretrainRunConfig, [], base=OmegaConf.load(tmp_path / "config.yaml"))
    assert reloaded == trainer.config and reloaded.train.seed == 7
    assert "config:\n" + (tmp_path / "config.yaml").read_text() in (tmp_path / "train.log").read_text()


def test_a_finished_run_without_optimizer_state_initialises_but_does_not_resume(tmp_path):
    _fit(tmp_path, 3)
    path = latest_checkpoint(tmp_path / "checkpoints")
    full = load_checkpoint(path)
    assert drop_optimizer_state(path) > 0
    slim = load_checkpoint(path)
    assert "optimizer" not in slim and slim["step"] == full["step"] == 3
    assert all(torch.equal(slim["model"][k], v) for k, v in full["model"].items())
    assert drop_optimizer_state(path) == 0  # nothing left to drop
    assert latest_checkpoint(tmp_path / "checkpoints") == path and not list(path.parent.glob("*.tmp"))
    with pytest.raises(ValueError, match=r"without optimizer state.*train\.log_dir"):
        _fit(tmp_path, 3)


def test_a_run_that_trains_on_no_sample_stops_without_a_checkpoint(tmp_path):
    """Every sample unreadable, but fewer in a row than train.max_bad_samples: no success, no weights."""
    with (
        pytest.raises(TrainingStopped, match=r"no usable sample in 2 steps \(4 samples skipped\)") as stopped,
        _fit_trainer(tmp_path, 2, "train.checkpoint_every=1", unreadable=range(6)) as trainer,
    ):
        trainer.fit()
    assert "point 0: unreadable" in str(stopped.value) or "point 1: unreadable" in str(stopped.value)
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())
    # the reason is in the run's own log, which the stop leaves closed
    assert "stopped: the run ended with no usable sample" in (tmp_path / "train.log").read_text()
    assert not trainer.logger.text.handlers and trainer.logger._metrics.closed


def test_an_epoch_without_a_usable_sample_stops_the_run(tmp_path):
    """The next epoch reads the same files: stop at the end of the first instead of looping on."""
    with (
        pytest.raises(TrainingStopped, match=r"epoch 1 .*no usable sample"),
        _fit_trainer(
            tmp_path, 0, "scheduler.max_epochs=5", "train.max_bad_samples=100", unreadable=range(6)
        ) as trainer,
    ):
        trainer.fit()
    assert trainer.epoch == 0 and trainer.step == 3
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


def test_bad_samples_in_a_run_that_trains_are_skipped_and_counted(tmp_path):
    with _fit_trainer(tmp_path, 3, unreadable={0, 1, 2}) as trainer:
        last = trainer.fit()
    assert trainer.step == 3 and last["train/samples_skipped"] == trainer.samples_skipped > 0
    assert load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))["step"] == 3


def _fill_the_disk(monkeypatch, written: bytes = b"partial checkpoint") -> None:
    """Make every `torch.save` write ``written`` and then fail as a full disk does."""

    def save(obj, handle):
        handle.write(written)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_leaves_no_partial_file_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, "a.pth", {"model": {"w": torch.zeros(1000)}, "step": 1})
    _fill_the_disk(monkeypatch)
    weights = {"w": torch.zeros(2**18)}  # 1 MB of float32
    with pytest.raises(
        CheckpointDiskFull,
        match=rf"no space left on the device of {tmp_path} while writing b\.pth: "
        r"it needs about 1\.0 MB, [0-9.]+ MB are free",
    ):
        save_checkpoint(tmp_path, "b.pth", {"model": weights, "step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "last"]
    monkeypatch.undo()
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 1


def test_a_full_disk_stops_training_with_the_folder_and_keeps_resume_possible(tmp_path, monkeypatch):
    _fit(tmp_path, 2)
    _fill_the_disk(monkeypatch)
    with (
        pytest.raises(
            TrainingStopped, match=r"no space left on the device of .*checkpoints.*free some space"
        ),
        _fit_trainer(tmp_path, 4) as trainer,
    ):
        assert trainer.resume_if_possible()
        trainer.fit()
    checkpoints = tmp_path / "checkpoints"
    assert not list(checkpoints.glob("*.tmp"))
    assert "no space left" in (tmp_path / "train.log").read_text()
    monkeypatch.undo()
    with _fit_trainer(tmp_path, 4) as resumed:
        assert resumed.resume_if_possible() and resumed.step == 2
        resumed.fit()
    assert resumed.step == 4


def test_stale_temporary_files_are_removed_at_start(tmp_path):
    """A crash or a full disk mid-write leaves `<name>.tmp`: it holds the space the next write needs."""
    _fit(tmp_path, 2)
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / ".step0000003.pth.0123abcd.tmp").write_bytes(b"half a checkpoint")
    (checkpoints / "step0000003.pth.tmp").write_bytes(b"left by an earlier pri3d version")
    with _fit_trainer(tmp_path, 3) as trainer:
        assert not list(checkpoints.glob("*.tmp"))
        assert (
            "removed unfinished checkpoint files: .step0000003.pth.0123abcd.tmp, step0000003.pth.tmp"
            in (tmp_path / "train.log").read_text()
        )
        assert trainer.resume_if_possible() and trainer.step == 2


def test_batch_counts_add_up_over_the_run_and_its_resumes(tmp_path):
    """`counts` of the batches (pre-training: pairs without a point cloud) are metrics and survive resume."""
    assert _fit(tmp_path, 2)["train/points_used"] == 4
    assert _fit(tmp_path, 3)["train/points_used"] == 6  # resumed at step 2
