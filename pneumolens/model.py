"""The original project's CNN-LSTM, as a plain ``nn.Module`` that returns one logit per image.

Architecture (``reference/seed-implementation.md``): three conv blocks (32, 64, 128 filters;
Conv 3x3 same → BatchNorm → ReLU → MaxPool 2 → Dropout), the 128x16x16 map read as a sequence
of 16 rows of 16·128 = 2048 features (channels-last order, as Keras does), LSTM(256, all steps)
→ BatchNorm → Dropout, LSTM(128, last step) → BatchNorm → Dropout, Dense 256 and 128 with
BatchNorm, ReLU and Dropout, and one output. 2,719,681 parameters at 128x128.

The module returns the *logit* of PNEUMONIA; the sigmoid lives in the loss and the predictor,
which is numerically safer and what every attribution method should explain.

Every leaf module is a stock ``torch.nn`` layer and ``forward`` runs them in the written order,
so autocast, double backward, other devices, hooks and exporters work as they do for any
PyTorch model. CPU training may swap in faster kernels explicitly with
:func:`pneumolens.accel.accelerate_cpu_training`; the model does not depend on it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .errors import ConfigError
from .fieldtypes import check_scalar_types


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network; saved in every checkpoint.

    Attributes:
        input_size: side of the square grayscale input. Default: 128 (the original).
        channels: filters of the three conv blocks. Default: (32, 64, 128).
        conv_dropout: dropout after each conv block. Default: (0.2, 0.3, 0.4).
        lstm_units: units of the two LSTM layers. Default: (256, 128).
        lstm_dropout: dropout after each LSTM. Default: 0.4.
        dense_units: units of the two dense layers. Default: (256, 128).
        dense_dropout: dropout after each dense layer. Default: 0.5.
        bn_momentum: PyTorch BatchNorm momentum (weight of the new batch in the running
            statistics). Default: 0.01, Keras's 0.99 — the original. With few steps per epoch
            (large batches) the running statistics then lag far behind the weights.
    """

    input_size: int = 128
    channels: tuple[int, ...] = (32, 64, 128)
    conv_dropout: tuple[float, ...] = (0.2, 0.3, 0.4)
    lstm_units: tuple[int, int] = (256, 128)
    lstm_dropout: float = 0.4
    dense_units: tuple[int, ...] = (256, 128)
    dense_dropout: float = 0.5
    bn_momentum: float = 0.01

    def __post_init__(self) -> None:
        check_scalar_types(self, "model.")
        self.channels = tuple(int(c) for c in self.channels)
        self.conv_dropout = tuple(float(d) for d in self.conv_dropout)
        self.lstm_units = tuple(int(u) for u in self.lstm_units)  # type: ignore[assignment]
        self.dense_units = tuple(int(u) for u in self.dense_units)
        if not 0.0 < self.bn_momentum <= 1.0:
            raise ConfigError(f"model.bn_momentum must be in (0, 1], got {self.bn_momentum}")
        if len(self.channels) != len(self.conv_dropout):
            raise ConfigError("model.channels and model.conv_dropout must have the same length")
        if len(self.lstm_units) != 2:
            raise ConfigError("model.lstm_units must name exactly two LSTM sizes")
        stride = 2 ** len(self.channels)
        if self.input_size % stride or self.input_size < stride:
            raise ConfigError(f"model.input_size must be a multiple of {stride}, got {self.input_size}")

    @property
    def seq_len(self) -> int:
        """Rows of the last feature map = LSTM time steps (16 at 128x128)."""
        return self.input_size // 2 ** len(self.channels)

    @property
    def seq_features(self) -> int:
        """Features per time step: width x channels (2048 at 128x128)."""
        return self.seq_len * self.channels[-1]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


class ConvBlock(nn.Sequential):
    """Conv 3x3 (same) → BatchNorm → ReLU → MaxPool 2 → Dropout."""

    def __init__(self, c_in: int, c_out: int, dropout: float, momentum: float = 0.01) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=momentum)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(dropout)


class DenseBlock(nn.Sequential):
    """Linear → BatchNorm → ReLU → Dropout."""

    def __init__(self, n_in: int, n_out: int, dropout: float, momentum: float = 0.01) -> None:
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)
        self.bn = nn.BatchNorm1d(n_out, eps=1e-3, momentum=momentum)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(dropout)


class CnnLstm(nn.Module):
    """CNN feature extractor read row by row by two LSTMs; one PNEUMONIA logit per image.

    Input: float tensor (B, 1, S, S) with values in [0, 1] (pixels / 255).
    Output: logits (B,). ``torch.sigmoid(logits)`` is the probability of PNEUMONIA.

    Submodules by dotted name (for Grad-CAM target layers): ``features.block1`` …
    ``features.block3`` (each with ``.conv``, ``.bn``, ``.relu``, ``.pool``, ``.drop``),
    ``lstm1``, ``lstm2``, ``head.dense1``, ``head.dense2``, ``head.out``.

    BatchNorm uses Keras's defaults (eps 1e-3, momentum 0.99 ≙ PyTorch momentum 0.01) unless
    ``config.bn_momentum`` says otherwise.

    Example::

        >>> net = CnnLstm(ModelConfig())
        >>> net.eval()(torch.rand(2, 1, 128, 128)).shape
        torch.Size([2])
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ModelConfig()
        blocks, c_in = [], 1
        for i, (c, d) in enumerate(zip(cfg.channels, cfg.conv_dropout), start=1):
            blocks.append((f"block{i}", ConvBlock(c_in, c, d, cfg.bn_momentum)))
            c_in = c
        self.features = nn.Sequential(OrderedDict(blocks))
        u1, u2 = cfg.lstm_units
        self.lstm1 = nn.LSTM(cfg.seq_features, u1, batch_first=True)
        self.bn1 = nn.BatchNorm1d(u1, eps=1e-3, momentum=cfg.bn_momentum)
        self.drop1 = nn.Dropout(cfg.lstm_dropout)
        self.lstm2 = nn.LSTM(u1, u2, batch_first=True)
        self.bn2 = nn.BatchNorm1d(u2, eps=1e-3, momentum=cfg.bn_momentum)
        self.drop2 = nn.Dropout(cfg.lstm_dropout)
        dense, n_in = [], u2
        for i, n in enumerate(cfg.dense_units, start=1):
            dense.append((f"dense{i}", DenseBlock(n_in, n, cfg.dense_dropout, cfg.bn_momentum)))
            n_in = n
        dense.append(("out", nn.Linear(n_in, 1)))
        self.head = nn.Sequential(OrderedDict(dense))

    def to_sequence(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) feature map → (B, H, W·C) sequence, one step per row, channels-last."""
        b, c, h, w = fmap.shape
        return fmap.permute(0, 2, 3, 1).reshape(b, h, w * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.features(x)  # (B, 128, 16, 16)
        seq = self.to_sequence(fmap)  # (B, 16, 2048)
        seq, _ = self.lstm1(seq)  # (B, 16, 256)
        seq = self.drop1(self.bn1(seq.transpose(1, 2)).transpose(1, 2))  # BN over features, stats over B and T
        seq, _ = self.lstm2(seq)  # (B, 16, 128)
        last = self.drop2(self.bn2(seq[:, -1]))  # (B, 128)
        return self.head(last).squeeze(-1)  # (B,)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
