"""GradientSHAP (expected gradients): Erion et al. 2021, https://arxiv.org/abs/1906.10670;
Lundberg & Lee 2017, with a background of *training* images. One name everywhere: the method
is ``shap`` (flag, JSON, API), titled "GradientSHAP (expected gradients)" in every figure and page.

Each sample draws a background image ``b`` and a point ``b + a (x - b)`` on the path to the
explained image, and multiplies the gradient there by ``x - b``; the mean over samples
estimates SHAP values relative to the background distribution. The original used the
explained image itself as its background, so ``x - b = 0`` and every value was 0.0: here the
explained image is removed from the background if it is in it, and the background comes from
the training split.

Where the background comes from (recorded in ``params["background"]``):

1. an array of training images: by default the films stored in the checkpoint
   (``Checkpoint.shap_background``, added by ``scripts/add_shap_background.py``; the shipped
   model has 32), which the CLI, ``explain-eval`` and the web service all use, so they give the
   same maps; or sampled by :func:`build_background` (the CLI's explicit
   ``--background-data DIR``), or
2. ``background.npy`` stored beside a checkpoint that has none inside (:func:`save_background` /
   :func:`load_background`), or
3. a documented fallback for single-image use without data: ``"blur"`` (default), ``"mean"``
   or ``"black"``: one reference image derived from the explained image, which turns the
   estimate into Integrated Gradients with random path points, not expected gradients.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum.attr import GradientShap
from torch import nn

from ..errors import CheckpointError
from .base import BASELINES, LogitFn, as_batch, column, gradient_scope, make_baseline, model_device

log = logging.getLogger(__name__)

BACKGROUND_FILE = "background.npy"


def build_background(
    data: str | Path | None = None,
    n: int = 32,
    size: int = 128,
    seed: int = 0,
    use_cache: bool = True,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> np.ndarray:
    """Sample ``n`` images from the training side of the patient-level split of ``train``.

    Args:
        data: the dataset root (Kaggle layout); default: :func:`~pneumolens.data.resolve_data_root`.
        n: background size. Default: 32.
        size: input side. Default: 128.
        seed: which images (a seeded uniform sample, so the background mirrors the class mix).
        use_cache: use the decoded-array cache. Default: True.
        val_fraction, split_seed: the patient-level split the model was trained with (its
            checkpoint's provenance), so the background is drawn from its training side only.

    Returns:
        uint8 (n, size, size).

    Raises:
        DatasetError: no dataset, or a folder not in the Kaggle layout.
    """
    from ..cache import load_images
    from ..data import find_split, patient_split, resolve_data_root

    train, _ = patient_split(find_split(resolve_data_root(data), "train"), val_fraction, split_seed)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(train), size=min(int(n), len(train)), replace=False))
    res = load_images([train[i].path for i in idx], size, use_cache=use_cache, progress=False)
    return res.images


def prototype_background(images: np.ndarray, k: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` prototype films: the k-means centroids of ``images`` (uint8 (N, S, S)), largest cluster first.

    A background to ship with a model: each prototype is the mean of many training films, so it
    stands for the training distribution (as SHAP's own k-means summaries of background data do)
    while no single patient's film is stored. Returns ``(prototypes uint8 (k, S, S), films per
    prototype (k,))``.
    """
    from sklearn.cluster import KMeans

    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 3 or len(x) < k:
        raise ValueError(f"expected at least {k} uint8 (N, S, S) films, got {x.dtype} {x.shape}")
    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x.reshape(len(x), -1).astype(np.float32))
    counts = np.bincount(km.labels_, minlength=k)
    order = np.argsort(-counts, kind="stable")
    centres = km.cluster_centers_.reshape(k, *x.shape[1:])[order]
    return np.clip(np.rint(centres), 0, 255).astype(np.uint8), counts[order]


def save_background(images: np.ndarray, path: str | Path) -> Path:
    """Store a background (uint8 (K, S, S)) as ``.npy``, e.g. ``DIR/background.npy`` beside ``DIR/model.pt``."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(f"background: expected uint8 (K, S, S), got {arr.dtype} {arr.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return path


def load_background(path: str | Path) -> np.ndarray:
    """Read a background written by :func:`save_background`.

    Raises:
        CheckpointError: unreadable, or not a uint8 (K, S, S) array.
    """
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable background array ({exc})") from exc
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] == 0:
        raise CheckpointError(f"{path}: background must be uint8 (K, S, S), got {arr.dtype} {arr.shape}")
    return arr


def background_beside(checkpoint_path: str | Path) -> Path:
    """Where the stored background of a checkpoint lives: ``background.npy`` in its folder."""
    p = Path(checkpoint_path)
    return (p if p.is_dir() else p.parent) / BACKGROUND_FILE


def _background_tensor(background: Any, x: torch.Tensor, sigma: float | None) -> tuple[torch.Tensor, str]:
    """(K, 1, S, S) references and their description for ``params``."""
    if background is None or isinstance(background, str):
        kind = background or "blur"
        if kind not in BASELINES:
            raise ValueError(f"shap: background must be images or one of {', '.join(BASELINES)}, got {kind!r}")
        return make_baseline(x, kind, sigma), f"fallback:{kind} (no training background; IG-like estimate)"
    bg = as_batch(background, size=x.shape[-1]).to(x.device)
    same = (bg[None] == x[:, None]).flatten(2).all(-1).any(0)  # (K,): equal to an explained image
    if bool(same.all()):
        raise ValueError("shap: every background image is an explained image; use training images as background")
    if bool(same.any()):
        log.info("shap: %d explained image(s) removed from the background", int(same.sum()))
        bg = bg[~same]
    return bg, f"{bg.shape[0]} training images"


def gradient_shap(
    model: nn.Module,
    x: torch.Tensor,
    background: np.ndarray | torch.Tensor | str | None = None,
    n_samples: int = 32,
    stdevs: float = 0.0,
    sigma: float | None = None,
    forward: LogitFn | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Expected-gradients (GradientSHAP) maps for a batch.

    Args:
        model: the network.
        x: float (N, 1, S, S) in [0, 1].
        background: training images, uint8 (K, S, S) or float (K, 1, S, S); or a fallback name
            ``blur`` / ``mean`` / ``black`` (see the module docstring). Default: ``blur`` fallback.
        n_samples: (background image, path point) draws per explained image. Default: 32.
        stdevs: Gaussian noise added to each draw (SmoothGrad-style). Default: 0 (pure expected gradients).
        sigma: blur width for the ``blur`` fallback. Default: S / 16.
        forward: an optional differentiable logit function to use instead of ``model``.

    Returns:
        (maps (N, 1, S, S), params).
    """
    if n_samples < 1:
        raise ValueError(f"shap: n_samples must be >= 1, got {n_samples}")
    fn = column(forward or model)
    explainer = GradientShap(fn)
    out, described = [], ""
    with gradient_scope(model_device(model)):
        for i in range(x.shape[0]):  # one image at a time: its own fallback reference, bounded memory
            xi = x[i : i + 1]
            bg, described = _background_tensor(background, xi, sigma)
            out.append(explainer.attribute(xi, baselines=bg, target=0, n_samples=int(n_samples), stdevs=float(stdevs)))
    params = {"background": described, "n_samples": int(n_samples), "stdevs": float(stdevs), "estimator": "expected gradients"}
    if background is None or (isinstance(background, str) and background == "blur"):
        params["background_sigma"] = float(sigma if sigma is not None else x.shape[-1] / 16)
    return torch.cat(out), params
