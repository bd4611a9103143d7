"""Evaluate a checkpoint on a split: metrics with patient-level bootstrap CIs, report and figures.

Data flows one way: files → cached uint8 arrays → :class:`~pneumolens.inference.Predictor`
probabilities (calibration applied) → metrics → ``metrics.json``, ``predictions.csv``,
``report.md`` and four figures in the output folder. The threshold is the checkpoint's (chosen
on validation at training time) unless the caller overrides it; nothing here is tuned on the
data being evaluated.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cache import load_images
from .checkpoint import Checkpoint, load_checkpoint
from .data import Record, find_split, fold_split, patient_split, resolve_data_root
from .errors import ConfigError, InvalidImageError
from .inference import Predictor
from .io import dicom_patient_id
from .jsonable import dumps
from .metrics import binary_metrics, bootstrap_ci, subtype_recall
from .report import plot_confusion, plot_pr, plot_reliability, plot_roc, write_report

log = logging.getLogger(__name__)

#: ``validation``: the patient-level part of ``train`` held out at training time;
#: ``val``: the official 16-image folder; ``test``: the official test folder, when present.
SPLITS = ("validation", "val", "test")
FIGURES = {
    "Confusion matrix": "confusion.png",
    "ROC curve": "roc.png",
    "Precision-recall curve": "pr.png",
    "Reliability diagram": "reliability.png",
}


def _patient_level(
    labels: np.ndarray, probs: np.ndarray, patient_ids: Sequence[str], threshold: float
) -> dict[str, Any] | None:
    """Metrics with each patient's films averaged into one probability; None if a patient has mixed labels."""
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, pid in enumerate(patient_ids):
        by_patient[str(pid)].append(i)
    y, p = [], []
    for idx in by_patient.values():
        lab = labels[idx]
        if lab.min() != lab.max():
            return None
        y.append(int(lab[0]))
        p.append(float(probs[idx].mean()))
    return binary_metrics(np.array(y), np.array(p), threshold)


def _write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(
            fh,
            fieldnames=["file", "patient_id", "subtype", "label", "probability", "predicted", "ood_score",
                        "in_distribution"],
        )
        writer.writeheader()
        writer.writerows(rows)


def _ood_summary(predictor: Predictor, flags: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any] | None:
    """How many of the evaluated films the out-of-distribution guard flagged; None without a guard.

    The guard's threshold was chosen on validation films to flag at most a set share of them
    (``validation_flagged``); a much larger share here means this split is not like the training films.
    """
    if flags is None or predictor.ood is None:
        return None
    flagged = int(np.sum(~flags[1]))
    return {
        "flagged": flagged,
        "flagged_share": flagged / max(1, len(flags[1])),
        "threshold": float(predictor.ood.threshold),
        "validation_flagged": float(predictor.ood.flagged_share),
    }


