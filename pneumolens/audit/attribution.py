"""Where explanations put their evidence: the share of positive attribution outside the lung fields.

For each film of a subset and each explanation method (:func:`pneumolens.explain.explain`), the
map's positive part (evidence for pneumonia) is split by the film's lung mask
(:func:`pneumolens.audit.lungs.lung_mask`). A model reading the lungs puts most of it inside; a
model reading markers, borders and the body's edge puts it outside. The chance level, a map
spread evenly over the film, is the share of the film outside the mask.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..data import CLASS_NAMES
from .lungs import outside_share, peak_outside


def explain_shares(
    model: Any,
    images: np.ndarray,
    masks: np.ndarray,
    specs: Sequence[Any],
    seed: int = 0,
    forward: Any = None,
    grad_forward: Any = None,
    progress: bool = True,
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Explain each image with each method and measure the share of positive attribution outside its mask.

    Args:
        model: the network explained (a ``CnnLstm`` or any module ``explain`` accepts).
        images: uint8 (N, S, S) at the model's input size.
        masks: bool (N, S, S) lung masks of those images.
        specs: :class:`~pneumolens.explain.runner.MethodSpec` per method (label, name, params).
        seed: seeds every method.
        forward, grad_forward: fast logit functions (:func:`pneumolens.explain.runner.fast_forwards`).
        progress: show a progress bar over films x methods.

    Returns:
        (per method label: ``share`` and ``peak_outside`` lists (None where the map has no
        positive value) and ``seconds`` in total; per method label: the maps, float32 (N, S, S)).
    """
    from ..explain import explain

    images = np.asarray(images)
    masks = np.asarray(masks, dtype=bool)
    if images.shape != masks.shape:
        raise ValueError(f"images {images.shape} and masks {masks.shape} differ in shape")
    results: dict[str, dict[str, Any]] = {}
    maps: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(images) * len(specs), desc="explaining", unit="map", disable=not progress, leave=False)
    for spec in specs:
        out = np.zeros(images.shape, np.float32)
        shares: list[float | None] = []
        peaks: list[bool | None] = []
        t0 = time.perf_counter()
        for i in range(len(images)):
            att = explain(model, images[i : i + 1], spec.name, seed=seed, forward=forward, grad_forward=grad_forward,
                          **dict(spec.params))
            out[i] = att.maps[0]
            shares.append(outside_share(out[i], masks[i]))
            peaks.append(peak_outside(out[i], masks[i]))
            bar.update()
        results[spec.label] = {"share": shares, "peak_outside": peaks, "seconds": time.perf_counter() - t0}
        maps[spec.label] = out
    bar.close()
    return results, maps


def summarize_shares(result: dict[str, Any], masks: np.ndarray, labels: Sequence[int] | None = None) -> dict[str, Any]:
    """Median, mean, 90th percentile of the share outside; the rate of peaks outside; the chance level.

    ``uniform_share``: the mean share of the films outside their masks, what a map spread evenly
    over each film would score. ``n_valid``: films whose map had a positive value. With the films'
    true ``labels`` (0 NORMAL, 1 PNEUMONIA), also ``by_class``: films, valid films and median share
    per class — on a NORMAL film "evidence for pneumonia" is what is left over on a film the model
    should call normal, on a PNEUMONIA film it is what the answer rests on, so the two read apart.
    """
    shares = np.array([s for s in result["share"] if s is not None], dtype=np.float64)
    peaks = [p for p in result["peak_outside"] if p is not None]
    n = len(result["share"])
    area = np.asarray(masks, dtype=bool).reshape(len(masks), -1).mean(axis=1) if len(masks) else np.zeros(0)
    out: dict[str, Any] = {
        "n_films": n,
        "n_valid": int(len(shares)),
        "share_outside": {
            "median": float(np.median(shares)) if len(shares) else None,
            "mean": float(shares.mean()) if len(shares) else None,
            "p90": float(np.percentile(shares, 90)) if len(shares) else None,
        },
        "peak_outside_rate": (sum(peaks) / len(peaks)) if peaks else None,
        "uniform_share": float((1.0 - area).mean()) if len(area) else None,
        "seconds_per_film": result["seconds"] / n if n else None,
    }
    if labels is not None:
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} films")
        out["by_class"] = {}
        for cls, name in enumerate(CLASS_NAMES):
            mine = [s for s, y in zip(result["share"], labels) if int(y) == cls]
            valid = [s for s in mine if s is not None]
            out["by_class"][name] = {"n_films": len(mine), "n_valid": len(valid),
                                     "median": float(np.median(valid)) if valid else None}
    return out
