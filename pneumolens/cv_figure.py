"""The cross-validation trade-off figure: ranking quality against the marker shortcut, per recipe.

One point per finished fold (ROC AUC on the fold's validation against the audit's marker flip
rate on the same films), each recipe's mean ± sd as a cross, so a reader sees at a glance which
recipe ranks films well *and* ignores pasted letters, and how much the folds disagree. Drawn on
a :class:`matplotlib.figure.Figure` (no pyplot), like :mod:`pneumolens.report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .cv import read_summary
from .errors import ConfigError


def cv_figure(dirs: Sequence[str | Path], goal_flip_rate: float | None = 0.01) -> Figure:
    """ROC AUC against marker flip rate for the cross-validations in ``dirs`` (their cv.json).

    Folds without a flip rate (the audit was not importable) are left out of that recipe's points;
    a recipe with none is named in the legend as "(no flip rate)". ``goal_flip_rate``: a dashed
    vertical line at the validation goal (None: no line).
    """
    fig = Figure(figsize=(7.2, 5.2), layout="constrained")
    ax = fig.subplots()
    colours = [f"C{i}" for i in range(10)]
    for i, d in enumerate(dirs):
        s = read_summary(d)
        pts = [(f["marker_flip_rate"], f["roc_auc"]) for f in s["per_fold"]
               if f.get("marker_flip_rate") is not None and f.get("roc_auc") is not None]
        label = f"{s['label']} ({len(s['done'])}/{s['folds']} folds)"
        c = colours[i % len(colours)]
        if not pts:
            ax.plot([], [], "o", color=c, label=f"{label} (no flip rate)")
            continue
        x, y = np.array(pts).T
        ax.plot(x, y, "o", color=c, alpha=0.55, ms=6, label=label)
        if len(pts) > 1:
            ax.errorbar(x.mean(), y.mean(), xerr=x.std(ddof=1), yerr=y.std(ddof=1), fmt="P", color=c,
                        ms=10, mec="black", mew=0.8, capsize=3)
    if goal_flip_rate is not None:
        ax.axvline(goal_flip_rate, color="grey", ls="--", lw=1, label=f"goal: flip rate ≤ {goal_flip_rate:.0%}")
    ax.set(xlabel="marker flip rate (share of film × pasted letter pairs whose label flips) — lower is better",
           ylabel="ROC AUC on the fold's validation — higher is better",
           title="Cross-validation: ranking quality against the marker shortcut\n"
                 "dots: folds; crosses: mean ± sd over folds")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)  # never over a point
    return fig


def plot_cv(dirs: Sequence[str | Path], path: str | Path) -> Path:
    """:func:`cv_figure` saved as a PNG at ``path``.

    Raises:
        ConfigError: ``path`` does not end in ``.png``, or cannot be written (the reason named).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{path}: the figure is a PNG; give a file name ending in .png")
    fig = cv_figure(dirs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the figure ({exc.strerror or exc})") from None
    return path
