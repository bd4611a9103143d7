"""3x3 convolutions whose weight and bias gradients are computed block by block as matrix products.

Why: on AMD EPYC CPUs without MKL's Intel-only paths, oneDNN's backward-weights kernel for the
CnnLstm's 3x3 convolutions runs well below its forward and backward-data kernels and below MKL's
matrix products, and was the largest single cost of a CPU training step. The weight gradient of a
convolution is a sum over output positions of outer products, ``dW^T = im2col(X)^T @ dY``; done
block by block (a few rows of one image at a time), each block's im2col matrix stays in the cache
and one GEMM per block accumulates into ``dW``; the bias gradient comes out of the same product
(see :func:`grads`). For a single-channel input, ``F.unfold`` and one batched product do the same.
``bench/bench_accel.py`` measures what it gives to a whole training step.

Only the weight (and bias) gradient changes; the forward pass and the input gradient are
PyTorch's own. The blocked sums add in another order, so gradients agree with oneDNN's to
float32 rounding (tested), and the same inputs always give the same bits.

:class:`BlockedConv2d` is what :func:`pneumolens.accel.accelerate_cpu_training` turns a model's
3x3 same-padding ``nn.Conv2d`` into; it runs ``nn.Conv2d`` unchanged wherever
:func:`pneumolens.accel.fallback.kernel_serves` says no, and its backward pass switches to
PyTorch's differentiable convolution backward when a gradient graph is asked for (double backward).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import FunctionCtx
from torch.nn import functional as F
from torch.profiler import record_function

from .fallback import kernel_serves

#: Output positions per block of the weight-gradient product: 2048 positions x 9·C_in columns
#: (2.4 MB at C_in = 32) fit the cache beside the block of ``dY``.
BLOCK_POSITIONS = 2048


def patches(x: torch.Tensor) -> torch.Tensor:
    """The zero-padded 3x3 patches of single-channel images (N, 1, H, W), as (N, 9, H·W)."""
    n, _, h, w = x.shape
    return F.unfold(x.reshape(n, 1, h, w).contiguous(), 3, padding=1)


def grads(grad_out: torch.Tensor, x: torch.Tensor, bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(dL/dW, dL/db)`` of a 3x3, stride-1, padding-1 convolution of ``x`` given ``dL/dY``.

    Shapes: ``grad_out`` (N, C_out, H, W), ``x`` (N, C_in, H, W); ``dL/dW`` is (C_out, C_in, 3, 3),
    laid out channels-last like the weights of a channels-last model; ``dL/db`` is (C_out,), or
    None unless ``bias``.

    The bias gradient rides in the weight-gradient product as one more im2col column of ones,
    instead of a separate pass over ``dY``, which costs more than that column's share of the GEMM.
    The product is ``im2col(X)^T @ dY``, (9·C_in) x C_out, rather than its transpose: MKL runs
    that orientation faster on these shapes, with the same bits.
    """
    n, c_in, h, w = x.shape
    c_out = grad_out.shape[1]
    g = grad_out.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # (N, H, W, C_out), contiguous
    if c_in == 1:
        dw = torch.bmm(patches(x), g.reshape(n, h * w, c_out)).sum(0).t().contiguous().view(c_out, 1, 3, 3)
        return dw, g.sum((0, 1, 2)) if bias else None
    xp = x.new_zeros(n, h + 2, w + 2, c_in)  # zero-padded, channels innermost
    xp[:, 1:-1, 1:-1] = x.permute(0, 2, 3, 1)
    sn, sh, sw = xp.stride()[:3]
    rows = max(1, min(h, BLOCK_POSITIONS // w))
    k = 9 * c_in
    cols = x.new_empty(rows * w, k + 1 if bias else k)  # one block's im2col, columns in (kh, kw, c_in) order
    if bias:
        cols[:, k] = 1.0
    dw_t = grad_out.new_zeros(cols.shape[1], c_out)
    for i in range(n):
        for y0 in range(0, h, rows):
            r = min(rows, h - y0)
            block = cols[: r * w]
            # rows y0 .. y0+r of image i: each output position's 3x3xC_in window, one row each
            window = xp.as_strided((r, w, 3, 3, c_in), (sh, sw, sh, sw, 1), i * sn + y0 * sh)
            block[:, :k].view(r, w, 3, 3, c_in).copy_(window)
            dw_t.addmm_(block.t(), g[i, y0 : y0 + r].reshape(r * w, c_out))
    dw = dw_t[:k].t().contiguous().view(c_out, 3, 3, c_in).permute(0, 3, 1, 2)  # channels-last
    return dw, dw_t[k].clone() if bias else None


class _Conv3x3(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding=1)`` with :func:`grads` in the backward pass."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.bias_size = None if bias is None else list(bias.shape)
        return F.conv2d(x, weight, bias, padding=1)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        need_b = need_b and ctx.bias_size is not None
        if torch.is_grad_enabled():
            # create_graph=True (double backward): PyTorch's convolution backward, which is
            # itself differentiable, for all three gradients.
            gx, gw, gb = torch.ops.aten.convolution_backward(
                grad, x, weight, ctx.bias_size, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [need_x, need_w, need_b]
            )
            return gx, gw, gb
        gx = gw = gb = None
        if need_x:
            gx = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if need_w:
            with record_function("pneumolens::conv_weight_grad"):  # bench_core's profile counts it as convolution
                gw, gb = grads(grad, x, bias=need_b)
        elif need_b:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb


def fits(conv: nn.Module) -> bool:
    """Whether ``conv`` is an ``nn.Conv2d`` of the one shape the kernel computes (3x3, stride 1, padding 1)."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


class BlockedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose CPU training pass computes weight gradients block by block (see the module).

    Made only by swapping the class of a fitting ``nn.Conv2d`` (:func:`fits`): the same
    parameters, buffers, hooks and state-dict keys.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fits(self) and x.dim() == 4 and kernel_serves(self, x, self.weight, self.bias):
            return _Conv3x3.apply(x, self.weight, self.bias)
        return super().forward(x)
