"""Focal loss and class weights against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pneumolens.losses import class_weights, focal_loss


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_focal_loss_matches_the_formula_by_hand() -> None:
    # p = 0.8 for a positive and p = 0.3 for a negative, gamma 2, alpha 0.5.
    logits = torch.tensor([_logit(0.8), _logit(0.3)])
    y = torch.tensor([1.0, 0.0])
    pos = -0.5 * (0.2**2) * math.log(0.8)
    neg = -0.5 * (0.3**2) * math.log(0.7)
    expected = (pos + neg) / 2  # both means are over the whole batch
    assert focal_loss(logits, y).item() == pytest.approx(expected, rel=1e-5)


def test_class_weights_multiply_each_sample() -> None:
    logits = torch.tensor([_logit(0.8), _logit(0.3)])
    y = torch.tensor([1.0, 0.0])
    w = torch.tensor([0.5, 1.5])
    pos = -0.5 * (0.2**2) * math.log(0.8)
    neg = -0.5 * (0.3**2) * math.log(0.7)
    assert focal_loss(logits, y, sample_weight=w).item() == pytest.approx((0.5 * pos + 1.5 * neg) / 2, rel=1e-5)


def test_gamma_zero_alpha_half_is_half_the_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(16), (torch.rand(16) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert focal_loss(logits, y, gamma=0.0, alpha=0.5).item() == pytest.approx(0.5 * bce.item(), rel=1e-4)


def test_probability_is_clipped_so_confident_mistakes_stay_finite() -> None:
    loss = focal_loss(torch.tensor([-100.0, 100.0]), torch.tensor([1.0, 0.0]))
    assert math.isfinite(loss.item()) and loss.item() > 0


def test_focal_loss_down_weights_easy_examples() -> None:
    easy = focal_loss(torch.tensor([_logit(0.95)]), torch.tensor([1.0])).item()
    hard = focal_loss(torch.tensor([_logit(0.3)]), torch.tensor([1.0])).item()
    ce_ratio = math.log(0.3) / math.log(0.95)
    assert hard / easy > ce_ratio  # focusing widens the gap beyond cross-entropy's


def test_class_weights_on_the_official_train_counts() -> None:
    w0, w1 = class_weights(1341, 3875)
    assert w0 == pytest.approx(1.486, abs=1e-3) and w1 == pytest.approx(0.514, abs=1e-3)
    assert w0 + w1 == pytest.approx(2.0)


def test_class_weights_need_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        class_weights(0, 10)
