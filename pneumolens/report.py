"""Figures (confusion matrix, ROC, PR, reliability, training history) and the Markdown report.

Figures are drawn on :class:`matplotlib.figure.Figure` objects, never through ``pyplot``, so
importing or calling this module does not pick a GUI backend, touch global state, or leak open
figures in a long-running service; ``Figure.savefig`` renders with Agg.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc as area_under
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from .errors import PneumoLensError
from .metrics import calibration_bins

DATASET_CREDIT = "Data: Kermany et al., Cell 2018 (CC BY 4.0)."


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _one_class_note(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"{what} undefined:\nonly one class present", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def plot_confusion(confusion: dict[str, int], class_names: Sequence[str], path: str | Path) -> Path:
    """Confusion matrix (rows: truth, columns: prediction) with counts and row percentages."""
    m = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]], dtype=np.int64)
    rows = m.sum(1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
    fig = Figure(figsize=(4.2, 3.6))
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            colour = "white" if frac[i, j] > 0.6 else "black"
            ax.text(j, i, f"{m[i, j]}\n{frac[i, j]:.1%}", ha="center", va="center", color=colour)
    ax.set_xticks([0, 1], labels=list(class_names))
    ax.set_yticks([0, 1], labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    return _save(fig, path)


def plot_roc(y: Any, prob: Any, path: str | Path, threshold: float | None = None) -> Path:
    """ROC curve with its AUC, and the operating point at ``threshold`` when given."""
    y, prob = np.asarray(y), np.asarray(prob, dtype=np.float64)
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.subplots()
    if y.min() == y.max():
        _one_class_note(ax, "ROC")
        return _save(fig, path)
    fpr, tpr, _ = roc_curve(y, prob)
    auc = float(area_under(fpr, tpr))
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    if threshold is not None:
        pred = prob >= threshold
        sens, fpr_t = pred[y == 1].mean(), pred[y == 0].mean()
        ax.plot([fpr_t], [sens], "o", color="crimson", label=f"threshold {threshold:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (recall)")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_pr(y: Any, prob: Any, path: str | Path) -> Path:
    """Precision-recall curve with its average precision and the prevalence baseline."""
    y, prob = np.asarray(y), np.asarray(prob, dtype=np.float64)
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.subplots()
    if y.min() == y.max():
        _one_class_note(ax, "PR curve")
        return _save(fig, path)
    precision, recall, _ = precision_recall_curve(y, prob)
    ap = float(average_precision_score(y, prob))
    ax.step(recall, precision, where="post", lw=2, label=f"PR (AP {ap:.3f})")
    ax.axhline(y.mean(), ls="--", color="grey", lw=1, label=f"prevalence {y.mean():.2f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title="Precision-recall")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)")
    ax.legend(loc="lower left")
    return _save(fig, path)


#: A reliability bin with fewer images than this is drawn light and hatched: its observed
#: frequency is too uncertain to read as a bar (its count and 95 % interval are shown).
FEW_IN_BIN = 10


def wilson_interval(successes: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion, per bin (NaN where ``n`` is 0)."""
    k, n = np.asarray(successes, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = np.where(k == 0, 0.0, np.clip(centre - half, 0.0, 1.0))  # exact ends: float rounding must not put
    hi = np.where(k == n, 1.0, np.clip(centre + half, 0.0, 1.0))  # 0 of n above 0, or n of n below 1
    return np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)


