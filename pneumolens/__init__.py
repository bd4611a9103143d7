"""PneumoLens: a CNN-LSTM pneumonia classifier for chest X-rays, with explanations you can check.

Three lines (:mod:`pneumolens.api`)::

    import pneumolens
    model = pneumolens.load()                        # the shipped model, or pneumolens.load("run/model.pt")
    r = model.predict("film.jpeg")                   # r.probability (calibrated), r.label (at the threshold)
    e = model.explain("film.jpeg", method="gradcam") # e.map: float32 on the film's own pixel grid

Underneath (everything the CLI does is reachable from here)::

    from pneumolens import Predictor, load_checkpoint, CnnLstm, ModelConfig

Names are imported on first use (PEP 562), so ``import pneumolens`` does not import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "Explanation": "api",
    "Model": "api",
    "Results": "api",
    "load": "api",
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
    "Explanation",
    "ImageTooLargeError",
    "InvalidImageError",
    "Model",
    "ModelConfig",
    "PneumoLensError",
    "Prediction",
    "Predictor",
    "Results",
    "UnsupportedDicomError",
    "load",
    "load_checkpoint",
    "save_checkpoint",
]
