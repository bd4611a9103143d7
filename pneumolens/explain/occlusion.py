"""Occlusion (Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901).

A square window slides over the image; each position is replaced by the baseline and the drop
in the logit is credited to every pixel under the window (averaged over the windows covering
it). Positive = covering it lowers the pneumonia logit = evidence for pneumonia. All window
positions of one image are batched into few forward passes without gradients.

Default fill: black (on an X-ray: air, no opacity). Measured against a blurred fill with
``pneumolens explain-eval`` (20 validation images, a CnnLstm with ROC AUC 0.98): deletion gap
0.060 vs 0.001 (black orders the pixels by relevance; blur does not), although blur scores a
higher insertion AUC (0.88 vs 0.65).
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import Occlusion
from torch import nn

from .base import LogitFn, baseline_params, make_baseline, no_grad_column


def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    window: int = 16,
    stride: int = 8,
    baseline: str = "black",
    perturbations_per_eval: int = 128,
    sigma: float | None = None,
    forward: LogitFn | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Occlusion maps for a batch (each image on its own, windows batched).

    Args:
        model: the network.
        x: float (N, 1, S, S) in [0, 1].
        window: side of the square occluding patch, in input pixels. Default: 16.
        stride: step between window positions. Default: 8 (half a window).
        baseline: what fills the window: ``black``, ``mean`` or ``blur``. Default: black.
        perturbations_per_eval: window positions per forward pass. Default: 128.
        sigma: blur width for ``baseline="blur"``. Default: S / 16.
        forward: a no-gradient logit function to use instead of ``model`` (e.g. the
            predictor's fast inference copy). Default: ``model``.

    Returns:
        (maps (N, 1, S, S), params).
    """
    size = x.shape[-1]
    if not 1 <= window <= size or not 1 <= stride <= size:
        raise ValueError(f"occlusion: window and stride must be in 1..{size}, got {window} and {stride}")
    fn = no_grad_column(forward or model)
    occ = Occlusion(fn)
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        out.append(
            occ.attribute(
                xi,
                sliding_window_shapes=(1, int(window), int(window)),
                strides=(1, int(stride), int(stride)),
                baselines=make_baseline(xi, baseline, sigma),
                target=0,
                perturbations_per_eval=int(perturbations_per_eval),
            )
        )
    positions = ((size - window) // stride + 1) ** 2
    params = {
        **baseline_params(baseline, x, sigma),
        "window": int(window),
        "stride": int(stride),
        "positions": positions,
        "perturbations_per_eval": int(perturbations_per_eval),
    }
    return torch.cat(out), params
