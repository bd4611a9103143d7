"""Training configuration: typed, validated, with named presets and YAML files.

``seed`` is the original project's recipe exactly (batch 8, 128x128, its augmentation, focal
loss, Adam 1e-3, ReduceLROnPlateau, early stopping at 10, ≤ 50 epochs). ``default`` is the
shipped model's recipe, chosen by patient-level cross-validation on ``train`` (docs/cv/README.md).
Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .augment import AugmentConfig
from .calibrated import CALIBRATIONS
from .errors import ConfigError
from .fieldtypes import check_scalar_types
from .model import ModelConfig

OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("plateau", "cosine")
#: Which epoch's weights a run keeps: the lowest validation loss, or the last epoch.
EPOCH_RULES = ("val_loss", "last")
#: Keys that only finish a trained run (fit its calibration): a run or a cross-validation may be
#: resumed, and a cross-validation's threshold taken, under another value.
FINISHING_KEYS = ("calibrate",)


@dataclass
class TrainConfig:
    """Everything that decides a training run's result (saved in the checkpoint's provenance).

    Attributes:
        model: architecture. augment: training augmentation.
        batch_size: images per step. max_epochs: upper bound on epochs.
        lr, weight_decay, optimizer (adam | adamw), adam_eps: the optimiser.
        scheduler: ``plateau`` (ReduceLROnPlateau on val loss) or ``cosine`` (with warm-up).
        plateau_factor, plateau_patience, min_lr: ReduceLROnPlateau settings.
        warmup_epochs: linear warm-up for the cosine schedule.
        early_stopping_patience: epochs without val-loss improvement before stopping (0 = off).
        select_epoch: which epoch's weights the run keeps: ``val_loss`` (the lowest validation
            loss, Keras's "restore best weights") or ``last`` (the schedule's end: validation then
            chooses only the temperature and the threshold).
        focal_gamma, focal_alpha: focal loss. class_weighting: the original's class weights.
        label_smoothing: 0 = off.
        val_fraction, split_seed: the patient-level validation split of ``train``.
        folds, fold: patient-level K-fold cross-validation of ``train`` instead of that split:
            fold ``fold`` of ``folds`` (stratified by class, drawn with ``split_seed``) validates,
            the others train. ``folds = 0`` (the default) keeps the single validation split.
        seed: seeds weights, shuffling and augmentation.
        threshold_rule: how the decision threshold is chosen on validation (youden, f1, ...).
        calibrate: how validation calibrates the probabilities (changes them, not the ranking):
            ``temperature`` (one logit temperature), ``platt`` (a temperature and a bias: a
            logistic regression on the logit, which also moves probabilities that class weighting
            pushed to one side) or ``none``. ``true``/``false`` in older recipes read as
            ``temperature``/``none``.
        accelerate: on CPU, swap the accelerator's training kernels into the model
            (:func:`pneumolens.accel.accelerate_cpu_training`); False trains the stock layers.
            The same weights either way, within float tolerance.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 8
    max_epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    adam_eps: float = 1e-7
    scheduler: str = "plateau"
    plateau_factor: float = 0.2
    plateau_patience: int = 3
    min_lr: float = 1e-7
    warmup_epochs: int = 0
    early_stopping_patience: int = 10
    select_epoch: str = "val_loss"
    focal_gamma: float = 2.0
    focal_alpha: float = 0.5
    class_weighting: bool = True
    label_smoothing: float = 0.0
    val_fraction: float = 0.1
    split_seed: int = 0
    folds: int = 0
    fold: int = 0
    seed: int = 0
    threshold_rule: str = "youden"
    calibrate: str = "temperature"
    accelerate: bool = True

    def __post_init__(self) -> None:
        for name, kind, what in (("model", ModelConfig, "model"), ("augment", AugmentConfig, "augmentation")):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, kind.from_dict(value))
            elif not isinstance(value, kind):
                raise ConfigError(f"{name} must be a mapping of {what} keys, got {value!r}")
        if isinstance(self.calibrate, bool):  # recipes written before Platt scaling existed
            self.calibrate = "temperature" if self.calibrate else "none"
        check_scalar_types(self)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.calibrate not in CALIBRATIONS:
            raise ConfigError(f"calibrate must be one of {CALIBRATIONS}, got {self.calibrate!r}")
        if self.select_epoch not in EPOCH_RULES:
            raise ConfigError(f"select_epoch must be one of {EPOCH_RULES}, got {self.select_epoch!r}")
        if self.batch_size < 1 or self.max_epochs < 1:
            raise ConfigError("batch_size and max_epochs must be positive")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.folds == 1 or self.folds < 0:
            raise ConfigError(f"folds must be 0 (one validation split) or at least 2, got {self.folds}")
        if not (0 <= self.fold < self.folds or self.folds == self.fold == 0):
            raise ConfigError(f"fold must be in [0, {max(self.folds - 1, 0)}] for folds={self.folds}, got {self.fold}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown training config keys: {sorted(unknown)}")
        return cls(**copy.deepcopy(d))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


