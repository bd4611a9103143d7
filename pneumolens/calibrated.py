"""The network as users should call it: image in, calibrated P(PNEUMONIA) out.

:class:`~pneumolens.model.CnnLstm` returns raw logits; the probability the checkpoint's threshold
was chosen on is ``sigmoid(logit / temperature + bias)``, the temperature (and, for Platt
scaling, the bias) fitted on validation. A caller who applies ``sigmoid`` to the raw logits gets
other numbers, and at the threshold sometimes the other label. :class:`CalibratedProbability`
applies the calibration inside the module, and :func:`calibrated_probability` outside one, so that
``pneumolens.load()(x)``, the exported ONNX and TorchScript files and ``Predictor`` agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

#: How a run calibrates its probabilities on validation (``TrainConfig.calibrate``,
#: :func:`pneumolens.metrics.fit_calibration`).
CALIBRATIONS = ("none", "temperature", "platt")


def calibrated_probability(logits: Any, temperature: float = 1.0, bias: float = 0.0) -> np.ndarray:
    """float64 ``sigmoid(logits / temperature + bias)``, for logits as any array (no overflow)."""
    s = np.asarray(logits, dtype=np.float64) / temperature + bias
    return 0.5 * (1.0 + np.tanh(0.5 * s))


class CalibratedProbability(nn.Module):
    """``float32 (B, 1, S, S) in [0, 1]`` → ``float32 (B,)``: ``sigmoid(logits(x) / temperature + bias)``.

    Args:
        logits: a module returning raw PNEUMONIA logits (B,), e.g. a ``CnnLstm`` or its folded copy.
        temperature: the checkpoint's logit temperature (1.0 = none).
        threshold: the decision threshold on the output (PNEUMONIA when ``p >= threshold``); kept
            as a buffer so that an exported module carries it.
        bias: the checkpoint's calibration bias (0.0 = none; Platt scaling fits one).

    Attributes:
        logits: the raw-logit module (uncalibrated: never apply ``sigmoid`` to it directly).
        temperature, bias, threshold: 0-d float32 buffers.
    """

    def __init__(self, logits: nn.Module, temperature: float, threshold: float, bias: float = 0.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.logits = logits
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))
        self.register_buffer("bias", torch.tensor(float(bias), dtype=torch.float32))
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x) / self.temperature + self.bias)
