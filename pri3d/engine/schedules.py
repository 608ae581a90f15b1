"""Learning-rate schedules and the BN-momentum schedule, both stepped once per optimizer step."""

from __future__ import annotations

import math

import torch
from torch import nn

from pri3d.engine.config import OptimizerConfig, SchedulerConfig


def build_optimizer(params, config: OptimizerConfig) -> torch.optim.Optimizer:
    if config.optimizer == "SGD":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.sgd_momentum,
            dampening=config.sgd_dampening,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "Adam":
        return torch.optim.Adam(
            params,
            lr=config.lr,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.weight_decay,
        )
    raise ValueError(f"optimizer.optimizer={config.optimizer!r}: expected SGD or Adam")


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: SchedulerConfig, steps_per_epoch: int, total_steps: int
):
    """A LambdaLR/MultiStepLR/StepLR stepped per optimizer step.

    PolyLR and CosineLR decay over the run's ``total_steps`` (`Trainer.total_steps`:
    ``train.max_steps`` when set, else ``max_epochs × steps_per_epoch``); the step schedules count
    epochs × steps_per_epoch.
    """
    if config.scheduler == "PolyLR":
        power = config.poly_power
        # the original's (1 - s / (max_iter + 1)) ** power: never exactly 0 at the last step
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (1 - s / (total_steps + 1)) ** power)
    if config.scheduler == "CosineLR":
        # MoCo v2's --cos: lr · ½(1 + cos(π · progress)); stepped per optimizer step, not per epoch
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps))
        )
    if config.scheduler == "MultiStepLR":
        milestones = [e * steps_per_epoch for e in config.decay_epochs]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.lr_decay)
    if config.scheduler == "StepLR":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, config.step_size * steps_per_epoch, gamma=config.lr_decay
        )
    raise ValueError(
        f"scheduler.scheduler={config.scheduler!r}: expected PolyLR, CosineLR, MultiStepLR or StepLR"
    )


class BNMomentumScheduler:
    """BatchNorm momentum max(0.5 · 0.5^floor(step / 20), 0.001), set after every optimizer step.

    The original (after VoteNet) applies this per iteration, so running statistics are nearly frozen
    after ~200 steps. Unlike the original, its position is saved in checkpoints and restored.
    """

    def __init__(
        self,
        model: nn.Module,
        initial: float = 0.5,
        decay: float = 0.5,
        every: int = 20,
        minimum: float = 0.001,
    ):
        self.model = model
        self.initial, self.decay, self.every, self.minimum = initial, decay, every, minimum
        self.step_count = 0
        self._apply()

    @classmethod
    def constant(cls, model: nn.Module, momentum: float) -> BNMomentumScheduler:
        """``momentum`` at every step (MoCo, Mask R-CNN and the smp segmentation recipes), kept in
        checkpoints like the decaying schedule so the Trainer handles both alike."""
        return cls(model, initial=momentum, decay=1.0, every=1, minimum=momentum)

    def momentum(self, step: int) -> float:
        return max(self.initial * self.decay ** math.floor(step / self.every), self.minimum)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def _apply(self) -> None:
        value = self.momentum(self.step_count)
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = value

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()
