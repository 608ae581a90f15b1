"""`run_jobs` interrupted: the runs in flight end with it (an exception in the loop, or SIGTERM to
`pri3d`), the next call redoes only them, and a run cut short before its first checkpoint starts
over with metrics of one attempt."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_subprocess import start_python

from pri3d.cli import INTERRUPTED
from pri3d.demo.study import Job, _execute, run_jobs

HERE = Path(__file__).resolve().parent


def sleep_run(kind: str, log_dir: str, overrides: list[str], options: dict, threads: int) -> dict:
    """A run as `run_jobs` has a worker execute it: sleeps ``options["seconds"]`` in a child process
    (as a run's DataLoader worker works), writes its pid and the child's to ``<log_dir>/pids`` and,
    as a real run does, ends by writing ``done.json``."""
    log = Path(log_dir)
    log.mkdir(parents=True, exist_ok=True)
    child = multiprocessing.Process(target=time.sleep, args=(options["seconds"],))
    child.start()
    (log / "pids").write_text(f"{os.getpid()} {child.pid}")
    child.join()
    result = {"pid": os.getpid()}
    (log / "done.json").write_text(json.dumps(result))
    return result


def sleep_job(root: Path, name: str, seconds: float, after: str | None = None) -> Job:
    return Job(name, "sleep", root / name, [], after=after, options={"seconds": seconds})


def _pids(log_dir: Path) -> list[int]:
    """The pids `sleep_run` wrote: its process's, then its child's."""
    return [int(pid) for pid in (log_dir / "pids").read_text().split()]


def _wait_for(paths: list[Path], process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + 60
    while not all(path.is_file() for path in paths):
        if process is not None and process.poll() is not None:
            pytest.fail(f"exited {process.returncode} early:\n{process.stdout.read()}")
        assert time.monotonic() < deadline, f"not written within 60 s: {[str(p) for p in paths]}"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie has: only its exit status is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _still_running(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if _running(pid)]


class Stop(Exception):
    pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process states in /proc")
def test_an_exception_ends_the_runs_in_flight_and_the_next_call_redoes_only_them(tmp_path):
    jobs = [
        sleep_job(tmp_path, "quick", 0.0),
        sleep_job(tmp_path, "long", 30.0),
        sleep_job(tmp_path, "next", 0.0, after="quick"),
    ]

    def stop_when_long_runs(job: Job, result: dict) -> None:
        _wait_for([tmp_path / "long" / "pids"])
        raise Stop

    start = time.monotonic()
    with pytest.raises(Stop):
        run_jobs(jobs, 2, 1, on_done=stop_when_long_runs, heartbeat_s=1.0, execute=sleep_run)
    assert time.monotonic() - start < 20, "run_jobs waited for the run in flight instead of ending it"
    long_pids = _pids(tmp_path / "long")
    assert _still_running(long_pids, 5.0) == [], "the run or its child outlived run_jobs"
    assert not (tmp_path / "long" / "done.json").exists()
    assert not (tmp_path / "next").exists()

    quick_pids = _pids(tmp_path / "quick")
    jobs[1].options["seconds"] = 0.0
    results = run_jobs(jobs, 2, 1, heartbeat_s=1.0, execute=sleep_run)
    assert set(results) == {"quick", "long", "next"}
    assert _pids(tmp_path / "quick") == quick_pids  # read back from done.json, not run again
    assert results["long"]["pid"] == _pids(tmp_path / "long")[0] != long_pids[0]


# `pri3d demo` with its study replaced by two long sleeping runs (this module and tests/, which it
# imports from, are on PYTHONPATH)
DEMO_OF_SLEEPS = """
import sys
from pathlib import Path

import pri3d.demo.cli
from pri3d.cli import main
from pri3d.demo.study import run_jobs
from test_demo_jobs import sleep_job, sleep_run


def run(args):
    jobs = [sleep_job(args.out, name, 120.0) for name in ("a", "b")]
    run_jobs(jobs, 2, 1, heartbeat_s=1.0, execute=sleep_run)
    return 0


pri3d.demo.cli.run = run
sys.exit(main(["demo", "--out", sys.argv[1]]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process states in /proc")
def test_sigterm_to_pri3d_demo_ends_its_runs_and_exits_as_interrupted(tmp_path):
    process = start_python(["-c", DEMO_OF_SLEEPS, str(tmp_path)], path=(HERE, HERE.parent))
    pids: list[int] = []
    try:
        _wait_for([tmp_path / "a" / "pids", tmp_path / "b" / "pids"], process)
        pids = _pids(tmp_path / "a") + _pids(tmp_path / "b")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 130, output
        assert INTERRUPTED in output and "Traceback" not in output, output
        assert _still_running(pids, 5.0) == [], "the runs or their children outlived pri3d"
    finally:
        process.kill()
        for pid in pids:
            if _running(pid):  # a failed check leaves no sleeping run behind
                os.kill(pid, signal.SIGKILL)


def test_a_run_cut_short_before_its_first_checkpoint_starts_over_with_clean_metrics(
    pretrain_root, tmp_path, tiny_pretrain, monkeypatch
):
    log = tmp_path / "run"
    (log / "checkpoints").mkdir(parents=True)
    (log / "checkpoints" / "step0000003.pth.tmp").write_bytes(b"half a checkpoint")
    cut_short = [{"step": step, "train/total_loss": 9.0} for step in (1, 2, 3)]
    (log / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in cut_short))
    # the run sends its console output to <log>/console.txt by replacing these
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)

    result = _execute("pretrain", str(log), tiny_pretrain(pretrain_root, log, "train.max_steps=2"), {}, 0)
    records = [json.loads(line) for line in (log / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2]
    assert json.loads((log / "done.json").read_text()) == result
    assert not (log / "checkpoints" / "step0000003.pth.tmp").exists()
