"""pneumolens.accel.dropout: the fast-mask dropout drops at rate p, keeps expectations, and trains like nn.Dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pneumolens.accel import accelerate_cpu_training
from pneumolens.accel.dropout import LEVELS, FastDropout, keep_mask
from pneumolens.model import CnnLstm, ModelConfig


def Dropout(p: float = 0.5, inplace: bool = False) -> nn.Dropout:
    """An ``nn.Dropout`` swapped to fast masks, as ``accelerate_cpu_training`` swaps the model's."""
    m = nn.Dropout(p, inplace)
    m.__class__ = FastDropout
    return m


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode fast dropout of ``x``, made a leaf that requires grad if it does not already."""
    if not x.requires_grad:
        x = x.detach().requires_grad_()
    return Dropout(p).train()(x)


@pytest.mark.parametrize("p", [0.2, 0.3, 0.4, 0.5])
def test_drop_rate_is_p_in_every_lane_of_each_random_word(p):
    torch.manual_seed(0)
    n = 1 << 22
    keep, scale = keep_mask(torch.empty(n), p)
    dropped = (~keep).float()
    # four mask entries come from each 64-bit word; the top lane has one bit fewer: all must drop at rate p
    for lane in range(4):
        rate = float(dropped[lane::4].mean())
        assert abs(rate - p) < 5 * (p * (1 - p) / (n / 4)) ** 0.5, (lane, rate)
    p_eff = round(p * LEVELS) / LEVELS
    assert abs(p_eff - p) < 1 / LEVELS and scale == pytest.approx(1 / (1 - p_eff), rel=1e-12)


def test_kept_values_are_scaled_so_the_mean_is_kept():
    torch.manual_seed(1)
    x = torch.rand(1 << 20) + 0.5
    y = dropout(x, 0.3).detach()
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - round(0.3 * LEVELS) / LEVELS))
    assert float(y.mean()) == pytest.approx(float(x.mean()), rel=5e-3)


def test_gradient_is_the_mask_times_the_scale_for_a_channels_last_input():
    torch.manual_seed(2)
    x = torch.randn(4, 6, 5, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = dropout(x, 0.4)
    assert y.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(y)
    y.backward(g)
    kept = y.detach() != 0
    scale = 1 / (1 - round(0.4 * LEVELS) / LEVELS)
    torch.testing.assert_close(x.grad, torch.where(kept, g * scale, torch.zeros_like(g)))
    torch.testing.assert_close(y.detach()[kept], x.detach()[kept] * scale)
    assert 0.5 < float(kept.float().mean()) < 0.7


def test_masks_follow_the_seed():
    x = torch.ones(3, 1000)
    torch.manual_seed(7)
    a = dropout(x, 0.5)
    torch.manual_seed(7)
    b = dropout(x, 0.5)
    torch.manual_seed(8)
    c = dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stock_dropout_runs_where_the_fast_masks_do_not_serve():
    x = torch.ones(4, 1000, requires_grad=True)
    m = Dropout(0.5).train()
    assert "MaskedScale" in type(m(x).grad_fn).__name__
    with torch.no_grad():
        assert m(x).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "MaskedScale" not in type(m(x).grad_fn).__name__
    assert m(x.detach()).grad_fn is None  # nothing needs a gradient: nn.Dropout
    assert torch.equal(m.eval()(x), x)


def test_double_backward_multiplies_by_the_same_mask():
    torch.manual_seed(4)
    x = torch.randn(200, dtype=torch.float64, requires_grad=True)
    y = dropout(x, 0.4)
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)  # 2 y * mask * scale
    (gg,) = torch.autograd.grad(g.sum(), x)  # 2 (mask * scale)^2
    factor = y.detach() / x.detach()
    torch.testing.assert_close(gg, 2 * factor.square())


def test_eval_mode_and_edge_probabilities():
    x = torch.randn(2, 3, 4)
    m = Dropout(0.4).eval()
    assert torch.equal(m(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    ints = torch.ones(10, dtype=torch.int64)
    with pytest.raises(RuntimeError):  # nn.Dropout runs: not defined for integer tensors
        Dropout(0.5).train()(ints)


def test_inplace_dropout_keeps_pytorch_semantics():
    torch.manual_seed(3)
    x = torch.ones(1000)
    y = Dropout(0.5, inplace=True).train()(x)
    assert y.data_ptr() == x.data_ptr() and 0.4 < float((x == 0).float().mean()) < 0.6


def test_the_accelerator_swaps_every_dropout_of_the_model_and_keeps_its_state_dict():
    model = CnnLstm(ModelConfig())
    keys = list(model.state_dict())
    accelerate_cpu_training(model)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 7 and all(isinstance(m, FastDropout) for m in drops)
    assert list(model.state_dict()) == keys and not any("drop" in k for k in keys)
