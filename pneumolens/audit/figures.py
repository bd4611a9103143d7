"""The audit's figures: probe examples with the Δp distributions, and lung masks with where attribution falls.

Drawn on :class:`matplotlib.figure.Figure` objects (no pyplot state), as the rest of the package does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..data import CLASS_NAMES
from .probes import FAMILIES, Probe

CREDIT = "Films: Kermany et al., Cell 2018 (CC BY 4.0)."
#: Dot colours of NORMAL and PNEUMONIA films in the share plot.
CLASS_COLOURS = ("#2ca02c", "#9467bd")
FAMILY_TITLES = {"marker": "laterality marker", "border": "border band replaced", "annotation": "text / ruler"}
MASK_COLOUR = "#00e5ff"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def plot_probes(
    examples: Sequence[tuple[str, np.ndarray, float]],
    pairs: Mapping[str, np.ndarray],
    probes: Sequence[Probe],
    metrics: Mapping[str, Any],
    threshold: float,
    path: str | Path,
) -> Path:
    """Top: one film clean and probed, each with its P(PNEUMONIA). Bottom: the signed Δp per family.

    The histograms stack the pairs whose label flipped (red) on those that kept it (grey), on a
    log count axis: the bulk sits at Δp ≈ 0 and the tails are what matters.
    """
    n_ex = max(1, len(examples))
    fig = Figure(figsize=(max(12.0, 1.75 * n_ex), 7.0), dpi=110, layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.45])
    clean_positive = examples[0][2] >= threshold if examples else False
    for ax, (name, image, p) in zip(top.subplots(1, n_ex, squeeze=False)[0], examples):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        label = "PNEUMONIA" if p >= threshold else "NORMAL"
        flipped = (p >= threshold) != clean_positive
        ax.set_title(f"{name}\np = {p:.3f} ({label}{', flipped' if flipped else ''})", fontsize=7.5,
                     color="#d62728" if flipped else "black")
        ax.set_axis_off()
    top.suptitle("One NORMAL film as decoded (before the model's resize), clean and probed, with P(pneumonia) at "
                 f"threshold {threshold:.3f}: red = label flipped", fontsize=8.5)
    family = np.array([probes[j].family for j in pairs["probe"]])
    dp = pairs["p_probe"] - pairs["p_clean"]
    flipped = (pairs["p_clean"] >= threshold) != (pairs["p_probe"] >= threshold)
    span = max(0.05, float(np.abs(dp).max()) if len(dp) else 0.05)
    bins = np.linspace(-span, span, 61)
    for k, (ax, fam) in enumerate(zip(bottom.subplots(1, len(FAMILIES), squeeze=False)[0], FAMILIES)):
        sel = family == fam
        m = (metrics.get("families") or {}).get(fam)
        if not sel.any() or m is None:
            ax.set_axis_off()
            continue
        ax.hist([dp[sel & ~flipped], dp[sel & flipped]], bins=bins, stacked=True, color=["#9e9e9e", "#d62728"],
                label=["label kept", "label flipped"], log=True)
        ax.axvline(0, color="black", lw=0.6)
        ax.set_xlabel("Δp = P(pneumonia | probed) − P(pneumonia | clean)", fontsize=8)
        ax.set_ylabel("film × probe pairs", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(
            f"{FAMILY_TITLES[fam]}: {_pct(m['flip_rate'])} of {m['n_pairs']} pairs flip\n"
            f"(→PNEUMONIA {m['flips_to_pneumonia']}, →NORMAL {m['flips_to_normal']}); "
            f"specificity {_delta(m['specificity'])}",
            fontsize=8,
        )
        if k == 0:
            ax.legend(fontsize=7, loc="upper left")
    bottom.suptitle(f"Δp of every (film, probe) pair of the split, by probe family (log count). {CREDIT}",
                    fontsize=8.5)
    return _save(fig, path)


def _delta(d: Mapping[str, Any]) -> str:
    if d.get("clean") is None:
        return "n/a"
    return f"{d['clean']:.3f} → {d['probed']:.3f}"


def _positive_overlay(ax: Any, image: np.ndarray, amap: np.ndarray) -> None:
    """The film, and the map's positive part in inferno, opacity growing with the value (99th pct = full)."""
    from matplotlib import colormaps

    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    pos = np.clip(np.asarray(amap, np.float64), 0, None)
    top = float(np.percentile(pos[pos > 0], 99)) if np.any(pos > 0) else 1.0
    v = np.clip(pos / top, 0, 1) if top > 0 else pos
    rgba = colormaps["inferno"](v)
    rgba[..., 3] = 0.85 * v
    ax.imshow(rgba)


