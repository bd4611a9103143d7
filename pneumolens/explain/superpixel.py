"""LIME and KernelSHAP over SLIC superpixels: the two surrogate-model methods.

Both switch groups of pixels (SLIC superpixels, Achanta et al. 2012) between the image and a
baseline, run the model on every such perturbed image, and fit a weighted linear model from
"which superpixels were on" to the logit; its coefficients are the attributions, painted back
onto each superpixel's pixels.

* ``lime`` (Ribeiro et al. 2016, https://arxiv.org/abs/1602.04938): superpixels on/off with
  probability 1/2, samples weighted by the ``lime_image`` kernel (exponential of the cosine
  distance to the unperturbed image, width 0.25), ridge regression (alpha 1) as ``lime_image``.
* ``kernelshap`` (Lundberg & Lee 2017, https://arxiv.org/abs/1705.07874): coalitions drawn
  by the Shapley kernel, plain least squares: the coefficients estimate Shapley values.

Unlike the original, this explains the pneumonia logit itself (not an ``argmax`` over one
sigmoid column) and evaluates ``perturbations_per_eval`` samples per forward pass without
gradients, so 1000 samples cost ~8 forward passes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import KernelShap, Lime
from skimage.segmentation import slic
from torch import nn

from .base import LogitFn, baseline_params, make_baseline, no_grad_column

LIME_KERNEL_WIDTH = 0.25
LIME_RIDGE_ALPHA = 1.0


def superpixels(image: np.ndarray | torch.Tensor, n_segments: int = 100, compactness: float = 0.1, sigma: float = 0.0) -> np.ndarray:
    """SLIC superpixels of one grayscale image in [0, 1]: int64 labels (S, S) numbered 0..K-1.

    ``compactness`` is on the [0, 1] intensity scale (0.1 gives ~80 regions of ~200 pixels at
    128x128 with ``n_segments=100``). Deterministic: SLIC has no random state.
    """
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    img = np.asarray(img, dtype=np.float64).reshape(img.shape[-2], img.shape[-1])
    seg = slic(img, n_segments=int(n_segments), compactness=float(compactness), sigma=float(sigma),
               channel_axis=None, start_label=0)
    _, seg = np.unique(seg, return_inverse=True)  # dense 0..K-1 (SLIC may skip labels)
    seg = seg.reshape(img.shape).astype(np.int64)
    if seg.max() + 1 < max(2, n_segments // 10):  # e.g. pure noise or a flat image: SLIC merges everything
        seg = grid_segments(img.shape[-1], n_segments)
    return seg


def grid_segments(size: int, n_segments: int) -> np.ndarray:
    """A regular grid of about ``n_segments`` square cells: the fallback when SLIC finds no structure."""
    cells = max(2, int(round(math.sqrt(n_segments))))
    idx = np.minimum(np.arange(size) * cells // size, cells - 1)
    return (idx[:, None] * cells + idx[None, :]).astype(np.int64)


def _lime_similarity(original: Any, perturbed: Any, interpretable: torch.Tensor, **kwargs: Any) -> float:
    """``lime_image``'s sample weight: sqrt(exp(-d^2 / w^2)), d = cosine distance of the on/off vector to all-on."""
    z = interpretable.float().flatten()
    norm = float(z.norm())
    cos = float(z.sum()) / (norm * math.sqrt(z.numel())) if norm > 0 else 0.0
    d = 1.0 - cos
    return math.sqrt(math.exp(-(d * d) / LIME_KERNEL_WIDTH**2))


def _surrogate(
    method: str,
    model: nn.Module,
    x: torch.Tensor,
    n_samples: int,
    n_segments: int,
    compactness: float,
    baseline: str,
    perturbations_per_eval: int,
    sigma: float | None,
    forward: LogitFn | None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    if n_samples < 2:
        raise ValueError(f"{method}: n_samples must be >= 2, got {n_samples}")
    fn = no_grad_column(forward or model)
    if method == "lime":
        explainer: Lime | KernelShap = Lime(fn, interpretable_model=SkLearnRidge(alpha=LIME_RIDGE_ALPHA),
                                            similarity_func=_lime_similarity)
    else:
        explainer = KernelShap(fn)
    out, n_regions = [], []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        seg = superpixels(xi, n_segments, compactness)
        n_regions.append(int(seg.max()) + 1)
        mask = torch.as_tensor(seg, device=x.device).view(1, 1, *seg.shape)
        out.append(
            explainer.attribute(
                xi,
                baselines=make_baseline(xi, baseline, sigma),
                target=0,
                feature_mask=mask,
                n_samples=int(n_samples),
                perturbations_per_eval=int(perturbations_per_eval),
                return_input_shape=True,
            )
        )
    params: dict[str, Any] = {
        **baseline_params(baseline, x, sigma),
        "n_samples": int(n_samples),
        "superpixels": "slic",
        "n_segments": int(n_segments),
        "compactness": float(compactness),
        "n_superpixels": n_regions,
        "perturbations_per_eval": int(perturbations_per_eval),
    }
    if method == "lime":
        params.update(surrogate=f"ridge(alpha={LIME_RIDGE_ALPHA})", kernel=f"exp cosine, width {LIME_KERNEL_WIDTH}",
                      sampling="bernoulli(0.5)")
    else:
        params.update(surrogate="least squares, Shapley kernel weights", sampling="shapley kernel")
    return torch.cat(out), params


def lime(
    model: nn.Module,
    x: torch.Tensor,
    n_samples: int = 1000,
    n_segments: int = 100,
    compactness: float = 0.1,
    baseline: str = "black",
    perturbations_per_eval: int = 125,
    sigma: float | None = None,
    forward: LogitFn | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """LIME maps for a batch (one surrogate per image).

    Args:
        model: the network.
        x: float (N, 1, S, S) in [0, 1].
        n_samples: perturbed images per explained image. Default: 1000 (the lime default).
        n_segments: SLIC's target number of superpixels. Default: 100.
        compactness: SLIC compactness on the [0, 1] scale. Default: 0.1.
        baseline: what an "off" superpixel shows: ``black``, ``mean`` or ``blur``. Default: black.
        perturbations_per_eval: perturbed images per forward pass. Default: 125.
        sigma: blur width for ``baseline="blur"``. Default: S / 16.
        forward: a no-gradient logit function to use instead of ``model``. Default: ``model``.

    Returns:
        (maps (N, 1, S, S), params incl. the superpixel count per image).
    """
    return _surrogate("lime", model, x, n_samples, n_segments, compactness, baseline, perturbations_per_eval, sigma, forward)


def kernel_shap(
    model: nn.Module,
    x: torch.Tensor,
    n_samples: int = 1000,
    n_segments: int = 100,
    compactness: float = 0.1,
    baseline: str = "black",
    perturbations_per_eval: int = 125,
    sigma: float | None = None,
    forward: LogitFn | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """KernelSHAP maps for a batch; same arguments and defaults as :func:`lime`."""
    return _surrogate("kernelshap", model, x, n_samples, n_segments, compactness, baseline, perturbations_per_eval,
                      sigma, forward)
