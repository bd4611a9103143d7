"""Predictor: load a checkpoint once, turn files or arrays into probabilities and labels.

The CLI's ``predict``, the evaluator, the explainers and the web service all go through this
class, so preprocessing, calibration and threshold are applied the same way everywhere.

Two copies of the network live here: ``predictor.model`` is the checkpoint's own
:class:`~pneumolens.model.CnnLstm`, untouched (explanations need gradients through its
modules); plain predictions on CPU go through ``predictor.fast_model``, a BatchNorm-folded
copy computing the same logits faster (:mod:`pneumolens.backends`), built on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import LoadResult, load_images
from .checkpoint import Checkpoint, load_checkpoint
from .errors import CheckpointError, ConfigError, InvalidImageError
from .backends import BACKENDS, FastModel, optimize
from .io import load_image
from .jsonable import jsonable
from .ood import OodGuard

#: Files per unit of work when several threads each decode and predict (``predict_files``): small
#: enough that the last units leave no core idle for long, large enough to fill two ONNX chunks.
PARALLEL_STEP = 32


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image.

    ``ood_score`` and ``in_distribution`` come from the checkpoint's out-of-distribution guard
    (:mod:`pneumolens.ood`) on the same model input: higher scores are less like the training
    films, and ``in_distribution`` is False when the score is above the guard's threshold (the
    image :data:`~pneumolens.ood.WARNING`). Both are None when the checkpoint has no guard. A
    flagged image keeps its probability and label.
    """

    file: str
    probability: float  # calibrated probability of PNEUMONIA
    label: str  # class name at the checkpoint's threshold
    threshold: float
    ood_score: float | None = None
    in_distribution: bool | None = None

    def to_dict(self) -> dict:
        """Plain JSON values; a non-finite number becomes None (JSON has no NaN)."""
        return jsonable(
            {
                "file": self.file,
                "probability": self.probability,
                "label": self.label,
                "threshold": self.threshold,
                "ood_score": self.ood_score,
                "in_distribution": self.in_distribution,
            }
        )


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S) or (S, S) arrays → float (N, 1, S, S) in [0, 1], the model's input.

    On the CPU the conversion runs in NumPy on the calling thread (the same values as PyTorch's
    ``float() / 255``): PyTorch would run it on its OpenMP threads, whose spin-waiting after each
    parallel region takes CPU from ``predict_files``' worker threads (``bench/bench_core.py``
    measures ``predict_files``).
    """
    t = torch.as_tensor(images)
    if t.ndim == 2:
        t = t[None]
    if t.ndim == 3:
        t = t[:, None]
    if t.dtype != torch.uint8:
        return t.float()
    if t.device.type == "cpu":
        return torch.from_numpy(np.divide(t.numpy(), np.float32(255.0), dtype=np.float32))
    return t.float().div_(255.0)


class Predictor:
    """A loaded model ready to predict.

    Args:
        checkpoint: a path, a loaded :class:`Checkpoint`, or ``None`` for the shipped model.
        threshold: override the checkpoint's decision threshold. Default: the checkpoint's.
        batch_size: images per forward pass. Default: 64.
        device: ``"cpu"`` or ``"cuda"``. Default: ``"cpu"``.
        fast: on CPU, predict through the optimised copy of the model: ``True`` (the fastest
            backend that works here, ``"auto"``), a backend name (``"eager"``, ``"compile"``,
            ``"onnx"``), or ``False`` for the plain model. Ignored on other devices.
            Default: True.

    The fast copy is built from the weights at first use; a caller that changes
    ``predictor.model``'s weights afterwards must call :meth:`reset_fast`.

    ``predictor.ood`` is the checkpoint's out-of-distribution guard (None without one); every
    prediction carries its score and flag (:class:`Prediction`). Set it to None to predict
    without the guard.

    Example (the shipped model; a model of your own, from ``pneumolens train --out runs/train``:
    ``Predictor("runs/train/model.pt")``)::

        >>> p = Predictor()                                 # doctest: +SKIP
        >>> p.predict_files(["x.jpeg"])[0][0].label        # doctest: +SKIP
        'PNEUMONIA'
    """

    def __init__(
        self,
        checkpoint: str | Path | Checkpoint | None = None,
        threshold: float | None = None,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        fast: bool | str = True,
    ) -> None:
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise ConfigError(f"threshold must be between 0 and 1, got {threshold}")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        backend = "auto" if fast is True else (fast or None)
        if backend is not None and backend not in BACKENDS:
            raise ConfigError(f"fast must be True, False or one of {', '.join(BACKENDS)}; got {fast!r}")
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.device = torch.device(device)
        self.model = self.checkpoint.model.to(self.device).eval()
        self.threshold = float(self.checkpoint.threshold if threshold is None else threshold)
        self.batch_size = int(batch_size)
        self.size = self.checkpoint.input_size
        self.class_names = self.checkpoint.class_names
        self.ood: OodGuard | None = self.checkpoint.ood
        if self.ood is not None and self.ood.input_size != self.size:
            raise CheckpointError(
                f"the checkpoint's out-of-distribution guard was fitted on {self.ood.input_size}px inputs, "
                f"its model takes {self.size}px"
            )
        self.backend = backend if self.device.type == "cpu" else None
        self._fast: FastModel | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the forward pass

    @property
    def fast_model(self) -> FastModel | None:
        """The optimised CPU copy (built on first access), or None when predicting with the plain model."""
        if self.backend is None:
            return None
        if self._fast is None:
            with self._lock:  # the service calls from several threads; build once
                if self._fast is None:
                    self._fast = optimize(self.model, backend=self.backend)
        return self._fast

    def reset_fast(self) -> None:
        """Forget the optimised copy, so the next prediction rebuilds it from ``self.model``."""
        with self._lock:
            self._fast = None

    def _forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        fast = self.fast_model
        return fast if fast is not None else self.model

    @torch.inference_mode()
    def logits(
        self, images: np.ndarray | torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> np.ndarray:
        """Raw PNEUMONIA logits (float32, shape (N,)) for uint8 arrays (N, S, S) or (S, S), batched.

        ``forward``: the network to run instead of the predictor's own (``predict_files``
        passes the fast model's single-threaded entry point). Default: the fast copy, else the model.
        """
        if isinstance(images, np.ndarray) and not images.flags.writeable:
            images = images.copy()  # e.g. a view of a decoded PIL image; torch wants writable memory
        images = torch.as_tensor(images)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or tuple(images.shape[1:]) != (self.size, self.size):
            raise ValueError(f"expected images of shape (N, {self.size}, {self.size}), got {tuple(images.shape)}")
        if len(images) == 0:
            return np.zeros(0, dtype=np.float32)
        forward = forward or self._forward()
        out = [
            forward(to_input(images[i : i + self.batch_size]).to(self.device)).float().cpu()
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(out).numpy()

    def probabilities(
        self, images: np.ndarray | torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> np.ndarray:
        """Calibrated PNEUMONIA probabilities, float64 (N,): :meth:`Checkpoint.probability` of the logits."""
        return self.checkpoint.probability(self.logits(images, forward))

    # ------------------------------------------------------------------ labels and predictions

    def label_of(self, probability: float) -> str:
        """The class name at this predictor's threshold (PNEUMONIA when ``p >= threshold``)."""
        return self.class_names[1] if probability >= self.threshold else self.class_names[0]

    def predict_arrays(
        self,
        images: np.ndarray,
        names: Sequence[str] | None = None,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> list[Prediction]:
        """Predictions for uint8 arrays (N, S, S), named ``names`` (default ``"0"``, ``"1"``, ...).

        Each carries the out-of-distribution guard's score and flag for its array (:meth:`ood_flags`).
        """
        probs = self.probabilities(images, forward)
        names = list(names) if names is not None else [str(i) for i in range(len(probs))]
        if len(names) != len(probs):
            raise ValueError(f"got {len(names)} names for {len(probs)} images")
        flags = self.ood_flags(images)
        scores, inside = flags if flags is not None else ([None] * len(probs), [None] * len(probs))
        return [
            Prediction(
                n,
                float(p),
                self.label_of(float(p)),
                self.threshold,
                None if s is None else float(s),
                None if d is None else bool(d),
            )
            for n, p, s, d in zip(names, probs, scores, inside)
        ]

    def ood_flags(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
        """The guard's ``(scores, in_distribution)`` for uint8 model inputs (N, S, S) or (S, S).

        ``None`` when the checkpoint has no guard (or ``predictor.ood`` was set to None).
        """
        if self.ood is None:
            return None
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        return self.ood.flags(np.asarray(images))

    def predict_bytes(self, data: bytes, name: str = "<upload>") -> Prediction:
        """Predict one uploaded file; raises :class:`InvalidImageError` naming it."""
        return self.predict_arrays(load_image(data, self.size, name=name)[None], [name])[0]

    def predict_files(
        self, paths: Iterable[str | Path], skip_bad: bool = False, progress: bool = True, use_cache: bool = False
    ) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """Predict files; returns (predictions in input order, bad files as (path, reason)).

        Decoding and inference overlap instead of adding up (Pillow and the model both release
        the GIL). Where the fast model runs single-threaded in parallel (ONNX Runtime, see
        :attr:`FastModel.workers`), each of that many threads decodes a batch and predicts it
        itself, so the cores never wait for each other; otherwise one thread decodes a batch
        ahead while the model runs on the previous one on all cores.

        Raises:
            InvalidImageError: on the first bad file unless ``skip_bad``.
        """
        paths = [str(p) for p in paths]
        fast = self.fast_model
        workers = fast.workers if fast is not None else 1
        step = self.batch_size
        if workers > 1:
            step = max(1, min(step, PARALLEL_STEP, -(-len(paths) // workers)))
        # With several workers the first unit is half size, so the workers decode at different times
        # rather than in lock-step, queueing for the GIL (Pillow's Python-side work) while no core
        # infers (docs/performance.md: the stagger's A/B).
        first = max(1, step // 2) if workers > 1 and len(paths) > step else step
        chunks = [paths[:first]] + [paths[i : i + step] for i in range(first, len(paths), step)] if paths else []
        predictions: list[Prediction] = []
        bad: list[tuple[str, str]] = []
        bar = tqdm(
            total=len(paths), desc="predicting", unit="img", disable=not progress or len(paths) < 50, leave=False
        )

        def work(chunk: list[str]) -> tuple[LoadResult, list[Prediction] | None]:
            res = load_images(chunk, self.size, use_cache=use_cache, workers=1, progress=False)
            if workers == 1 or not res.kept or (res.bad and not skip_bad):
                return res, None
            return res, self.predict_arrays(res.images, [chunk[k] for k in res.kept], forward=fast.serial)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = [pool.submit(work, c) for c in chunks[:workers]]
            for i, chunk in enumerate(chunks):
                res, preds = pending.pop(0).result()
                if i + workers < len(chunks):
                    pending.append(pool.submit(work, chunks[i + workers]))
                if res.bad and not skip_bad:
                    for p in pending:
                        p.cancel()
                    bar.close()
                    raise InvalidImageError(res.bad[0][1])
                bad.extend(res.bad)
                if preds is None and res.kept:  # one worker: it decodes the next batch meanwhile
                    preds = self.predict_arrays(res.images, [chunk[k] for k in res.kept])
                predictions.extend(preds or [])
                bar.update(len(chunk))
        bar.close()
        return predictions, bad
