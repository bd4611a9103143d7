"""Config values of the wrong kind: one line naming the key (pneumolens.fieldtypes), also through YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumolens.augment import AugmentConfig
from pneumolens.config import load_config
from pneumolens.errors import ConfigError
from pneumolens.model import ModelConfig


@pytest.mark.parametrize(("yaml_text", "message"), [
    ('augment: {swap: "x"}', "augment.swap must be a number, got 'x'"),
    ("augment: {swap: true}", "augment.swap must be a number, got True"),
    ("augment: {swap: [0.5]}", "augment.swap must be a number, got [0.5]"),
    ("lr: fast", "lr must be a number, got 'fast'"),
    ("max_epochs: 2.5", "max_epochs must be a whole number, got 2.5"),
    ("class_weighting: 1", "class_weighting must be true or false, got 1"),
    ("optimizer: 3", "optimizer must be text, got 3"),
    ("augment: 0.5", "augment must be a mapping of augmentation keys, got 0.5"),
    ("model: {lstm_dropout: high}", "model.lstm_dropout must be a number, got 'high'"),
])
def test_a_value_of_the_wrong_kind_names_the_file_and_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError) as exc:
        load_config("default", path)
    assert str(exc.value) == f"{path}: {message}"


def test_whole_numbers_are_numbers_and_the_presets_pass() -> None:
    assert AugmentConfig(swap=1).swap == 1 and ModelConfig(lstm_dropout=0).lstm_dropout == 0
    for preset in ("seed", "base", "default", "robust", "debug"):
        load_config(preset)


def test_an_unreadable_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("augment: {swap: 0.5\nlr: [\n")
    with pytest.raises(ConfigError) as exc:
        load_config("default", path)
    assert str(exc.value).startswith(f"{path}: cannot read config") and "\n" not in str(exc.value)


def test_an_error_from_a_command_line_override_is_not_blamed_on_the_yaml(tmp_path: Path) -> None:
    """The YAML is valid; ``--lr -1`` is not: the message must not name the file."""
    path = tmp_path / "recipe.yaml"
    path.write_text("augment: {swap: 0.5}\n")
    with pytest.raises(ConfigError) as exc:
        load_config("default", path, {"lr": -1.0})
    assert str(exc.value) == "lr must be positive, got -1.0"
