"""Evaluate explanation methods on a set of images: what ``pneumolens explain-eval`` computes.

Per image and method: the map, its deletion, reverse-deletion and insertion curves beside a
random map's, and the time it took; then the agreement between methods and the cascading
model-parameter randomisation check (Adebayo et al. 2018): re-initialise the layers from the
top down, cumulatively, recompute the maps, and report the Spearman rank correlation with the
trained model's maps. A method that explains the model decorrelates; one that mostly shows the
image (edge detection) stays high. The measures themselves live in
:mod:`pneumolens.explain.faithfulness`.

:func:`evaluate_explanations` returns a JSON-friendly dict; the ``explain-eval`` command writes
it with :mod:`pneumolens.explain.eval_report`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .base import LogitFn, as_batch, model_device, model_scope
from .core import explain
from .faithfulness import (
    RANDOM_GRID,
    agreement,
    auc,
    available_stages,
    deletion_insertion,
    finite_or_none,
    nan_median,
    random_map,
    randomised_copy,
    spearman,
)
from .runner import MethodSpec

#: Builds ``(forward, grad_forward)`` for a model (see :func:`pneumolens.explain.runner.fast_forwards`).
ForwardFactory = Callable[[nn.Module], tuple[LogitFn | None, LogitFn | None]]


# --------------------------------------------------------------------------- randomisation


def randomisation_check(
    model: nn.Module,
    images: torch.Tensor,
    methods: Sequence[MethodSpec],
    reference: dict[str, np.ndarray],
    seed: int = 0,
    make_forward: ForwardFactory | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Cascading randomisation: Spearman(trained map, randomised-model map) per method and stage.

    Args:
        reference: label → maps (N, S, S) of the trained model for ``images``.
        make_forward: builds the fast ``(forward, grad_forward)`` for a randomised copy.

    Returns:
        ``{"stages": [...], "methods": {label: {"spearman": [median per stage], "spearman_abs": [...]}}}``.
    """
    stages = available_stages(model)
    out: dict[str, Any] = {"stages": [" + ".join(s) for s in stages], "n_images": int(images.shape[0]), "methods": {}}
    rhos = {m.label: ([], []) for m in methods}
    done: list[str] = []
    bar = tqdm(total=len(stages) * len(methods), desc="randomisation", unit="map", disable=not progress, leave=False)
    for k, stage in enumerate(stages):
        done += list(stage)
        rnd = randomised_copy(model, done, seed + 1 + k)
        fwd, gfwd = make_forward(rnd) if make_forward is not None else (None, None)
        for spec in methods:
            maps = np.concatenate([explain(rnd, images[i : i + 1], spec.name, seed=seed, forward=fwd, grad_forward=gfwd,
                                           **spec.params).maps for i in range(images.shape[0])])
            ref = reference[spec.label][: images.shape[0]]
            rhos[spec.label][0].append(nan_median([spearman(a, b) for a, b in zip(ref, maps)]))
            rhos[spec.label][1].append(nan_median([spearman(np.abs(a), np.abs(b)) for a, b in zip(ref, maps)]))
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
) -> dict[str, Any]:
    """Explain ``images`` with every method and measure the maps (see the module docstring).

    Args:
        model: the trained network.
        images: uint8 (N, S, S).
        methods: what to evaluate (a label may repeat a method with other settings, e.g. two Grad-CAM layers).
        labels, names: true labels and file names, for the per-image table.
        seed: seeds the methods, the tie-breaking and the random maps.
        steps: points per deletion / insertion curve minus one. Default: 50.
        temperature: the checkpoint's logit temperature.
        forward: fast no-gradient logits for the curves and the perturbation methods. Default: the model.
        grad_forward: fast differentiable logits for ``ig`` and ``shap``. Default: the model.
        make_forward: builds ``(forward, grad_forward)`` for a randomised copy (None: the copy itself).
        sanity_n: images used for the randomisation check (it costs stages x methods maps). 0 skips it.
        maps_out: if given, filled with label → maps (N, S, S) (e.g. to draw example panels).
        substrate: what deleted pixels become, ``black`` (RISE) or ``blur``.

    Returns:
        A JSON-friendly dict: ``methods`` (AUCs, curves, time), ``random``, ``agreement``,
        ``randomisation``, ``per_image``.
    """
    x = as_batch(images).to(model_device(model))
    n = x.shape[0]
    logits_fn: LogitFn = forward or model
    maps: dict[str, list[np.ndarray]] = {m.label: [] for m in methods}
    times: dict[str, list[float]] = {m.label: [] for m in methods}
    params: dict[str, dict] = {}
    dele: dict[str, list[np.ndarray]] = {m.label: [] for m in [*methods, MethodSpec("random", "random")]}
    ins: dict[str, list[np.ndarray]] = {k: [] for k in dele}
    rev: dict[str, list[np.ndarray]] = {k: [] for k in dele}
    probs = []
    bar = tqdm(total=n, desc="explain-eval", unit="img", disable=not progress)
    with model_scope(model):
        for i in range(n):
            xi = x[i : i + 1]
            for spec in methods:
                att = explain(model, xi, spec.name, seed=seed, forward=forward, grad_forward=grad_forward,
                              **spec.params)
                maps[spec.label].append(att.maps[0])
                times[spec.label].append(att.elapsed_s)
                params.setdefault(spec.label, att.params)
            candidates = [maps[m.label][-1] for m in methods] + [random_map(x.shape[-1], seed + i)]
            d, r, s = deletion_insertion(logits_fn, xi, candidates, steps, temperature, seed + i, substrate=substrate)
            for k, label in enumerate(dele):
                dele[label].append(d[k])
                rev[label].append(r[k])
                ins[label].append(s[k])
            probs.append(float(d[0, 0]) if len(candidates) else float("nan"))
            bar.update()
    bar.close()
    result: dict[str, Any] = {
        "n_images": n,
        "seed": seed,
        "steps": steps,
        "temperature": temperature,
        "protocol": {
            "deletion": ("pixels set to 0 (black)" if substrate == "black" else
                         f"pixels replaced by the image blurred with sigma {x.shape[-1] / 16:g} px")
                        + " in map order, highest first",
            "reverse deletion": "the same, in the exact reverse order (least relevant first); gap = reverse - deletion",
            "insertion": f"pixels copied into the image blurred with sigma {x.shape[-1] / 16:g} px, highest first",
            "score": "sigmoid(logit / temperature): the pneumonia probability",
            "random": f"uniform noise on a {RANDOM_GRID}x{RANDOM_GRID} grid, bilinear upsampling",
            "ties": "seeded random order",
        },
        "methods": {},
    }
    for label in dele:
        da = [auc(c) for c in dele[label]]
        ra = [auc(c) for c in rev[label]]
        ia = [auc(c) for c in ins[label]]
        entry = {
            "deletion_auc": _stats(da),
            "reverse_deletion_auc": _stats(ra),
            "deletion_gap": _stats([b - a for a, b in zip(da, ra)]),
            "insertion_auc": _stats(ia),
            "deletion_curve": [finite_or_none(v) for v in np.mean(dele[label], axis=0)],
            "insertion_curve": [finite_or_none(v) for v in np.mean(ins[label], axis=0)],
        }
        if label in times:
            entry["median_time_s"] = finite_or_none(float(np.median(times[label])))
            entry["params"] = {k: v for k, v in params[label].items()
                               if k not in ("convergence_delta", "n_superpixels")}
            result["methods"][label] = entry
        else:
            result["random"] = entry
    if maps_out is not None:
        maps_out.update({k: np.stack(v) for k, v in maps.items()})
    result["agreement"] = agreement({k: np.stack(v) for k, v in maps.items()}) if len(methods) > 1 else None
    k = min(int(sanity_n), n)
    result["randomisation"] = (
        randomisation_check(model, x[:k], methods, {k_: np.stack(v) for k_, v in maps.items()}, seed, make_forward,
                            progress)
        if k > 0 else None
    )
    result["per_image"] = [
        {
            "file": names[i] if names is not None else str(i),
            "label": int(labels[i]) if labels is not None else None,
            "probability": finite_or_none(probs[i]),
            "deletion_auc": {lab: finite_or_none(auc(dele[lab][i])) for lab in dele},
            "reverse_deletion_auc": {lab: finite_or_none(auc(rev[lab][i])) for lab in rev},
            "insertion_auc": {lab: finite_or_none(auc(ins[lab][i])) for lab in ins},
        }
        for i in range(n)
    ]
    return result


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": finite_or_none(arr.mean()), "sd": finite_or_none(arr.std(ddof=1)) if arr.size > 1 else None,
            "median": finite_or_none(np.median(arr))}
