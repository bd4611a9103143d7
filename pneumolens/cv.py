"""Patient-level K-fold cross-validation of a training recipe on the official ``train`` split.

Each fold ``k`` of :func:`pneumolens.data.patient_folds` validates a model trained by
:func:`pneumolens.training.fit` on the other folds, in ``OUT/fold-k/`` (a complete training run:
checkpoints, logs, ``model.pt``). Its calibration and threshold are chosen on its own validation
fold, as for any training run, and scored there. Then:

- ``OUT/fold-k/fold.json``: the fold's figures (ROC AUC, sensitivity, specificity, accuracy at
  its threshold; the shortcut audit's marker flip rate when :mod:`pneumolens.audit` is there);
  its presence marks the fold finished.
- ``OUT/fold-k/oof.csv``: the fold's out-of-fold predictions (file, patient, label, fold,
  probability, raw logit), so a threshold can be chosen later from all folds' predictions together
  (under another calibration too: see :func:`oof_threshold`).
- ``OUT/cv.json``, ``OUT/cv.md``, ``OUT/oof.csv``: per fold, mean ± sd over the finished folds, the
  pooled out-of-fold predictions; rewritten after every fold, from what is on disk, so folds run
  by several processes into one ``OUT`` add up.
- ``OUT/cv_config.json``: the recipe; a later run into the same ``OUT`` must use the same one.
- ``OUT/cv.log``: one line per fold start and end.

An interrupted cross-validation continues with ``resume=True``: finished folds are kept, an
interrupted fold resumes from its checkpoints (training's own resume), the others start.

The checkpoint rule (``TrainConfig.select_epoch``) changes which epoch a run keeps, not how it
trains: ``trained_in=SRC`` scores a recipe that differs from SRC's only there by finalising
SRC's trained folds under the new rule (their checkpoints copied into ``OUT/fold-k``), so that
lever costs minutes instead of a second set of training runs.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .calibrated import calibrated_probability
from .config import FINISHING_KEYS, TrainConfig
from .errors import ConfigError
from .jsonable import dumps, jsonable

log = logging.getLogger(__name__)

#: The per-fold figures that cv.json averages and the table shows, in order.
FIGURES = ("roc_auc", "sensitivity", "specificity", "accuracy", "marker_flip_rate")
OOF_COLUMNS = ("file", "patient", "label", "fold", "probability", "logit")
#: Run options besides the config that change the result; a resumed run must keep them.
RESULT_OPTIONS = ("max_images", "limit_train_batches")

Report = Callable[[str], None]


def fold_dir(out: str | Path, fold: int) -> Path:
    return Path(out) / f"fold-{fold}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _read_json(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc


# --- the hook to the shortcut audit ------------------------------------------------------------
def fold_marker_flip_rate(
    predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray, threshold: float
) -> float | None:
    """The shortcut audit's marker flip rate on a fold's validation films, or None ("n/a").

    The hook between cross-validation and :mod:`pneumolens.audit`: calls
    ``pneumolens.audit.marker_flip_rate(predict, images, labels, threshold)`` (share of
    (film, pasted laterality marker) pairs whose label flips) when the audit can be imported, and
    returns None when it cannot, so that cross-validation works without it.

    Args:
        predict: uint8 (N, S, S) -> calibrated P(PNEUMONIA) (N,).
        images: the fold's validation films as uint8 (N, S, S) at the model's input size.
        labels: their labels (1 = PNEUMONIA). threshold: the fold's decision threshold.
    """
    try:
        from .audit import marker_flip_rate
    except ImportError:
        return None
    return float(marker_flip_rate(predict, images, labels, threshold))


# --- one fold ----------------------------------------------------------------------------------
def _oof_predictions(
    model_path: Path, config: TrainConfig, data: Path, skip_bad: bool, max_images: int | None, progress: bool = True
) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray], Any]:
    """(validation records, uint8 images, labels, raw logits, predict function, checkpoint)."""
    import torch

    from .checkpoint import load_checkpoint
    from .datamodule import PneumoniaDataModule
    from .inference import to_input

    ckpt = load_checkpoint(model_path)
    model = ckpt.model.eval()
    dm = PneumoniaDataModule.from_config(config, data, skip_bad=skip_bad, max_images=max_images, progress=progress)
    dm.setup("validate")
    images = torch.cat([x for x, _ in dm.val_dataloader()]).numpy()
    labels = np.array([r.label for r in dm.val_records], dtype=np.int64)

    @torch.inference_mode()
    def logits_of(batch: np.ndarray) -> np.ndarray:
        return torch.cat([model(to_input(batch[i : i + 256])) for i in range(0, len(batch), 256)]).double().numpy()

    def predict(batch: np.ndarray) -> np.ndarray:
        return ckpt.probability(logits_of(batch))

    return dm.val_records, images, labels, logits_of(images), predict, ckpt


def _write_oof(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(OOF_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _read_oof(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as fh:
        return [
            {"file": r["file"], "patient": r["patient"], "label": int(r["label"]), "fold": int(r["fold"]),
             "probability": float(r["probability"]), "logit": float(r["logit"]) if r.get("logit") else None}
            for r in csv.DictReader(fh)
        ]


def score_fold(
    config: TrainConfig, data: Path, out: Path, fold: int, epochs: int | None = None, wall_s: float | None = None,
    skip_bad: bool = False, max_images: int | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Score the finished fold ``fold`` in ``out/fold-k``: write its ``oof.csv`` and ``fold.json``
    (``progress``: the bars of loading its films)."""
    from . import metrics as M

    folder = fold_dir(out, fold)
    records, images, labels, logits, predict, ckpt = _oof_predictions(
        folder / "model.pt", config, data, skip_bad, max_images, progress
    )
    prob = ckpt.probability(logits)
    m = M.binary_metrics(labels, prob, ckpt.threshold)
    prov = ckpt.provenance
    result = {
        "fold": fold,
        "n_train": sum(prov.get("train_counts") or []),
        "n_val": m["n"],
        "n_pos": m["n_pos"],
        "n_neg": m["n_neg"],
        "roc_auc": m["roc_auc"],
        "sensitivity": m["recall"],
        "specificity": m["specificity"],
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "threshold": ckpt.threshold,
        "threshold_rule": ckpt.threshold_rule,
        "calibrate": _with_defaults(prov.get("train_config") or {}, folder / "model.pt")["calibrate"],  # its own
        "temperature": ckpt.temperature,
        "bias": ckpt.bias,
        "marker_flip_rate": fold_marker_flip_rate(predict, images, labels, ckpt.threshold),
        "epochs_run": prov.get("epochs_run") if epochs is None else epochs,
        "best_epoch": prov.get("best_epoch"),
        "wall_s": prov.get("wall_s") if wall_s is None else round(wall_s, 1),
        "data_manifest": prov.get("data_manifest"),
    }
    rows = [
        {"file": r.path.name, "patient": r.patient_id, "label": r.label, "fold": fold, "probability": f"{p:.6f}",
         "logit": f"{z:.6f}"}
        for r, p, z in zip(records, prob, logits)
    ]
    _write_oof(folder / "oof.csv", rows)
    _write_atomic(folder / "fold.json", dumps(result, indent=2) + "\n")
    return result


