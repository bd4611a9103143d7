"""The first block's convolution and training-mode BatchNorm computed as one convolution.

Why: the first block turns one grey channel into 32 feature maps at full resolution, so its
BatchNorm reads and writes the largest tensor of the network twice forward and three times
backward. With a single input channel, every output of the 3x3 convolution is ``w · p + b`` for
the image's 3x3 patch ``p``, so the batch mean and variance of each output channel follow from
the 9-vector mean and 9x9 covariance of the patches, which are cheap to compute from the image
alone. BatchNorm's affine normalisation then folds into the convolution's weights and bias, and
the convolution writes the normalised maps directly. It is the same function of the parameters,
and autograd differentiates it through the batch statistics as BatchNorm's backward does; the
convolution bias, which BatchNorm cancels, gets exactly zero gradient.
``bench/bench_accel.py`` measures what it gives to a whole training step.

It needs the batch statistics of the input, which are computed without gradient: so it applies
only where :func:`pneumolens.accel.fallback.kernel_serves` says yes, to a 3x3 same-padding
convolution of a single-channel input that does not itself require a gradient (the images),
followed by an affine BatchNorm2d that tracks running statistics. The running statistics are
updated as BatchNorm would. Forward hooks on the two modules do not fire on this path (eval
mode — Grad-CAM — uses the modules as they are).
"""

from __future__ import annotations

import torch
from torch import nn

from ..model import ConvBlock
from .conv import _Conv3x3, fits, patches
from .fallback import kernel_serves


def applies(x: torch.Tensor, conv: nn.Conv2d, bn: nn.Module) -> bool:
    """Whether :func:`conv_bn` can stand in for ``bn(conv(x))`` here."""
    return (
        fits(conv)
        and x.dim() == 4
        and conv.in_channels == 1
        and not x.requires_grad
        and isinstance(bn, nn.BatchNorm2d)
        and bn.training
        and bn.affine
        and bn.track_running_stats
        and bn.num_features == conv.out_channels
        and kernel_serves(conv, x, conv.weight, conv.bias, bn.weight, bn.bias)
    )


@torch.no_grad()
def patch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (9,) and biased covariance (9, 9) of the zero-padded 3x3 patches of (N, 1, H, W) images."""
    # The same unfold runs again in the convolution's weight gradient; keeping it from here to
    # the backward pass would hold 9 floats per pixel for little gain.
    p = patches(x)
    mean = p.mean((0, 2))
    centred = (p - mean[None, :, None]).transpose(0, 1).reshape(9, -1)
    return mean, centred @ centred.t() / centred.shape[1]


def conv_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``bn(conv(x))`` in training mode, as one convolution with folded weights (see the module)."""
    mean_p, cov_p = patch_moments(x)
    c = conv.out_channels
    w = conv.weight.reshape(c, 9)
    bias = conv.bias if conv.bias is not None else torch.zeros(c, dtype=x.dtype, device=x.device)
    mean = w @ mean_p + bias  # each channel's batch mean ...
    var = ((w @ cov_p) * w).sum(1)  # ... and biased batch variance
    scale = bn.weight * torch.rsqrt(var + bn.eps)
    # Same element order as conv.weight for one input channel: keep its strides (channels-last
    # weights keep the output channels-last).
    w_folded = (scale[:, None] * w).as_strided(conv.weight.shape, conv.weight.stride())
    b_folded = bn.bias + scale * (bias - mean)
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        count = x.shape[0] * x.shape[2] * x.shape[3]
        bn.running_mean.lerp_(mean.detach(), momentum)
        bn.running_var.lerp_(var.detach() * (count / max(count - 1, 1)), momentum)
    return _Conv3x3.apply(x, w_folded, b_folded)


class FoldedFirstBlock(ConvBlock):
    """A :class:`ConvBlock` whose training pass runs :func:`conv_bn` where it :func:`applies`.

    Made only by swapping the class of the model's first ``ConvBlock``: the same modules.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if applies(x, self.conv, self.bn):
            return self.drop(self.pool(self.relu(conv_bn(x, self.conv, self.bn))))
        return super().forward(x)
