"""SIGTERM stops `pri3d` as Ctrl-C does: exit 130, the interrupt message, every cleanup run.

It comes from `kill` (the process alone) or from torchrun, `timeout` and schedulers (the whole
process group, DataLoader workers included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_subprocess import start_python

from pri3d.cli import INTERRUPTED, main
from pri3d.synth import scannet_cli as synth_cli


def _group_running(group: int) -> list[int]:
    """Pids of the processes in process group ``group`` that have not ended (zombies have)."""
    running = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        except OSError:  # ended while listed
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            running.append(int(stat.parent.name))
    return running


def _wait_until(ready, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"exited {process.returncode} before {what}:\n{process.stdout.read()}")
        assert time.monotonic() < deadline, f"no {what} within 120 s"
        time.sleep(0.1)


def _tracebacks(output: str) -> list[str]:
    """The tracebacks in ``output``, but for those of multiprocessing's resource-sharer thread: a
    DataLoader worker stopped while it hands a batch's file descriptors to the main process prints
    one from that thread (Python's multiprocessing/resource_sharer.py, not pri3d's code)."""
    blocks = output.split("Traceback (most recent call last):")[1:]
    return [block for block in blocks if "multiprocessing/resource_sharer.py" not in block.split("\n", 2)[1]]


def _assert_interrupted_and_gone(process: subprocess.Popen, output: str) -> None:
    assert process.returncode == 130, output
    assert INTERRUPTED in output and _tracebacks(output) == [], output
    deadline = time.monotonic() + 10
    while _group_running(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group_running(process.pid) == [], "a DataLoader worker outlived pri3d"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process groups in /proc")
def test_sigterm_interrupts_a_training_run_as_ctrl_c_does(pretrain_root, tmp_path, tiny_pretrain):
    """`kill` signals the run alone: it stops its DataLoader worker itself, as on Ctrl-C."""
    metrics = tmp_path / "run" / "metrics.jsonl"
    overrides = tiny_pretrain(pretrain_root, tmp_path / "run", "train.max_steps=1000", "train.workers=1")
    process = start_python(["-m", "pri3d.cli", "pretrain", *overrides], new_session=True)
    try:
        _wait_until(lambda: metrics.is_file() and metrics.stat().st_size > 0, process, "a training step")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    _assert_interrupted_and_gone(process, output)


# `pri3d synth scannet` replaced by a loop over a DataLoader with two (forked) workers
LOADING = """
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from pri3d.cli import main
from pri3d.synth import scannet_cli


class Slow(Dataset):
    def __len__(self):
        return 1_000_000

    def __getitem__(self, index):
        time.sleep(0.01)
        return torch.zeros(1)


def run(args):
    for _ in DataLoader(Slow(), num_workers=2, multiprocessing_context="fork"):
        Path(sys.argv[1]).touch()
    return 0


scannet_cli.run = run
sys.exit(main(["synth", "scannet", "--out", "unused"]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process groups in /proc")
def test_sigterm_to_the_process_group_is_one_interrupt_not_a_dataloader_failure(tmp_path):
    """torchrun, `timeout` and schedulers signal the whole group: the DataLoader workers end at
    once, and PyTorch would report each as a failed worker over the interrupt."""
    started = tmp_path / "started"
    process = start_python(["-c", LOADING, str(started)], new_session=True)
    try:
        _wait_until(started.is_file, process, "a batch")
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    _assert_interrupted_and_gone(process, output)


def _record_sigterm_handler(seen: list):
    def run(args) -> int:
        seen.append(signal.getsignal(signal.SIGTERM))
        return 0

    return run


@pytest.mark.parametrize("before", [signal.SIG_DFL, signal.SIG_IGN], ids=["default", "ignored"])
def test_main_sets_a_sigterm_handler_only_while_the_command_runs(monkeypatch, tmp_path, before):
    seen: list = []
    monkeypatch.setattr(synth_cli, "run", _record_sigterm_handler(seen))
    previous = signal.signal(signal.SIGTERM, before)
    try:
        assert main(["synth", "scannet", "--out", str(tmp_path)]) == 0
        after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if before is signal.SIG_IGN:  # as Python leaves an ignored SIGINT ignored
        assert seen == [signal.SIG_IGN]
    else:
        assert callable(seen[0])
    assert after is before


def test_main_outside_the_main_thread_leaves_sigterm_alone(monkeypatch, tmp_path):
    """Only the main thread may set signal handlers: elsewhere the command runs without one."""
    seen: list = []
    codes: list[int] = []
    monkeypatch.setattr(synth_cli, "run", _record_sigterm_handler(seen))
    thread = threading.Thread(target=lambda: codes.append(main(["synth", "scannet", "--out", str(tmp_path)])))
    thread.start()
    thread.join()
    assert codes == [0]
    assert seen == [signal.getsignal(signal.SIGTERM)]
