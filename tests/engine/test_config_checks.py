"""Values that cannot train are refused up front, each error naming the option and what it expects."""

from __future__ import annotations

import pytest
import torch

from pri3d.engine.config import ConfigError, check_run_config, load_config
from pri3d.engine.distributed import DistEnv
from pri3d.engine.trainer import Trainer
from pri3d.tasks.pretrain import pretrain
from pri3d.tasks.pretrain_config import PRETRAIN_RULES, PretrainRunConfig
from pri3d.tasks.semseg import finetune_semseg
from pri3d.tasks.semseg_config import semseg_config

BAD_VALUES = [
    ("train.batch_size=0", r"train\.batch_size=0: expected an integer ≥ 1"),
    ("train.report_batch=0", r"train\.report_batch=0: expected an integer ≥ 1"),
    ("train.report_epoch=0", r"train\.report_epoch=0: expected an integer ≥ 1"),
    ("train.workers=-1", r"train\.workers=-1: expected an integer ≥ 0"),
    ("train.max_steps=-5", r"train\.max_steps=-5: expected an integer ≥ 0"),
    ("train.checkpoint_every=-1", r"train\.checkpoint_every=-1: expected an integer ≥ 0"),
    ("train.keep_checkpoints=-1", r"train\.keep_checkpoints=-1: expected an integer ≥ 0"),
    ("train.max_bad_samples=0", r"train\.max_bad_samples=0: expected an integer ≥ 1"),
    ("train.threads=-2", r"train\.threads=-2: expected an integer ≥ 0"),
    ("optimizer.lr=0", r"optimizer\.lr=0\.0: expected a finite number > 0"),
    ("optimizer.lr=-0.1", r"optimizer\.lr=-0\.1: expected a finite number > 0"),
    ("optimizer.lr=.nan", r"optimizer\.lr=nan: expected a finite number > 0"),
    ("optimizer.accumulate_step=0", r"optimizer\.accumulate_step=0: expected an integer ≥ 1"),
    ("optimizer.sgd_momentum=-0.9", r"optimizer\.sgd_momentum=-0\.9: expected a finite number ≥ 0"),
    ("optimizer.weight_decay=-1e-4", r"optimizer\.weight_decay=-0\.0001: expected a finite number ≥ 0"),
    ("optimizer.adam_beta2=1.0", r"optimizer\.adam_beta2=1\.0: expected a number in \[0, 1\)"),
    ("scheduler.max_epochs=-1", r"scheduler\.max_epochs=-1: expected an integer ≥ 0"),
    ("scheduler.max_epochs=0", r"train\.max_steps=0 and scheduler\.max_epochs=0: the run has no length"),
    ("scheduler.step_size=0", r"scheduler\.step_size=0: expected an integer ≥ 1"),
    ("scheduler.lr_decay=0", r"scheduler\.lr_decay=0\.0: expected a finite number > 0"),
    ("scheduler.poly_power=-1", r"scheduler\.poly_power=-1\.0: expected a finite number ≥ 0"),
]
BAD_PRETRAIN_VALUES = [
    ("dataset.size=[0,0]", r"dataset\.size=\[0, 0\]: expected \[height, width\], both integers ≥ 1"),
    ("dataset.size=[240]", r"dataset\.size=\[240\]: expected \[height, width\]"),
    ("pretrain.nceT=0", r"pretrain\.nceT=0\.0: expected a finite number > 0"),
    ("pretrain.nceT=-1", r"pretrain\.nceT=-1\.0: expected a finite number > 0"),
    ("pretrain.sample_points=0", r"pretrain\.sample_points=0: expected an integer ≥ 1"),
    ("pretrain.thresh=0", r"pretrain\.thresh=0\.0: expected a finite number > 0"),
    ("pretrain.voxel_size=-0.02", r"pretrain\.voxel_size=-0\.02: expected a finite number > 0"),
]


def test_the_released_recipe_passes():
    check_run_config(load_config(PretrainRunConfig, []), PRETRAIN_RULES)


@pytest.mark.parametrize(("override", "message"), BAD_VALUES + BAD_PRETRAIN_VALUES)
def test_pretrain_refuses_a_bad_value_before_reading_anything(tmp_path, override, message):
    """The data folder does not exist and the output folder is never made: the check comes first."""
    config = load_config(
        PretrainRunConfig,
        [f"dataset.path={tmp_path / 'absent'}", f"train.log_dir={tmp_path / 'run'}", override],
    )
    with pytest.raises(ConfigError, match=message):
        pretrain(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.size=[0,80]", r"dataset\.size=\[0, 80\]: expected \[height, width\], both integers ≥ 1"),
        ("dataset.size=[60,80,3]", r"dataset\.size=\[60, 80, 3\]: expected \[height, width\]"),
    ],
)
def test_semseg_refuses_a_bad_image_size_before_reading_anything(tmp_path, override, message):
    config = semseg_config(
        [f"dataset.path={tmp_path / 'absent'}", f"train.log_dir={tmp_path / 'run'}", override]
    )
    with pytest.raises(ConfigError, match=message):
        finetune_semseg(config)
    assert not (tmp_path / "run").exists()


class _Three(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.zeros(1)


@pytest.mark.parametrize(("override", "message"), BAD_VALUES)
def test_the_trainer_refuses_bad_training_values_of_any_task(tmp_path, override, message):
    """Fine-tuning shares the trainer: train.batch_size=0 is an error naming it, not a ZeroDivisionError."""
    config = load_config(PretrainRunConfig, [f"train.log_dir={tmp_path}", override])
    with pytest.raises(ConfigError, match=message):
        Trainer(torch.nn.Linear(1, 1), _Three(), None, config, DistEnv(0, 1, 0, torch.device("cpu")))


def test_a_run_measured_in_steps_needs_no_epochs():
    """Instance segmentation sets train.max_steps and leaves scheduler.max_epochs at 0."""
    config = load_config(PretrainRunConfig, ["train.max_steps=10", "scheduler.max_epochs=0"])
    check_run_config(config, PRETRAIN_RULES)
