"""Scores of a probe family: label flips, |Δp|, and specificity and sensitivity with and without the probe.

Everything is counted over (film, probe) pairs: each film is predicted once clean and once per
probe it received. A *flip* is a pair whose label at the threshold differs from the clean
film's (``p >= threshold`` is PNEUMONIA). Specificity and sensitivity "with the probe" are
those of the probed predictions over the pairs, each pair counting once; every film of a family
gets the same number of probes, so the clean figures over the pairs equal those over the films.

:func:`marker_flip_rate` is the cheap version for training loops and cross-validation: a fixed
set of eight markers on arrays already at the model's size.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .probes import Probe, assign, quick_marker_probes

#: ``uint8 (N, S, S) -> P(PNEUMONIA) (N,)``: the model as the audit sees it.
PredictFn = Callable[[np.ndarray], np.ndarray]


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _spec_sens(labels: np.ndarray, positive: np.ndarray) -> tuple[float | None, float | None]:
    neg, pos = labels == 0, labels == 1
    return _rate(int((~positive & neg).sum()), int(neg.sum())), _rate(int((positive & pos).sum()), int(pos.sum()))


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summarize(
    p_clean: np.ndarray, p_probe: np.ndarray, labels: np.ndarray, threshold: float, films: np.ndarray | None = None
) -> dict[str, Any]:
    """Scores of one set of (film, probe) pairs.

    Args:
        p_clean: P(PNEUMONIA) of each pair's clean film.
        p_probe: P(PNEUMONIA) of each pair's probed film.
        labels: 0 / 1 truth of each pair's film.
        threshold: the decision threshold.
        films: the film index of each pair, for the share of films with at least one flip.
            Default: every pair is its own film.

    Returns:
        ``n_pairs``, ``n_films``, ``flips``, ``flip_rate``, ``flips_to_pneumonia``,
        ``flips_to_normal``, ``films_with_flip_rate``, ``abs_dp`` (``median``, ``p90``, ``max``),
        ``mean_dp`` (signed: > 0 = the probe raises P(PNEUMONIA)), ``specificity`` and
        ``sensitivity`` (``clean``, ``probed``, ``delta`` = probed - clean). Rates with an empty
        denominator are None.
    """
    p_clean, p_probe = np.asarray(p_clean, np.float64), np.asarray(p_probe, np.float64)
    labels = np.asarray(labels, np.int64)
    if not p_clean.shape == p_probe.shape == labels.shape:
        raise ValueError(f"p_clean {p_clean.shape}, p_probe {p_probe.shape} and labels {labels.shape} differ in shape")
    films = np.arange(len(p_clean)) if films is None else np.asarray(films)
    before, after = p_clean >= threshold, p_probe >= threshold
    flipped = before != after
    dp = p_probe - p_clean
    n = len(dp)
    spec0, sens0 = _spec_sens(labels, before)
    spec1, sens1 = _spec_sens(labels, after)
    film_ids = np.unique(films)
    flipped_films = np.unique(films[flipped])
    return {
        "n_pairs": n,
        "n_films": int(len(film_ids)),
        "flips": int(flipped.sum()),
        "flip_rate": _rate(int(flipped.sum()), n),
        "flips_to_pneumonia": int((flipped & after).sum()),
        "flips_to_normal": int((flipped & ~after).sum()),
        "films_with_flip_rate": _rate(len(flipped_films), len(film_ids)),
        "abs_dp": {
            "median": float(np.median(np.abs(dp))) if n else None,
            "p90": float(np.percentile(np.abs(dp), 90)) if n else None,
            "max": float(np.abs(dp).max()) if n else None,
        },
        "mean_dp": float(dp.mean()) if n else None,
        "specificity": {"clean": spec0, "probed": spec1, "delta": _diff(spec1, spec0)},
        "sensitivity": {"clean": sens0, "probed": sens1, "delta": _diff(sens1, sens0)},
    }


def predict_probed(
    predict_fn: PredictFn,
    images: np.ndarray | Sequence[np.ndarray],
    probes: Sequence[Probe],
    plan: Sequence[Sequence[int]],
    size: int | None = None,
    chunk: int = 256,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Predict every film clean and with the probes ``plan[i]`` (indices into ``probes``) of film ``i``.

    Args:
        predict_fn: uint8 (N, S, S) -> P(PNEUMONIA) (N,).
        images: uint8 films: one (N, S, S) array, or a sequence of (H, W) films of any size.
        probes: the probe set.
        plan: per film, the probes it gets.
        size: resize each clean and probed film to ``size x size`` before ``predict_fn`` (as the
            model's preprocessing does); None: films are passed as they are (they must then
            share one shape).
        chunk: images per ``predict_fn`` call.
        progress: a progress bar over films.

    Returns:
        (p_clean per film, film index per pair, probe index per pair, p_probe per pair).
    """
    from tqdm.auto import tqdm

    from ..io import resize_square

    n = len(images)
    if len(plan) != n:
        raise ValueError(f"{n} images but a plan for {len(plan)}")
    prep = (lambda a: resize_square(a, size)) if size is not None else (lambda a: a)
    batch: list[np.ndarray] = []
    probs: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            probs.append(np.asarray(predict_fn(np.stack(batch)), dtype=np.float64).reshape(-1))
            batch.clear()

    for i in tqdm(range(n), desc="probing", unit="film", disable=not progress, leave=False):
        film = np.asarray(images[i], dtype=np.uint8)
        batch.append(prep(film))
        batch.extend(prep(probes[j].apply(film)) for j in plan[i])
        if len(batch) >= chunk:
            flush()
    flush()
    flat = np.concatenate(probs) if probs else np.zeros(0)
    p_clean, film_idx, probe_idx, p_probe = np.zeros(n), [], [], []
    k = 0
    for i in range(n):
        p_clean[i] = flat[k]
        k += 1
        for j in plan[i]:
            film_idx.append(i)
            probe_idx.append(int(j))
            p_probe.append(flat[k])
            k += 1
    return p_clean, np.array(film_idx, np.int64), np.array(probe_idx, np.int64), np.array(p_probe, np.float64)


