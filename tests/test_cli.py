"""The `pri3d` command: every subcommand registers and has help."""

from __future__ import annotations

import argparse

import pytest

from pri3d.cli import COMMAND_MODULES, build_parser, main
from pri3d.cli_types import image_size
from pri3d.synth import scannet_cli as synth_cli
from pri3d.synth.generate import SynthConfig


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_every_module_registers_a_subcommand():
    assert len(_subcommands()) == len(COMMAND_MODULES)


@pytest.mark.parametrize("command", _subcommands())
def test_subcommand_help(command: str, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"pri3d {command}" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_image_size_reads_height_by_width():
    assert image_size("240x320") == (240, 320) and image_size("48X64") == (48, 64)
    for bad in ("240", "240x", "x320", "240x320x3", "-240x320", "0x320"):
        with pytest.raises(argparse.ArgumentTypeError, match="HEIGHTxWIDTH"):
            image_size(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="at least 32"):
        image_size("16x320", minimum=32)


def test_every_size_option_is_height_by_width():
    """One string, one size: `synth --color-size` and `demo --size` both read HEIGHTxWIDTH."""
    parser = build_parser()
    synth = parser.parse_args(
        ["synth", "scannet", "--out", "x", "--color-size", "60x80", "--depth-size", "30x40"]
    )
    assert synth.color_size == (60, 80) and synth.depth_size == (30, 40)
    defaults = parser.parse_args(["synth", "scannet", "--out", "x"])
    assert (defaults.color_size, defaults.depth_size) == (SynthConfig().color_size, SynthConfig().depth_size)
    assert parser.parse_args(["demo", "--size", "60x80"]).size == (60, 80)


def test_an_os_error_is_one_line_without_a_traceback(monkeypatch, capsys, tmp_path):
    def full_disk(args):
        raise OSError(28, "No space left on device", str(tmp_path / "scene.sens"))

    monkeypatch.setattr(synth_cli, "run", full_disk)
    assert main(["synth", "scannet", "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error == f"pri3d synth: error: [Errno 28] No space left on device: '{tmp_path / 'scene.sens'}'\n"
