"""``fit`` and ``export_best``: a training run from the data folder to ``OUT/model.pt``.

``fit`` trains (or resumes) with the Trainer of :mod:`pneumolens.training.trainer`, then keeps
the epoch the recipe's ``select_epoch`` names (lowest val loss, or the last) and finalises it
(:mod:`pneumolens.training.finalize`). ``export_best`` finalises that epoch so far of a run
still going or interrupted.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from ..config import TrainConfig
from ..datamodule import PneumoniaDataModule
from ..errors import CheckpointError
from .finalize import FitResult, finalize
from .module import PneumoniaClassifier, recipe_class_weight
from .resume import kept_checkpoint, load_run_checkpoint, resume_point
from .trainer import build_trainer, quiet_training_warnings

log = logging.getLogger(__name__)


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
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # Read and checked before any work: the checkpoint may come from anywhere (see resume.py).
    point = resume_point(out) if resume else None
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
    return finalize(config, dm, out, state, epochs_run=trainer.current_epoch, t0=t0, preset=preset)


def export_best(
    config: TrainConfig, data: str | Path, out: str | Path, preset: str | None = None, progress: bool = True
) -> FitResult:
    """Write ``out/model.pt`` from the epoch so far that ``config.select_epoch`` keeps (lowest val
    loss, or the latest finished) of a run that is still going or was interrupted (provenance
    marks it ``interim``); no training. ``progress``: the bars of loading the films that calibrate it.

    Raises:
        CheckpointError: no finished epoch yet, or one of the run's checkpoints is unreadable or unsafe.
    """
    out = Path(out)
    best = kept_checkpoint(out, config.select_epoch)
    if best is None:
        raise CheckpointError(f"{out / 'checkpoints'}: no finished epoch yet (the run has not finished an epoch)")
    state = load_run_checkpoint(best)
    latest = resume_point(out)
    epochs_run = latest.epoch + 1 if latest else -1
    dm = PneumoniaDataModule.from_config(config, data, progress=progress)
    dm.setup("fit")
    return finalize(config, dm, out, state, epochs_run=epochs_run, t0=time.time(), preset=preset, interim=True)
