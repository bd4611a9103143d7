"""Resuming a run: its checkpoints, read safely, the epoch's metric states, and its log segments.

A run folder ``OUT`` holds ``checkpoints/{last,best,interrupted}.ckpt`` (Lightning's format) and
``logs/part<N>/metrics.csv``, one log per run segment. Its checkpoint files may come from anywhere
(a shared drive, a copied run), so they are read with ``torch.load(weights_only=True)`` only:
tensors, containers and plain values, never a pickled object's code.
"""

from __future__ import annotations

import csv
import logging
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torchmetrics import Metric

from ..datamodule import ResumableBatches
from ..errors import CheckpointError

log = logging.getLogger(__name__)

#: Checkpoint key of the training epoch's accumulated metric and loss states (see
#: :meth:`PneumoniaClassifier.on_save_checkpoint`); checkpoints written before it existed lack it.
TRAIN_EPOCH_STATE_KEY = "pneumolens_train_epoch_state"

MetricStateValue = torch.Tensor | list[torch.Tensor]


# --- metric states: torchmetrics keeps them out of state_dict, the checkpoint keeps them here ------
def metric_state(metric: Metric) -> dict[str, Any]:
    """A detached CPU copy of what ``metric`` has accumulated: its states and its update count.

    torchmetrics keeps metric states out of ``state_dict`` (they are not persistent by default), so
    a checkpoint would otherwise lose them. List states (BinaryAUROC's concatenated predictions and
    targets) are copied element by element.
    """
    states: dict[str, MetricStateValue] = {}
    for name, value in metric.metric_state.items():
        if isinstance(value, torch.Tensor):
            states[name] = value.detach().cpu().clone()
        else:
            states[name] = [v.detach().cpu().clone() for v in value]
    return {"states": states, "update_count": metric.update_count}


def load_metric_state(metric: Metric, saved: dict[str, Any]) -> None:
    """Put a :func:`metric_state` copy back into ``metric``, on the metric's current device."""
    device = metric.device
    for name, value in saved["states"].items():
        restored = value.to(device) if isinstance(value, torch.Tensor) else [v.to(device) for v in value]
        setattr(metric, name, restored)
    # torchmetrics' own compute groups copy these private fields the same way; the count keeps
    # compute() from warning that it ran before update(), and the cache must not outlive the states.
    metric._update_count = int(saved["update_count"])
    metric._computed = None


# --- reading a run's checkpoint files --------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _reason(exc: BaseException) -> str:
    """``exc`` as a short one-line reason, never repeating torch's advice to unpickle in full."""
    first = _CONTROL.sub(" ", str(exc).strip().splitlines()[0] if str(exc).strip() else "").strip()
    if not first or "weights_only" in first or "Weights only" in first:
        return exc.__class__.__name__
    return first[:200]


