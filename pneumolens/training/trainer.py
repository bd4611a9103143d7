"""The Lightning Trainer of ``pneumolens train``: devices, checkpoints, early stopping, logs, progress.

One function, :func:`build_trainer`, so that training and ``bench/bench_core.py`` run the same
Trainer settings (deterministic algorithms, no sanity validation, no model summary).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ..config import TrainConfig
from .resume import ResumeCallback

#: Lightning's warnings that a user of ``pneumolens train`` can do nothing about (regular expressions
#: matched at the start of the message): silenced by :func:`quiet_training_warnings`.
QUIET_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's own use of torch's pytree
    r"The number of training batches \(\d+\) is smaller than the logging interval",  # a short epoch logs at its end
    # A run folder that was moved or renamed, then resumed: the kept epoch is found by file name
    # (resume.kept_checkpoint), not by the paths the checkpoints recorded.
    r"The dirpath has changed from",
)


@contextlib.contextmanager
def quiet_training_warnings() -> Iterator[None]:
    """Silence :data:`QUIET_WARNINGS` inside the block (a training run), and only there: a library
    user's own warning filters are restored as they were when it ends."""
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def build_trainer(
    config: TrainConfig,
    out: Path | None,
    *,
    log_part: int = 0,
    devices: int | str = 1,
    accelerator: str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    progress: bool = True,
    limit_train_batches: int | float | None = None,
    max_steps: int = -1,
    extra_callbacks: list[Callback] | None = None,
) -> L.Trainer:
    """A Trainer for ``config``'s epochs that writes its run into ``out``.

    With a run folder: ``out/checkpoints/best.ckpt`` (lowest val loss) and ``last.ckpt`` (every
    epoch's end), ``interrupted.ckpt`` on Ctrl-C or SIGTERM, the learning rate per epoch, CSV logs
    in ``out/logs/part<log_part>`` (each resumed segment its own part) and TensorBoard in
    ``out/tb``; early stopping when the recipe asks for it.

    ``out=None`` gives the same Trainer for the training steps alone, as ``bench/bench_core.py``
    times them: no files, no validation, no early stopping.

    Args:
        log_part: number of this run segment's CSV log (0 for a fresh run).
        devices, accelerator, strategy, num_nodes: Lightning's (processes on CPU, ``gpu``, ``ddp``, machines);
            under ``torchrun`` or SLURM Lightning takes the ranks from the environment.
        progress: a tqdm progress bar (readable in a log file too, with ETA).
        limit_train_batches: Lightning's, for quick runs. max_steps: stop after this many steps (-1: epochs decide).
        extra_callbacks: added after the Trainer's own (tests interrupt runs with them).
    """
    callbacks: list[Callback] = []
    loggers: list[CSVLogger | TensorBoardLogger] = []
    if out is not None:
        # One best.ckpt, overwritten in place: with Lightning's version counter a resumed run whose
        # recorded path is spelled differently (a symlinked run folder) wrote best-v1.ckpt beside it.
        callbacks.append(ModelCheckpoint(
            dirpath=out / "checkpoints", filename="best", monitor="val_loss", mode="min", save_top_k=1,
            enable_version_counter=False,
        ))
        # Every epoch's end, whatever the val loss did: what --resume continues from.
        callbacks.append(ModelCheckpoint(
            dirpath=out / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False
        ))
        callbacks += [LearningRateMonitor("epoch"), ResumeCallback(out)]
        # Lightning's CSV logger would delete the earlier segments' rows on resume; merge_history
        # joins the parts.
        loggers = [
            CSVLogger(out / "logs", name="", version=f"part{log_part}"),
            TensorBoardLogger(out, name="tb", version=""),
        ]
    callbacks.extend(extra_callbacks or [])
    if progress:  # tqdm, not rich: readable in a log file too, with ETA
        callbacks.append(TQDMProgressBar(refresh_rate=1 if sys.stderr.isatty() else 25))
    if out is not None and config.early_stopping_patience > 0:
        callbacks.append(EarlyStopping("val_loss", patience=config.early_stopping_patience, mode="min"))
    return L.Trainer(
        max_epochs=config.max_epochs,
        max_steps=max_steps,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        callbacks=callbacks,
        logger=loggers or False,
        enable_checkpointing=out is not None,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=True,
        log_every_n_steps=50,
        num_sanity_val_steps=0,
        limit_val_batches=None if out is not None else 0,
        limit_train_batches=limit_train_batches,
    )