def reliability_figure(y: Any, prob: Any, n_bins: int = 15) -> Figure:
    """The reliability diagram as a Figure (:func:`plot_reliability` saves it).

    Top: observed PNEUMONIA frequency per equal-width probability bin, with its image count written
    above it and a 95 % Wilson interval; bins with fewer than :data:`FEW_IN_BIN` images are drawn
    light and hatched, empty bins not at all. Bottom: images per bin. The legend sits below the
    axes, covering nothing.
    """
    count, obs, conf = calibration_bins(y, prob, n_bins)
    ece = float(np.nansum(np.abs(obs - conf) * count) / count.sum())
    edges = np.linspace(0, 1, n_bins + 1)
    width = 1 / n_bins
    fig = Figure(figsize=(5.0, 6.0), layout="constrained")
    ax, hx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    full = count >= FEW_IN_BIN
    few = (count > 0) & ~full
    ax.bar(edges[:-1][full], obs[full], width=width, align="edge", edgecolor="black", color="tab:blue", alpha=0.8,
           label=f"observed frequency ({FEW_IN_BIN}+ images)" if full.any() else None)
    ax.bar(edges[:-1][few], obs[few], width=width, align="edge", edgecolor="0.4", color="tab:blue", alpha=0.2,
           hatch="///", label=f"observed frequency (under {FEW_IN_BIN} images: uncertain)" if few.any() else None)
    lo, hi = wilson_interval(np.nan_to_num(obs) * count, count)
    seen = count > 0
    centres = edges[:-1] + width / 2
    ax.errorbar(centres[seen], obs[seen], yerr=[obs[seen] - lo[seen], hi[seen] - obs[seen]], fmt="none",
                ecolor="black", elinewidth=0.8, capsize=2, label="95 % interval (Wilson)")
    ax.plot(conf[seen], obs[seen], "o", color="crimson", ms=4, label="bin mean probability")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for x, n, top in zip(centres[seen], count[seen], hi[seen]):
        ax.text(x, min(top + 0.02, 1.02), str(int(n)), ha="center", va="bottom", fontsize=6.5,
                color="black" if n >= FEW_IN_BIN else "0.45")
    ax.set(xlim=(0, 1), ylim=(0, 1.1), ylabel="fraction PNEUMONIA",
           title=f"Reliability (ECE {ece:.3f}); numbers: images per bin")
    ax.set_yticks(np.linspace(0, 1, 6))
    hx.bar(edges[:-1], count, width=width, align="edge", edgecolor="black", color="grey")
    hx.set(xlabel="predicted probability of PNEUMONIA", ylabel="images")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith("observed"))  # the bars first
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncol=2,
               fontsize="small", frameon=False)
    return fig


def plot_reliability(y: Any, prob: Any, path: str | Path, n_bins: int = 15) -> Path:
    """Reliability diagram (see :func:`reliability_figure`), saved as a PNG."""
    return _save(reliability_figure(y, prob, n_bins), path)


# ---------------------------------------------------------------------------------------------
# Training history from Lightning's CSVLogger.

_ALIASES = {"train": ("train", "training"), "val": ("val", "valid", "validation")}
_METRICS = {"loss": ("loss",), "accuracy": ("acc", "accuracy"), "AUC": ("auc", "roc_auc", "auroc")}


