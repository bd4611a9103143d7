"""How faithful is an explanation? Measures, not pictures.

* **Deletion / insertion** (Petsiuk et al. 2018, RISE, https://arxiv.org/abs/1806.07421): remove
  pixels from the image in the map's order (most pneumonia evidence first) and follow the
  pneumonia probability: a faithful map makes it fall fast (low deletion AUC); insert pixels
  into a blurred canvas in the same order: it should rise fast (high insertion AUC). Removed
  pixels become black (deletion) and the canvas is the image blurred with sigma S/16
  (insertion), as in RISE. Ties in a map are broken by a seeded random order. Beside every
  method: a random map (uniform noise on an 16x16 grid, upsampled: blobs the size of
  superpixels) as the baseline to beat.
* **Model-parameter randomisation** (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
  https://arxiv.org/abs/1810.03292): re-initialise the layers from the top (``head.out``
  first) down, cumulatively, recompute the maps, and report the Spearman rank correlation
  with the trained model's maps. A method that explains the model decorrelates; one that
  mostly shows the image (edge detection) stays high.
* **Agreement between methods**: Spearman rank correlation of their maps, per image.
* **Time**: median seconds per image.

:func:`evaluate_explanations` runs all of them and returns a JSON-friendly dict; the
``explain-eval`` command writes it with :mod:`pneumolens.explain.report`.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn
from tqdm.auto import tqdm

from .base import LogitFn, as_batch, blur, model_device, model_scope, seeded
from .core import explain
from .runner import MethodSpec

#: Builds ``(forward, grad_forward)`` for a model (see :func:`pneumolens.explain.runner.fast_forwards`).
ForwardFactory = Callable[[nn.Module], tuple[LogitFn | None, LogitFn | None]]

#: Cascading randomisation, top layer first (Adebayo et al.). Each stage adds its modules to
#: the re-initialised set; names missing from a model are skipped.
RANDOMISATION_STAGES: tuple[tuple[str, ...], ...] = (
    ("head.out",),
    ("head.dense2",),
    ("head.dense1",),
    ("lstm2", "bn2"),
    ("lstm1", "bn1"),
    ("features.block3",),
    ("features.block2",),
    ("features.block1",),
)

RANDOM_GRID = 16


# --------------------------------------------------------------------------- deletion / insertion


def pixel_order(amap: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat pixel indices from the highest value to the lowest; ties in a seeded random order."""
    flat = np.asarray(amap, dtype=np.float64).ravel()
    jitter = np.random.default_rng(seed).random(flat.size)
    return np.lexsort((jitter, -flat))


def curve_inputs(start: torch.Tensor, end: torch.Tensor, order: np.ndarray, steps: int) -> torch.Tensor:
    """Images (steps+1, 1, S, S): step k shows ``end`` on the first k/steps of ``order``, ``start`` elsewhere."""
    n = start.numel()
    rank = torch.empty(n, dtype=torch.long)
    rank[torch.as_tensor(np.ascontiguousarray(order, dtype=np.int64))] = torch.arange(n)
    counts = torch.as_tensor(np.round(np.linspace(0, n, steps + 1)).astype(np.int64))
    take_end = rank[None, :] < counts[:, None]  # (steps+1, n)
    imgs = torch.where(take_end.to(start.device), end.reshape(1, n), start.reshape(1, n))
    return imgs.reshape(steps + 1, 1, *start.shape[-2:])


def _probabilities(forward: LogitFn, x: torch.Tensor, temperature: float, batch: int = 128) -> np.ndarray:
    with torch.inference_mode():
        out = [forward(x[i : i + batch]).float().reshape(-1) for i in range(0, x.shape[0], batch)]
    return torch.sigmoid(torch.cat(out) / temperature).cpu().numpy()


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at evenly spaced fractions 0..1 (trapezoid rule)."""
    c = np.asarray(curve, dtype=np.float64)
    return float(((c[1:] + c[:-1]) / 2).mean()) if c.size > 1 else float(c.mean())


def deletion_insertion(
    forward: LogitFn,
    x: torch.Tensor,
    maps: Sequence[np.ndarray],
    steps: int = 50,
    temperature: float = 1.0,
    seed: int = 0,
    blur_sigma: float | None = None,
    substrate: str = "black",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deletion (most relevant first), reverse deletion (least relevant first) and insertion curves.

    Args:
        forward: logits of a float (B, 1, S, S) batch.
        x: the image, float (1, 1, S, S).
        maps: maps (S, S) to test (e.g. one per method plus a random one).
        steps: the curve has ``steps + 1`` points (0 %, 1/steps, ..., 100 % of pixels). Default: 50.
        temperature: logit temperature of the checkpoint (probabilities as the predictor reports them).
        blur_sigma: blur of the insertion canvas (and of the ``blur`` substrate). Default: S / 16.
        substrate: what deleted pixels become: ``black`` (RISE) or ``blur``. Default: black.

    Returns:
        (deletion, reverse deletion, insertion) curves, each float (len(maps), steps + 1) of probabilities.
        Reverse deletion uses the exact reverse of the deletion order: both orders create the same
        kind of artefacts, so their gap measures the ranking itself (Rong et al. 2022, ROAD).
    """
    if substrate not in ("black", "blur"):
        raise ValueError(f"substrate must be 'black' or 'blur', got {substrate!r}")
    sigma = blur_sigma if blur_sigma is not None else x.shape[-1] / 16
    canvas = blur(x, sigma)
    removed = torch.zeros_like(x) if substrate == "black" else canvas
    batches = []
    for amap in maps:
        order = pixel_order(amap, seed)
        batches.append(curve_inputs(x, removed, order, steps))  # deletion, most relevant first
        batches.append(curve_inputs(x, removed, order[::-1], steps))  # deletion, least relevant first
        batches.append(curve_inputs(canvas, x, order, steps))  # insertion: blurred -> x
    probs = _probabilities(forward, torch.cat(batches), temperature).reshape(len(maps), 3, steps + 1)
    return probs[:, 0], probs[:, 1], probs[:, 2]


