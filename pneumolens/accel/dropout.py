"""Dropout whose masks cost a fraction as much to draw on the CPU.

Why: PyTorch draws a CPU dropout mask with ``bernoulli_``, which uses MKL's vectorised random
streams on Intel processors only; elsewhere (AMD EPYC, say) it draws one Mersenne-Twister number
per element, on one thread, and the CnnLstm drops millions of activations per training step.
``bench/bench_accel.py`` measures what it gives to a whole training step.

Here one 64-bit draw from the same generator gives four mask entries: its four 16-bit lanes,
each keeping its low 15 bits (uniform over 0..32767) and compared with ``p * 32768``. The drop
probability is thus ``p`` rounded to a multiple of 1/32768 (0.2 → 0.200012, error < 1.6e-5) and
the kept values are scaled by the exact ``1 / (1 - p_effective)``, so every activation keeps its
expected value, as with ``nn.Dropout``. Masks come from ``torch``'s default CPU generator:
``torch.manual_seed`` makes them reproducible. They differ from ``nn.Dropout``'s masks for the
same seed, so an accelerated run draws other masks than a stock one.

:class:`FastDropout` is what :func:`pneumolens.accel.accelerate_cpu_training` turns the model's
``nn.Dropout`` layers into; wherever :func:`pneumolens.accel.fallback.kernel_serves` says no
(eval mode, other devices, autocast...), and for in-place dropout, it is ``nn.Dropout``. The
backward pass multiplies by the same mask, which is differentiable again (double backward).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import FunctionCtx

from .fallback import kernel_serves

#: Mask entries are uniform over ``0 .. LEVELS - 1``; an entry below ``round(p * LEVELS)`` is dropped.
LEVELS = 1 << 15


def keep_mask(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """A boolean keep-mask shaped and laid out like ``x`` (CPU), and the scale for the kept values."""
    n = x.numel()
    drop_below = int(round(p * LEVELS))
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(generator=generator)  # uniform over 0 .. 2^63 - 1
    keep = (words.view(torch.int16)[:n] & (LEVELS - 1)) >= drop_below
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        b, c, h, w = x.shape
        keep = keep.view(b, h, w, c).permute(0, 3, 1, 2)  # same memory order as x: no strided reads
    else:
        keep = keep.view(x.shape)
    return keep, LEVELS / (LEVELS - drop_below)


class _MaskedScale(torch.autograd.Function):
    """``x * keep * scale`` that saves only the boolean mask for the backward pass."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return (x * keep).mul_(scale)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return (grad * keep).mul_(ctx.scale), None, None


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with fast CPU masks (see the module).

    Made only by swapping the class of an ``nn.Dropout``: the same settings and hooks.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace or not 0.0 < self.p < 1.0 or not kernel_serves(self, x):
            return super().forward(x)
        keep, scale = keep_mask(x, self.p)
        return _MaskedScale.apply(x, keep, scale)
