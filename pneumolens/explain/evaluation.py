"""Evaluate explanation methods on a set of images: what ``pneumolens explain-eval`` computes.

Per image and method: the map, its deletion, reverse-deletion and insertion curves beside a
random map's, and the time it took; then the agreement between methods and the cascading
model-parameter randomisation check (Adebayo et al. 2018): re-initialise the layers from the
top down, cumulatively, recompute the maps, and report the Spearman rank correlation with the
trained model's maps. A method that explains the model decorrelates; one that mostly shows the
image (edge detection) stays high. The measures themselves live in
:mod:`pneumolens.explain.faithfulness`.

Given a :class:`~pneumolens.explain.partial.PartialResults`, every finished image and every
finished (stage, method) of the randomisation check is written as it completes, and what an
earlier run with the same settings finished is read back instead of redone: an interrupted run
keeps its work, and the final numbers are the same as an uninterrupted run's.

:func:`evaluate_explanations` returns a JSON-friendly dict; the ``explain-eval`` command writes
it with :mod:`pneumolens.explain.eval_report`.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..jsonable import jsonable
from .base import LogitFn, as_batch, model_device, model_scope
from .core import explain
from .faithfulness import (
    RANDOM_GRID,
    agreement,
    auc,
    available_stages,
    deletion_insertion,
    finite_or_none,
    insertion_start_for,
    nan_median,
    normal_references,
    random_map,
    randomised_copy,
    spearman,
)
from .partial import PartialResults, roundtrip
from .runner import MAX_PARAM_ARRAY, MethodSpec

log = logging.getLogger(__name__)

#: Builds ``(forward, grad_forward)`` for a model (see :func:`pneumolens.explain.runner.fast_forwards`).
ForwardFactory = Callable[[nn.Module], tuple[LogitFn | None, LogitFn | None]]

#: Settings an attribution reports per image that do not describe the method (left out of the report).
PER_IMAGE_PARAMS = ("convergence_delta", "n_superpixels")


def _floats(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


# --------------------------------------------------------------------------- randomisation


def randomisation_check(
    model: nn.Module,
    images: torch.Tensor,
    methods: Sequence[MethodSpec],
    reference: dict[str, np.ndarray],
    seed: int = 0,
    make_forward: ForwardFactory | None = None,
    progress: bool = True,
    partial: PartialResults | None = None,
) -> dict[str, Any]:
    """Cascading randomisation: Spearman(trained map, randomised-model map) per method and stage.

    Args:
        reference: label → maps (N, S, S) of the trained model for ``images``.
        make_forward: builds the fast ``(forward, grad_forward)`` for a randomised copy.
        partial: where finished (stage, method) pairs are stored and read back from.

    Returns:
        ``{"stages": [...], "methods": {label: {"spearman": [median per stage], "spearman_abs": [...]}}}``.
    """
    stages = available_stages(model)
    out: dict[str, Any] = {"stages": [" + ".join(s) for s in stages], "n_images": int(images.shape[0]), "methods": {}}
    rhos: dict[str, tuple[list[float], list[float]]] = {m.label: ([], []) for m in methods}
    done: list[str] = []
    total = len(stages) * len(methods)
    bar = tqdm(total=total, desc="randomisation check", unit="map set", disable=not progress)
    for k, stage in enumerate(stages):
        done += list(stage)
        found = {m.label: partial.randomisation(k, m.label) if partial is not None else None for m in methods}
        rnd, fwd, gfwd = None, None, None
        if any(v is None for v in found.values()):
            rnd = randomised_copy(model, done, seed + 1 + k)
            fwd, gfwd = make_forward(rnd) if make_forward is not None else (None, None)
        for spec in methods:
            entry = found[spec.label]
            if entry is None:
                bar.set_postfix_str(f"{' + '.join(stage)}: {spec.label}")
                maps = np.concatenate([explain(rnd, images[i : i + 1], spec.name, seed=seed, forward=fwd,
                                               grad_forward=gfwd, **spec.params).maps for i in range(images.shape[0])])
                ref = reference[spec.label][: images.shape[0]]
                entry = {"spearman": [spearman(a, b) for a, b in zip(ref, maps)],
                         "spearman_abs": [spearman(np.abs(a), np.abs(b)) for a, b in zip(ref, maps)]}
                entry = partial.add_randomisation(k, spec.label, entry) if partial is not None else roundtrip(entry)
            rhos[spec.label][0].append(nan_median(_floats(entry["spearman"])))
            rhos[spec.label][1].append(nan_median(_floats(entry["spearman_abs"])))
            bar.update()
    bar.close()
    for label, (signed, absolute) in rhos.items():
        out["methods"][label] = {"spearman": [finite_or_none(v) for v in signed],
                                 "spearman_abs": [finite_or_none(v) for v in absolute]}
    return out


# --------------------------------------------------------------------------- everything together


def evaluate_explanations(
    model: nn.Module,
    images: np.ndarray,
    methods: Sequence[MethodSpec],
    labels: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    steps: int = 50,
    temperature: float = 1.0,
    forward: LogitFn | None = None,
    grad_forward: LogitFn | None = None,
    make_forward: ForwardFactory | None = None,
    sanity_n: int = 8,
    progress: bool = True,
    maps_out: dict[str, np.ndarray] | None = None,
    substrate: str = "black",
    insertion_films: np.ndarray | None = None,
    threshold: float = 0.5,
    partial: PartialResults | None = None,
    bias: float = 0.0,
) -> dict[str, Any]:
    """Explain ``images`` with every method and measure the maps (see the module docstring).

    Args:
        model: the trained network.
        images: uint8 (N, S, S).
        methods: what to evaluate (a label may repeat a method with other settings, e.g. two Grad-CAM layers).
        labels, names: true labels and file names, for the per-image table.
        seed: seeds the methods, the tie-breaking, the random maps and the insertion start films.
        steps: points per deletion / insertion curve minus one. Default: 50.
        temperature, bias: the checkpoint's calibration, ``sigmoid(logit / temperature + bias)``.
        forward: fast no-gradient logits for the curves and the perturbation methods. Default: the model.
        grad_forward: fast differentiable logits for ``ig`` and ``shap``. Default: the model.
        make_forward: builds ``(forward, grad_forward)`` for a randomised copy (None: the copy itself).
        sanity_n: images used for the randomisation check (it costs stages x methods maps). 0 skips it.
        maps_out: if given, filled with label → maps (N, S, S) (e.g. to draw example panels).
        substrate: what deleted pixels become, ``black`` (RISE) or ``blur``.
        insertion_films: candidate start images for insertion, uint8 (K, S, S), e.g. NORMAL
            training films; those the model calls normal (below ``threshold``) are used, one
            drawn per image (:func:`~pneumolens.explain.faithfulness.normal_references`). None, or
            none called normal: insertion starts from the blurred image (RISE), and the report says
            what the model calls that.
        threshold: the model's decision threshold (which films it calls normal; the examples' labels).
        partial: stores each finished image and randomisation step, and gives back what an earlier
            run with the same settings finished (:class:`~pneumolens.explain.partial.PartialResults`).

    Returns:
        A JSON-friendly dict: ``methods`` (AUCs, curves, time), ``random``, ``agreement``,
        ``randomisation``, ``per_image``, ``insertion_start``.
    """
    x = as_batch(images).to(model_device(model))
    n = x.shape[0]
    logits_fn: LogitFn = forward or model
    refs = None
    if insertion_films is not None and len(insertion_films):
        refs, _ = normal_references(logits_fn, as_batch(insertion_films).to(x.device), temperature, threshold, bias)
        if refs.shape[0] == 0:
            log.warning("explain-eval: the model calls none of the %d insertion start films normal: "
                        "insertion starts from the blurred image", len(insertion_films))
            refs = None
    labels_all = [*(m.label for m in methods), "random"]
    records: list[dict[str, Any]] = []
    maps: dict[str, list[np.ndarray]] = {m.label: [] for m in methods}
    bar = tqdm(total=n, desc="explain-eval", unit="img", disable=not progress)
    with model_scope(model):
        for i in range(n):
            got = partial.image(i) if partial is not None else None
            if got is None:
                record, image_maps = _one_image(
                    model, x[i : i + 1], i, methods, seed, steps, (temperature, bias), substrate, forward,
                    grad_forward, logits_fn, refs, bar)
                record.update(file=names[i] if names is not None else str(i),
                              label=int(labels[i]) if labels is not None else None)
                got = (partial.add_image(i, record, image_maps) if partial is not None
                       else (roundtrip(record), image_maps))
            records.append(got[0])
            for label, so_far in maps.items():
                so_far.append(got[1][label])
            bar.update()
    bar.close()
    curves = {kind: {label: np.asarray([r["curves"][label][kind] for r in records], dtype=np.float32)
                     for label in labels_all}
              for kind in ("deletion", "reverse_deletion", "insertion")}
    start_p = _floats([r["insertion_start_probability"] for r in records])
    result: dict[str, Any] = {
        "n_images": n,
        "seed": seed,
        "steps": steps,
        "temperature": temperature,
        "bias": bias,
        "threshold": threshold,
        "insertion_start": {
            "kind": "normal training film" if refs is not None else "blurred image",
            "candidates": int(refs.shape[0]) if refs is not None else 0,
            "mean_probability": finite_or_none(float(np.nanmean(start_p))) if n else None,
            "called_normal": bool(np.nanmean(start_p) < threshold) if n else None,
        },
        "protocol": {
            "deletion": ("pixels set to 0 (black)" if substrate == "black" else
                         f"pixels replaced by the image blurred with sigma {x.shape[-1] / 16:g} px")
                        + " in map order, highest first",
            "reverse deletion": "the same, in the exact reverse order (least relevant first); gap = reverse - deletion",
            "insertion": _insertion_protocol(refs, x.shape[-1], float(np.nanmean(start_p)) if n else float("nan"),
                                             threshold),
            "score": "sigmoid(logit / temperature + bias): the pneumonia probability",
            "random": f"uniform noise on a {RANDOM_GRID}x{RANDOM_GRID} grid, bilinear upsampling",
            "ties": "seeded random order",
        },
        "methods": {},
    }
    for label in labels_all:
        dele, rev, ins = (curves[k][label] for k in ("deletion", "reverse_deletion", "insertion"))
        da, ra, ia = ([auc(c) for c in cs] for cs in (dele, rev, ins))
        entry = {
            "deletion_auc": _stats(da),
            "reverse_deletion_auc": _stats(ra),
            "deletion_gap": _stats([b - a for a, b in zip(da, ra)]),
            "insertion_auc": _stats(ia),
            "deletion_curve": [finite_or_none(v) for v in np.mean(dele, axis=0)],
            "reverse_deletion_curve": [finite_or_none(v) for v in np.mean(rev, axis=0)],
            "insertion_curve": [finite_or_none(v) for v in np.mean(ins, axis=0)],
        }
        if label == "random":
            result["random"] = entry
            continue
        entry["median_time_s"] = finite_or_none(float(np.median([r["times_s"][label] for r in records])))
        entry["params"] = {k: v for k, v in records[0]["params"][label].items() if k not in PER_IMAGE_PARAMS}
        result["methods"][label] = entry
    stacked = {k: np.stack(v) for k, v in maps.items()}
    if maps_out is not None:
        maps_out.update(stacked)
    result["agreement"] = agreement(stacked) if len(methods) > 1 else None
    k = min(int(sanity_n), n)
    result["randomisation"] = (
        randomisation_check(model, x[:k], methods, stacked, seed, make_forward, progress, partial) if k > 0 else None
    )
    result["per_image"] = [
        {
            "file": r["file"],
            "label": r["label"],
            "probability": finite_or_none(r["probability"]),
            "insertion_start_probability": finite_or_none(r["insertion_start_probability"]),
            **{f"{kind}_auc": {lab: finite_or_none(auc(curves[kind][lab][i])) for lab in labels_all}
               for kind in ("deletion", "reverse_deletion", "insertion")},
        }
        for i, r in enumerate(records)
    ]
    return result


def _one_image(
    model: nn.Module, xi: torch.Tensor, i: int, methods: Sequence[MethodSpec], seed: int, steps: int,
    calibration: tuple[float, float], substrate: str, forward: LogitFn | None, grad_forward: LogitFn | None,
    logits_fn: LogitFn,
    refs: torch.Tensor | None, bar: Any,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Explain image ``i`` with every method and measure its curves: its record and its maps."""
    image_maps: dict[str, np.ndarray] = {}
    times: dict[str, float] = {}
    params: dict[str, Any] = {}
    for spec in methods:
        bar.set_postfix_str(spec.label)
        att = explain(model, xi, spec.name, seed=seed, forward=forward, grad_forward=grad_forward, **spec.params)
        image_maps[spec.label] = att.maps[0]
        times[spec.label] = float(att.elapsed_s)
        params[spec.label] = jsonable(att.params, max_array=MAX_PARAM_ARRAY)
    bar.set_postfix_str("curves")
    start = refs[insertion_start_for(i, seed, refs.shape[0])][None] if refs is not None else None
    candidates = [image_maps[m.label] for m in methods] + [random_map(xi.shape[-1], seed + i)]
    temperature, bias = calibration
    d, r, s = deletion_insertion(logits_fn, xi, candidates, steps, temperature, seed + i, substrate=substrate,
                                 insertion_start=start, bias=bias)
    labels = [*(m.label for m in methods), "random"]
    record = {
        "probability": float(d[0, 0]),
        "insertion_start_probability": float(s[0, 0]),
        "times_s": times,
        "params": params,
        "curves": {label: {"deletion": d[k].tolist(), "reverse_deletion": r[k].tolist(), "insertion": s[k].tolist()}
                   for k, label in enumerate(labels)},
    }
    return record, image_maps


def _insertion_protocol(refs: torch.Tensor | None, size: int, start_p: float, threshold: float) -> str:
    """How insertion was done, and what the model calls its start image."""
    if refs is not None:
        return (f"pixels of the image copied, highest first, into a NORMAL training film the model calls normal "
                f"(one of {refs.shape[0]}, drawn per image); mean p(pneumonia) at the start {start_p:.3f}")
    verdict = "calls it normal" if start_p < threshold else "calls it PNEUMONIA, so read each curve relative to its start"
    return (f"pixels copied, highest first, into the image blurred with sigma {size / 16:g} px; mean p(pneumonia) at "
            f"the start {start_p:.3f} (the model {verdict})")


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": finite_or_none(arr.mean()), "sd": finite_or_none(arr.std(ddof=1)) if arr.size > 1 else None,
            "median": finite_or_none(np.median(arr))}
