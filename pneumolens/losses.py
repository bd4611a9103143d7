"""The original's focal loss and class-weight formula.

Focal loss (Lin et al. 2017, https://arxiv.org/abs/1708.02002) as the original project defines
it: on the sigmoid probability ``p`` clipped to [1e-7, 1 - 1e-7], per sample
``-alpha (1-p)^gamma log p`` for positives and ``-(1-alpha) p^gamma log(1-p)`` for negatives,
averaged over the whole batch, each sample multiplied by its class weight.
"""

from __future__ import annotations

import torch

EPS = 1e-7


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: float = 0.5,
    sample_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean binary focal loss over the batch.

    Args:
        logits: (B,) PNEUMONIA logits.
        target: (B,) labels in {0, 1} (float or int).
        gamma: focusing parameter; 0 gives (weighted) cross-entropy. Default: 2.0.
        alpha: weight of the positive term; the negative term gets ``1 - alpha``. Default: 0.5.
        sample_weight: (B,) per-sample weights (class weights); ``None`` means 1.
        label_smoothing: move targets ``eps/2`` towards 0.5 (0 = the original). Default: 0.

    Returns:
        A scalar: ``mean_i(w_i * loss_i)``.
    """
    y = target.to(logits.dtype)
    if label_smoothing:
        y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
    p = torch.sigmoid(logits.float()).clamp(EPS, 1.0 - EPS)
    pos = -alpha * (1.0 - p).pow(gamma) * torch.log(p)
    neg = -(1.0 - alpha) * p.pow(gamma) * torch.log1p(-p)
    loss = y * pos + (1.0 - y) * neg
    if sample_weight is not None:
        loss = loss * sample_weight.to(loss.dtype)
    return loss.mean()


def class_weights(n_normal: int, n_pneumonia: int) -> tuple[float, float]:
    """The original's class weights: ``max_count / count`` per class, scaled to sum to 2.

    On the full official train split (1341 / 3875) this gives NORMAL ≈ 1.486, PNEUMONIA ≈ 0.514.
    """
    if n_normal <= 0 or n_pneumonia <= 0:
        raise ValueError(f"both classes need images to weight them (NORMAL={n_normal}, PNEUMONIA={n_pneumonia})")
    m = max(n_normal, n_pneumonia)
    w0, w1 = m / n_normal, m / n_pneumonia
    s = (w0 + w1) / 2.0
    return w0 / s, w1 / s