def evaluate_arrays(
    predictor: Predictor,
    images: np.ndarray,
    labels: Sequence[int],
    out_dir: str | Path,
    patient_ids: Sequence[str] | None = None,
    subtypes: Sequence[str] | None = None,
    threshold: float | None = None,
    title: str = "PneumoLens evaluation",
    files: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score decoded images and write ``metrics.json``, ``predictions.csv``, ``report.md`` and figures.

    Args:
        predictor: the loaded model; its calibrated probabilities are used.
        images: uint8 (N, S, S) at the predictor's input size.
        labels: 0 (NORMAL) / 1 (PNEUMONIA) per image.
        out_dir: output folder (created).
        patient_ids: patient of each image; turns on the cluster (per patient) bootstrap and the
            per-patient metrics. Default: images are treated as independent.
        subtypes: ``normal`` / ``bacteria`` / ``virus`` per image, for per-subtype recall.
        threshold: decision threshold; default the predictor's (``threshold_source`` says which).
        title: heading of the report.
        files: file name per image for ``predictions.csv``. Default: the image index.
        n_boot: bootstrap resamples for the 95 % CIs; 0 turns them off. Default: 1000.
        seed: bootstrap seed. Default: 0.
        extra: more keys for ``metrics.json`` (split, checkpoint, skipped, notes ...).

    Returns:
        The dict written to ``metrics.json``; its ``ood`` entry says how many films the
        checkpoint's out-of-distribution guard flagged (None without a guard), and
        ``predictions.csv`` carries each film's ``ood_score`` and ``in_distribution``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y = np.asarray(labels, dtype=np.int64)
    if len(images) != len(y):
        raise ValueError(f"{len(images)} images but {len(y)} labels")
    for name, seq in (("patient_ids", patient_ids), ("subtypes", subtypes), ("files", files)):
        if seq is not None and len(seq) != len(y):
            raise ValueError(f"{name} has {len(seq)} values but there are {len(y)} images")
    source = "checkpoint" if threshold is None else "override"
    thr = float(predictor.threshold if threshold is None else threshold)
    probs = predictor.probabilities(images)
    flags = predictor.ood_flags(images)

    metrics: dict[str, Any] = binary_metrics(y, probs, thr)
    metrics["threshold_source"] = source
    metrics["temperature"] = float(predictor.checkpoint.temperature)
    metrics["calibration_bias"] = float(predictor.checkpoint.bias)
    if n_boot > 0:
        metrics["ci"] = bootstrap_ci(y, probs, thr, groups=patient_ids, n_boot=n_boot, seed=seed)
        unit = "patient" if patient_ids is not None else "image"
        metrics["bootstrap"] = {"n_boot": n_boot, "seed": seed, "unit": unit, "level": 0.95}
    else:
        metrics["ci"] = {}
    if subtypes is not None:
        metrics["subtype_recall"] = subtype_recall(y, probs, subtypes, thr)
    if patient_ids is not None:
        pat = _patient_level(y, probs, patient_ids, thr)
        if pat is not None:
            metrics["patient_level"] = pat
    metrics["ood"] = _ood_summary(predictor, flags)
    metrics.update(extra or {})

    names = list(predictor.class_names)
    plot_confusion(metrics["confusion"], names, out / FIGURES["Confusion matrix"])
    plot_roc(y, probs, out / FIGURES["ROC curve"], threshold=thr)
    plot_pr(y, probs, out / FIGURES["Precision-recall curve"])
    plot_reliability(y, probs, out / FIGURES["Reliability diagram"])
    rows = [
        {
            "file": files[i] if files is not None else str(i),
            "patient_id": patient_ids[i] if patient_ids is not None else "",
            "subtype": subtypes[i] if subtypes is not None else "",
            "label": names[y[i]],
            "probability": f"{probs[i]:.6f}",
            "predicted": names[int(probs[i] >= thr)],
            "ood_score": "" if flags is None else f"{flags[0][i]:.6f}",
            "in_distribution": "" if flags is None else str(bool(flags[1][i])).lower(),
        }
        for i in range(len(y))
    ]
    _write_predictions(out / "predictions.csv", rows)
    (out / "metrics.json").write_text(dumps(metrics, indent=2) + "\n")
    write_report(metrics, out, FIGURES, title)
    return metrics


def training_split(root: str | Path, provenance: dict[str, Any] | None = None) -> tuple[list[Record], list[Record]]:
    """The (training, validation) records a checkpoint was trained with, recreated from its provenance.

    ``provenance["val_fraction"]`` and ``["split_seed"]`` (defaults 0.1 and 0) give the patient-level
    split; a cross-validation fold's model (``train_config.folds`` set) validated on its fold.
    """
    prov = provenance or {}
    seed = int(prov.get("split_seed", 0))
    recipe = prov.get("train_config") or {}
    records = find_split(root, "train")
    if int(recipe.get("folds") or 0):
        return fold_split(records, int(recipe["folds"]), int(recipe.get("fold", 0)), seed)
    return patient_split(records, float(prov.get("val_fraction", 0.1)), seed)


def split_records(root: str | Path, split: str, provenance: dict[str, Any] | None = None) -> list[Record]:
    """The records of ``split`` (see :data:`SPLITS`); ``validation`` is recreated from the training provenance.

    A cross-validation fold's model (``train_config.folds`` set) validated on its fold: that fold it is.
    """
    if split == "validation":
        return training_split(root, provenance)[1]
    if split in ("val", "test"):
        return find_split(root, split)
    raise ConfigError(f"split '{split}' is not one of {', '.join(SPLITS)}")


def _load_checkpoint_named(checkpoint: str | Path | Checkpoint | None) -> tuple[Checkpoint, str]:
    """The checkpoint and how reports name it."""
    if isinstance(checkpoint, Checkpoint):
        return checkpoint, "in-memory checkpoint"
    return load_checkpoint(checkpoint), "shipped model" if checkpoint is None else str(checkpoint)


def _load_films(paths: list, size: int, skip_bad: bool, use_cache: bool, progress: bool, desc: str, where: str):
    """Decode the films; a bad one stops the run (named) unless ``skip_bad``; none readable always does."""
    res = load_images(paths, size, use_cache=use_cache, progress=progress, desc=desc)
    if res.bad:
        if not skip_bad:
            more = f" (and {len(res.bad) - 1} more bad files)" if len(res.bad) > 1 else ""
            raise InvalidImageError(f"{res.bad[0][1]}{more}; pass --skip-bad to evaluate the rest")
        for _, reason in res.bad:
            log.warning("skipping %s", reason)
    if not res.kept:
        raise InvalidImageError(f"{where}: none of the {len(paths)} files could be read")
    return res


def evaluate_split(
    checkpoint: str | Path | Checkpoint | None = None,
    data: str | Path | None = None,
    split: str = "validation",
    out: str | Path = "runs/evaluate",
    threshold: float | None = None,
    skip_bad: bool = False,
    batch_size: int = 64,
    n_boot: int = 1000,
    progress: bool = True,
    use_cache: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of a Kaggle-layout dataset and write the report to ``out``.

    Args:
        checkpoint: path, loaded :class:`Checkpoint`, or None for the shipped model.
        data: dataset root; default as :func:`pneumolens.data.resolve_data_root`.
        split: ``validation`` (patient-level part of ``train``, recreated from the checkpoint's
            ``provenance["val_fraction"]`` and ``["split_seed"]``, defaults 0.1 and 0), ``val``
            (official 16 images) or ``test`` (official test folder).
        out: output folder.
        threshold: overrides the checkpoint's threshold.
        skip_bad: warn about and skip unreadable files (counted as ``skipped``) instead of failing.
        batch_size: images per forward pass.
        n_boot: bootstrap resamples (0: no CIs).
        progress: show a progress bar while decoding.
        use_cache: use the decoded-array cache (``$PNEUMOLENS_CACHE``).
        device: where the model runs (``cpu``, ``cuda``, ``cuda:N``). Default: ``cpu``.

    Raises:
        DatasetError: missing split or class folder. InvalidImageError: an unreadable file (without
        ``skip_bad``). CheckpointError: a missing or foreign checkpoint.
    """
    ckpt, ckpt_name = _load_checkpoint_named(checkpoint)
    root = resolve_data_root(data)
    records = split_records(root, split, ckpt.provenance)
    res = _load_films([r.path for r in records], ckpt.input_size, skip_bad, use_cache, progress,
                      f"decoding {split}", f"{root}/{split}")  # fmt: skip
    kept = [records[i] for i in res.kept]
    notes = []
    if split == "validation" and threshold is None and ckpt.provenance.get("threshold_from"):  # cv.apply_oof_threshold
        notes.append(
            f"The threshold ({ckpt.threshold_rule}) was chosen on cross-validation models' predictions for all of "
            "train, these films included (predicted by models that had not seen them), not on this model's."
        )
    elif split == "validation" and threshold is None and not ckpt.threshold_rule.startswith("fixed"):
        notes.append(
            f"The threshold ({ckpt.threshold_rule}) was chosen on this validation split, so threshold-dependent "
            "numbers here are optimistic; the ranking metrics (ROC AUC, PR AUC) are not affected."
        )
    if split == "val":
        notes.append(
            "The official val folder holds only 16 images: its intervals are very wide. Read the 'validation' split."
        )
    extra = {
        "split": split,
        "data": str(root),
        "checkpoint": ckpt_name,
        "threshold_rule": ckpt.threshold_rule,
        "skipped": len(res.bad),
        "skipped_files": [path for path, _ in res.bad],
        "notes": notes,
    }
    predictor = Predictor(ckpt, batch_size=batch_size, device=device)
    return evaluate_arrays(
        predictor,
        res.images,
        [r.label for r in kept],
        out,
        patient_ids=[dicom_patient_id(r.path) or r.patient_id for r in kept],  # a DICOM's PatientID first
        subtypes=[r.subtype for r in kept],
        threshold=threshold,
        title=f"PneumoLens evaluation: {split} split",
        files=[str(r.path) for r in kept],
        n_boot=n_boot,
        extra=extra,
    )


def evaluate_labels(
    labels: str | Path,
    checkpoint: str | Path | Checkpoint | None = None,
    out: str | Path = "runs/evaluate",
    threshold: float | None = None,
    skip_bad: bool = False,
    batch_size: int = 64,
    n_boot: int = 1000,
    progress: bool = True,
    use_cache: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate a checkpoint on a user's own labelled films and write the report to ``out``.

    The same metrics, bootstrap intervals (resampled by patient), report and figures as
    :func:`evaluate_split`, on the films of ``labels``: a CSV of ``file,label[,patient_id]`` or a
    folder holding ``NORMAL/`` and ``PNEUMONIA/`` (:mod:`pneumolens.labels`). Each film's patient
    is the CSV's ``patient_id``, else its DICOM PatientID, else its Kaggle-style file name, else
    the film alone; ``metrics.json`` counts each source (``patient_id_source``).

    Args:
        labels: the CSV or the folder.
        checkpoint, threshold, skip_bad, batch_size, n_boot, progress, use_cache, device: as
            :func:`evaluate_split`.

    Raises:
        DatasetError: a bad labels file or row (one line naming it). InvalidImageError: a missing
        or unreadable film (without ``skip_bad``), or none readable. CheckpointError: as
        :func:`evaluate_split`.
    """
    from .labels import SOURCE_WORDS, patient_ids, read_labels

    source = Path(labels)
    items = read_labels(source)  # a bad row is refused before the model is loaded
    ckpt, ckpt_name = _load_checkpoint_named(checkpoint)
    res = _load_films([i.path for i in items], ckpt.input_size, skip_bad, use_cache, progress, "decoding", str(source))
    kept = [items[i] for i in res.kept]
    pids, sources = patient_ids(kept)
    named = ", ".join(f"{n} from {SOURCE_WORDS[s]}" for s, n in sources.items() if n)
    notes = [(
        f"Patient ids (the bootstrap resamples patients): {named}. A film whose patient is not known "
        "from any of these counts as a patient of its own."
    )]
    extra = {
        "split": "labels",
        "labels": str(source),
        "checkpoint": ckpt_name,
        "threshold_rule": ckpt.threshold_rule,
        "skipped": len(res.bad),
        "skipped_files": [path for path, _ in res.bad],
        "patient_id_source": sources,
        "notes": notes,
    }
    predictor = Predictor(ckpt, batch_size=batch_size, device=device)
    return evaluate_arrays(
        predictor,
        res.images,
        [i.label for i in kept],
        out,
        patient_ids=pids,
        threshold=threshold,
        title=f"PneumoLens evaluation: {source.name}",
        files=[str(i.path) for i in kept],
        n_boot=n_boot,
        extra=extra,
    )
