"""ONNX Runtime sessions on the exported folded model, and how batches are spread over the cores.

:class:`OnnxRunner` holds two CPU sessions on the graph of
:func:`~pneumolens.onnx_export.export_onnx`: one on all threads (small batches, lowest latency)
and one single-threaded (large batches and ``Predictor.predict_files``, which run it from
several threads at once, one per core). ``bench/bench_core.py`` measures the backends against
each other; ``bench/bench_onnx_stages.py`` measures these runs against running the conv stage and
the LSTM head as separate graphs.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .folding import FoldedCnnLstm
from .onnx_export import export_onnx

#: Images per single-threaded run (:meth:`OnnxRunner.serial`). Larger runs are no faster, and
#: grow the session's memory arena, which keeps the largest run's activations.
ONNX_CHUNK = 16

#: Batches of at least this many images are split across single-threaded runs in parallel;
#: smaller ones, down to one image, run on all threads at once.
PARALLEL_MIN = 16


def onnx_session(graph: bytes, threads: int) -> Any:
    """An ONNX Runtime CPU session on a serialised graph, with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])


class OnnxRunner:
    """ONNX Runtime on the folded model: a multi-threaded session for latency, single-threaded runs for throughput.

    A batch of fewer than :data:`PARALLEL_MIN` images runs on one session whose ``threads``
    intra-op threads split every operator. A larger batch is cut into chunks that ``threads``
    workers run at the same time on a single-threaded session: no barrier after every operator,
    so the cores never wait for each other. :meth:`serial` is that single-threaded run, for
    callers that bring their own threads (``Predictor.predict_files``). ONNX Runtime sessions
    may be run from several threads at once.

    ORT keeps its activations in an arena that only grows with the largest batch seen, per
    session: the single-threaded session sees at most :data:`ONNX_CHUNK` images per run, the
    multi-threaded one fewer than :data:`PARALLEL_MIN`.
    """

    def __init__(self, folded: FoldedCnnLstm, threads: int | None = None, chunk: int | None = None) -> None:
        self.threads = max(1, int(threads or torch.get_num_threads()))
        self.chunk = int(chunk or ONNX_CHUNK)
        graph = export_onnx(folded)
        self._wide = onnx_session(graph, self.threads)
        self._narrow = onnx_session(graph, 1)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @staticmethod
    def _run(session: Any, arr: np.ndarray) -> np.ndarray:
        return session.run(None, {session.get_inputs()[0].name: arr})[0]

    @staticmethod
    def _split(x: torch.Tensor | np.ndarray, size: int) -> list[np.ndarray]:
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        return [arr[i : i + size] for i in range(0, len(arr), size)]

    def _one_thread(self, arr: np.ndarray) -> np.ndarray:
        """Logits of one chunk, computed on the calling thread."""
        return self._run(self._narrow, arr)

    def serial(self, x: torch.Tensor) -> torch.Tensor:
        """Logits computed on the calling thread only (several threads may call this at once)."""
        return torch.from_numpy(np.concatenate([self._one_thread(c) for c in self._split(x, self.chunk)]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n < PARALLEL_MIN:
            return torch.from_numpy(np.concatenate([self._run(self._wide, c) for c in self._split(x, self.chunk)]))
        if self.threads == 1:
            return self.serial(x)
        size = min(self.chunk, -(-n // self.threads))  # every worker gets at least one chunk
        return torch.from_numpy(np.concatenate(list(self._executor().map(self._one_thread, self._split(x, size)))))

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pneumolens-onnx")
            return self._pool
