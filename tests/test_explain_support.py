"""Support for the explanation tests (no tests here): small models and images whose answers are known by construction."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from pneumolens.model import CnnLstm, ModelConfig

TINY = ModelConfig(input_size=32, channels=(4, 8, 8), conv_dropout=(0.0, 0.0, 0.0), lstm_units=(8, 4), dense_units=(8, 8))


class QuadrantNet(nn.Module):
    """logit = 8 * mean over the top-left quadrant of relu(conv1x1(x)) - 1: only that quadrant matters.

    The input is masked to the quadrant before a 1x1 convolution (weight 1), so the conv
    activations (what Grad-CAM sees) are zero elsewhere and every pixel outside has exactly zero
    influence. Brightening the quadrant raises the logit. The block ends in a 1x1 max-pool (an
    identity) so that Grad-CAM's default layer, ``features.<last block>.pool``, exists.
    """

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        conv = nn.Conv2d(1, 2, kernel_size=1)
        with torch.no_grad():
            conv.weight.fill_(1.0)
            conv.bias.zero_()
        self.features = nn.Sequential(OrderedDict(block1=nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU(), pool=nn.MaxPool2d(1)))))
        self.head = nn.Sequential(OrderedDict(out=nn.Linear(1, 1)))
        with torch.no_grad():
            self.head.out.weight.fill_(8.0)
            self.head.out.bias.fill_(-1.0)
        mask = torch.zeros(1, 1, size, size)
        mask[..., : size // 2, : size // 2] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x * self.mask)  # (B, 2, S, S), zero outside the quadrant
        s = a.sum(dim=(1, 2, 3)) / self.mask.sum() / 2
        return self.head(s[:, None]).squeeze(-1)


def region_mask(size: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[: size // 2, : size // 2] = True
    return m


def quadrant_images(n: int = 2, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 (n, S, S): textured dark background, a brighter textured top-left quadrant."""
    rng = np.random.default_rng(seed)
    img = rng.integers(20, 90, size=(n, size, size))
    img[:, : size // 2, : size // 2] += 120
    return img.clip(0, 255).astype(np.uint8)


def tiny_cnnlstm(seed: int = 0) -> CnnLstm:
    """A small CnnLstm with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = CnnLstm(TINY)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def textured_images(n: int = 3, size: int = 32, seed: int = 1) -> np.ndarray:
    """uint8 (n, S, S) smooth random images with some structure (so SLIC finds regions)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        f = sum(rng.random() * np.sin(2 * np.pi * (rng.integers(1, 4) * xx + rng.integers(1, 4) * yy + rng.random()))
                for _ in range(3))
        f = (f - f.min()) / (np.ptp(f) + 1e-9)
        out.append((f * 200 + rng.integers(0, 40, size=(size, size))).clip(0, 255))
    return np.stack(out).astype(np.uint8)


def hook_count(model: nn.Module) -> int:
    """Forward / backward hooks registered on any submodule."""
    n = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            n += len(getattr(m, attr, {}) or {})
    return n


@pytest.fixture(autouse=False)
def one_thread():
    """One torch thread for the test (far faster than two on a busy 2-core machine), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
