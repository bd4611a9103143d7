"""Conv blocks that max-pool before the ReLU in training.

Why: ReLU and 2x2 max-pooling commute (ReLU is monotone), so pooling first gives the same values
and the same gradients while the ReLU and its backward touch a quarter of the memory.
``bench/bench_accel.py`` measures what it gives to a whole training step. In eval mode (and
wherever :func:`pneumolens.accel.fallback.kernel_serves` says no) the written order runs, so a
hook on ``relu`` (Grad-CAM) sees the full-size map.
"""

from __future__ import annotations

import torch

from ..model import ConvBlock
from .fallback import kernel_serves


class PoolFirstBlock(ConvBlock):
    """A :class:`ConvBlock` that runs conv → BN → pool → ReLU → dropout in training.

    Made only by swapping the class of a ``ConvBlock``: the same modules.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if kernel_serves(self, y):
            return self.drop(self.relu(self.pool(y)))
        return self.drop(self.pool(self.relu(y)))
