"""``fit`` and ``export_best``: a training run from the data folder to ``OUT/model.pt``.

``fit`` trains (or resumes) with the Trainer of :mod:`pneumolens.training.trainer`, then keeps
the epoch the recipe's ``select_epoch`` names (lowest val loss, or the last) and finalises it
(:mod:`pneumolens.training.finalize`). ``export_best`` finalises that epoch so far of a run
still going or interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from ..config import FINISHING_KEYS, TrainConfig
from ..datamodule import PneumoniaDataModule
from ..errors import CheckpointError, ConfigError
from ..jsonable import dumps
from .finalize import FitResult, finalize
from .module import PneumoniaClassifier, recipe_class_weight
from .resume import ResumeCallback, kept_checkpoint, load_run_checkpoint, resume_point
from .trainer import build_trainer, quiet_training_warnings

log = logging.getLogger(__name__)


#: In a run folder: the recipe the run was started with, so ``--resume`` cannot switch recipe.
RUN_CONFIG = "train_config.json"


def _differences(started: dict, now: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """``key (then, now)`` for each key whose value differs; inside a nested mapping, ``key.sub (then, now)``."""
    out = []
    for k in sorted(set(started) | set(now)):
        a, b = started.get(k), now.get(k)
        if k in skip or a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{d}" for d in _differences(a, b)]
        else:
            out.append(f"{k} ({a!r} then, {b!r} now)")
    return out


def check_same_run(config: TrainConfig, out: Path, epoch: int) -> None:
    """``--resume`` continues the run in ``out`` with the recipe it was started with, or refuses.

    ``max_epochs`` may grow (a run continued for longer) and ``accelerate`` may change (speed, not
    results); runs started before :data:`RUN_CONFIG` existed are checked for the epoch limit only.

    Raises:
        ConfigError: another recipe (the differing keys named), or fewer epochs than already run.
    """
    path = out / RUN_CONFIG
    if path.exists():
        try:
            started = TrainConfig.from_dict(json.loads(path.read_text())).to_dict()
        except (OSError, ValueError, TypeError, ConfigError) as exc:
            raise ConfigError(f"{path}: cannot read the recipe this run was started with ({exc})") from None
        now = config.to_dict()
        diff = _differences(started, now, skip=("max_epochs", "accelerate", *FINISHING_KEYS))
        if diff:
            raise ConfigError(
                f"{path}: the run in {out} was started with another {', '.join(diff)}; resume it with the same "
                "--preset and options (the preset's recipe may have changed since: see this file), or use another --out"
            )
    if epoch + 1 > config.max_epochs:
        raise ConfigError(
            f"{out}: the run has already trained {epoch + 1} epochs, more than max_epochs {config.max_epochs}; "
            "resume it with the --preset and --max-epochs it was started with"
        )


def _refuse_to_replace(out: Path) -> None:
    """A fresh run never overwrites another run's model or checkpoints: it would lose hours of training."""
    checkpoints = out / "checkpoints"
    held = [name for name, there in (("model.pt", (out / "model.pt").exists()),
                                     ("checkpoints", checkpoints.is_dir() and any(checkpoints.iterdir())))
            if there]
    if held:
        raise ConfigError(f"{out}: holds a training run ({' and '.join(held)}); pass --resume to continue it, "
                          "or choose another --out")


