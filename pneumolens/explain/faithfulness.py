"""Faithfulness measures of attribution maps: the primitives, without the evaluation pipeline.

* **Deletion / insertion** (Petsiuk et al. 2018, RISE, https://arxiv.org/abs/1806.07421): remove
  pixels from the image in the map's order (most pneumonia evidence first) and follow the
  pneumonia probability: a faithful map makes it fall fast (low deletion AUC); insert pixels
  into a start image in the same order: it should rise fast (high insertion AUC). Removed
  pixels become black (deletion), as in RISE. RISE's insertion starts from the image blurred
  with sigma S/16; but a start image only works if the model calls it normal, and a blurred
  film (like a black or a mean-grey one) is called pneumonia by the shipped model, so every
  curve would start at the top (the explain-eval report gives the start's probability). :func:`normal_references` picks
  training films the model does call normal to start from instead. Ties in a map are broken
  by a seeded random order. Beside every method: a random map (uniform noise on an 16x16
  grid, upsampled: blobs the size of superpixels) as the baseline to beat.
* **Model-parameter randomisation** (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
  https://arxiv.org/abs/1810.03292): the stages of re-initialised layers, from the top
  (``head.out`` first) down, and the randomised copies of a model.
* **Agreement between methods**: Spearman rank correlation of their maps, per image.

:mod:`pneumolens.explain.evaluation` runs them over a set of images and methods.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from .base import LogitFn, blur, seeded

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


def _probabilities(
    forward: LogitFn, x: torch.Tensor, temperature: float, bias: float = 0.0, batch: int = 128
) -> np.ndarray:
    with torch.inference_mode():
        out = [forward(x[i : i + batch]).float().reshape(-1) for i in range(0, x.shape[0], batch)]
    return torch.sigmoid(torch.cat(out) / temperature + bias).cpu().numpy()


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
    insertion_start: torch.Tensor | None = None,
    bias: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deletion (most relevant first), reverse deletion (least relevant first) and insertion curves.

    Args:
        forward: logits of a float (B, 1, S, S) batch.
        x: the image, float (1, 1, S, S).
        maps: maps (S, S) to test (e.g. one per method plus a random one).
        steps: the curve has ``steps + 1`` points (0 %, 1/steps, ..., 100 % of pixels). Default: 50.
        temperature, bias: the checkpoint's calibration (probabilities as the predictor reports them).
        blur_sigma: blur of the insertion canvas (and of the ``blur`` substrate). Default: S / 16.
        substrate: what deleted pixels become: ``black`` (RISE) or ``blur``. Default: black.
        insertion_start: the image (1, 1, S, S) insertion starts from, e.g. a film the model
            calls normal (:func:`normal_references`). Default: ``x`` blurred (RISE).

    Returns:
        (deletion, reverse deletion, insertion) curves, each float (len(maps), steps + 1) of probabilities.
        Reverse deletion uses the exact reverse of the deletion order: both orders create the same
        kind of artefacts, so their gap measures the ranking itself (Rong et al. 2022, ROAD).
    """
    if substrate not in ("black", "blur"):
        raise ValueError(f"substrate must be 'black' or 'blur', got {substrate!r}")
    sigma = blur_sigma if blur_sigma is not None else x.shape[-1] / 16
    blurred = blur(x, sigma)
    removed = torch.zeros_like(x) if substrate == "black" else blurred
    canvas = blurred if insertion_start is None else insertion_start.to(x.device, x.dtype).reshape(x.shape)
    batches = []
    for amap in maps:
        order = pixel_order(amap, seed)
        batches.append(curve_inputs(x, removed, order, steps))  # deletion, most relevant first
        batches.append(curve_inputs(x, removed, order[::-1], steps))  # deletion, least relevant first
        batches.append(curve_inputs(canvas, x, order, steps))  # insertion: start image -> x
    probs = _probabilities(forward, torch.cat(batches), temperature, bias).reshape(len(maps), 3, steps + 1)
    return probs[:, 0], probs[:, 1], probs[:, 2]


def normal_references(
    forward: LogitFn, films: torch.Tensor, temperature: float, threshold: float, bias: float = 0.0
) -> tuple[torch.Tensor, np.ndarray]:
    """The films (K, 1, S, S) the model calls NORMAL (probability below ``threshold``), and their probabilities.

    Insertion starts from one of them (:func:`insertion_start_for`): an image the model itself
    calls normal, so the curve can show the evidence coming back. Empty when it calls none normal.
    """
    probs = _probabilities(forward, films, temperature, bias)
    keep = probs < threshold
    return films[torch.as_tensor(keep)], probs[keep]


def insertion_start_for(index: int, seed: int, n_references: int) -> int:
    """Which reference film image ``index`` starts its insertion from: a seeded draw, so the choice
    depends only on the image's position and the seed (a resumed run draws the same one)."""
    return int(np.random.default_rng([seed, index]).integers(n_references))


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
            mat[i, j] = mat[j, i] = nan_median(rhos)
    return {"methods": labels, "spearman": [[finite_or_none(v) for v in row] for row in mat]}


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


# --------------------------------------------------------------------------- numbers for JSON


def nan_median(values: Sequence[float]) -> float:
    """The median ignoring NaNs; NaN when no value is finite."""
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmedian(arr)) if np.isfinite(arr).any() else float("nan")


def finite_or_none(v: float | None) -> float | None:
    """``v`` rounded to 6 decimals, or None when it is missing or not finite (JSON has no NaN)."""
    return None if v is None or not np.isfinite(v) else round(float(v), 6)
