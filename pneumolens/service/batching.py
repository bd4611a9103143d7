"""Concurrent ``/v1/predict`` requests share forward passes: one model call at a time, batched.

Without it every request runs its own batch-of-one forward pass in its own thread, and
concurrent requests fight over the cores. Here each request hands its decoded images to
:class:`PredictionBatcher` and waits; one thread takes every request waiting at that moment (up
to ``max_images`` images), predicts them in one call, and hands each request its own results.
Nothing waits on purpose: a lone request is predicted at once, and under load the requests that
arrive while a batch runs form the next one. ``bench/bench_service.py --server-env`` measures the
service both ways (docs/performance.md has the figures).
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)


class ArrayPredictor(Protocol):
    """What the batcher needs of a predictor (:class:`pneumolens.inference.Predictor` is one)."""

    def predict_arrays(self, images: np.ndarray, names: Sequence[str] | None = None) -> list[Any]: ...


@dataclass
class _Job:
    predictor: ArrayPredictor
    images: np.ndarray
    names: list[str]
    done: Future = field(default_factory=Future)


class PredictionBatcher:
    """Predicts the images of concurrent callers together, in one background thread.

    Args:
        max_images: most images in one model call. Default: 64 (the predictor's batch size).

    A request is never split: one larger than ``max_images`` is predicted on its own (the
    predictor batches it internally). Requests for different predictors are never mixed.
    """

    def __init__(self, max_images: int = 64) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}")
        self.max_images = int(max_images)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: _Job | None = None  # taken from the queue but left for the next batch
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pneumolens-batcher", daemon=True)
        self._thread.start()

    def predict(self, predictor: ArrayPredictor, images: np.ndarray, names: Sequence[str]) -> list[Any]:
        """The predictor's results for ``images`` (N, S, S), in order; blocks until they are ready.

        Raises whatever the predictor raised for the batch the images were part of.
        """
        if self._closed:
            raise RuntimeError("the prediction batcher is closed")
        job = _Job(predictor, np.asarray(images), list(names))
        if len(job.names) != len(job.images):
            raise ValueError(f"got {len(job.names)} names for {len(job.images)} images")
        self._queue.put(job)
        return job.done.result()

    def close(self, timeout: float = 10.0) -> None:
        """Finish the requests already queued, then stop the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread

    def _next_batch(self) -> list[_Job] | None:
        first = self._held or self._queue.get()
        self._held = None
        if first is None:
            return None
        batch, n = [first], len(first.images)
        while n < self.max_images:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # closing: answer what we have, then stop
                self._queue.put(None)
                break
            if job.predictor is not first.predictor or n + len(job.images) > self.max_images:
                self._held = job
                break
            batch.append(job)
            n += len(job.images)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                images = batch[0].images if len(batch) == 1 else np.concatenate([j.images for j in batch])
                results = batch[0].predictor.predict_arrays(images, [name for j in batch for name in j.names])
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                for job in batch:
                    job.done.set_exception(exc)
                continue
            start = 0
            for job in batch:
                job.done.set_result(results[start : start + len(job.images)])
                start += len(job.images)
