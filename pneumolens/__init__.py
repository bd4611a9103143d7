"""PneumoLens: a CNN-LSTM pneumonia classifier for chest X-rays, with explanations you can check.

Public API (everything the CLI does is reachable from here)::

    from pneumolens import Predictor, load_checkpoint, CnnLstm, ModelConfig
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "CheckpointError": "errors",
    "DatasetError": "errors",
    "ImageTooLargeError": "errors",
    "InvalidImageError": "errors",
    "PneumoLensError": "errors",
    "UnsupportedDicomError": "errors",
    "Prediction": "inference",
    "Predictor": "inference",
    "CnnLstm": "model",
    "ModelConfig": "model",
}


def __getattr__(name: str):  # PEP 562: import torch only when a torch-backed name is used
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'pneumolens' has no attribute {name!r}")


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
