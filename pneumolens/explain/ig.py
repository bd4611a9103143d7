"""Integrated Gradients (Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365).

The attribution of a pixel is its difference from a baseline times the gradient averaged along
the straight path from the baseline to the image (Gauss-Legendre quadrature). By completeness
the map sums to ``logit(x) - logit(baseline)``; the residual is recorded as
``convergence_delta``. The baseline matters (Sturmfels et al. 2020, "Visualizing the Impact of
Feature Attribution Baselines"): a black baseline gives zero attribution to black pixels (on an
X-ray: air), a blurred one asks "what does the fine structure add?".

Default baseline: ``blur``, by measurement (``pneumolens explain-eval --split validation --n 20``
on a CnnLstm with validation ROC AUC 0.98): insertion AUC 0.63 vs 0.38 for black, and after
re-initialising every layer the |map| still correlates 0.46 (Spearman) with the trained
model's for black (the map is mostly ``x`` itself: IG with a black baseline multiplies by the
image) vs 0.22 for blur. Neither orders pixels better than chance on the deletion gap (both
~0): pixel-level maps are high-frequency; read them together with a region method.
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import IntegratedGradients
from torch import nn

from .base import LogitFn, baseline_params, column, gradient_scope, make_baseline, model_device


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    baseline: str = "blur",
    n_steps: int = 32,
    internal_batch_size: int = 64,
    sigma: float | None = None,
    forward: LogitFn | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Integrated Gradients maps for a batch.

    Args:
        model: the network.
        x: float (N, 1, S, S) in [0, 1].
        baseline: ``black``, ``mean`` or ``blur`` (see :func:`~pneumolens.explain.base.make_baseline`). Default: blur.
        n_steps: quadrature points along the path. Default: 32.
        internal_batch_size: path points per forward/backward pass. Default: 64.
        sigma: blur width for ``baseline="blur"``. Default: S / 16.
        forward: an optional differentiable logit function to use instead of ``model``
            (e.g. a BatchNorm-folded copy computing the same function faster).

    Returns:
        (maps (N, 1, S, S), params incl. the per-image ``convergence_delta``).
    """
    if n_steps < 1:
        raise ValueError(f"ig: n_steps must be >= 1, got {n_steps}")
    base = make_baseline(x, baseline, sigma)
    ig = IntegratedGradients(column(forward or model))
    with gradient_scope(model_device(model)):
        attr, delta = ig.attribute(
            x,
            baselines=base,
            target=0,
            n_steps=int(n_steps),
            method="gausslegendre",
            internal_batch_size=int(internal_batch_size),
            return_convergence_delta=True,
        )
    params = {
        **baseline_params(baseline, x, sigma),
        "n_steps": int(n_steps),
        "integration": "gausslegendre",
        "convergence_delta": [float(d) for d in delta.detach().cpu().reshape(-1)],
    }
    return attr, params