def _fold_started(folder: Path) -> bool:
    return (folder / "model.pt").exists() or any((folder / "checkpoints").glob("*.ckpt"))


def _training_finished(folder: Path) -> bool:
    """The fold's run wrote its final model (``finalize`` writes the summary after ``model.pt``)."""
    summary = folder / "train_summary.json"
    if not (summary.exists() and (folder / "model.pt").exists()):
        return False
    return not (_read_json(summary).get("provenance") or {}).get("interim", False)


# --- the cross-validation ----------------------------------------------------------------------
def _with_defaults(config: Any, path: Path) -> dict[str, Any]:
    """A recorded recipe with the keys added since it was written at their defaults (which
    reproduce the earlier behaviour), so that an older cross-validation can still be continued."""
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the recorded recipe is not a mapping of training config keys")
    try:
        return TrainConfig.from_dict(config).to_dict()
    except ConfigError as exc:
        raise ConfigError(f"{path}: the recorded recipe is not a valid training config ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a hand-edited file can hold any shape
        what = f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"{path}: the recorded recipe is not a valid training config ({what})") from None


def _read_record(path: Path) -> dict[str, Any]:
    """A ``cv_config.json``: a mapping with at least ``folds`` and ``config``."""
    saved = _read_json(path)
    if not isinstance(saved, dict) or "config" not in saved or "folds" not in saved:
        raise ConfigError(f"{path}: not a cross-validation record (no folds or config)")
    return saved


