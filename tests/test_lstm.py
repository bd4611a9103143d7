"""The unrolled training pass of pneumolens.accel.lstm.UnrolledLSTM against nn.LSTM's own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pneumolens.accel.lstm import UnrolledLSTM, _LstmLayer, fits, reference


def LSTM(*args, **kwargs) -> nn.LSTM:
    """An ``nn.LSTM`` swapped to the unrolled pass, as ``accelerate_cpu_training`` swaps the first one."""
    lstm = nn.LSTM(*args, **kwargs)
    lstm.__class__ = UnrolledLSTM
    return lstm


def outputs_and_grads(lstm: nn.LSTM, x: torch.Tensor, g: torch.Tensor, g_h: torch.Tensor, g_c: torch.Tensor,
                      module_forward=None) -> list[torch.Tensor]:
    lstm.zero_grad()
    x = x.detach().clone().requires_grad_()
    y, (h, c) = (module_forward or lstm.forward)(x)
    ((y * g).sum() + (h * g_h).sum() + (c * g_c).sum()).backward()
    return [y.detach(), h.detach(), c.detach(), x.grad] + [p.grad.clone() for p in lstm.parameters()]


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_outputs_and_every_gradient_equal_nn_lstm_in_float64(steps: int) -> None:
    torch.manual_seed(0)
    ours = LSTM(7, 4, batch_first=True).double().train()
    x = torch.randn(3, steps, 7, dtype=torch.float64)
    g = torch.randn(3, steps, 4, dtype=torch.float64)
    g_h, g_c = torch.randn(1, 3, 4, dtype=torch.float64), torch.randn(1, 3, 4, dtype=torch.float64)
    got = outputs_and_grads(ours, x, g, g_h, g_c)
    expected = outputs_and_grads(ours, x, g, g_h, g_c, module_forward=lambda t: nn.LSTM.forward(ours, t))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_unrolled_function_is_what_runs_in_training() -> None:
    ours = LSTM(6, 3, batch_first=True).train()
    y, _ = ours(torch.randn(2, 4, 6, requires_grad=True))
    assert "_LstmLayer" in type(y.grad_fn).__name__


def test_only_the_last_hidden_state_used_like_the_models_lstm2() -> None:
    torch.manual_seed(1)
    ours = LSTM(5, 3, batch_first=True).double().train()
    x = torch.randn(4, 6, 5, dtype=torch.float64, requires_grad=True)
    ours(x)[0][:, -1].sum().backward()
    got = [x.grad.clone()] + [p.grad.clone() for p in ours.parameters()]
    ours.zero_grad(); x.grad = None
    nn.LSTM.forward(ours, x)[0][:, -1].sum().backward()
    for a, b in zip(got, [x.grad] + [p.grad for p in ours.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_float32_matches_nn_lstm_at_the_models_size() -> None:
    torch.manual_seed(2)
    ours = LSTM(256, 32, batch_first=True).train()
    x = torch.randn(4, 16, 256)
    g = torch.randn(4, 16, 32)
    z = torch.zeros(1, 4, 32)
    got = outputs_and_grads(ours, x, g, z, z)
    expected = outputs_and_grads(ours, x, g, z, z, module_forward=lambda t: nn.LSTM.forward(ours, t))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(b.abs().max())))


@pytest.mark.parametrize(
    "make,call",
    [
        (lambda: LSTM(4, 3, batch_first=True).eval(), lambda m, x: m(x)),  # eval: ONNX export and Grad-CAM
        (lambda: LSTM(4, 3, batch_first=False).train(), lambda m, x: m(x)),
        (lambda: LSTM(4, 3, batch_first=True, num_layers=2).train(), lambda m, x: m(x)),
        (lambda: LSTM(4, 3, batch_first=True, bidirectional=True).train(), lambda m, x: m(x)),
        (lambda: LSTM(4, 3, batch_first=True).train(), lambda m, x: m(x, (torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)))),
    ],
)
def test_other_uses_are_plain_nn_lstm(make, call) -> None:
    m = make()
    y, _ = call(m, torch.randn(2, 5, 4, requires_grad=True))
    assert "_LstmLayer" not in type(y.grad_fn).__name__


def test_only_the_supported_configuration_fits() -> None:
    assert fits(nn.LSTM(4, 3, batch_first=True))
    assert not fits(nn.LSTM(4, 3, batch_first=False)) and not fits(nn.LSTM(4, 3, batch_first=True, proj_size=2))


def test_autocast_runs_nn_lstm() -> None:
    ours = LSTM(4, 3, batch_first=True).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = ours(torch.randn(2, 5, 4, requires_grad=True))
    assert "_LstmLayer" not in type(y.grad_fn).__name__
    y.float().sum().backward()
    assert ours.weight_ih_l0.grad is not None


def test_reference_is_nn_lstm_in_float64() -> None:
    torch.manual_seed(6)
    lstm = nn.LSTM(5, 3, batch_first=True).double()
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    y, (_, c) = lstm(x)
    hs, c_last = reference(x, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
    torch.testing.assert_close(hs, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_last, c[0], rtol=1e-12, atol=1e-12)


def test_double_backward_in_float64() -> None:
    """The backward pass is differentiable: gradcheck and gradgradcheck of the layer's function."""
    torch.manual_seed(7)
    lstm = nn.LSTM(3, 2, batch_first=True).double()
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    inputs = (x, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
    assert torch.autograd.gradcheck(_LstmLayer.apply, inputs)
    assert torch.autograd.gradgradcheck(_LstmLayer.apply, inputs)


def test_no_grad_uses_nn_lstm_and_state_dict_is_unchanged() -> None:
    ours, theirs = LSTM(4, 3, batch_first=True).train(), nn.LSTM(4, 3, batch_first=True)
    with torch.no_grad():
        assert ours(torch.randn(2, 5, 4))[0].grad_fn is None
    theirs.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
