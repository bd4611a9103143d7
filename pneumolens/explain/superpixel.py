"""LIME and KernelSHAP over SLIC superpixels: the two surrogate-model methods.

Both switch groups of pixels (SLIC superpixels, Achanta et al. 2012) between the image and a
baseline, run the model on every such perturbed image, and fit a weighted linear model from
"which superpixels were on" to the logit; its coefficients are the attributions, painted back
onto each superpixel's pixels.

* ``lime`` (Ribeiro et al. 2016, https://arxiv.org/abs/1602.04938): superpixels on/off with
  probability 1/2, samples weighted by ``lime_image``'s kernel (exponential of the cosine
  distance between the on/off vector and all-on, width 0.25), ridge regression (alpha 1), as
  ``lime_image`` does.
* ``kernelshap`` (Lundberg & Lee 2017, https://arxiv.org/abs/1705.07874): coalitions drawn
  by the Shapley kernel, least squares: the coefficients estimate Shapley values.

How it is fast: the K superpixel *switches* are the sampled features, so all n_samples on/off
vectors are drawn at once, the perturbed images are built from them by one gather per batch
(``base + (x - base) * z[:, segments]``) and the model runs once per ``perturbations_per_eval``
images without gradients; then Captum's own surrogate models (``SkLearnRidge``,
``SkLearnLinearRegression``) are fitted on (switches, logits, weights). The samples, weights
and fit are exactly those of Captum's pixel-space ``Lime`` / ``KernelShap`` with
``feature_mask=segments`` for the same seed (tested), minus Captum's per-sample Python loop
(~0.4 s per 1000 samples). Unlike the original, the pneumonia logit itself is explained (not an
``argmax`` over one sigmoid column).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from captum._utils.models.linear_model import SkLearnLinearRegression, SkLearnRidge
from skimage.segmentation import slic
from torch import nn
from torch.distributions import Categorical
from torch.utils.data import DataLoader, TensorDataset

from .base import LogitFn, baseline_params, make_baseline, no_grad_column

LIME_KERNEL_WIDTH = 0.25
LIME_RIDGE_ALPHA = 1.0
#: Captum's KernelSHAP weight for the all-on and all-off coalitions (theoretically infinite).
SHAP_ENDPOINT_WEIGHT = 1_000_000.0


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


def switch_forward(fn: LogitFn, x: torch.Tensor, base: torch.Tensor, segments: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits (B, 1) of the images whose superpixels are switched on by ``z`` (B, K), off = baseline.

    On the CPU the images are built in NumPy on the calling thread (the same float32 values):
    PyTorch would build them on its OpenMP threads, which then spin-wait for more work while
    the model runs, taking CPU from ONNX Runtime's threads (``bench/bench_explain.py`` times LIME).
    """
    seg = torch.as_tensor(segments, device=x.device).reshape(-1)
    fwd = no_grad_column(fn)
    diff = x - base  # (1, 1, S, S)
    if x.device.type == "cpu":
        seg_np, diff_np, base_np = seg.numpy(), diff.detach().numpy(), base.detach().numpy()

        def forward(z: torch.Tensor) -> torch.Tensor:
            on = np.take(z.numpy().astype(diff_np.dtype, copy=False), seg_np, axis=1).reshape(z.shape[0], *x.shape[1:])
            np.multiply(on, diff_np, out=on)
            return fwd(torch.from_numpy(np.add(on, base_np, out=on)))

        return forward

    def forward_device(z: torch.Tensor) -> torch.Tensor:
        # each pixel takes its superpixel's switch: one index_select, then base + diff * on in place
        on = torch.index_select(z.to(x.dtype), 1, seg).view(z.shape[0], *x.shape[1:])
        return fwd(on.mul_(diff).add_(base))

    return forward_device


