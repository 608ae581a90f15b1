"""`pri3d export`: the command line's own files (the conversions are tested in tests/export)."""

from __future__ import annotations

import json
from unittest import mock

import torch
import torchvision

from pri3d.cli import main
from pri3d.io.atomic import atomic_write
from pri3d.tasks import export_cli


def test_the_key_report_is_written_whole_or_not_at_all(tmp_path, capsys):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    report = tmp_path / "report.json"
    with mock.patch.object(export_cli, "atomic_write", wraps=atomic_write) as writes:
        code = main(
            [
                "export",
                "torchvision",
                str(tmp_path / "r18.pth"),
                str(tmp_path / "out.pth"),
                "--report",
                str(report),
            ]
        )
    assert code == 0 and [call.args[0] for call in writes.call_args_list] == [report]
    assert json.loads(report.read_text())["layout"] == "torchvision"
    assert not list(tmp_path.glob(".*.tmp"))