def fit(
    config: TrainConfig,
    data: str | Path,
    out: str | Path,
    resume: bool = False,
    devices: int | str = 1,
    accelerator: str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    skip_bad: bool = False,
    max_images: int | None = None,
    limit_train_batches: int | float | None = None,
    progress: bool = True,
    preset: str | None = None,
    extra_callbacks: list[Callback] | None = None,
) -> FitResult:
    """Train, keep the epoch ``config.select_epoch`` names, calibrate on validation, write ``out/model.pt``.

    Args:
        resume: continue from ``out/checkpoints`` (see :func:`~pneumolens.training.resume.resume_point`);
            a fresh run when there is none.
        devices, accelerator, strategy, num_nodes: Lightning's Trainer's (see
            :func:`~pneumolens.training.trainer.build_trainer`).
        progress: progress bars, the data's decoding included.

    Raises:
        CheckpointError: ``resume`` and the checkpoint to continue from is unreadable or unsafe.
        ConfigError: ``resume`` with another recipe than the run was started with (see :func:`check_same_run`).
    """
    out = Path(out)
    if not resume:
        _refuse_to_replace(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # Read and checked before any work: the checkpoint may come from anywhere (see resume.py).
    point = resume_point(out) if resume else None
    if point is not None:
        check_same_run(config, out, point.epoch)
    L.seed_everything(config.seed, workers=True, verbose=False)
    dm = PneumoniaDataModule.from_config(config, data, skip_bad=skip_bad, max_images=max_images, progress=progress)
    dm.prepare_data()
    dm.setup("fit")
    module = PneumoniaClassifier(config, recipe_class_weight(config, dm.counts["train"]))
    part = len(list((out / "logs").glob("part*"))) if resume else 0
    with quiet_training_warnings():
        trainer = build_trainer(
            config, out, log_part=part, devices=devices, accelerator=accelerator, strategy=strategy,
            num_nodes=num_nodes, progress=progress, limit_train_batches=limit_train_batches,
            extra_callbacks=extra_callbacks,
        )
    if point is None:  # a fresh run: record how it was started, forget the logs of any earlier run here
        (out / "command.txt").write_text(" ".join(sys.argv) + "\n")
        (out / RUN_CONFIG).write_text(dumps(config.to_dict(), indent=2) + "\n")
        for old_part in (out / "logs").glob("part*/metrics.csv"):
            old_part.unlink()
    if resume and point is None:
        log.warning("--resume: no checkpoint under %s/checkpoints, starting from scratch", out)
    # weights_only=True, said explicitly: Lightning passes it on to torch.load, and the environment
    # (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) cannot turn an explicit True into a full unpickling.
    with quiet_training_warnings():
        trainer.fit(module, datamodule=dm, ckpt_path=str(point.path) if point else None, weights_only=True)
    if not trainer.is_global_zero:
        return FitResult(out / "model.pt", {}, trainer.current_epoch, time.time() - t0)

    kept = kept_checkpoint(out, config.select_epoch)
    state = load_run_checkpoint(kept) if kept else None
    # A resumed run's wall time includes the segments before this one (stored in its checkpoints).
    before_s = next((cb.before_s for cb in trainer.callbacks if isinstance(cb, ResumeCallback)), 0.0)
    return finalize(config, dm, out, state, epochs_run=trainer.current_epoch, t0=t0 - before_s, preset=preset)


def export_best(
    config: TrainConfig, data: str | Path, out: str | Path, preset: str | None = None, progress: bool = True,
    interim: bool = True, expect_manifest: str | None = None, skip_bad: bool = False, max_images: int | None = None,
) -> FitResult:
    """Write ``out/model.pt`` from the epoch so far that ``config.select_epoch`` keeps (lowest val
    loss, or the latest finished) of a run's checkpoints; no training. ``progress``: the bars of
    loading the films that calibrate it.

    Args:
        interim: the run is still going or was interrupted (recorded in the provenance); False
            for a finished run re-finalised under another epoch rule (``cv --trained-in``).
        expect_manifest: the data manifest the run was trained on: refused before any writing if
            ``data`` (at ``config``'s split) differs, so a model is never scored on films it saw.
        skip_bad, max_images: as the run was trained with (they decide its validation films).

    Raises:
        CheckpointError: no finished epoch yet, or one of the run's checkpoints is unreadable or unsafe.
        ConfigError: ``expect_manifest`` differs from the data's.
    """
    out = Path(out)
    best = kept_checkpoint(out, config.select_epoch)
    if best is None:
        raise CheckpointError(f"{out / 'checkpoints'}: no finished epoch yet (the run has not finished an epoch)")
    state = load_run_checkpoint(best)
    latest = resume_point(out)
    epochs_run = latest.epoch + 1 if latest else -1
    dm = PneumoniaDataModule.from_config(config, data, skip_bad=skip_bad, max_images=max_images, progress=progress)
    dm.setup("fit")
    if expect_manifest is not None and dm.manifest != expect_manifest:
        raise ConfigError(
            f"{data}: these films (manifest {dm.manifest}) are not the ones the run in {out} was trained and "
            f"validated on (manifest {expect_manifest})"
        )
    return finalize(config, dm, out, state, epochs_run=epochs_run, t0=time.time(), preset=preset, interim=interim)