def lime_samples(k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LIME's ``n`` on/off vectors over ``k`` superpixels (Bernoulli 1/2) and their kernel weights.

    The weight is ``exp(-d^2 / (2 * 0.25^2))`` with ``d`` the cosine distance between the vector
    and all-on (1 for all-off), Captum's exponential kernel. One ``bernoulli`` call on (n, k)
    draws the same numbers as Captum's n calls on (1, k).
    """
    z = torch.bernoulli(torch.full((n, k), 0.5))
    d = 1.0 - (z.sum(dim=1) / k).sqrt()  # cosine similarity of a 0/1 vector with all-on: sqrt(on / k)
    return z, torch.exp(-(d * d) / (2 * LIME_KERNEL_WIDTH**2))


def kernel_shap_samples(k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """KernelSHAP's coalitions over ``k`` superpixels and their weights, as Captum's ``KernelShap`` draws them.

    All-on and all-off first (weight :data:`SHAP_ENDPOINT_WEIGHT`), then coalitions whose size s
    is drawn with probability proportional to ``(k - 1) / (s (k - s))`` and whose members are
    the top s of k normal draws (weight 1): sampling by the Shapley kernel, so that plain least
    squares estimates Shapley values.
    """
    sizes = torch.arange(k, dtype=torch.float)
    probs = torch.tensor(k - 1) / (sizes * (k - sizes))
    probs[0] = 0.0
    # Categorical(probs).sample() is multinomial on its normalised probabilities: the same draws,
    # without the distribution's per-call checks (a third of this loop's time)
    probs_2d = Categorical(probs).probs.reshape(1, -1)
    z = torch.zeros(max(n, 2), k)
    z[0] = 1.0  # all on; row 1 all off
    for i in range(2, n):
        size = int(torch.multinomial(probs_2d, 1, True))
        vals = torch.randn(k)
        z[i] = vals > torch.kthvalue(vals, k - size).values
    z = z[:n]
    on = z.sum(dim=1)
    w = torch.where((on == 0) | (on == k), torch.tensor(SHAP_ENDPOINT_WEIGHT), torch.tensor(1.0))
    return z, w


def unique_rows_forward(
    fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, per_eval: int, device: torch.device
) -> torch.Tensor:
    """Logits (n,) for the switch rows ``z`` (n, K), running the model once per *distinct* row.

    The Shapley kernel draws coalitions of 1 and K-1 superpixels about a tenth of the time each,
    and there are only K of each: at ~95 superpixels, 1000 KernelSHAP samples hold ~70 repeats
    (~7 % of the forward passes). A row's logit does not depend on the rest of its batch, so
    every sample keeps the value it would have had.
    """
    rows, inverse = torch.unique(z, dim=0, return_inverse=True)
    y = torch.cat([fn(part.to(device))[:, 0].float().cpu() for part in rows.split(per_eval)])
    return y[inverse]


def fit_surrogate(method: str, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Captum's surrogate for ``method`` fitted on switches ``z`` (n, K), logits ``y`` (n,), weights ``w``: (K,) coefficients."""
    surrogate = SkLearnRidge(alpha=LIME_RIDGE_ALPHA) if method == "lime" else SkLearnLinearRegression()
    surrogate.fit(DataLoader(TensorDataset(z.float(), y.float(), w.float()), batch_size=len(z)))
    return surrogate.representation().reshape(-1)


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
    if perturbations_per_eval < 1:
        raise ValueError(f"{method}: perturbations_per_eval must be >= 1, got {perturbations_per_eval}")
    out, n_regions = [], []
    sample = lime_samples if method == "lime" else kernel_shap_samples
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        seg = superpixels(xi, n_segments, compactness)
        k = int(seg.max()) + 1
        n_regions.append(k)
        fn = switch_forward(forward or model, xi, make_baseline(xi, baseline, sigma), seg)
        z, w = sample(k, int(n_samples))
        y = unique_rows_forward(fn, z, int(perturbations_per_eval), x.device)
        coef = fit_surrogate(method, z, y, w).to(x.device)  # one coefficient per superpixel
        out.append(coef[torch.as_tensor(seg, device=x.device)][None, None])
    params: dict[str, Any] = {
        **baseline_params(baseline, x, sigma),
        "n_samples": int(n_samples),
        "superpixels": "slic (a square grid when SLIC finds < n_segments/10 regions)",
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
    return torch.cat(out).float(), params


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