#: In a fold folder whose training was copied from another cross-validation: where from.
TRAINED_IN = "trained_in.json"


def _source_training(source: Path) -> dict[str, Any] | None:
    """The provenance of the finished training run in ``source`` (a fold folder of another
    cross-validation), or None when it has not finished (or never started)."""
    if not (_training_finished(source) and (source / "checkpoints" / "last.ckpt").is_file()):
        return None
    summary = source / "train_summary.json"
    prov = _read_json(summary).get("provenance")
    if not isinstance(prov, dict):
        raise ConfigError(f"{summary}: no provenance in this training summary; cannot reuse its training")
    return prov


def _copy_training(source: Path, folder: Path, provenance: dict[str, Any]) -> None:
    """Copy the training of ``source`` into ``folder``: its checkpoints, logs and start command, and
    :data:`TRAINED_IN` (the source and its provenance) so an interrupted re-finalising restarts."""
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    for name in ("best.ckpt", "last.ckpt"):
        if (source / "checkpoints" / name).is_file():
            shutil.copy2(source / "checkpoints" / name, folder / "checkpoints" / name)
    if (source / "logs").is_dir():
        shutil.copytree(source / "logs", folder / "logs", dirs_exist_ok=True)
    if (source / "command.txt").is_file():
        shutil.copy2(source / "command.txt", folder / "command.txt")
    _write_atomic(folder / TRAINED_IN, dumps({"source": str(source), "provenance": provenance}, indent=2) + "\n")


