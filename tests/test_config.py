"""Presets, YAML and overrides build the right TrainConfig; mistakes are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumolens.config import PRESETS, TrainConfig, load_config
from pneumolens.errors import ConfigError


def test_seed_preset_is_the_original_recipe() -> None:
    c = load_config("seed")
    assert (c.batch_size, c.max_epochs, c.lr, c.adam_eps, c.optimizer) == (8, 50, 1e-3, 1e-7, "adam")
    assert (c.scheduler, c.plateau_factor, c.plateau_patience, c.min_lr) == ("plateau", 0.2, 3, 1e-7)
    assert (c.early_stopping_patience, c.focal_gamma, c.focal_alpha, c.class_weighting) == (10, 2.0, 0.5, True)
    a = c.augment
    assert (a.hflip, a.degrees, a.zoom, a.translate, a.padding_mode) == (0.5, 72.0, 0.1, 0.1, "reflection")
    assert c.model.input_size == 128


def test_yaml_then_overrides_apply_in_order(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("batch_size: 16\nmax_epochs: 7\naugment:\n  degrees: 5\n")
    c = load_config("seed", y, {"max_epochs": 3, "seed": None})
    assert (c.batch_size, c.max_epochs, c.augment.degrees, c.augment.hflip) == (16, 3, 5.0, 0.5)


@pytest.mark.parametrize(
    "text,match",
    [("batchsize: 4\n", "unknown"), ("optimizer: sgd\n", "optimizer"), ("- 1\n", "mapping"), ("a: [\n", "cannot read")],
)
def test_bad_yaml_is_a_config_error(tmp_path: Path, text: str, match: str) -> None:
    y = tmp_path / "c.yaml"
    y.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config("seed", y)


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="preset"):
        load_config("best")


def test_every_preset_builds_and_round_trips() -> None:
    for name in PRESETS:
        c = load_config(name)
        assert TrainConfig.from_dict(c.to_dict()) == c


BREAKERS = ("crop", "erase", "marker", "gamma", "noise")


def test_seed_and_base_leave_the_shortcut_breakers_off() -> None:
    for name in ("seed", "base", "debug"):
        a = load_config(name).augment
        assert all(getattr(a, k) == 0.0 for k in BREAKERS), name


def test_default_is_base_with_pasted_markers_the_context_swap_thirty_epochs_and_the_last_epoch() -> None:
    """The cross-validated recipe (docs/cv/README.md): the levers that passed their screens over base, nothing else."""
    base, default = load_config("base").to_dict(), load_config("default").to_dict()
    assert default["augment"] == {**base["augment"], "marker": 0.5, "marker_size": 0.15, "swap": 0.5}
    assert (default["max_epochs"], default["select_epoch"], base["select_epoch"]) == (30, "last", "val_loss")
    assert (default["calibrate"], base["calibrate"]) == ("platt", "temperature")
    rest = ("augment", "max_epochs", "select_epoch", "calibrate")
    assert {k: v for k, v in default.items() if k not in rest} == {k: v for k, v in base.items() if k not in rest}


def test_robust_is_base_with_the_shortcut_breakers_on() -> None:
    robust, default = load_config("robust"), load_config("base")
    assert all(getattr(robust.augment, k) > 0 for k in BREAKERS)
    assert robust.augment.contrast > default.augment.contrast
    same = {k: v for k, v in robust.to_dict().items() if k != "augment"}
    assert same == {k: v for k, v in default.to_dict().items() if k != "augment"}
    for k in ("hflip", "degrees", "zoom", "translate", "brightness", "padding_mode"):
        assert getattr(robust.augment, k) == getattr(default.augment, k)


def test_yaml_turns_on_one_breaker(tmp_path: Path) -> None:
    y = tmp_path / "lever.yaml"
    y.write_text("augment:\n  marker: 0.3\n")
    c = load_config("base", y)
    assert c.augment.marker == 0.3 and c.augment.erase == 0.0 and c.augment.degrees == 10.0


def test_calibrate_reads_older_recipes_booleans_and_checks_its_value() -> None:
    """Recipes recorded before Platt scaling said calibrate: true/false (a temperature, or nothing)."""
    assert TrainConfig.from_dict({"calibrate": True}).calibrate == "temperature"
    assert TrainConfig.from_dict({"calibrate": False}).calibrate == "none"
    assert load_config("seed", overrides={"calibrate": "platt"}).calibrate == "platt"
    with pytest.raises(ConfigError, match="calibrate must be one of"):
        TrainConfig(calibrate="isotonic")


def test_select_epoch_defaults_to_the_lowest_val_loss_and_checks_its_value() -> None:
    assert TrainConfig().select_epoch == "val_loss"  # the original's "restore best weights"
    assert load_config("default", overrides={"select_epoch": "last"}).select_epoch == "last"
    with pytest.raises(ConfigError, match="select_epoch must be one of"):
        TrainConfig(select_epoch="best_auc")
