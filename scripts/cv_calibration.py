"""Which calibration a recipe's probabilities need: temperature scaling or Platt scaling, measured
on its cross-validation's out-of-fold predictions without fitting and scoring on the same films.

A run fits its calibration on its validation split, so a check on that split flatters whichever
method has more parameters. Here each fold's held-out films are split by patient into two
halves: a method is fitted on one half's raw logits and scored on the other, both ways round,
``--repeats`` times with other halves. Per fold the scores are averaged; the table gives each
method's mean over folds and the paired difference (Platt - temperature) with its standard error
over folds:

    python scripts/cv_calibration.py runs/cv/s5-default-20 runs/cv/s5-default-30 --out docs/cv/calibration.md

Scores: expected calibration error (ECE, 15 equal-width bins, as ``pneumolens evaluate``), negative
log-likelihood (NLL) and Brier score; lower is better for all three. Only the folds' ``oof.csv``
and ``fold.json`` are read (raw logits, or the fold's calibration undone where an older file kept
only probabilities), so the small files in ``docs/cv/runs`` suffice.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from markdown_output import emit  # scripts/ is on sys.path when this file runs as a script

from pneumolens import metrics as M
from pneumolens.calibrated import calibrated_probability
from pneumolens.cv import fold_oof, read_summary
from pneumolens.errors import PneumoLensError

METHODS = ("temperature", "platt")
SCORES = ("ece", "nll", "brier")
SCORE_NAMES = {"ece": "ECE", "nll": "NLL", "brier": "Brier"}


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ECE, NLL and Brier score of probabilities ``p`` for labels ``y``."""
    q = np.clip(p, 1e-12, 1.0 - 1e-12)
    return {
        "ece": M.expected_calibration_error(y, p),
        "nll": float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))),
        "brier": float(np.mean((p - y) ** 2)),
    }


def cross_fitted(z: np.ndarray, y: np.ndarray, patients: list[str], repeats: int, seed: int) -> dict[str, dict]:
    """Each method's scores, fitted on one half of the patients and scored on the other (both ways,
    ``repeats`` splits), averaged: ``{method: {score: mean}}``."""
    rng = np.random.default_rng(seed)
    names = np.array(patients)
    unique = np.unique(names)
    got: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    for _ in range(repeats):
        half = np.isin(names, rng.permutation(unique)[: len(unique) // 2])
        for fit_on, score_on in ((half, ~half), (~half, half)):
            if len(set(y[fit_on].tolist())) < 2 or not score_on.any():
                continue
            for method in METHODS:
                t, b = M.fit_calibration(z[fit_on], y[fit_on], method)
                got[method].append(scores(y[score_on], calibrated_probability(z[score_on], t, b)))
    if not got[METHODS[0]]:
        raise ValueError("no split of this fold has both classes on its fitting half")
    return {m: {s: statistics.fmean(r[s] for r in runs) for s in SCORES} for m, runs in got.items()}


def cv_calibration(cv_dir: Path, repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Per fold and over folds: each method's scores and the paired Platt - temperature difference."""
    summary = read_summary(cv_dir)
    per_fold = []
    for fold in summary["per_fold"]:
        rows = fold_oof(cv_dir, fold)
        z = np.array([r["logit"] for r in rows], dtype=np.float64)
        y = np.array([r["label"] for r in rows], dtype=np.int64)
        try:
            result = cross_fitted(z, y, [r["patient"] for r in rows], repeats, seed + int(fold["fold"]))
        except ValueError as exc:
            raise PneumoLensError(f"{cv_dir} fold {fold['fold']}: {exc}") from None
        per_fold.append({"fold": int(fold["fold"]), "n": len(rows), **result})
    if not per_fold:
        raise PneumoLensError(f"{cv_dir / 'cv.json'}: no finished folds to measure")
    overall: dict[str, Any] = {}
    for s in SCORES:
        diffs = [f["platt"][s] - f["temperature"][s] for f in per_fold]
        overall[s] = {
            **{m: statistics.fmean(f[m][s] for f in per_fold) for m in METHODS},
            "diff": statistics.fmean(diffs),
            "se": statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None,
        }
    return {"label": summary.get("label") or cv_dir.name, "folds": [f["fold"] for f in per_fold],
            "repeats": repeats, "per_fold": per_fold, "overall": overall}


def markdown(results: list[dict[str, Any]]) -> str:
    """One row per cross-validation: each score under both methods and the paired difference."""
    head = "| recipe | folds | " + " | ".join(f"{SCORE_NAMES[s]}: temperature → Platt (Δ ± SE)" for s in SCORES) + " |"
    lines = [head, "|" + " --- |" * (2 + len(SCORES))]
    for r in results:
        cells = []
        for s in SCORES:
            o = r["overall"][s]
            se = "" if o["se"] is None else f" ± {o['se']:.4f}"
            cells.append(f"{o['temperature']:.4f} → {o['platt']:.4f} ({o['diff']:+.4f}{se})")
        lines.append(f"| {r['label']} | {len(r['folds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cv_dirs", nargs="+", type=Path, help="`pneumolens cv --out` folders (or their small files)")
    parser.add_argument("--repeats", type=int, default=5, help="random halvings per fold (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the halvings (default: 0)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return emit(lambda: markdown([cv_calibration(d, args.repeats, args.seed) for d in args.cv_dirs]), args.out)


if __name__ == "__main__":
    sys.exit(main())
