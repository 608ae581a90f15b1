"""Run logging: a text log and JSONL metrics always, TensorBoard and Weights & Biases when enabled.

Only the main process (rank 0) writes. Weights & Biases never prompts: `disabled` by default,
`offline` works without an account, `online` needs WANDB_API_KEY (or a prior `wandb login`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path


class RunLogger:
    def __init__(
        self,
        log_dir: str | Path,
        *,
        enabled: bool,
        name: str,
        config: dict,
        tensorboard: bool = True,
        wandb_mode: str = "disabled",
        wandb_project: str = "pri3d",
    ):
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self.text = logging.getLogger(f"pri3d.run.{id(self)}")
        self.text.propagate = False
        self.text.setLevel(logging.INFO)
        self._metrics = None
        self._tensorboard = None
        self._wandb = None
        if not enabled:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        for handler in (logging.FileHandler(self.log_dir / "train.log"), logging.StreamHandler(sys.stderr)):
            handler.setFormatter(formatter)
            self.text.addHandler(handler)
        self._metrics = open(self.log_dir / "metrics.jsonl", "a")  # appended to across resumes
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.log_dir / "tensorboard"))
        if wandb_mode not in ("disabled", "offline", "online"):
            raise ValueError(f"logging.wandb={wandb_mode!r}: expected disabled, offline or online")
        if wandb_mode != "disabled":
            self._wandb = _start_wandb(wandb_mode, wandb_project, name, config, self.log_dir)

    def info(self, message: str) -> None:
        if self.enabled:
            self.text.info(message)

    def metrics(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self._metrics.write(json.dumps({"step": step, **values}) + "\n")
        self._metrics.flush()
        for key, value in values.items():
            if isinstance(value, int | float):
                if self._tensorboard is not None:
                    self._tensorboard.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in values.items() if isinstance(v, int | float)}, step=step)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
        for handler in list(self.text.handlers):
            handler.close()
            self.text.removeHandler(handler)


def _start_wandb(mode: str, project: str, name: str, config: dict, log_dir: Path):
    try:
        import wandb
    except ImportError:
        raise ValueError(
            "logging.wandb is set but wandb is not installed: pip install 'pri3d[wandb]'"
        ) from None
    if (
        mode == "online"
        and not os.environ.get("WANDB_API_KEY")
        and not Path.home().joinpath(".netrc").exists()
    ):
        raise ValueError(
            "logging.wandb=online needs WANDB_API_KEY (or `wandb login`); use logging.wandb=offline"
        )
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(project=project, name=name, config=config, dir=str(log_dir), mode=mode, resume="allow")
