"""Typed configs with overrides in the original's Hydra style (`train.batch_size=64`).

The sections every task's run config shares (`train`, `optimizer`, `scheduler`, `distributed`,
`logging`), loading with overrides, and the checks of their values. Each task's schema lives beside
its runner (`pri3d.tasks.*_config`) and keeps the original's key names. An unknown key is an error
that names the nearest valid key.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from operator import attrgetter
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError


class ConfigError(ValueError):
    """A bad override: unknown key, wrong type or invalid value."""


@dataclass
class TrainConfig:
    """The training loop's keys. No run name, folder or batch fits every task: each task's subclass
    sets them (a schema that forgets one fails to load, naming the key)."""

    phase: str = "train"  # the training split (each task says what it names)
    is_train: bool = True  # unused (kept for the original's scripts)
    exp_name: str = MISSING  # run name (logs, Weights & Biases)
    log_dir: str = MISSING  # output folder: checkpoints, logs, resolved config
    batch_size: int = MISSING  # global batch: split over DDP ranks, then over accumulation steps
    report_batch: int = 10  # log every N optimizer steps
    report_epoch: int = 1  # also checkpoint at the end of every N epochs
    workers: int = 2  # DataLoader workers per rank (the original ignored this key)
    write_result: bool = False  # unused
    max_steps: int = 0  # run length in optimizer steps, over any epochs (0: max_epochs); PolyLR ends there
    checkpoint_every: int = 500  # optimizer steps between checkpoints (0 = only at epoch ends)
    keep_checkpoints: int = 0  # keep only the newest N step/epoch checkpoints (0 = keep all)
    seed: int = 0  # data sampling, augmentation and initialisation
    device: str = "auto"  # auto (cuda if present), cpu or cuda
    bf16: bool = False  # bf16 autocast for the 2D network
    channels_last: bool = False  # channels_last memory format for the 2D network
    max_bad_samples: int = 50  # stop when this many samples in a row fail to load
    threads: int = 0  # torch intra-op threads per process (0 = leave PyTorch's default)


@dataclass
class OptimizerConfig:
    optimizer: str = "SGD"  # SGD or Adam
    lr: float = 0.1
    sgd_momentum: float = 0.9
    sgd_dampening: float = 0.1  # as the original: each new gradient enters the momentum buffer × 0.9
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    # constant BatchNorm momentum of `pri3d moco` and `pri3d finetune insseg`; unused by pretrain (the
    # original's decaying schedule) and semseg (finetune.bn_momentum)
    bn_momentum: float = 0.02
    accumulate_step: int = 1  # gradient accumulation


@dataclass
class SchedulerConfig:
    scheduler: str = "PolyLR"  # PolyLR, CosineLR, MultiStepLR or StepLR, stepped per optimizer step
    max_epochs: int = 5
    decay_epochs: list[int] = field(default_factory=lambda: [80, 120, 160])  # MultiStepLR milestones
    lr_decay: float = 0.1
    step_size: int = 80  # StepLR period in epochs
    poly_power: float = 0.9


@dataclass
class DistributedConfig:
    num_gpus: int = 1  # unused: launch several processes with torchrun instead


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb: str = "disabled"  # disabled, online or offline; never prompts
    wandb_project: str = "pri3d"


def all_keys(schema: Any, prefix: str = "") -> list[str]:
    """Dotted names of every leaf key of a config dataclass."""
    keys = []
    for f in fields(schema):
        value = getattr(schema, f.name)
        if is_dataclass(value):
            keys += all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def load_config(schema: type, overrides: list[str], base: dict | None = None) -> Any:
    """Build `schema` with `base` (e.g. a resolved config from a checkpoint) and `key=value` overrides.

    Values are parsed as YAML (`dataset.size=[240,320]`, `pretrain.depth=false`).
    """
    config = OmegaConf.structured(schema)
    valid = all_keys(schema())
    if base is not None:
        config = OmegaConf.merge(config, base)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.batch_size=64)")
        key = item.split("=", 1)[0].lstrip("+")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown config key {key!r}{hint}")
        try:
            config = OmegaConf.merge(config, OmegaConf.from_dotlist([item.lstrip("+")]))
        except (ValidationError, ConfigKeyError) as error:
            raise ConfigError(
                f"bad value in {item!r}: {error.msg if hasattr(error, 'msg') else error}"
            ) from None
    return OmegaConf.to_object(config)


Rule = tuple[Callable[[Any], bool], str]  # (test of a value, what is expected, for the message)


def integer_at_least(minimum: int) -> Rule:
    return lambda value: value >= minimum, f"an integer ≥ {minimum}"


POSITIVE: Rule = (lambda value: math.isfinite(value) and value > 0, "a finite number > 0")
IMAGE_SIZE: Rule = (
    lambda size: len(size) == 2 and all(side >= 1 for side in size),
    "[height, width], both integers ≥ 1",
)
_NON_NEGATIVE: Rule = (lambda value: math.isfinite(value) and value >= 0, "a finite number ≥ 0")
_BETA: Rule = (lambda value: 0 <= value < 1, "a number in [0, 1)")

#: The `train`, `optimizer` and `scheduler` keys every task's run config has.
TRAINING_RULES: dict[str, Rule] = {
    "train.batch_size": integer_at_least(1),
    "train.report_batch": integer_at_least(1),
    "train.report_epoch": integer_at_least(1),
    "train.workers": integer_at_least(0),
    "train.max_steps": integer_at_least(0),
    "train.checkpoint_every": integer_at_least(0),
    "train.keep_checkpoints": integer_at_least(0),
    "train.max_bad_samples": integer_at_least(1),
    "train.threads": integer_at_least(0),
    "optimizer.lr": POSITIVE,
    "optimizer.accumulate_step": integer_at_least(1),
    "optimizer.sgd_momentum": _NON_NEGATIVE,
    "optimizer.weight_decay": _NON_NEGATIVE,
    "optimizer.adam_beta1": _BETA,
    "optimizer.adam_beta2": _BETA,
    "scheduler.max_epochs": integer_at_least(0),  # 0 where train.max_steps sets the length (insseg)
    "scheduler.step_size": integer_at_least(1),
    "scheduler.lr_decay": POSITIVE,
    "scheduler.poly_power": _NON_NEGATIVE,
}


def check_run_config(config: Any, rules: dict[str, Rule] = TRAINING_RULES) -> None:
    """Raise `ConfigError` naming the first key of ``rules`` whose value in ``config`` fails its test,
    or saying that the run has no length.

    Run before any work: a zero batch, temperature or image size otherwise surfaces as a
    ZeroDivisionError, a NaN loss at step 0, or a run that skips every sample and trains nothing.
    """
    for key, (test, expected) in rules.items():
        value = attrgetter(key)(config)
        if not test(value):
            raise ConfigError(f"{key}={value}: expected {expected}")
    if config.train.max_steps == 0 and config.scheduler.max_epochs == 0:
        raise ConfigError(
            "train.max_steps=0 and scheduler.max_epochs=0: the run has no length; set either to 1 or more"
        )


def to_yaml(config: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]


def override_value(value: object) -> str:
    """A Python value as the right-hand side of a ``key=value`` override (lists, booleans and "" as JSON)."""
    return json.dumps(value) if isinstance(value, list | bool) or value == "" else str(value)


def expand_overrides(
    items: list[str],
    presets: dict[str, dict[str, dict[str, object]]],
    renames: dict[str, str],
    for_eval: bool = False,
    eval_skip: tuple[str, ...] = (),
) -> tuple[list[str], dict[str, str]]:
    """A fine-tuning CLI's ``key=value`` items -> config overrides; returns (overrides, extras).

    ``<short>=<name>`` with ``short`` in ``presets`` (e.g. ``dataset=scannet``) adds that preset's
    overrides before every explicit one, so explicit ones win; presets apply in the order of
    ``presets``' keys (a dataset's before a model's) and, at evaluation, without ``eval_skip`` keys
    (the data's location comes from the checkpoint). ``renames`` maps short keys to config keys
    (``init`` -> ``finetune.pretrain``); ``dataset.split`` names ``train.phase``, or
    ``finetune.eval_phase`` when ``for_eval``. ``checkpoint=`` and ``out=`` go to ``extras``.
    """
    chosen: dict[str, list[str]] = {short: [] for short in presets}
    overrides: list[str] = []
    extras: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"argument {item!r} must look like key=value (e.g. dataset=scannet)")
        if key in presets:
            table = presets[key]
            if value.lower() not in table:
                raise ValueError(f"{key}={value!r}: expected one of {', '.join(table)}")
            chosen[key] += [
                f"{k}={override_value(v)}"
                for k, v in table[value.lower()].items()
                if not (for_eval and k in eval_skip)
            ]
        elif key in renames:
            overrides.append(f"{renames[key]}={value}")
        elif key == "dataset.split":
            overrides.append(f"{'finetune.eval_phase' if for_eval else 'train.phase'}={value}")
        elif key in ("checkpoint", "out"):
            extras[key] = value
        else:
            overrides.append(item)
    return [o for short in presets for o in chosen[short]] + overrides, extras