def marker_probe(
    predict_fn: PredictFn,
    images: np.ndarray | Sequence[np.ndarray],
    labels: Sequence[int],
    threshold: float,
    seed: int = 0,
    per_film: int | None = None,
    size: int | None = None,
) -> dict[str, Any]:
    """The quick marker probe's full scores (:func:`summarize`) on ``images``.

    The probe set is fixed and small (:func:`~pneumolens.audit.probes.quick_marker_probes`: a
    white "R" or "L", DejaVu Sans Bold, 9 % of the image's height, in each of the four corners),
    so figures from different models and folds compare. Applied to whatever ``images`` are (at the
    model's size when they are the cached training arrays; the full audit applies its probes
    to the decoded film before the resize, which renders the letter a little sharper).
    """
    labels = np.asarray(labels, np.int64)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    probes = quick_marker_probes()
    plan = assign(len(images), len(probes), per_film, seed)
    p_clean, film, _, p_probe = predict_probed(predict_fn, images, probes, plan, size=size)
    return summarize(p_clean[film], p_probe, labels[film], threshold, films=film)


def marker_flip_rate(
    predict_fn: PredictFn,
    images: np.ndarray | Sequence[np.ndarray],
    labels: Sequence[int],
    threshold: float,
    seed: int = 0,
    per_film: int | None = None,
    size: int | None = None,
) -> float:
    """Share of (film, marker) pairs whose label flips when a laterality marker is pasted (0 when no image).

    The cheap shortcut measure for cross-validation and training loops: see :func:`marker_probe`
    for the probe set and the arguments (``per_film`` = 2 quarters the cost; all 8 by default).

    Example::

        rate = marker_flip_rate(predictor.probabilities, val_images, val_labels, predictor.threshold)
    """
    if len(images) == 0:
        return 0.0
    return float(marker_probe(predict_fn, images, labels, threshold, seed, per_film, size)["flip_rate"] or 0.0)
