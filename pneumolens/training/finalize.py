"""Finishing a run: the kept epoch's weights, calibrated on validation, written as one ``model.pt``.

The calibration (a temperature, or Platt's temperature and bias) and the decision threshold are
fitted on the patient-level validation split only; the file carries them with the weights and the
run's provenance (see :mod:`pneumolens.checkpoint`), plus ``train_summary.json`` and the
training-history figure.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..calibrated import calibrated_probability
from ..checkpoint import Checkpoint, base_provenance, default_preprocessing, save_checkpoint
from ..config import TrainConfig
from ..datamodule import PneumoniaDataModule
from ..jsonable import dumps
from ..model import CnnLstm
from ..ood import OodGuard
from .module import PneumoniaClassifier, recipe_class_weight
from .resume import merge_history

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a run wrote: ``model_path``, its validation ``metrics`` (plus ``skipped_files``), epochs run, seconds."""

    model_path: Path
    metrics: dict[str, Any]
    epochs: int
    wall_s: float


@torch.inference_mode()
def _val_logits(model: CnnLstm, dm: PneumoniaDataModule) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    out, ys = [], []
    for images, y in dm.val_dataloader():
        out.append(model(PneumoniaClassifier.to_float(images)))
        ys.append(y)
    return torch.cat(out).numpy().astype(np.float64), torch.cat(ys).numpy().astype(int)


def _fit_guard(dm: PneumoniaDataModule) -> OodGuard | None:
    """The out-of-distribution guard on the run's training films, thresholded on its validation films."""
    train, val = dm.images()
    try:
        return OodGuard.fit(train, val)
    except ValueError as exc:  # too few films (a tiny debug run): the model ships without a guard
        log.warning("no out-of-distribution guard for this model: %s", exc)
        return None


def finalize(
    config: TrainConfig,
    dm: PneumoniaDataModule,
    out: Path,
    best: dict[str, Any] | None,
    epochs_run: int,
    t0: float,
    preset: str | None = None,
    interim: bool = False,
) -> FitResult:
    """Load the kept epoch's weights (``config.select_epoch``: lowest val loss or last), fit the calibration
    (``config.calibrate``) and the threshold on the validation split, and write ``out/model.pt`` with its provenance.

    Args:
        best: the kept epoch's Lightning checkpoint, as :func:`~pneumolens.training.resume.load_run_checkpoint`
            read it; None keeps the freshly initialised weights (a run that never validated).
        epochs_run: epochs trained so far. t0: the run's start (``time.time()``), for its wall time.
        interim: the run is not finished (``--export-best``); recorded in the provenance.
    """
    from .. import metrics as M  # the evaluation module: threshold rules, temperature, CIs

    weights = recipe_class_weight(config, dm.counts["train"])
    module = PneumoniaClassifier(config, weights)
    best_epoch = None
    if best is not None:
        module.load_state_dict(best["state_dict"])
        best_epoch = int(best.get("epoch", -1))
    model = module.model.cpu().eval().to(memory_format=torch.contiguous_format)
    logits, y = _val_logits(model, dm)
    two_classes = len(set(y.tolist())) == 2
    temperature, bias = M.fit_calibration(logits, y, config.calibrate if two_classes else "none")
    prob = calibrated_probability(logits, temperature, bias)
    threshold = M.choose_threshold(y, prob, config.threshold_rule) if two_classes else 0.5
    groups = [r.patient_id for r in dm.val_records]
    val_metrics = M.binary_metrics(y, prob, threshold)
    val_metrics["ci"] = M.bootstrap_ci(y, prob, threshold, groups=groups, n_boot=1000, seed=0)
    started = out / "command.txt"
    provenance = base_provenance(
        training_command=started.read_text().strip() if started.exists() else None,
        recipe=preset or "custom",
        train_config=config.to_dict(),
        val_fraction=config.val_fraction,
        split_seed=config.split_seed,
        data_manifest=dm.manifest,
        train_counts=list(dm.counts["train"]),
        validation_counts=list(dm.counts["validation"]),
        class_weight=list(weights) if weights else None,
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        interim=interim,
        skipped_files=len(dm.bad),
        wall_s=round(time.time() - t0, 1),
    )
    guard = _fit_guard(dm)
    result = Checkpoint(
        model=model,
        config=config.model,
        threshold=float(threshold),
        threshold_rule=config.threshold_rule,
        temperature=float(temperature),
        bias=float(bias),
        preprocessing=default_preprocessing(config.model.input_size),
        provenance=provenance,
        metrics={"validation": val_metrics},
        ood=guard,
    )
    path = save_checkpoint(result, out / "model.pt")
    summary = {"validation": val_metrics, "provenance": provenance}
    (out / "train_summary.json").write_text(dumps(summary, indent=2))
    history = merge_history(out / "logs")
    if history.exists():
        try:
            from ..report import plot_history

            why = "last epoch" if config.select_epoch == "last" else "lowest validation loss"
            plot_history(history, out / "training_history.png", best=best_epoch, why=why)
        except Exception as exc:  # noqa: BLE001 - a figure must never sink a finished run
            log.warning("could not draw the training history: %s", exc)
    return FitResult(path, {**val_metrics, "skipped_files": len(dm.bad)}, epochs_run, time.time() - t0)
