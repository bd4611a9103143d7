"""The shortcut audit end to end: what ``pneumolens audit`` does, callable from Python.

Data flows one way: the split's files → decoded films (full size) → probed films → the model's
resize → P(PNEUMONIA) clean and probed → flip and |Δp| scores per probe family; the clean
inputs → lung masks → explanations on a subset → the share of positive attribution outside the
lungs. Written to ``out``: ``metrics.json``, ``films.csv`` (one row per film), ``probes.csv``
(one row per film and probe), ``report.md``, ``probes.png`` and ``lungs.png``.

Deterministic for a seed: the subsets, the markers each film gets and the explanation methods'
sampling all draw from it.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError, InvalidImageError
from .context import CONTEXT_PAIRS, context_swap
from .probes import FAMILIES, Probe, assign, default_probes
from .scoring import marker_probe, predict_probed, summarize

log = logging.getLogger(__name__)

#: Explanation methods measured by default: the ones that take well under a second per film.
DEFAULT_METHODS = "gradcam,ig,occlusion"
#: Marker probes per film by default (of 72): every marker is still used on ~1/6 of the films.
MARKERS_PER_FILM = 12
#: Films explained by default: explanations cost far more than predictions.
EXPLAIN_N = 20
MARKER_FACTORS = ("letter", "font", "height", "corner")


def pick(labels: Sequence[int], n: int | None, seed: int, balanced: bool = False) -> list[int]:
    """Indices of ``n`` items, seeded, in their original order; all when ``n`` is None or too large.

    ``balanced``: half from each class where possible (for the explanation subset); otherwise the
    classes keep their proportions (rounded), so specificity and sensitivity stay those of the split.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if n is None or n >= len(labels):
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(labels == c) for c in (0, 1)}
    if balanced:
        want0 = min(len(by_class[0]), max(n // 2, n - len(by_class[1])))
    else:
        want0 = min(len(by_class[0]), max(n - len(by_class[1]), round(n * len(by_class[0]) / len(labels))))
    want = {0: want0, 1: n - want0}
    chosen = [int(i) for c in (0, 1) for i in rng.choice(by_class[c], size=want[c], replace=False)]
    return sorted(chosen)


def _grouped(pairs: dict[str, np.ndarray], mask: np.ndarray, threshold: float) -> dict[str, Any]:
    return summarize(pairs["p_clean"][mask], pairs["p_probe"][mask], pairs["label"][mask], threshold,
                     films=pairs["film"][mask])


def probe_metrics(
    probes: Sequence[Probe], pairs: dict[str, np.ndarray], threshold: float
) -> dict[str, Any]:
    """Scores per family, per probe, and for markers per factor (letter, font, height, corner)."""
    fam = np.array([probes[j].family for j in pairs["probe"]])
    out: dict[str, Any] = {"families": {}, "by_probe": [], "marker_factors": {}}
    for family in FAMILIES:
        if (fam == family).any():
            out["families"][family] = _grouped(pairs, fam == family, threshold)
    for j, probe in enumerate(probes):
        sel = pairs["probe"] == j
        if sel.any():
            s = _grouped(pairs, sel, threshold)
            out["by_probe"].append({"family": probe.family, "probe": probe.name, **probe.params, **s})
    markers = [(j, p) for j, p in enumerate(probes) if p.family == "marker"]
    for factor in MARKER_FACTORS:
        levels: dict[str, Any] = {}
        for value in dict.fromkeys(p.params[factor] for _, p in markers):
            ids = [j for j, p in markers if p.params[factor] == value]
            sel = np.isin(pairs["probe"], ids)
            if sel.any():
                key = f"{value:.0%}" if isinstance(value, float) else str(value)
                levels[key] = _grouped(pairs, sel, threshold)
        if levels:
            out["marker_factors"][factor] = levels
    return out


def _read_films(
    paths: Sequence[Path], size: int, skip_bad: bool, progress: bool
) -> tuple[list[np.ndarray], list[int], list[tuple[str, str]]]:
    """Decode each file at full size (as :func:`pneumolens.io.load_image` does before its resize)."""
    from ..io import DRAFT_FACTOR, read_image

    films, kept, bad = [], [], []
    bar = tqdm(paths, desc="decoding", unit="film", disable=not progress or len(paths) < 50, leave=False)
    for i, path in enumerate(bar):
        try:
            films.append(read_image(path, draft_size=DRAFT_FACTOR * size))
            kept.append(i)
        except InvalidImageError as exc:
            if not skip_bad:
                raise InvalidImageError(f"{exc}; pass --skip-bad to audit the other films") from exc
            bad.append((str(path), str(exc)))
            log.warning("skipping %s", exc)
    return films, kept, bad


def run_audit(
    checkpoint: Any = None,
    data: str | Path | None = None,
    split: str = "validation",
    out: str | Path = "runs/audit",
    n: int | None = None,
    seed: int = 0,
    methods: str | Sequence[Any] = DEFAULT_METHODS,
    explain_n: int = EXPLAIN_N,
    markers_per_film: int | None = MARKERS_PER_FILM,
    skip_bad: bool = False,
    progress: bool = True,
    background_n: int = 32,
    command: str | None = None,
    context_pairs: int = CONTEXT_PAIRS,
) -> dict[str, Any]:
    """Audit a checkpoint's shortcuts on a split and write the results to ``out``.

    Args:
        checkpoint: path, loaded :class:`~pneumolens.checkpoint.Checkpoint`, or None for the shipped model.
        data: dataset root; default as :func:`pneumolens.data.resolve_data_root`.
        split: ``validation`` (the checkpoint's patient-level held-out part of train), ``val`` or ``test``.
        out: output folder (created).
        n: films to probe (a seeded subset keeping the class proportions); None: the whole split.
        seed: seeds the subsets, the markers each film gets and the explanation methods.
        methods: explanation methods, ``"gradcam,ig:n_steps=64"`` text or MethodSpecs; ``""`` for none.
        explain_n: films explained (half per class where possible); 0 skips the explanations.
        markers_per_film: marker probes per film (of 72); None: all.
        skip_bad: skip unreadable files (listed in ``metrics.json``) instead of failing.
        progress: progress bars.
        background_n: GradientSHAP background images from train, when ``shap`` is asked for.
        command: the command line to record in the report.
        context_pairs: NORMAL/PNEUMONIA pairs crossed for the context swap; 0 skips it.

    Returns:
        The dict written to ``metrics.json``.

    Raises:
        ConfigError: a bad setting. DatasetError: missing data. InvalidImageError: an unreadable
        file (without ``skip_bad``). CheckpointError: a missing or foreign checkpoint.
    """
    from ..checkpoint import Checkpoint, load_checkpoint
    from ..data import resolve_data_root
    from ..evaluate import split_records
    from ..inference import Predictor
    from ..io import resize_square
    from ..jsonable import dumps
    from .figures import plot_context, plot_lungs, plot_probes
    from .lungs import lung_mask
    from .markdown import write_report

    for name, value, low in (("n", n, 1), ("explain_n", explain_n, 0), ("markers_per_film", markers_per_film, 1),
                             ("context_pairs", context_pairs, 0)):
        if value is not None and value < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    t_start = time.perf_counter()
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    ckpt_name = "shipped model" if checkpoint is None else (
        str(checkpoint) if not isinstance(checkpoint, Checkpoint) else "in-memory checkpoint")
    specs = _method_specs(methods)
    predictor = Predictor(ckpt)
    size, threshold = predictor.size, predictor.threshold
    root = resolve_data_root(data)
    records = split_records(root, split, ckpt.provenance)
    records = [records[i] for i in pick([r.label for r in records], n, seed)]
    films, kept, bad = _read_films([r.path for r in records], size, skip_bad, progress)
    records = [records[i] for i in kept]
    if not records:
        raise InvalidImageError(f"{root}/{split}: no readable film to audit")
    labels = np.array([r.label for r in records], dtype=np.int64)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    # -- probes: one pass, each film clean once and with its probes of every family
    by_family = default_probes()
    probes = [p for family in FAMILIES for p in by_family[family]]
    plan: list[list[int]] = [[] for _ in records]
    offset = 0
    for k, family in enumerate(FAMILIES):
        per_film = markers_per_film if family == "marker" else None
        for i, chosen in enumerate(assign(len(records), len(by_family[family]), per_film, seed + k)):
            plan[i].extend(offset + j for j in chosen)
        offset += len(by_family[family])
    t0 = time.perf_counter()
    p_clean, film, probe, p_probe = predict_probed(predictor.probabilities, films, probes, plan, size=size,
                                                   progress=progress)
    probe_seconds = time.perf_counter() - t0
    pairs = {"film": film, "probe": probe, "p_clean": p_clean[film], "p_probe": p_probe, "label": labels[film]}
    metrics_probes = probe_metrics(probes, pairs, threshold)
    inputs = np.stack([resize_square(f, size) for f in films])
    quick = marker_probe(predictor.probabilities, inputs, labels, threshold, seed=seed)

    # -- lung fields on every model input; explanations on a balanced subset
    lungs = [lung_mask(x) for x in tqdm(inputs, desc="lung fields", unit="film", disable=not progress, leave=False)]
    masks = np.stack([m.mask for m in lungs])
    status_counts: dict[str, int] = {}
    for m in lungs:
        status_counts[m.status] = status_counts.get(m.status, 0) + 1
    t0 = time.perf_counter()
    context = context_swap(inputs, masks, labels, predictor.probabilities, threshold, n_pairs=context_pairs,
                           seed=seed, p=p_clean) if context_pairs else None
    context_seconds = time.perf_counter() - t0
    chosen = pick(labels, explain_n, seed, balanced=True) if explain_n and specs else []
    explanations, maps = _explanations(predictor.model, inputs[chosen], masks[chosen], labels[chosen], specs, seed,
                                        root, background_n, ckpt, progress) if chosen else ({}, {})

    clean_pos = p_clean >= threshold
    metrics: dict[str, Any] = {
        "checkpoint": ckpt_name,
        "split": split,
        "data": str(root),
        "seed": seed,
        "command": command,
        "threshold": threshold,
        "threshold_rule": ckpt.threshold_rule,
        "input_size": size,
        "n_films": len(records),
        "n_normal": int((labels == 0).sum()),
        "n_pneumonia": int((labels == 1).sum()),
        "skipped_files": [path for path, _ in bad],
        "markers_per_film": markers_per_film,
        "clean": {
            "accuracy": float((clean_pos == (labels == 1)).mean()),
            "specificity": summarize(p_clean, p_clean, labels, threshold)["specificity"]["clean"],
            "sensitivity": summarize(p_clean, p_clean, labels, threshold)["sensitivity"]["clean"],
        },
        "probes": metrics_probes,
        "quick_marker": quick,
        "context_swap": context,
        "lungs": {
            "method": "anatomical prior refined by intensity (pneumolens.audit.lungs); error measured by eye in "
                      "docs/audit/README.md",
            "mean_area": float(masks.mean()),
            "status_counts": status_counts,
        },
        "explanations": {
            "n_films": len(chosen),
            "films": [str(records[i].path.name) for i in chosen],
            "methods": explanations,
        },
        "seconds": {"probes": probe_seconds, "context_swap": context_seconds, "total": time.perf_counter() - t_start},
    }
    (out / "metrics.json").write_text(dumps(metrics, indent=2) + "\n", encoding="utf-8")
    _write_films_csv(out / "films.csv", records, p_clean, pairs, probes, threshold, lungs, chosen, explanations)
    _write_pairs_csv(out / "probes.csv", records, pairs, probes, threshold)
    examples = _examples(films, labels, p_clean, pairs, probes, predictor, seed)
    plot_probes(examples, pairs, probes, metrics_probes, threshold, out / "probes.png")
    if chosen:
        plot_lungs(inputs[chosen], masks[chosen], maps, explanations, labels[chosen], p_clean[chosen], threshold,
                   out / "lungs.png")
    drawn_context = bool(context and context["follow_rate"] is not None)
    if drawn_context:
        plot_context(inputs, masks, context, threshold, out / "context.png")
    write_report(metrics, out, figures={"probes": "probes.png", "lungs": "lungs.png" if chosen else None,
                                        "context": "context.png" if drawn_context else None})
    return metrics


def _method_specs(methods: str | Sequence[Any]) -> list[Any]:
    """MethodSpecs from ``"gradcam,ig:n_steps=64"`` text (``""``: none), or the specs as given."""
    if not isinstance(methods, str):
        return list(methods)
    from ..explain.core import parse_method_spec
    from ..explain.runner import MethodSpec

    specs, seen = [], set()
    for item in (s.strip() for s in methods.split(",")):
        if not item:
            continue
        if item in seen:
            raise ConfigError(f"--methods: {item!r} is listed twice")
        seen.add(item)
        try:
            name, params = parse_method_spec(item)
        except ValueError as exc:
            raise ConfigError(f"--methods: {exc}") from exc
        specs.append(MethodSpec(label=item, name=name, params=params))
    return specs


def _explanations(
    model: Any, images: np.ndarray, masks: np.ndarray, labels: np.ndarray, specs: list[Any], seed: int, root: Path,
    background_n: int, ckpt: Any, progress: bool,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from ..explain.runner import MethodSpec, fast_forwards
    from .attribution import explain_shares, summarize_shares

    if any(s.name == "shap" for s in specs):
        from ..explain.shap import build_background

        prov = ckpt.provenance
        bg = build_background(root, n=background_n, size=ckpt.input_size, seed=seed,
                              val_fraction=float(prov.get("val_fraction", 0.1)),
                              split_seed=int(prov.get("split_seed", 0)))
        specs = [s if s.name != "shap" else MethodSpec(s.label, s.name, {"background": bg, **s.params}) for s in specs]
    forward, grad_forward = fast_forwards(model, [s.name for s in specs])
    try:
        raw, maps = explain_shares(model, images, masks, specs, seed=seed, forward=forward, grad_forward=grad_forward,
                                   progress=progress)
    except ValueError as exc:  # a setting a method refuses
        raise ConfigError(f"--methods: {exc}") from exc
    summary = {label: {**summarize_shares(r, masks, labels), "share_per_film": r["share"]} for label, r in raw.items()}
    return summary, maps


def _examples(
    films: list[np.ndarray], labels: np.ndarray, p_clean: np.ndarray, pairs: dict[str, np.ndarray],
    probes: list[Probe], predictor: Any, seed: int,
) -> list[tuple[str, np.ndarray, float]]:
    """One NORMAL film clean and probed, with P(PNEUMONIA), for the figure.

    The film is the confidently NORMAL one (clean P below half the threshold) that a laterality
    marker moved most, so that a flip in the figure is not a film already sitting on the threshold
    (a seeded choice when there is no such film). Shown: the marker and the other probe that
    moved it most, then a fixed set, so that a reader sees what the probes look like and what
    they can do.
    """
    from ..io import resize_square

    dp = pairs["p_probe"] - pairs["p_clean"]
    is_marker = np.array([probes[j].family == "marker" for j in pairs["probe"]], dtype=bool)
    confident = np.flatnonzero((labels == 0) & (p_clean < predictor.threshold / 2))
    if len(confident):
        i = int(confident[int(np.argmax([dp[(pairs["film"] == k) & is_marker].max(initial=-1.0) for k in confident]))])
    else:
        normals = np.flatnonzero(labels == 0) if (labels == 0).any() else np.arange(len(films))
        i = int(np.random.default_rng(seed).choice(normals))
    names = []
    for family_mask in (is_marker, ~is_marker):
        own = np.flatnonzero((pairs["film"] == i) & family_mask)
        if len(own):
            names.append(probes[int(pairs["probe"][own[np.argmax(np.abs(dp[own]))]])].name)
    names += [n for n in ("R sans 9% top-left", "L serif 12% top-right", "border 8% black", "border 8% median",
                          "text 'AP PORTABLE' top", "ruler right edge") if n not in names]
    chosen = [next(p for p in probes if p.name == n) for n in names[:7]]
    images = [films[i]] + [p.apply(films[i]) for p in chosen]
    probs = predictor.probabilities(np.stack([resize_square(x, predictor.size) for x in images]))
    return [(name, x, float(pr)) for name, x, pr in zip(["clean"] + [p.name for p in chosen], images, probs)]


def _write_films_csv(
    path: Path, records: list[Any], p_clean: np.ndarray, pairs: dict[str, np.ndarray], probes: list[Probe],
    threshold: float, lungs: list[Any], chosen: list[int], explanations: dict[str, Any],
) -> None:
    fam = np.array([probes[j].family for j in pairs["probe"]])
    flipped = (pairs["p_clean"] >= threshold) != (pairs["p_probe"] >= threshold)
    dp = pairs["p_probe"] - pairs["p_clean"]
    share_of = {label: dict(zip(chosen, e["share_per_film"])) for label, e in explanations.items()}
    header = ["file", "patient_id", "label", "p_clean", "predicted_clean"]
    for family in FAMILIES:
        header += [f"{family}_probes", f"{family}_flips", f"{family}_mean_dp", f"{family}_max_abs_dp"]
    header += ["lung_area", "lung_mask"] + [f"share_outside_{label}" for label in explanations]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i, r in enumerate(records):
            row: list[Any] = [r.path.name, r.patient_id, r.label, f"{p_clean[i]:.6f}", int(p_clean[i] >= threshold)]
            for family in FAMILIES:
                sel = (pairs["film"] == i) & (fam == family)
                row += [int(sel.sum()), int(flipped[sel].sum()), f"{dp[sel].mean():.6f}" if sel.any() else "",
                        f"{np.abs(dp[sel]).max():.6f}" if sel.any() else ""]
            row += [f"{lungs[i].area:.4f}", lungs[i].status]
            for label in explanations:
                s = share_of[label].get(i)
                row.append("" if s is None else f"{s:.4f}")
            w.writerow(row)


def _write_pairs_csv(
    path: Path, records: list[Any], pairs: dict[str, np.ndarray], probes: list[Probe], threshold: float
) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "family", "probe", "p_clean", "p_probe", "dp", "flipped"])
        for f, j, pc, pp in zip(pairs["film"], pairs["probe"], pairs["p_clean"], pairs["p_probe"]):
            w.writerow([records[f].path.name, records[f].label, probes[j].family, probes[j].name, f"{pc:.6f}",
                        f"{pp:.6f}", f"{pp - pc:.6f}", int((pc >= threshold) != (pp >= threshold))])