#: The project's recipe before cross-validation chose the shipped one (docs/cv/README.md):
#: AdamW, cosine schedule, batch 32, light augmentation, 30 epochs, lowest-val-loss epoch.
_BASE: dict[str, Any] = {
    "batch_size": 32,
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "scheduler": "cosine",
    "warmup_epochs": 1,
    "max_epochs": 30,
    "early_stopping_patience": 0,
    # Batch 32 gives 4x fewer steps per epoch than the original's 8: with Keras's BatchNorm
    # momentum the running statistics were still ~23 % at their initial values after the
    # first epoch, and validation predicted PNEUMONIA for every film (AUC 0.39 after 2 epochs).
    "model": {"bn_momentum": 0.1},
    "augment": {"hflip": 0.0, "degrees": 10.0, "zoom": 0.1, "translate": 0.08, "brightness": 0.1, "contrast": 0.15},
}

#: Named recipes. ``seed`` = the original exactly; ``default`` = the shipped model's recipe, chosen
#: by patient-level cross-validation on ``train`` (docs/cv/README.md): ``base`` with letters and
#: markers pasted into the corners of half the training films, half the films' surroundings taken
#: from another film (the context swap, so that nothing outside the lungs carries the label),
#: 30 epochs, the last epoch kept, Platt-calibrated (class weighting leaves its probabilities low;
#: docs/cv/README.md, calibration);
#: ``base`` = the starting point of that cross-validation; ``robust`` = ``base`` with every
#: shortcut breaker of pneumolens/augment.py; ``debug`` = seconds, for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "seed": {},
    "base": _BASE,
    "default": _merge(
        _BASE, {"max_epochs": 30, "select_epoch": "last", "calibrate": "platt",
                "augment": {"marker": 0.5, "marker_size": 0.15, "swap": 0.5}}
    ),
    # Random resized crops, border/corner erasing, pasted letters and markers, stronger contrast,
    # gamma and noise.
    "robust": _merge(_BASE, {
        "augment": {
            "contrast": 0.25, "crop": 0.5, "crop_scale": 0.6, "erase": 0.5, "erase_size": 0.08,
            "marker": 0.5, "marker_size": 0.15, "gamma": 0.4, "noise": 0.03,
        }
    }),
    # A seconds-long run for tests and the demo's fallback: tiny epochs, same code path.
    "debug": {"batch_size": 16, "max_epochs": 2, "early_stopping_patience": 0},
}


def load_config(preset: str = "default", yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Build a config: preset, then a YAML file, then explicit overrides (CLI flags), in that order."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    d = _merge(TrainConfig().to_dict(), PRESETS[preset])
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config ({' '.join(str(exc).split())})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: config must be a mapping of keys to values")
        d = _merge(d, loaded)
        try:  # the file's own mistakes name the file; the overrides' below do not
            TrainConfig.from_dict(d)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    d = _merge(d, {k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(d)
