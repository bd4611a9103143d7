"""The Python API in three lines: load a model, predict a film, explain it.

::

    import pneumolens
    model = pneumolens.load()                    # the shipped model, or pneumolens.load("run/model.pt")
    r = model.predict("film.dcm")                # a path, array or PIL image -> Prediction; a list -> list
    r.probability, r.label                       # calibrated, at the model's threshold
    e = model.explain("film.jpeg", method="gradcam")   # e.map: float32 on the film's own pixel grid

A thin layer over :class:`~pneumolens.inference.Predictor` (decoding, batching, calibration,
threshold, out-of-distribution guard: the same numbers as ``pneumolens predict``) and
:func:`pneumolens.explain.explain` (the same maps as ``pneumolens explain``). Calling the model on
a tensor gives calibrated probabilities too; the raw network, which returns uncalibrated logits,
is reachable only under the name :attr:`Model.logit_module`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .calibrated import CalibratedProbability
from .checkpoint import SHIPPED, Checkpoint
from .devices import resolve_device
from .errors import InvalidImageError
from .films import Film, as_film, default_name, is_file_source, map_on_film
from .inference import Prediction, Predictor

log = logging.getLogger(__name__)

__all__ = ["Explanation", "Model", "Prediction", "Results", "load"]


class Results(list):
    """A list of results, in input order, with the inputs that could not be read.

    Returned by :meth:`Model.predict` and :meth:`Model.explain` for a list of films.

    Attributes:
        skipped: ``(name, reason)`` for each unreadable input left out (only with ``skip_bad=True``;
            without it the first unreadable input raises).
    """

    def __init__(self, items: Iterable[Any] = (), skipped: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(items)
        self.skipped: list[tuple[str, str]] = list(skipped)


@dataclass(frozen=True, eq=False)
class Explanation:
    """One film's explanation by one method.

    Attributes:
        file: the file name (or ``<array>``, ``<image>``, ``<bytes>``).
        method: ``gradcam``, ``lime``, ``kernelshap``, ``shap``, ``ig`` or ``occlusion``.
        map: float32 (H, W) on the film's own pixel grid (the decoded film's height and width):
            positive = evidence for PNEUMONIA. Resampled from :attr:`input_map`.
        input_map: float32 (S, S), the map as computed, at the model's input size.
        film: uint8 (H, W), the decoded film, for drawing the map over it.
        prediction: the model's :class:`~pneumolens.inference.Prediction` for the film.
        signed: whether the method's maps take both signs (all but Grad-CAM).
        params: every setting that produced the map (layer, samples, baseline, seed...).
        elapsed_s: the method's wall time in seconds (for a list, the call's time shared equally).
    """

    file: str
    method: str
    map: np.ndarray
    input_map: np.ndarray
    film: np.ndarray
    prediction: Prediction
    signed: bool
    params: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def __repr__(self) -> str:
        h, w = self.map.shape
        return (f"Explanation(file={self.file!r}, method={self.method!r}, map=float32 {h}x{w}, "
                f"probability={self.prediction.probability:.4f}, label={self.prediction.label!r})")


def _is_batch(source: Any) -> bool:
    """A list or tuple of films (an array is one film, never a batch)."""
    return isinstance(source, (list, tuple))


class Model:
    """A loaded PneumoLens model: ``predict``, ``explain``, ``export``, and calibrated probabilities when called.

    Build it with :func:`load`. Calling it on a float tensor (B, 1, S, S) in [0, 1] returns the
    calibrated probabilities of PNEUMONIA (B,), the numbers its :attr:`threshold` applies to.

    Attributes:
        predictor: the :class:`~pneumolens.inference.Predictor` underneath (what the CLI uses).
        checkpoint: the loaded :class:`~pneumolens.checkpoint.Checkpoint`.
        source: the checkpoint's path, or None for the shipped model or one passed in memory.
    """

    def __init__(self, predictor: Predictor, source: str | Path | None = None) -> None:
        self.predictor = predictor
        self.checkpoint: Checkpoint = predictor.checkpoint
        self.source = None if source is None else Path(source)
        self._probability_module: CalibratedProbability | None = None

    # ------------------------------------------------------------------ what the model is

    @property
    def threshold(self) -> float:
        """Decision threshold on the calibrated probability: PNEUMONIA when ``p >= threshold``."""
        return self.predictor.threshold

    @property
    def temperature(self) -> float:
        """The logit temperature fitted on validation: ``p = sigmoid(logit / temperature + bias)``."""
        return float(self.checkpoint.temperature)

    @property
    def bias(self) -> float:
        """The calibration bias fitted on validation (0 unless Platt scaling): see :attr:`temperature`."""
        return float(self.checkpoint.bias)

    @property
    def input_size(self) -> int:
        """The side S of the square input the network takes."""
        return int(self.predictor.size)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.predictor.class_names)

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    @property
    def logit_module(self) -> nn.Module:
        """The raw network: float (B, 1, S, S) in [0, 1] → **uncalibrated logits** (B,).

        Its ``sigmoid`` is not the model's probability (the calibration is missing) and its
        labels at :attr:`threshold` can be wrong; use the model itself or :attr:`probability_module`.
        """
        return self.predictor.model

    @property
    def probability_module(self) -> CalibratedProbability:
        """An ``nn.Module`` computing the calibrated probabilities (differentiable; what calling the model runs)."""
        if self._probability_module is None:
            module = CalibratedProbability(self.logit_module, self.temperature, self.threshold, self.bias)
            self._probability_module = module.to(self.device).eval()
        return self._probability_module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated P(PNEUMONIA), float32 (B,), for a float tensor (B, 1, S, S) in [0, 1].

        ``x`` is moved to the model's device; the result comes back on ``x``'s device. Runs
        without gradients: for gradients call :attr:`probability_module`.

        Raises:
            ValueError: a tensor of another shape or type, or values outside [0, 1].
        """
        s = self.input_size
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor (B, 1, {s}, {s}); use model.predict() for files and arrays")
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, s, s):
            raise ValueError(f"expected a float tensor (B, 1, {s}, {s}) in [0, 1], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected float pixels in [0, 1], got {x.dtype} (divide uint8 images by 255)")
        if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise ValueError(f"expected pixels in [0, 1], got {float(x.min()):.4g} to {float(x.max()):.4g}")
        with torch.inference_mode():
            return self.probability_module(x.to(self.device, torch.float32)).to(x.device)

    def __repr__(self) -> str:
        where = str(self.source) if self.source is not None else "shipped model"
        return (f"Model({where!r}, input {self.input_size}x{self.input_size}, threshold {self.threshold:.4f}, "
                f"temperature {self.temperature:.4f}, bias {self.bias:.4f}, device {self.device})")

    # ------------------------------------------------------------------ predictions

    def _films(
        self, sources: list[Any], skip_bad: bool, full: bool = False
    ) -> tuple[list[Film], list[tuple[str, str]]]:
        """Each source decoded (a film without a name is called ``<array>[i]`` after its place), and
        the ``(name, reason)`` of those that could not be, when ``skip_bad``; else the first raises."""
        films: list[Film] = []
        skipped: list[tuple[str, str]] = []
        for i, source in enumerate(sources):
            name = None if is_file_source(source) else f"{default_name(source)}[{i}]"
            try:
                films.append(as_film(source, self.input_size, name=name, full=full))
            except InvalidImageError as exc:
                if not skip_bad:
                    raise
                skipped.append((name or os.fspath(source), str(exc)))
        return films, skipped

    def predict(self, source: Any, skip_bad: bool = False, name: str | None = None) -> Prediction | Results:
        """The calibrated probability of PNEUMONIA and the label at the model's threshold.

        Args:
            source: one film: a path to a JPEG, PNG or DICOM file, its bytes, a NumPy array or
                torch tensor (uint8 (H, W), RGB (H, W, 3), or float (H, W) in [0, 1], any size:
                resized as files are), or a PIL image. Or a list of them.
            skip_bad: for a list: leave unreadable films out (listed in ``result.skipped``)
                instead of raising on the first. Default: False.
            name: for one film: the name its :class:`Prediction` carries (default: the path,
                else ``<array>`` / ``<image>`` / ``<bytes>``).

        Returns:
            a :class:`~pneumolens.inference.Prediction` (``probability``, ``label``, ``threshold``,
            ``ood_score``, ``in_distribution``, ``file``), or for a list a :class:`Results` list
            of them in input order.

        Raises:
            InvalidImageError: an unreadable film (the first one, for a list without
                ``skip_bad``), in one line naming it.
        """
        if not _is_batch(source):
            film = as_film(source, self.input_size, name=name)
            return self.predictor.predict_arrays(film.input[None], [film.name])[0]
        sources = list(source)
        if sources and all(is_file_source(s) for s in sources):
            # files: decoded by several threads while the model runs (what `pneumolens predict` does)
            preds, bad = self.predictor.predict_files(sources, skip_bad=skip_bad, progress=False)
            return Results(preds, bad)
        films, skipped = self._films(sources, skip_bad)
        if not films:
            return Results([], skipped)
        preds = self.predictor.predict_arrays(np.stack([f.input for f in films]), [f.name for f in films])
        return Results(preds, skipped)

    # ------------------------------------------------------------------ explanations

    def _background(self, background: Any) -> tuple[Any, str]:
        """SHAP's background: the caller's, else the training films stored in the checkpoint (the ones
        the CLI and the web service use), else ``background.npy`` beside it, else ``blur``."""
        if background is not None:
            return background, "given" if not isinstance(background, str) else f"fallback:{background}"
        films = getattr(self.predictor.checkpoint, "shap_background", None)
        if films is not None:
            return films, f"{len(films)} training films stored with the model"
        from .explain.shap import background_beside, load_background

        stored = background_beside(self.source if self.source is not None else SHIPPED)
        if stored.is_file():
            arr = load_background(stored)
            if arr.shape[1:] == (self.input_size, self.input_size):
                return arr, str(stored)
        log.info("shap: no stored training background beside the checkpoint; using a blurred copy of the film")
        return "blur", "fallback: blurred film"

    def explain(
        self,
        source: Any,
        method: str = "gradcam",
        seed: int = 0,
        skip_bad: bool = False,
        name: str | None = None,
        **params: Any,
    ) -> Explanation | Results:
        """Explain the PNEUMONIA prediction for a film: a map on the film's own pixel grid.

        Args:
            source: one film, as for :meth:`predict`, or a list of them.
            method: ``gradcam`` (default), ``lime``, ``kernelshap``, ``shap`` (GradientSHAP),
                ``ig`` (Integrated Gradients) or ``occlusion``.
            seed: seeds the sampling methods. Default: 0.
            skip_bad, name: as for :meth:`predict`.
            **params: the method's settings, as on the command line (``layer=`` for gradcam,
                ``n_samples=`` for lime, ``baseline=`` for ig, ``background=`` for shap: training
                films uint8 (K, S, S); default the ``background.npy`` stored beside the
                checkpoint, else a blurred copy of the film, recorded in ``params``).

        Returns:
            an :class:`Explanation` (``map`` float32 (H, W) of the decoded film), or for a list
            a :class:`Results` list of them.

        Raises:
            InvalidImageError: an unreadable film. ValueError: an unknown method or setting
            (:class:`~pneumolens.errors.SettingError` for a value out of its range).
        """
        from .explain.core import INPUT_GRADIENT, PERTURBATION, SIGNED, explain

        if _is_batch(source):
            films, skipped = self._films(list(source), skip_bad, full=True)
        else:
            films, skipped = [as_film(source, self.input_size, name=name, full=True)], []
        if not films:
            return Results([], skipped)
        inputs = np.stack([f.input for f in films])
        predictions = self.predictor.predict_arrays(inputs, [f.name for f in films])
        background_source = None
        if method == "shap":
            params["background"], background_source = self._background(params.get("background"))
        forward = self.predictor.fast_model if method in PERTURBATION else None
        grad_forward = None
        if method in INPUT_GRADIENT and self.device.type == "cpu":
            from .folding import FoldedCnnLstm

            grad_forward = FoldedCnnLstm(self.logit_module)  # same gradients, faster on the CPU
        att = explain(self.logit_module, inputs, method, seed=seed, forward=forward, grad_forward=grad_forward,
                      **params)
        record = dict(att.params)
        if background_source is not None:
            record["background_source"] = background_source
        out = [
            Explanation(
                file=film.name,
                method=method,
                map=map_on_film(amap, film.gray.shape),
                input_map=amap,
                film=film.gray,
                prediction=pred,
                signed=method in SIGNED,
                params=record,
                elapsed_s=att.elapsed_s / len(films),
            )
            for film, amap, pred in zip(films, att.maps, predictions)
        ]
        return Results(out, skipped) if _is_batch(source) else out[0]

    # ------------------------------------------------------------------ export

    def export(self, path: str | Path, format: str | None = None) -> Any:
        """Write the model as one ONNX or TorchScript file computing calibrated probabilities.

        ``format``: ``onnx`` or ``torchscript``; default from the suffix (``.onnx``, else
        TorchScript). Returns the :class:`~pneumolens.export.ExportResult`. See :mod:`pneumolens.export`.
        """
        from .export import export_model, format_from_suffix

        return export_model(self.checkpoint, format or format_from_suffix(path), path, threshold=self.threshold)


def load(
    checkpoint: str | Path | Checkpoint | None = None,
    device: str | torch.device | None = "auto",
    threshold: float | None = None,
    batch_size: int = 64,
) -> Model:
    """Load a model for :meth:`Model.predict`, :meth:`Model.explain` and :meth:`Model.export`.

    Args:
        checkpoint: a ``model.pt`` written by ``pneumolens train`` (or its run folder), a loaded
            :class:`~pneumolens.checkpoint.Checkpoint`, or None for the model shipped in the package.
        device: ``auto`` (a CUDA GPU when one is visible, else the CPU), ``cpu`` or ``cuda``.
        threshold: override the checkpoint's decision threshold. Default: the checkpoint's.
        batch_size: films per forward pass. Default: 64.

    Raises:
        CheckpointError: a missing or foreign checkpoint. ConfigError: ``cuda`` without a GPU,
        or a threshold outside [0, 1].
    """
    dev = resolve_device(device, option="device")
    predictor = Predictor(checkpoint, threshold=threshold, batch_size=batch_size, device=dev)
    source = None if checkpoint is None or isinstance(checkpoint, Checkpoint) else Path(checkpoint)
    return Model(predictor, source)