def read_history(metrics_csv_path: str | Path) -> dict[str, dict[int, float]]:
    """Per-epoch values of every column of a Lightning ``metrics.csv``: ``{column: {epoch: value}}``.

    Lightning writes sparse rows (each holds only what was logged at that moment) and leaves
    ``epoch`` empty on rows from the learning-rate monitor; those belong to the next epoch. When
    a column has several values in one epoch (step-level logging), the last one is kept.
    """
    path = Path(metrics_csv_path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise PneumoLensError(f"{path}: cannot read training log ({exc.strerror or exc})") from exc
    except csv.Error as exc:
        raise PneumoLensError(f"{path}: not a CSV training log ({exc})") from exc
    if not rows or "epoch" not in rows[0]:
        raise PneumoLensError(f"{path}: no 'epoch' column; expected a Lightning CSVLogger metrics.csv")

    def num(s: str | None) -> float | None:
        try:
            v = float(s) if s not in (None, "") else None
        except ValueError:
            return None
        return v if v is not None and math.isfinite(v) else None

    epochs = [num(r.get("epoch")) for r in rows]
    nxt = None
    for i in range(len(rows) - 1, -1, -1):  # rows without an epoch take the next row's epoch
        epochs[i] = nxt = epochs[i] if epochs[i] is not None else nxt
    last = next((e for e in reversed(epochs) if e is not None), None)
    history: dict[str, dict[int, float]] = {}
    for row, ep in zip(rows, epochs):
        ep = ep if ep is not None else last
        if ep is None:
            continue
        for col, s in row.items():
            v = num(s)
            if col in ("epoch", "step") or col is None or v is None:
                continue
            history.setdefault(col, {})[int(ep)] = v
    return history


def _find(history: dict[str, dict[int, float]], split: str, metric: str) -> str | None:
    for s in _ALIASES[split]:
        for m in _METRICS[metric]:
            for sep in ("_", "/"):
                for suffix in ("_epoch", ""):
                    col = f"{s}{sep}{m}{suffix}"
                    if col in history:
                        return col
    return None


def best_epoch(history: dict[str, dict[int, float]]) -> int | None:
    """The epoch training keeps: the lowest validation loss (the first one on a tie, as Lightning's
    ``ModelCheckpoint(mode="min")`` keeps it); None without a validation loss column."""
    col = _find(history, "val", "loss")
    if col is None or not history[col]:
        return None
    return min(sorted(history[col].items()), key=lambda kv: kv[1])[0]


def plot_history(
    metrics_csv_path: str | Path, path: str | Path, best: int | None = None, why: str = "lowest validation loss"
) -> Path:
    """The training history (:func:`history_figure`) saved as a PNG."""
    return _save(history_figure(metrics_csv_path, best, why), path)


def history_figure(metrics_csv_path: str | Path, best: int | None = None, why: str = "lowest validation loss") -> Figure:
    """Loss, accuracy and AUC per epoch for train and validation (plus the learning rate if logged),
    with the best epoch marked on every panel (a dashed line; a ring on each validation curve), one
    legend below the panels.

    Missing columns leave their curve (or panel) out.

    Args:
        best: the epoch the run kept; default: the lowest validation loss (:func:`best_epoch`).
        why: how that epoch was chosen, for the legend ("lowest validation loss", "last epoch").

    Raises:
        PneumoLensError: the file cannot be read, or holds none of the expected columns.
    """
    history = read_history(metrics_csv_path)
    best = best if best is not None else best_epoch(history)
    panels = []
    for metric in _METRICS:
        cols = {split: _find(history, split, metric) for split in ("train", "val")}
        if any(cols.values()):
            panels.append((metric, cols))
    lr_col = next((c for c in history if c == "lr" or c.startswith("lr-") or c.startswith("lr_")), None)
    if not panels:
        found = ", ".join(sorted(history)) or "none"
        raise PneumoLensError(f"{metrics_csv_path}: no loss, accuracy or AUC columns (found: {found})")
    n = len(panels) + (lr_col is not None)
    fig = Figure(figsize=(4.0 * n, 3.7), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, (metric, cols) in zip(axes, panels):
        for split, col in cols.items():
            if col:
                pts = sorted(history[col].items())
                label = "validation" if split == "val" else "train"
                ax.plot([e for e, _ in pts], [v for _, v in pts], "o-", ms=3, label=label)
                if best is not None and split == "val" and best in history[col]:
                    ax.plot([best], [history[col][best]], "o", ms=9, mfc="none", mec="crimson", mew=1.5)
        if best is not None:
            ax.axvline(best, color="crimson", ls="--", lw=1,
                       label=f"kept epoch {best} ({why})")
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if lr_col is not None:
        ax = axes[-1]
        pts = sorted(history[lr_col].items())
        ax.plot([e for e, _ in pts], [v for _, v in pts], "o-", ms=3, color="grey")
        if best is not None:
            ax.axvline(best, color="crimson", ls="--", lw=1)
        ax.set(xlabel="epoch", ylabel="learning rate", title="learning rate", yscale="log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    legend: dict[str, Any] = {}  # one legend for all panels, below them: it covers no curve
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=len(legend), frameon=False)
    return fig


# ---------------------------------------------------------------------------------------------
# Markdown report.

_ROWS = (
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("recall", "Sensitivity (recall)"),
    ("specificity", "Specificity"),
    ("precision", "Precision (PPV)"),
    ("f1", "F1"),
    ("roc_auc", "ROC AUC"),
    ("pr_auc", "PR AUC (average precision)"),
    ("brier", "Brier score (lower is better)"),
    ("ece", "ECE, 15 bins (lower is better)"),
)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _ood_fact(ood: dict[str, Any] | None) -> str | None:
    """``3 (0.6 %; the guard flags 1.0 % of validation films)``, or None without a guard."""
    if not ood:
        return None
    share, val = ood.get("flagged_share"), ood.get("validation_flagged")
    text = f"{ood.get('flagged')} ({100 * share:.1f} %" if share is not None else f"{ood.get('flagged')} ("
    if val is not None:
        text += f"; the guard's threshold flags {100 * val:.1f} % of validation films"
    return text + ")"


def write_report(
    metrics: dict[str, Any], out_dir: str | Path, figures: dict[str, str], title: str = "PneumoLens evaluation"
) -> Path:
    """Write ``out_dir/report.md``: metrics with 95 % CIs, confusion matrix, subtype recall, figures.

    Args:
        metrics: what :func:`pneumolens.evaluate.evaluate_arrays` writes to ``metrics.json``
            (at least the keys of :func:`pneumolens.metrics.binary_metrics`; ``ci``,
            ``subtype_recall``, ``patient_level``, ``split``, ``checkpoint``... are used when present).
        out_dir: folder of the report; figure file names are relative to it.
        figures: ``{caption: file name}``, shown in this order.
        title: the report's heading.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ci = metrics.get("ci") or {}
    lines = [f"# {title}", ""]
    facts = [
        ("split", metrics.get("split")),
        ("checkpoint", metrics.get("checkpoint")),
        ("images", metrics.get("n")),
        ("PNEUMONIA / NORMAL", f"{metrics.get('n_pos')} / {metrics.get('n_neg')}"),
        ("skipped (unreadable)", metrics.get("skipped")),
        ("flagged out of distribution", _ood_fact(metrics.get("ood"))),
        ("threshold", f"{metrics['threshold']:.4f} ({metrics.get('threshold_source', 'given')})"),
        ("temperature", metrics.get("temperature")),
        ("calibration bias", metrics.get("calibration_bias")),
    ]
    lines += [f"- **{k}**: {_fmt(v)}" for k, v in facts if v is not None]
    lines += [""]
    for note in metrics.get("notes", []):
        lines += [f"> {note}", ""]
    boot = metrics.get("bootstrap") or {}
    ci_head = "95 % CI" if not boot else f"95 % CI ({boot.get('n_boot')} resamples, {boot.get('unit', 'image')}-level)"
    lines += ["## Metrics", "", f"| metric | value | {ci_head} |", "|---|---|---|"]
    for key, label in _ROWS:
        if key not in metrics:
            continue
        rng = ci.get(key)
        lines.append(f"| {label} | {_fmt(metrics[key])} | {f'{rng[0]:.3f} – {rng[1]:.3f}' if rng else 'n/a'} |")
    c = metrics.get("confusion")
    if c:
        lines += [
            "",
            "## Confusion matrix",
            "",
            "| true \\ predicted | NORMAL | PNEUMONIA |",
            "|---|---|---|",
            f"| NORMAL | {c['tn']} (TN) | {c['fp']} (FP) |",
            f"| PNEUMONIA | {c['fn']} (FN) | {c['tp']} (TP) |",
        ]
    sub = metrics.get("subtype_recall")
    if sub:
        lines += ["", "## By subtype", "", "| subtype | images | sensitivity | specificity |", "|---|---|---|---|"]
        for name, e in sub.items():
            lines.append(f"| {name} | {e['n']} | {_fmt(e.get('recall'))} | {_fmt(e.get('specificity'))} |")
    pat = metrics.get("patient_level")
    if pat:
        lines += [
            "",
            "## Per patient",
            "",
            f"Each patient's films averaged into one probability ({pat['n']} patients), same threshold:",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| {label} | {_fmt(pat.get(key))} |" for key, label in _ROWS if key in pat]
    if figures:
        lines += ["", "## Figures", ""]
        for caption, fname in figures.items():
            lines += [f"**{caption}**", "", f"![{caption}]({fname})", ""]
    lines += ["", f"_{DATASET_CREDIT} Research and education use only: not a medical device._", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