def random_map(size: int, seed: int, grid: int = RANDOM_GRID) -> np.ndarray:
    """Uniform noise on a ``grid x grid`` lattice, upsampled bilinearly to ``size``: the baseline map."""
    g = torch.as_tensor(np.random.default_rng(seed).random((1, 1, grid, grid)), dtype=torch.float32)
    return torch.nn.functional.interpolate(g, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


# --------------------------------------------------------------------------- rank correlations


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (average ranks for ties); NaN if either is constant."""
    ra = rankdata(np.asarray(a, dtype=np.float64).ravel())
    rb = rankdata(np.asarray(b, dtype=np.float64).ravel())
    ra -= ra.mean()
    rb -= rb.mean()
    den = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def agreement(maps_by_method: dict[str, np.ndarray]) -> dict[str, Any]:
    """Median (over images) Spearman correlation for every pair of methods: a symmetric matrix."""
    labels = list(maps_by_method)
    mat = np.eye(len(labels))
    for i, a in enumerate(labels):
        for j in range(i + 1, len(labels)):
            b = labels[j]
            rhos = [spearman(x, y) for x, y in zip(maps_by_method[a], maps_by_method[b])]
            mat[i, j] = mat[j, i] = _nanmedian(rhos)
    return {"methods": labels, "spearman": [[_num(v) for v in row] for row in mat]}


# --------------------------------------------------------------------------- randomisation


def randomised_copy(model: nn.Module, modules: Sequence[str], seed: int) -> nn.Module:
    """A deep copy of ``model`` with the named submodules re-initialised (their own ``reset_parameters``)."""
    clone = copy.deepcopy(model)
    with seeded(seed):
        for name in modules:
            for sub in clone.get_submodule(name).modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
    return clone.eval()


def available_stages(model: nn.Module, stages: Sequence[Sequence[str]] = RANDOMISATION_STAGES) -> list[tuple[str, ...]]:
    """The stages whose modules all exist in ``model``."""
    out = []
    for stage in stages:
        try:
            for name in stage:
                model.get_submodule(name)
        except AttributeError:
            continue
        out.append(tuple(stage))
    return out


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
            rhos[spec.label][0].append(_nanmedian([spearman(a, b) for a, b in zip(ref, maps)]))
            rhos[spec.label][1].append(_nanmedian([spearman(np.abs(a), np.abs(b)) for a, b in zip(ref, maps)]))
            bar.update()
    bar.close()
    for label, (signed, absolute) in rhos.items():
        out["methods"][label] = {"spearman": [_num(v) for v in signed], "spearman_abs": [_num(v) for v in absolute]}
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
                         f"pixels replaced by the image blurred with sigma {x.shape[-1] / 16:g} px") + " in map order, highest first",
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
            "deletion_curve": [_num(v) for v in np.mean(dele[label], axis=0)],
            "insertion_curve": [_num(v) for v in np.mean(ins[label], axis=0)],
        }
        if label in times:
            entry["median_time_s"] = _num(float(np.median(times[label])))
            entry["params"] = {k: v for k, v in params[label].items() if k not in ("convergence_delta", "n_superpixels")}
            result["methods"][label] = entry
        else:
            result["random"] = entry
    if maps_out is not None:
        maps_out.update({k: np.stack(v) for k, v in maps.items()})
    result["agreement"] = agreement({k: np.stack(v) for k, v in maps.items()}) if len(methods) > 1 else None
    k = min(int(sanity_n), n)
    result["randomisation"] = (
        randomisation_check(model, x[:k], methods, {k_: np.stack(v) for k_, v in maps.items()}, seed, make_forward, progress)
        if k > 0 else None
    )
    result["per_image"] = [
        {
            "file": names[i] if names is not None else str(i),
            "label": int(labels[i]) if labels is not None else None,
            "probability": _num(probs[i]),
            "deletion_auc": {lab: _num(auc(dele[lab][i])) for lab in dele},
            "reverse_deletion_auc": {lab: _num(auc(rev[lab][i])) for lab in rev},
            "insertion_auc": {lab: _num(auc(ins[lab][i])) for lab in ins},
        }
        for i in range(n)
    ]
    return result


def _nanmedian(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmedian(arr)) if np.isfinite(arr).any() else float("nan")


def _num(v: float) -> float | None:
    """JSON has no NaN: None instead."""
    return None if v is None or not np.isfinite(v) else round(float(v), 6)


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": _num(arr.mean()), "sd": _num(arr.std(ddof=1)) if arr.size > 1 else None, "median": _num(np.median(arr))}