def plot_lungs(
    images: np.ndarray,
    masks: np.ndarray,
    maps: Mapping[str, np.ndarray],
    summary: Mapping[str, Mapping[str, Any]],
    labels: Sequence[int],
    probabilities: Sequence[float],
    threshold: float,
    path: str | Path,
    n_examples: int = 4,
) -> Path:
    """Left: example films with their lung masks and each method's positive evidence. Right: the share outside.

    The examples are the first films of each class in the explained subset (half NORMAL, half
    PNEUMONIA). The right panel shows, per method, every film's share of positive attribution
    outside the mask (coloured by the film's class), its median, and the chance level (a map
    spread evenly over the film).
    """
    from ..explain.render import display_name

    labels = np.asarray(labels)
    order = [int(i) for c in (0, 1) for i in np.flatnonzero(labels == c)[: (n_examples + 1 - c) // 2]]
    order = order[:n_examples] or list(range(min(n_examples, len(images))))
    methods = list(maps)
    cols = 1 + len(methods)
    rows = max(1, len(order))
    fig = Figure(figsize=(2.0 * cols + 4.4, 2.35 * rows + 0.6), dpi=85, layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[2.0 * cols, 4.2])
    axes = left.subplots(rows, cols, squeeze=False)
    for r, i in enumerate(order):
        ax = axes[r, 0]
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.contour(masks[i], [0.5], colors=MASK_COLOUR, linewidths=0.9)
        truth = "PNEUMONIA" if labels[i] else "NORMAL"
        ax.set_title(f"{truth}, p = {probabilities[i]:.2f}\nlung mask ({masks[i].mean():.0%} of film)", fontsize=7.5)
        ax.set_axis_off()
        for c, label in enumerate(methods, start=1):
            ax = axes[r, c]
            _positive_overlay(ax, images[i], maps[label][i])
            ax.contour(masks[i], [0.5], colors=MASK_COLOUR, linewidths=0.7)
            share = summary[label]["share_per_film"][i]
            text = "no positive evidence" if share is None else f"{share:.0%} outside lungs"
            ax.set_title(f"{display_name(label)}\n{text}", fontsize=7.5)
            ax.set_axis_off()
    left.suptitle("Examples: positive evidence (inferno) and the approximate lung fields (cyan)", fontsize=8.5)
    ax = right.subplots()
    rng = np.random.default_rng(0)
    for k, label in enumerate(methods):
        shares = summary[label]["share_per_film"]
        vals = np.array([s for s in shares if s is not None], dtype=float)
        for cls, colour in enumerate(CLASS_COLOURS):  # the classes apart: their shares mean different things
            mine = np.array([s for s, y in zip(shares, labels) if s is not None and y == cls], dtype=float)
            if len(mine):
                jitter = rng.uniform(-0.12, 0.12, len(mine))
                ax.scatter(np.full(len(mine), k) + jitter, mine, s=12, alpha=0.6, color=colour,
                           label=f"{CLASS_NAMES[cls]} films" if k == 0 else None)
        if len(vals):
            ax.hlines(np.median(vals), k - 0.3, k + 0.3, color="black", lw=2)
    chance = [summary[m].get("uniform_share") for m in methods if summary[m].get("uniform_share") is not None]
    if chance:
        ax.axhline(chance[0], color="#d62728", ls="--", lw=1, label=f"chance (even map): {chance[0]:.0%}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xticks(range(len(methods)), [display_name(m) for m in methods], rotation=20, fontsize=7.5, ha="right")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share of positive attribution outside the lung mask", fontsize=8)
    ax.tick_params(labelsize=7)
    n = len(images)
    ax.set_title(f"{n} films (black bar: median of both classes)", fontsize=8)
    fig.suptitle(f"Where the evidence for pneumonia falls. {CREDIT}", fontsize=9)
    return _save(fig, path)


def plot_context(
    films: Any, masks: Any, context: Mapping[str, Any], threshold: float, path: str | Path, n_examples: int = 3,
) -> Path:
    """Left: pairs crossed both ways, the kept lung region outlined. Right: how often the label follows the lungs.

    The examples are the first pairs in ``context["per_pair"]`` (from
    :func:`pneumolens.audit.context.context_swap`) that can tell lungs from surroundings
    (:func:`pneumolens.audit.context.told_apart`); their composites are rebuilt from ``films`` and
    ``masks`` (film index -> array), with the probabilities the audit measured.
    """
    from .context import KIND_TITLES, KINDS, composite, keep_weights, told_apart

    rows = told_apart(context["per_pair"], threshold)[:n_examples]
    fig = Figure(figsize=(2.0 * 4 + 4.4, 2.45 * max(1, len(rows)) + 0.7), dpi=85, layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[8.0, 4.2])
    axes = left.subplots(max(1, len(rows)), 4, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()

    def label(p: float) -> str:
        return "PNEUMONIA" if p >= threshold else "NORMAL"

    for r, row in enumerate(rows):
        pair = (row["normal"], row["pneumonia"])
        keep = keep_weights(np.stack([masks[pair[0]], masks[pair[1]]]))
        for c, (cls, key) in enumerate(((0, "p_normal"), (1, "p_pneumonia"))):
            ax = axes[r, c]
            ax.imshow(films[pair[c]], cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{CLASS_NAMES[cls]} film\np = {row[key]:.2f} → {label(row[key])}", fontsize=7.5)
        for c, (name, lungs_of, rest_of) in enumerate(KINDS, start=2):
            ax = axes[r, c]
            ax.imshow(composite(films[pair[lungs_of]], films[pair[rest_of]], keep[lungs_of]), cmap="gray",
                      vmin=0, vmax=255)
            ax.contour(keep[lungs_of] > 0.5, [0.5], colors=MASK_COLOUR, linewidths=0.8)
            p = row[f"p_{name}"]
            lungs_p = row["p_normal" if lungs_of == 0 else "p_pneumonia"]
            verdict = "follows the lungs" if label(p) == label(lungs_p) else "follows the surroundings"
            ax.set_title(f"{CLASS_NAMES[lungs_of]} lungs, {CLASS_NAMES[rest_of]} rest\np = {p:.2f}: {verdict}",
                         fontsize=7.5)
    left.suptitle("Pairs the model tells apart, crossed both ways (cyan: the kept lung region)", fontsize=8.5)
    ax = right.subplots()
    kinds = [(KIND_TITLES[name], context["kinds"].get(name) or {}) for name, _, _ in KINDS]
    kinds.append(("both", {"follow_rate": context["follow_rate"], "followed": context["followed"],
                           "informative": context["informative"]}))
    for y, (title, k) in enumerate(kinds):
        rate = k.get("follow_rate")
        if rate is None:
            ax.text(0.02, y, "not measured", va="center", fontsize=7.5)
            continue
        ax.barh(y, rate, color="#1f77b4" if y < len(kinds) - 1 else "#08306b", height=0.6)
        ax.text(min(rate, 0.98), y, f" {rate:.0%} ({k['followed']} of {k['informative']})", va="center",
                ha="right" if rate > 0.6 else "left", fontsize=7.5, color="white" if rate > 0.6 else "black")
    ax.axvline(0.5, color="#d62728", ls="--", lw=1, label="50 %: a coin")
    ax.set_yticks(range(len(kinds)), ["\n".join(t.split(", ")) for t, _ in kinds], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("composites whose label follows the lungs' film", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
    n = context["pairs"]
    ax.set_title(f"{n} pair{'' if n == 1 else 's'}, informative composites only", fontsize=8)
    fig.suptitle(f"Context swap: does the answer follow the lungs? {CREDIT}", fontsize=9)
    return _save(fig, path)


def plot_mask_grid(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], titles: Sequence[str], path: str | Path,
                   columns: int = 6) -> Path:
    """Lung masks drawn over films, for checking them by eye (``scripts/lung_mask_check.py``)."""
    rows = -(-len(images) // columns)
    fig = Figure(figsize=(2.4 * columns, 2.55 * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, mask, title in zip(axes.flat, images, masks, titles):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.contour(mask, [0.5], colors="red", linewidths=0.9)
        ax.set_title(title, fontsize=7.5)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