def load_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint of a run folder, loaded on the CPU without unpickling objects.

    ``torch.load(weights_only=True)`` reads tensors, containers and plain values only. This
    project's Lightning checkpoints need no allow-listed globals: the weights, optimiser and
    scheduler states, callback states, loop progress, the loader's position and the epoch's
    metric states are all plain (checked on runs of the debug, seed and default presets,
    interrupted mid-epoch too). Anything else is refused, not unpickled.

    Raises:
        CheckpointError: unreadable, holds objects beyond plain values, or not a Lightning checkpoint.
    """
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:  # not a pickle at all, or a damaged one
            raise CheckpointError(
                f"{path}: not a readable training checkpoint (damaged, or not a PyTorch checkpoint)"
            ) from None
        what = _CONTROL.sub("", found.group(1))[:80]
        raise CheckpointError(
            f"{path}: refusing to load it: it holds pickled Python objects ({what}), which loading could use to "
            "run code; training checkpoints hold only tensors and plain values"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise CheckpointError(f"{path}: not a readable training checkpoint ({_reason(exc)})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint of a training run (no state_dict)")
    return saved


@dataclass(frozen=True)
class ResumePoint:
    """Where ``--resume`` continues: the checkpoint, its (0-based) epoch and its optimiser step count."""

    path: Path
    epoch: int
    global_step: int


def resume_path(out: Path) -> Path | None:
    """The newest of ``interrupted.ckpt`` and ``last.ckpt`` under ``out/checkpoints``."""
    cands = [p for p in (out / "checkpoints" / "interrupted.ckpt", out / "checkpoints" / "last.ckpt") if p.exists()]
    return max(cands, key=lambda p: p.stat().st_mtime) if cands else None


def resume_point(out: str | Path) -> ResumePoint | None:
    """The checkpoint ``--resume`` continues from, read and checked; None when the run has none.

    Raises:
        CheckpointError: the checkpoint is unreadable or unsafe (see :func:`load_run_checkpoint`).
    """
    path = resume_path(Path(out))
    if path is None:
        return None
    saved = load_run_checkpoint(path)
    try:
        return ResumePoint(path, int(saved.get("epoch", -1)), int(saved.get("global_step", 0)))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's epoch or step is not a number ({_reason(exc)})") from None


def best_checkpoint(out: Path) -> Path | None:
    """The lowest-val-loss checkpoint of the run in ``out``, as its own latest state records it.

    Falls back to ``out/checkpoints/best.ckpt``; None before the first validation.

    Raises:
        CheckpointError: the latest state is unreadable or unsafe.
    """
    latest = resume_path(out)
    if latest is not None:
        states = load_run_checkpoint(latest).get("callbacks") or {}
        for key, state in states.items() if isinstance(states, dict) else ():
            if isinstance(key, str) and key.startswith("ModelCheckpoint") and "'monitor': 'val_loss'" in key:
                path = Path(str(state.get("best_model_path") or "")) if isinstance(state, dict) else Path()
                if path.is_file():
                    return path
    fallback = out / "checkpoints" / "best.ckpt"
    return fallback if fallback.is_file() else None


def kept_checkpoint(out: Path, rule: str) -> Path | None:
    """The checkpoint whose weights the run in ``out`` keeps under ``rule`` (``TrainConfig.select_epoch``):
    ``val_loss`` -> :func:`best_checkpoint`; ``last`` -> ``out/checkpoints/last.ckpt`` (the latest
    finished epoch). None before the first epoch ends.

    Raises:
        CheckpointError: the run's latest state is unreadable or unsafe.
    """
    if rule == "last":
        last = out / "checkpoints" / "last.ckpt"
        return last if last.is_file() else None
    return best_checkpoint(out)


# --- the interrupted run ---------------------------------------------------------------------------
class ResumeCallback(Callback):
    """Keeps the resumable loader on Lightning's epoch and step, saves ``interrupted.ckpt`` on Ctrl-C / SIGTERM,
    and carries the run's training time across segments.

    Interrupted during validation, it saves nothing: ``--resume`` then starts from the newest
    earlier checkpoint, so every epoch is validated exactly once.

    Attributes:
        before_s: seconds the run had trained up to the checkpoint this segment resumed from (0 for a
            fresh run or a checkpoint written before this was recorded); each checkpoint stores
            ``before_s`` plus this segment's time so far as ``trained_s``.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.before_s = 0.0
        self.started = time.time()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.time()

    def state_dict(self) -> dict[str, float]:
        return {"trained_s": self.before_s + time.time() - self.started}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before_s = float(state_dict.get("trained_s") or 0.0)

    @staticmethod
    def _loader(trainer: L.Trainer) -> ResumableBatches | None:
        loader = trainer.train_dataloader
        return loader if isinstance(loader, ResumableBatches) else None

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if (loader := self._loader(trainer)) is not None:
            loader.set_epoch(trainer.current_epoch)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if (loader := self._loader(trainer)) is not None:
            loader.mark_consumed()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SystemExit)) or trainer.world_size != 1:
            return
        if trainer.validating or trainer.sanity_checking:
            # Lightning resumes a checkpoint written during validation past that validation: the
            # epoch would never be validated, logged or considered for best.ckpt. Continue from the
            # state before it instead (the epoch's training is redone, with the same results).
            before = resume_path(self.out)
            log.warning("interrupted during validation: --resume continues from %s (the epoch's training "
                        "is redone, to the same result)", before or "the start")
            return
        path = self.out / "checkpoints" / "interrupted.ckpt"
        trainer.save_checkpoint(path)
        log.warning("interrupted: saved %s; continue with --resume", path)


# --- the run's log, one part per segment -----------------------------------------------------------
def merge_history(logs: Path) -> Path:
    """Join ``logs/part*/metrics.csv`` (one per run segment) into ``logs/metrics.csv``.

    A resumed segment restarts its epoch's rows, so for each (epoch, step) the latest segment wins.
    """
    parts = sorted(logs.glob("part*/metrics.csv"), key=lambda p: int(p.parent.name[4:] or 0))
    rows: dict[tuple[str, str], dict[str, str]] = {}
    columns: list[str] = []
    for part in parts:
        with part.open(newline="") as fh:
            reader = csv.DictReader(fh)
            columns += [c for c in reader.fieldnames or [] if c not in columns]
            for row in reader:
                key = (row.get("epoch") or "", row.get("step") or "")
                rows[key] = {**rows.get(key, {}), **{k: v for k, v in row.items() if v not in ("", None)}}
    merged = logs / "metrics.csv"
    with merged.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for key in sorted(rows, key=lambda k: (int(k[1] or 0), k[0] == "", k[0])):
            writer.writerow(rows[key])
    return merged
