"""`pri3d demo --quick` runs end to end and reports what it did."""

from __future__ import annotations

import json

import pytest

from pri3d.cli import main


@pytest.mark.slow
def test_quick_demo(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--quick", "--workers", "1"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["preprocess"]["pairs"] > 0 and report["preprocess"]["frames"] > 0
    assert report["pixel correspondences"]["matched_share_median"] > 0.2
    assert (tmp_path / "preview.png").stat().st_size > 10_000
    assert report["pretrain"]["steps"] == 4
    assert (tmp_path / "pretrain" / "checkpoints" / "last").is_file()
    assert "# pri3d demo" in (tmp_path / "report.md").read_text()