def _check_trained_in(source: Path, out: Path, record: dict[str, Any]) -> None:
    """``source`` holds a cross-validation of the same recipe but for ``select_epoch``, :data:`FINISHING_KEYS`
    and its name."""
    if source.resolve() == out.resolve():
        raise ConfigError(f"--trained-in {source}: that is the output folder itself; name another cross-validation")
    path = source / "cv_config.json"
    if not path.exists():
        raise ConfigError(f"{path}: no cross-validation here to take the trained folds from")
    saved = _read_record(path)
    a = {k: v for k, v in _recipe(_with_defaults(saved["config"], path)).items() if k != "select_epoch"}
    b = {k: v for k, v in _recipe(record["config"]).items() if k != "select_epoch"}
    diff = sorted(k for k in set(a) | set(b) if jsonable(a.get(k)) != jsonable(b.get(k)))
    diff += [k for k in ("folds", *RESULT_OPTIONS) if jsonable(saved.get(k)) != jsonable(record.get(k))]
    if diff:
        raise ConfigError(
            f"{path}: its folds were trained with another {', '.join(diff)}; --trained-in reuses only the "
            "training of a recipe that differs in select_epoch (or calibrate) alone"
        )


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded training config without :data:`FINISHING_KEYS`: what decides how the folds train."""
    return {k: v for k, v in config.items() if k not in FINISHING_KEYS}


def _check_same_recipe(out: Path, record: dict[str, Any]) -> None:
    """Write ``out/cv_config.json``, or check that the one there describes the same recipe."""
    path = out / "cv_config.json"
    if not path.exists():
        _write_atomic(path, dumps(record, indent=2) + "\n")
        return
    saved = _read_record(path)
    saved["config"] = _recipe(_with_defaults(saved["config"], path))
    ours = {**record, "config": _recipe(record["config"])}
    for key in ("folds", "config", *RESULT_OPTIONS):
        if jsonable(saved.get(key)) != jsonable(ours.get(key)):
            if key == "config":
                a, b = saved.get("config") or {}, ours["config"]
                diff = sorted(k for k in set(a) | set(b) if jsonable(a.get(k)) != jsonable(b.get(k)))
                key = f"config ({', '.join(diff)})"
            raise ConfigError(
                f"{path}: {out} holds a cross-validation with another {key}; use another --out "
                "(or the same options to continue it)"
            )


def run_cv(
    config: TrainConfig,
    data: str | Path,
    out: str | Path,
    folds: int = 5,
    fold_ids: Sequence[int] | None = None,
    resume: bool = False,
    preset: str | None = None,
    label: str | None = None,
    skip_bad: bool = False,
    max_images: int | None = None,
    limit_train_batches: int | float | None = None,
    report: Report | None = None,
    trained_in: str | Path | None = None,
    **fit_options: Any,
) -> dict[str, Any]:
    """Cross-validate ``config``: train and score the folds ``fold_ids`` (default all) of ``folds``.

    Args:
        config: the recipe; its ``folds`` and ``fold`` are set per fold.
        data: dataset root (Kaggle layout; only ``train`` is used).
        out: output folder (see the module docstring).
        folds: K. fold_ids: which folds to run now (others may be run by other processes).
        resume: keep finished folds, continue interrupted ones; without it a fold that has
            started before is an error, so a long run is never overwritten by mistake.
        preset, label: recorded names (``label`` names the recipe in tables; default: ``out``'s name).
        skip_bad, max_images, limit_train_batches, fit_options: passed to
            :func:`pneumolens.training.fit` (``devices``, ``accelerator``, ``progress``...).
        report: receives one line per fold start and end (default: the log); the lines also go
            to ``out/cv.log``.
        trained_in: another cross-validation's folder whose recipe differs only in
            ``select_epoch`` (or :data:`FINISHING_KEYS`): its finished folds are finalised under this
            recipe's rule instead of trained again (no training at all: an early-stopped fold stays stopped); folds it has
            not finished are left for a later run (one line each), never trained here.

    Returns:
        The summary written to ``out/cv.json``.

    Raises:
        ConfigError: bad ``folds`` / ``fold_ids``; ``out`` holds another recipe's folds; a fold
            already started and ``resume`` is off.
    """
    from .training import export_best, fit  # heavy: Lightning

    out = Path(out)
    ids = list(range(folds)) if fold_ids is None else list(fold_ids)
    if folds < 2:
        raise ConfigError(f"folds must be at least 2, got {folds}")
    bad = [k for k in ids if not 0 <= k < folds]
    if bad or len(set(ids)) != len(ids):
        raise ConfigError(f"fold ids must be distinct folds in 0..{folds - 1}, got {ids}")
    base = replace(config, folds=folds, fold=0)
    record = {
        "folds": folds, "preset": preset, "label": label or out.name, "data": str(data),
        "config": base.to_dict(), "max_images": max_images, "limit_train_batches": limit_train_batches,
    }
    source = Path(trained_in) if trained_in is not None else None
    if source is not None:
        _check_trained_in(source, out, record)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    _check_same_recipe(out, record)
    for k in ids:  # refuse before any work, not after hours of the first folds
        folder = fold_dir(out, k)
        if not resume and ((folder / "fold.json").exists() or _fold_started(folder)):
            raise ConfigError(f"{folder}: fold {k} has already started; pass --resume to continue (finished folds "
                              "are kept) or choose another --out")

    def say(line: str) -> None:
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}"
        with (out / "cv.log").open("a") as fh:
            fh.write(stamped + "\n")
        (report or log.info)(line)

    for k in ids:
        folder = fold_dir(out, k)
        if (folder / "fold.json").exists():
            say(f"fold {k}/{folds}: finished before, kept ({folder})")
            continue
        cfg = replace(base, fold=k)
        t0 = time.time()
        trained_s = 0.0
        copied = folder / TRAINED_IN
        if source is not None and not _fold_started(folder):
            prov = _source_training(fold_dir(source, k))
            if prov is None:
                say(f"fold {k}/{folds}: not finished in {source} yet, left for later")
                continue
            _copy_training(fold_dir(source, k), folder, prov)
            say(f"fold {k}/{folds}: training taken from {fold_dir(source, k)}, keeping its {cfg.select_epoch!r} epoch")
        if copied.exists() and not _training_finished(folder):  # re-finalise: never train a copied run further
            prov = (_read_json(copied).get("provenance") or {})
            export_best(cfg, data, folder, preset=preset, progress=fit_options.get("progress", True), interim=False,
                        expect_manifest=prov.get("data_manifest"), skip_bad=skip_bad, max_images=max_images)
            epochs, trained_s = prov.get("epochs_run"), float(prov.get("wall_s") or 0.0)
        elif (resume or copied.exists()) and _training_finished(folder):
            say(f"fold {k}/{folds}: trained before, scoring it ({folder})")
            epochs = None
        else:
            again = resume and _fold_started(folder)
            say(f"fold {k}/{folds}: {'resuming' if again else 'starting'} -> {folder}")
            result = fit(
                cfg, data, folder, resume=again, skip_bad=skip_bad, max_images=max_images,
                limit_train_batches=limit_train_batches, preset=preset, **fit_options,
            )
            if not result.metrics:  # another rank of a multi-process run: rank 0 scores and reports
                return {}
            epochs = result.epochs
        scored = score_fold(cfg, Path(data), out, k, epochs=epochs, skip_bad=skip_bad, max_images=max_images,
                            progress=fit_options.get("progress", True),
                            wall_s=trained_s + time.time() - t0 if trained_s else None)
        say(f"fold {k}/{folds}: done in {(time.time() - t0) / 60:.1f} min: {fold_line(scored)}")
        summarize(out)  # after every fold, so cv.md is current while the next one trains
    summary = summarize(out)
    say(f"cross-validation {len(summary['done'])}/{folds} folds: {mean_line(summary)} -> {out / 'cv.md'}")
    return summary


# --- the summary -------------------------------------------------------------------------------
def _num(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def fold_line(f: dict[str, Any]) -> str:
    """One fold's figures on one line."""
    return (
        f"ROC AUC {_num(f['roc_auc'])}  sensitivity {_num(f['sensitivity'])}  specificity "
        f"{_num(f['specificity'])}  at threshold {_num(f['threshold'])}  marker flip rate {_num(f['marker_flip_rate'])}"
    )


def _mean_sd(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean and sample standard deviation (n - 1); None when a value is missing (sd: with < 2 values)."""
    if not values or any(v is None for v in values):
        return {"mean": None, "sd": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else None}


def _pm(stat: dict[str, float | None]) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.3f} ± {stat['sd']:.3f}" if stat["sd"] is not None else f"{stat['mean']:.3f}"


#: How :data:`FIGURES` read in lines and tables.
FIGURE_NAMES = {"roc_auc": "ROC AUC", "sensitivity": "sensitivity", "specificity": "specificity",
                "accuracy": "accuracy", "marker_flip_rate": "marker flip rate"}


def mean_line(summary: dict[str, Any]) -> str:
    """Mean ± sd of every figure on one line."""
    s = summary["mean_sd"]
    return "  ".join(f"{FIGURE_NAMES[name]} {_pm(s[name])}" for name in FIGURES)


def fold_oof(out: str | Path, fold: dict[str, Any]) -> list[dict[str, Any]]:
    """The out-of-fold rows of the finished fold ``fold`` (its ``fold.json``), each with its raw logit:
    its own, or (files written before oof.csv kept them) the fold's calibration undone,
    ``temperature * (logit(p) - bias)``, from the 6-decimal probability."""
    rows = _read_oof(fold_dir(out, fold["fold"]) / "oof.csv")
    t, b = float(fold.get("temperature", 1.0)), float(fold.get("bias", 0.0))
    for r in rows:
        if r["logit"] is None:
            p = min(max(r["probability"], 1e-7), 1.0 - 1e-7)
            r["logit"] = t * (math.log(p / (1.0 - p)) - b)
    return rows


def _oof_rows(out: Path, per_fold: Sequence[dict[str, Any]], calibrate: str, recorded: str) -> list[dict[str, Any]]:
    """The finished folds' out-of-fold rows, their probabilities calibrated by ``calibrate``.

    A fold calibrated otherwise (its ``fold.json`` says how; ``recorded``, the cross-validation's
    own setting, for folds written before it did) is calibrated again on its own rows: each fold's
    calibration is fitted on its held-out fold, so that is what its run would have done.
    """
    from . import metrics as M

    pooled: list[dict[str, Any]] = []
    for f in per_fold:
        rows = fold_oof(out, f)
        y = np.array([r["label"] for r in rows], dtype=np.int64)
        if f.get("calibrate", recorded) != calibrate and len(set(y.tolist())) == 2:
            z = np.array([r["logit"] for r in rows])
            p = calibrated_probability(z, *M.fit_calibration(z, y, calibrate))
            rows = [{**r, "probability": float(q)} for r, q in zip(rows, p)]
        pooled += rows
    return pooled


def _pooled(rows: Sequence[dict[str, Any]], rule: str, calibrate: str) -> dict[str, Any] | None:
    """Pooled out-of-fold figures and the threshold ``rule`` chooses on them (None: one class only)."""
    from . import metrics as M

    y = np.array([r["label"] for r in rows], dtype=np.int64)
    p = np.array([r["probability"] for r in rows], dtype=np.float64)
    if len(set(y.tolist())) != 2:
        return None
    thr = M.choose_threshold(y, p, rule)
    m = M.binary_metrics(y, p, thr)
    return {"n": m["n"], "roc_auc": m["roc_auc"], "calibrate": calibrate, "threshold_rule": rule, "threshold": thr,
            "sensitivity": m["recall"], "specificity": m["specificity"], "accuracy": m["accuracy"]}


def summarize(out: str | Path) -> dict[str, Any]:
    """Gather the finished folds of ``out`` into ``cv.json``, ``cv.md`` and the pooled ``oof.csv``.

    The pooled out-of-fold predictions also get their own threshold (the recipe's rule over all
    folds' predictions together) and its sensitivity and specificity: the threshold a model
    trained on all of ``train`` would take from cross-validation.
    """
    out = Path(out)
    record_path = out / "cv_config.json"
    record = _read_json(record_path)
    k = int(record["folds"])
    finished = [fold_dir(out, i) / "fold.json" for i in range(k)]
    per_fold = [_read_json(path) for path in finished if path.exists()]
    config = _with_defaults(record["config"], record_path)
    oof = _oof_rows(out, per_fold, config["calibrate"], config["calibrate"])
    summary = {
        "label": record.get("label"),
        "preset": record.get("preset"),
        "folds": k,
        "done": [f["fold"] for f in per_fold],
        "max_epochs": record["config"].get("max_epochs"),
        "split_seed": record["config"].get("split_seed"),
        "per_fold": per_fold,
        "mean_sd": {name: _mean_sd([f.get(name) for f in per_fold]) for name in FIGURES},
        "pooled_oof": _pooled(oof, config["threshold_rule"], config["calibrate"]),
        "config": record["config"],
        "options": {key: record.get(key) for key in RESULT_OPTIONS},
    }
    rows = [{**r, "probability": f"{r['probability']:.6f}", "logit": f"{r['logit']:.6f}"} for r in oof]
    _write_oof(out / "oof.csv", rows)
    _write_atomic(out / "cv.json", dumps(summary, indent=2) + "\n")
    _write_atomic(out / "cv.md", markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """The report of one cross-validation (``cv.md``)."""
    s = summary
    lines = [
        f"# Cross-validation: {s['label']}",
        "",
        f"Recipe `{s['preset'] or 'custom'}` (config in cv.json), at most {s['max_epochs']} epochs; "
        f"{s['folds']} patient-level folds of `train` stratified by class (split seed {s['split_seed']}); "
        f"folds finished: {len(s['done'])} of {s['folds']}. Each fold's threshold is chosen on that fold's "
        "validation by the recipe's rule; marker flip rate: share of (film, pasted laterality letter) pairs "
        "whose label flips (n/a where pneumolens.audit could not be imported).",
        "",
        "| fold | validation (normal/pneumonia) | ROC AUC | sensitivity | specificity | accuracy | threshold "
        "| marker flip rate | epochs | minutes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in s["per_fold"]:
        minutes = "n/a" if f.get("wall_s") is None else f"{f['wall_s'] / 60:.1f}"
        lines.append(
            f"| {f['fold']} | {f['n_neg']}/{f['n_pos']} | {_num(f['roc_auc'])} | {_num(f['sensitivity'])} | "
            f"{_num(f['specificity'])} | {_num(f['accuracy'])} | {_num(f['threshold'])} | "
            f"{_num(f['marker_flip_rate'])} | {f.get('epochs_run')} | {minutes} |"
        )
    ms = s["mean_sd"]
    lines.append(
        f"| mean ± sd | | {_pm(ms['roc_auc'])} | {_pm(ms['sensitivity'])} | {_pm(ms['specificity'])} | "
        f"{_pm(ms['accuracy'])} | | {_pm(ms['marker_flip_rate'])} | | |"
    )
    po = s["pooled_oof"]
    if po:
        lines += [
            "",
            f"Pooled out-of-fold predictions ({po['n']} films, `oof.csv`): ROC AUC {_num(po['roc_auc'])}; "
            f"threshold by `{po['threshold_rule']}` over all folds ({po.get('calibrate', 'temperature')} calibration) "
            f"{_num(po['threshold'])}, at which sensitivity "
            f"{_num(po['sensitivity'])}, specificity {_num(po['specificity'])}, accuracy {_num(po['accuracy'])}.",
        ]
    return "\n".join(lines) + "\n"


#: The keys a ``cv.json`` must hold for tables, figures and thresholds.
SUMMARY_KEYS = ("label", "folds", "done", "max_epochs", "per_fold", "mean_sd")


def read_summary(d: str | Path) -> dict[str, Any]:
    """``d/cv.json``, checked to be a cross-validation summary (:func:`summarize`'s output).

    Raises:
        ConfigError: missing, unreadable, or not such a summary (the missing key named).
    """
    path = Path(d) / "cv.json"
    if not path.exists():
        raise ConfigError(f"{path}: no cross-validation summary here (run `pneumolens cv --out {d}` first)")
    s = _read_json(path)
    if not isinstance(s, dict):
        raise ConfigError(f"{path}: not a cross-validation summary")
    missing = [k for k in SUMMARY_KEYS if k not in s]
    missing += [f"mean_sd.{k}" for k in FIGURES if k not in (s.get("mean_sd") or {})]
    if missing or not isinstance(s["per_fold"], list):
        raise ConfigError(f"{path}: not a cross-validation summary (missing {', '.join(missing) or 'per_fold list'})")
    return s


def cv_table(dirs: Sequence[str | Path]) -> str:
    """One markdown table of several cross-validations (one recipe or lever per row), from their cv.json."""
    lines = [
        "| recipe | folds | epochs | ROC AUC | sensitivity | specificity | marker flip rate | pooled OOF AUC "
        "| OOF threshold |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for d in dirs:
        s = read_summary(d)
        ms, po = s["mean_sd"], s.get("pooled_oof") or {}
        lines.append(
            f"| {s['label']} | {len(s['done'])}/{s['folds']} | {s['max_epochs']} | {_pm(ms['roc_auc'])} | "
            f"{_pm(ms['sensitivity'])} | {_pm(ms['specificity'])} | {_pm(ms['marker_flip_rate'])} | "
            f"{_num(po.get('roc_auc'))} | {_num(po.get('threshold'))} |"
        )
    return "\n".join(lines) + "\n"


def oof_threshold(
    cv_dir: str | Path, summary: dict[str, Any] | None = None, calibrate: str | None = None
) -> dict[str, Any]:
    """The decision threshold a model trained on all of ``train`` takes from a cross-validation:
    the recipe's rule over the pooled out-of-fold predictions of ``cv_dir`` (see :func:`summarize`).

    Returns ``{"threshold", "rule", "calibrate", "n", "folds", "label", "roc_auc", "sensitivity",
    "specificity"}``. ``summary``: ``cv_dir``'s summary when the caller has read it already
    (:func:`read_summary`). ``calibrate``: the model's calibration, when it is not the one the
    cross-validation ran with: each fold's predictions are calibrated that way first (its
    ``fold-k/oof.csv`` is read), as the threshold applies to probabilities calibrated so.

    Raises:
        ConfigError: no summary in ``cv_dir``, or its pooled predictions hold one class only.
    """
    # (the summary's folds are checked by apply_oof_threshold, which knows what it is applied to)
    path = Path(cv_dir) / "cv.json"
    s = read_summary(cv_dir) if summary is None else summary
    po = s.get("pooled_oof")
    recorded = _with_defaults(s.get("config") or {}, path)["calibrate"]
    if po and calibrate is not None and calibrate != po.get("calibrate", recorded):
        rows = _oof_rows(Path(cv_dir), s["per_fold"], calibrate, recorded)
        po = _pooled(rows, po["threshold_rule"], calibrate)
    if not po:
        raise ConfigError(f"{path}: no pooled out-of-fold predictions with both classes to choose a threshold on")
    return {"threshold": float(po["threshold"]), "rule": po["threshold_rule"],
            "calibrate": po.get("calibrate", recorded), "n": int(po["n"]), "folds": list(s["done"]),
            "label": s.get("label"), "roc_auc": po["roc_auc"], "sensitivity": po["sensitivity"],
            "specificity": po["specificity"]}


def apply_oof_threshold(checkpoint: str | Path, cv_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``checkpoint`` to ``out`` with the threshold of :func:`oof_threshold` (weights, calibration
    and guard unchanged); the provenance records where it came from and the run's own threshold.

    Raises:
        ConfigError: the cross-validation is unfinished, or of another recipe than the checkpoint's
            (:data:`FINISHING_KEYS` aside).

    The threshold is on calibrated probabilities, as each fold's predictions were (each fold model
    calibrated on its own validation fold, the way this checkpoint was), so it carries over to this
    model's calibrated output.
    """
    from .checkpoint import load_checkpoint, save_checkpoint

    summary = read_summary(cv_dir)
    if len(summary["done"]) != summary["folds"]:
        raise ConfigError(
            f"{Path(cv_dir) / 'cv.json'}: {len(summary['done'])} of {summary['folds']} folds finished; a threshold "
            "for a shipped model comes from all of them"
        )
    ckpt = load_checkpoint(checkpoint)
    recipe = ckpt.provenance.get("train_config")
    if not isinstance(recipe, dict):
        raise ConfigError(f"{checkpoint}: no training recipe recorded; cannot check it against {cv_dir}")
    ours = _with_defaults(recipe, Path(checkpoint))
    theirs = _with_defaults(summary.get("config") or {}, Path(cv_dir) / "cv.json")
    ignored = ("folds", "fold", *FINISHING_KEYS)
    diff = sorted(
        k for k in set(ours) | set(theirs) if k not in ignored and jsonable(ours.get(k)) != jsonable(theirs.get(k))
    )
    if diff:
        raise ConfigError(
            f"{checkpoint}: trained with another {', '.join(diff)} than the cross-validation in {cv_dir}; its "
            "out-of-fold threshold belongs to that recipe"
        )
    chosen = oof_threshold(cv_dir, summary, calibrate=ours["calibrate"])
    ckpt.provenance = {
        **ckpt.provenance,
        "threshold_from": {**chosen, "cv_dir": str(cv_dir), "run_threshold": ckpt.threshold,
                           "run_threshold_rule": ckpt.threshold_rule},
    }
    ckpt.threshold = chosen["threshold"]
    ckpt.threshold_rule = f"{chosen['rule']} on out-of-fold predictions (n={chosen['n']})"
    # The run's validation figures hold at the run's threshold, not this one: kept, but renamed,
    # so that nothing shows them as this model's (scripts/ship_model.py stores the new ones).
    if "validation" in ckpt.metrics:
        metrics = dict(ckpt.metrics)
        metrics["validation_at_run_threshold"] = metrics.pop("validation")
        ckpt.metrics = metrics
    save_checkpoint(ckpt, out)
    return chosen


def parse_fold_ids(text: str | None) -> list[int] | None:
    """``"0,1,2"`` -> [0, 1, 2]; None or empty -> None (all folds)."""
    if not text:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--fold-ids must be comma-separated fold numbers such as 0,1,2, got {text!r}") from None


