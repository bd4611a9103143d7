"""`pneumolens --help` is fast (no torch import) and every command explains itself."""

from __future__ import annotations

import re
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
    from pneumolens.commands.train import EPOCH_RULES, PRESET_NAMES
    from pneumolens.config import EPOCH_RULES as LIB_EPOCH_RULES
    from pneumolens.config import PRESETS
    from pneumolens.evaluate import SPLITS as LIB_SPLITS
    from pneumolens.explain.core import METHODS

    assert PRESET_NAMES == tuple(sorted(PRESETS))
    assert EPOCH_RULES == LIB_EPOCH_RULES
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


def _help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    """``pneumolens COMMAND --help`` with its line wrapping undone (argparse wraps "(default:" / "None)")."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", [c.replace("_", "-") for c in COMMANDS])
def test_help_never_shows_an_empty_or_doubled_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 18: `train --help` said "(default: $PNEUMOLENS_DATA, ...) (default: None)" and "(default: False)"."""
    text = _help_text(command, capsys)
    for empty in ("(default: None)", "(default: False)", "(default: ==SUPPRESS==)"):
        assert empty not in text
    assert re.search(r"\(default: [^()]*(\([^()]*\)[^()]*)*\)\s*\(default:", text) is None, text


def test_help_keeps_the_defaults_that_say_something(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help_text("train", capsys)
    assert "(default: default)" in text  # --preset
    assert "(default: auto)" in text  # --accelerator
    assert text.count("(default: $PNEUMOLENS_DATA") == 1  # --data says its own default once
    assert "(default: runs/demo)" in _help_text("demo", capsys)
