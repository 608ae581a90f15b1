"""The closing lines of the summary every ``pri3d preprocess`` run prints: what was redone, what
failed, and where the full report is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["outcome_lines"]


def outcome_lines(report: dict[str, Any], unit: str, report_path: Path | str) -> list[str]:
    """``redone`` and ``FAILED`` lines of a run's ``report``, then the report's path and the run's time.

    ``unit`` is the key naming a scene or drive in the report's ``redone`` and ``failures`` entries
    ("scene", "drive"); a failure shows the first line of its reason (the rest is in the report).
    """
    lines = [f"redone {entry[unit]} (was incomplete: {entry['reason']})" for entry in report["redone"]]
    lines += [f"FAILED {entry[unit]}: {entry['reason'].splitlines()[0]}" for entry in report["failures"]]
    lines.append(f"report: {report_path} ({report['seconds']:.1f} s)")
    return lines
