"""The blocked weight gradient of pneumolens.accel.conv against PyTorch's own convolution backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pneumolens.accel import conv as conv_mod
from pneumolens.accel.conv import BlockedConv2d, fits, grads


def Conv2d(*args, **kwargs) -> nn.Conv2d:
    """An ``nn.Conv2d`` swapped to the blocked kernel, as ``accelerate_cpu_training`` swaps it."""
    conv = nn.Conv2d(*args, **kwargs)
    conv.__class__ = BlockedConv2d
    return conv


def weight_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return grads(g, x, bias=False)[0]


def reference_grads(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    F.conv2d(x, w, b, padding=1).backward(g)
    return x.grad, w.grad, b.grad


@pytest.mark.parametrize("c_in,c_out", [(1, 4), (3, 5), (8, 6)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_weight_grad_equals_autograd_in_float64(c_in: int, c_out: int, channels_last: bool, monkeypatch) -> None:
    # 7 positions per block on 5-wide rows: one row per block, so blocks never cover a whole image
    monkeypatch.setattr(conv_mod, "BLOCK_POSITIONS", 7)
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, c_in, 6, 5, dtype=torch.float64).contiguous(memory_format=fmt)
    w = torch.randn(c_out, c_in, 3, 3, dtype=torch.float64)
    b = torch.randn(c_out, dtype=torch.float64)
    g = torch.randn(3, c_out, 6, 5, dtype=torch.float64).contiguous(memory_format=fmt)
    expected = reference_grads(x, w, b, g)[1]
    got = weight_grad(g, x)
    assert got.shape == (c_out, c_in, 3, 3)
    assert got.is_contiguous(memory_format=torch.channels_last)  # the layout of a channels-last model's weights
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c_in", [1, 3, 8])
@pytest.mark.parametrize("block", [7, 2048])
def test_bias_gradient_rides_in_the_product_in_float64(c_in: int, block: int, monkeypatch) -> None:
    monkeypatch.setattr(conv_mod, "BLOCK_POSITIONS", block)
    torch.manual_seed(4)
    x = torch.randn(3, c_in, 6, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(4, c_in, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    g = torch.randn(3, 4, 6, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    _, gw, gb = reference_grads(x, w, b, g)
    got_w, got_b = grads(g, x, bias=True)
    torch.testing.assert_close(got_w, gw, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_b, gb, rtol=1e-12, atol=1e-12)
    assert grads(g, x, bias=False)[1] is None
    assert torch.equal(grads(g, x, bias=False)[0], got_w)  # the ones column changes no weight bit


@pytest.mark.parametrize("block", [2048, 40, 1])
def test_block_size_changes_nothing_but_rounding(block: int, monkeypatch) -> None:
    monkeypatch.setattr(conv_mod, "BLOCK_POSITIONS", block)
    torch.manual_seed(1)
    x = torch.randn(2, 16, 12, 10, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 8, 12, 10, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 16, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(weight_grad(g, x), reference_grads(x, w, torch.zeros(8, dtype=torch.float64), g)[1])


@pytest.mark.parametrize("c_in", [1, 32])
def test_training_module_matches_nn_conv2d_in_float32(c_in: int) -> None:
    torch.manual_seed(2)
    ours = Conv2d(c_in, 16, 3, padding=1).train()
    x = torch.rand(4, c_in, 20, 20).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(4, 16, 20, 20).contiguous(memory_format=torch.channels_last)
    y = ours(x)
    assert "_Conv3x3" in type(y.grad_fn).__name__  # the blocked backward is really in the graph
    y.backward(g)
    gx, gw, gb = reference_grads(x, ours.weight, ours.bias, g)
    torch.testing.assert_close(y, F.conv2d(x, ours.weight, ours.bias, padding=1), rtol=0, atol=0)
    torch.testing.assert_close(x.grad, gx, rtol=0, atol=0)  # the input gradient is PyTorch's own
    torch.testing.assert_close(ours.weight.grad, gw, rtol=1e-4, atol=1e-4 * float(gw.abs().max()))
    torch.testing.assert_close(ours.bias.grad, gb, rtol=1e-4, atol=1e-4 * float(gb.abs().max()))


def test_input_without_grad_gets_none_and_weights_still_learn() -> None:
    ours = Conv2d(1, 4, 3, padding=1).train()
    x = torch.rand(2, 1, 8, 8)  # the image: no gradient wanted
    ours(x).square().sum().backward()
    assert x.grad is None
    assert ours.weight.grad is not None and float(ours.weight.grad.abs().sum()) > 0


def test_same_inputs_give_the_same_bits() -> None:
    torch.manual_seed(3)
    x = torch.randn(4, 32, 16, 16).contiguous(memory_format=torch.channels_last)
    g = torch.randn(4, 64, 16, 16).contiguous(memory_format=torch.channels_last)
    assert torch.equal(weight_grad(g, x), weight_grad(g, x))


@pytest.mark.parametrize(
    "kwargs",
    [dict(kernel_size=3, padding=1, stride=2), dict(kernel_size=5, padding=2), dict(kernel_size=3, padding=1, groups=2),
     dict(kernel_size=3, padding=0), dict(kernel_size=3, padding=1, padding_mode="reflect")],
)
def test_other_convolutions_are_plain_nn_conv2d(kwargs: dict) -> None:
    ours = Conv2d(4, 4, **kwargs).train()
    assert not fits(ours)  # accelerate_cpu_training leaves these alone
    y = ours(torch.rand(1, 4, 9, 9, requires_grad=True))  # and, swapped anyway, the stock layer runs
    assert "_Conv3x3" not in type(y.grad_fn).__name__


def test_eval_mode_and_no_grad_use_pytorch_convolution() -> None:
    ours = Conv2d(2, 3, 3, padding=1)
    x = torch.rand(1, 2, 6, 6, requires_grad=True)
    assert "_Conv3x3" not in type(ours.eval()(x).grad_fn).__name__  # Grad-CAM and the ONNX export see nn.Conv2d
    with torch.no_grad():
        assert ours.train()(x).grad_fn is None


def test_autocast_runs_pytorchs_convolution_in_bfloat16() -> None:
    ours = Conv2d(2, 3, 3, padding=1).train()
    x = torch.rand(1, 2, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
    assert y.dtype == torch.bfloat16 and "_Conv3x3" not in type(y.grad_fn).__name__
    y.float().sum().backward()
    assert ours.weight.grad is not None and x.grad is not None


def test_double_backward_in_float64() -> None:
    """Gradients of gradients through the kernel are PyTorch's (its backward switches to them)."""
    torch.manual_seed(5)
    ours = Conv2d(2, 2, 3, padding=1).double().train()
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return conv_mod._Conv3x3.apply(x, w, b)

    assert torch.autograd.gradcheck(f, (x, ours.weight, ours.bias))
    assert torch.autograd.gradgradcheck(f, (x, ours.weight, ours.bias))
    y = ours(x)
    assert "_Conv3x3" in type(y.grad_fn).__name__
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    gx.square().sum().backward()
    got = ours.weight.grad.clone()
    ours.weight.grad = None
    (gx,) = torch.autograd.grad(F.conv2d(x, ours.weight, ours.bias, padding=1).square().sum(), x, create_graph=True)
    gx.square().sum().backward()
    torch.testing.assert_close(got, ours.weight.grad, rtol=1e-10, atol=1e-10)


def test_state_dict_is_nn_conv2d_s() -> None:
    ours, theirs = Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
    theirs.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
