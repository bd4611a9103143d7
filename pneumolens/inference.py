"""Predictor: load a checkpoint once, turn files or arrays into probabilities and labels.

The CLI's ``predict``, the evaluator, the explainers and the web service all go through this
class, so preprocessing, temperature and threshold are applied the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .cache import load_images
from .checkpoint import Checkpoint, load_checkpoint
from .errors import InvalidImageError
from .io import load_image


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image."""

    file: str
    probability: float  # calibrated probability of PNEUMONIA
    label: str  # class name at the checkpoint's threshold
    threshold: float

    def to_dict(self) -> dict:
        return {"file": self.file, "probability": self.probability, "label": self.label, "threshold": self.threshold}


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S) or (S, S) arrays → float (N, 1, S, S) in [0, 1], the model's input."""
    t = torch.as_tensor(images)
    if t.ndim == 2:
        t = t[None]
    if t.ndim == 3:
        t = t[:, None]
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    return t.float()


class Predictor:
    """A loaded model ready to predict.

    Args:
        checkpoint: a path, a loaded :class:`Checkpoint`, or ``None`` for the shipped model.
        threshold: override the checkpoint's decision threshold. Default: the checkpoint's.
        batch_size: images per forward pass. Default: 64.
        device: ``"cpu"`` or ``"cuda"``. Default: ``"cpu"``.

    Example::

        >>> p = Predictor("runs/demo/model.pt")            # doctest: +SKIP
        >>> p.predict_files(["x.jpeg"])[0].label           # doctest: +SKIP
        'PNEUMONIA'
    """

    def __init__(
        self,
        checkpoint: str | Path | Checkpoint | None = None,
        threshold: float | None = None,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
    ) -> None:
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.device = torch.device(device)
        self.model = self.checkpoint.model.to(self.device).eval()
        self.threshold = float(self.checkpoint.threshold if threshold is None else threshold)
        self.batch_size = int(batch_size)
        self.size = self.checkpoint.input_size
        self.class_names = self.checkpoint.class_names

    @torch.inference_mode()
    def logits(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Raw PNEUMONIA logits for uint8 arrays (N, S, S), batched."""
        x = to_input(images)
        out = [self.model(x[i : i + self.batch_size].to(self.device)).float().cpu() for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Calibrated PNEUMONIA probabilities (the checkpoint's temperature applied)."""
        z = self.logits(images) / self.checkpoint.temperature
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float64)

    def label_of(self, probability: float) -> str:
        return self.class_names[1] if probability >= self.threshold else self.class_names[0]

    def predict_arrays(self, images: np.ndarray, names: Sequence[str] | None = None) -> list[Prediction]:
        probs = self.probabilities(images)
        names = list(names) if names is not None else [str(i) for i in range(len(probs))]
        return [Prediction(n, float(p), self.label_of(float(p)), self.threshold) for n, p in zip(names, probs)]

    def predict_bytes(self, data: bytes, name: str = "<upload>") -> Prediction:
        """Predict one uploaded file; raises :class:`InvalidImageError` naming it."""
        return self.predict_arrays(load_image(data, self.size, name=name)[None], [name])[0]

    def predict_files(
        self, paths: Iterable[str | Path], skip_bad: bool = False, progress: bool = True, use_cache: bool = False
    ) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """Predict files; returns (predictions, bad files with reasons).

        Raises:
            InvalidImageError: on the first bad file unless ``skip_bad``.
        """
        paths = [str(p) for p in paths]
        res = load_images(paths, self.size, use_cache=use_cache, progress=progress, desc="reading")
        if res.bad and not skip_bad:
            raise InvalidImageError(res.bad[0][1])
        return self.predict_arrays(res.images, [paths[i] for i in res.kept]), res.bad
