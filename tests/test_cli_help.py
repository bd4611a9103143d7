"""`pneumolens --help` is fast (no torch import) and every command explains itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pneumolens.cli import COMMANDS, build_parser, main


def test_building_the_parser_imports_neither_torch_nor_sklearn() -> None:
    code = "import sys, pneumolens.cli as c; c.build_parser(); print('torch' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_static_choice_lists_match_the_library() -> None:
    from pneumolens.commands.evaluate import SPLITS
    from pneumolens.commands.explain import METHOD_NAMES
    from pneumolens.commands.train import PRESET_NAMES
    from pneumolens.config import PRESETS
    from pneumolens.evaluate import SPLITS as LIB_SPLITS
    from pneumolens.explain.core import METHODS

    assert PRESET_NAMES == tuple(sorted(PRESETS))
    assert METHOD_NAMES == tuple(METHODS)
    assert tuple(SPLITS) == tuple(LIB_SPLITS)


@pytest.mark.parametrize("command", [c.replace("_", "-") for c in COMMANDS])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_all_commands_are_registered() -> None:
    names = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    assert names == {c.replace("_", "-") for c in COMMANDS}
