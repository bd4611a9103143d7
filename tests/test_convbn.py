"""pneumolens.accel.convbn: the first block's folded convolution + BatchNorm against bn(conv(x))."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pneumolens.accel import accelerate_cpu_training, convbn
from pneumolens.model import CnnLstm, ConvBlock, ModelConfig


def make(momentum: float | None = 0.01, bias: bool = True, dtype=torch.float64) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 6, 3, padding=1, bias=bias).to(dtype).train()
    bn = nn.BatchNorm2d(6, eps=1e-3, momentum=momentum).to(dtype).train()
    with torch.no_grad():
        bn.weight.uniform_(-1.5, 1.5)  # negative scales too
        bn.bias.uniform_(-0.3, 0.3)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return conv, bn


def run(conv, bn, x, g, folded: bool) -> list[torch.Tensor]:
    conv, bn = copy.deepcopy(conv), copy.deepcopy(bn)
    if folded:
        assert convbn.applies(x, conv, bn)
        y = convbn.conv_bn(x, conv, bn)
    else:
        y = bn(F.conv2d(x, conv.weight, conv.bias, padding=1))
    y.backward(g)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in (conv.weight, bn.weight, bn.bias)]
    return [y.detach(), *grads, bn.running_mean, bn.running_var, bn.num_batches_tracked.to(y.dtype)]


@pytest.mark.parametrize("momentum", [0.01, 0.3, None])
@pytest.mark.parametrize("bias", [True, False])
def test_values_gradients_and_running_statistics_equal_batchnorm_in_float64(momentum, bias) -> None:
    conv, bn = make(momentum, bias)
    x = torch.rand(3, 1, 9, 7, dtype=torch.float64)
    x[:, :, :3, :3] = 0.25  # flat regions, as on a film's border
    g = torch.randn(3, 6, 9, 7, dtype=torch.float64)
    got, expected = run(conv, bn, x, g, True), run(conv, bn, x, g, False)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_conv_bias_gets_exactly_zero_gradient_as_batchnorm_cancels_it() -> None:
    conv, bn = make()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    convbn.conv_bn(x, conv, bn).square().sum().backward()
    assert torch.equal(conv.bias.grad, torch.zeros_like(conv.bias))


def test_float32_weight_gradient_is_closer_to_float64_than_batchnorms_own() -> None:
    conv64, bn64 = make()
    x64 = torch.rand(8, 1, 128, 128, dtype=torch.float64)
    g64 = torch.randn(8, 6, 128, 128, dtype=torch.float64)
    truth = run(conv64, bn64, x64, g64, False)[1]
    conv, bn = copy.deepcopy(conv64).float(), copy.deepcopy(bn64).float()
    ours = run(conv, bn, x64.float(), g64.float(), True)[1]
    usual = run(conv, bn, x64.float(), g64.float(), False)[1]
    assert float((ours.double() - truth).abs().max()) <= float((usual.double() - truth).abs().max())
    torch.testing.assert_close(ours.double(), truth, rtol=1e-4, atol=1e-4 * float(truth.abs().max()))


def test_output_keeps_the_channels_last_layout_of_a_channels_last_block() -> None:
    block = ConvBlock(1, 8, 0.0).train().to(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    assert convbn.applies(x, block.conv, block.bn)
    y = convbn.conv_bn(x, block.conv, block.bn)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_the_model_uses_it_only_for_the_first_block_in_training() -> None:
    model = CnnLstm(ModelConfig()).train()
    accelerate_cpu_training(model)
    assert isinstance(model.features.block1, convbn.FoldedFirstBlock)
    assert not isinstance(model.features.block2, convbn.FoldedFirstBlock)
    x = torch.rand(2, 1, 128, 128)
    assert convbn.applies(x, model.features.block1.conv, model.features.block1.bn)
    h = model.features.block1(x)
    assert not convbn.applies(h, model.features.block2.conv, model.features.block2.bn)  # 32 input channels
    assert not convbn.applies(x.requires_grad_(), model.features.block1.conv, model.features.block1.bn)
    model.eval()
    assert not convbn.applies(x.detach(), model.features.block1.conv, model.features.block1.bn)


def test_model_training_step_matches_the_unfolded_path() -> None:
    """A whole CnnLstm step (dropout off) gives the same loss and gradients either way."""
    torch.manual_seed(4)
    cfg = ModelConfig(conv_dropout=(0.0, 0.0, 0.0), lstm_dropout=0.0, dense_dropout=0.0)
    model = CnnLstm(cfg).double().train()
    twin = copy.deepcopy(model)  # stock
    model.features.block1.__class__ = convbn.FoldedFirstBlock
    x = torch.rand(4, 1, 128, 128, dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    F.binary_cross_entropy_with_logits(model(x), y).backward()
    block = twin.features.block1
    F.binary_cross_entropy_with_logits(twin(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        if name == "features.block1.conv.bias":
            assert torch.equal(p.grad, torch.zeros_like(p.grad)) and float(q.grad.abs().max()) < 1e-10
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-12, msg=name)
    torch.testing.assert_close(model.features.block1.bn.running_var, block.bn.running_var)
