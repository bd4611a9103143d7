"""PneumoLens: a CNN-LSTM pneumonia classifier for chest X-rays, with explanations you can check.

Public API (everything the CLI does is reachable from here)::

    from pneumolens import Predictor, load_checkpoint, CnnLstm, ModelConfig
"""

from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from .errors import (  # noqa: E402
    CheckpointError,
    DatasetError,
    ImageTooLargeError,
    InvalidImageError,
    PneumoLensError,
    UnsupportedDicomError,
)
from .inference import Prediction, Predictor  # noqa: E402
from .model import CnnLstm, ModelConfig  # noqa: E402

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CnnLstm",
    "DatasetError",
    "ImageTooLargeError",
    "InvalidImageError",
    "ModelConfig",
    "PneumoLensError",
    "Prediction",
    "Predictor",
    "UnsupportedDicomError",
    "load_checkpoint",
    "save_checkpoint",
]
