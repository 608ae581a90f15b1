"""The `pri3d` command: every subcommand registers and has help."""

from __future__ import annotations

import pytest

from pri3d.cli import COMMAND_MODULES, build_parser, main


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
