"""Choosing how the folded model runs on CPU: plain PyTorch, ``torch.compile`` or ONNX Runtime.

:func:`optimize` folds a trained CnnLstm (:mod:`pneumolens.folding`), builds the requested
backend on the folded copy and wraps it in a :class:`FastModel`. A backend that cannot be built
here, disagrees with PyTorch, or fails later at run time is replaced by the eager folded model,
with the reason kept, so predictions never depend on an optional package.
``bench/bench_core.py`` measures the backends against each other.

Example::

    >>> from pneumolens.model import CnnLstm
    >>> fast = optimize(CnnLstm().eval(), backend="eager")
    >>> fast(torch.rand(2, 1, 128, 128)).shape
    torch.Size([2])
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from .errors import ConfigError
from .folding import FoldedCnnLstm
from .model import CnnLstm
from .onnx_export import onnx_available
from .onnx_runtime import OnnxRunner

log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "compile", "onnx")

#: What ``backend="auto"`` tries, in order. ONNX Runtime was the fastest on the project's CPUs,
#: above all on busy cores and for one image (``bench/bench_core.py``); ``compile`` is never
#: automatic: it compiles again for every new batch size, which costs far more than it saves.
AUTO_ORDER = ("onnx", "eager")

#: Largest max-abs difference in logits accepted between an exported backend and the eager one.
AGREEMENT_TOL = 1e-4


class FastModel:
    """A callable ``float (B, 1, S, S) -> logits (B,)`` for inference on CPU, with its backend.

    Attributes:
        backend: the backend actually in use (``eager``, ``compile`` or ``onnx``).
        requested: the backend asked for.
        eager: the folded model, which the ``eager`` backend runs and every other falls back to.
        setup_seconds: time spent folding / exporting / building the session.
        fallback: why a requested backend was not used (``None`` when it was).
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        backend: str,
        requested: str,
        eager: FoldedCnnLstm,
        setup_seconds: float,
        fallback: str | None = None,
    ) -> None:
        self._fn = fn
        self.backend = backend
        self.requested = requested
        self.eager = eager
        self.setup_seconds = setup_seconds
        self.fallback = fallback

    @property
    def workers(self) -> int:
        """How many threads may usefully call :meth:`serial` at once (1: use ``__call__``).

        The ONNX backend's single-threaded runs scale with the cores; PyTorch's backends
        already use every intra-op thread for each call.
        """
        return self._fn.threads if isinstance(self._fn, OnnxRunner) else 1

    def _check(self, x: torch.Tensor) -> None:
        s = self.eager.config.input_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, s, s):
            raise ValueError(f"expected input of shape (B, 1, {s}, {s}), got {tuple(x.shape)}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, serial=False)

    def serial(self, x: torch.Tensor) -> torch.Tensor:
        """Logits using the calling thread only, where the backend allows (see :attr:`workers`)."""
        return self._forward(x, serial=True)

    def _forward(self, x: torch.Tensor, serial: bool) -> torch.Tensor:
        self._check(x)
        with torch.inference_mode():
            x = x.float()
            if x.shape[0] == 0:
                return x.new_zeros(0)
            if self.backend == "eager":
                return self.eager(x)
            fn = self._fn.serial if serial and isinstance(self._fn, OnnxRunner) else self._fn
            try:
                return fn(x)
            except Exception as exc:  # noqa: BLE001 - any late backend failure (compile on a new shape...) → eager
                self._to_eager(f"{self.backend} failed at run time ({exc.__class__.__name__}: {str(exc)[:200]})")
                return self.eager(x)

    def _to_eager(self, reason: str) -> None:
        log.warning("fast inference: %s; using eager PyTorch", reason)
        self.fallback, self.backend, self._fn = reason, "eager", self.eager

    def __repr__(self) -> str:
        return f"FastModel(backend={self.backend!r}, requested={self.requested!r}, fallback={self.fallback!r})"


def _compiled(folded: FoldedCnnLstm) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` (inductor, C++ codegen); compilation happens at the first call per shape."""
    return torch.compile(folded, dynamic=False)


def check_agreement(fn: Callable[[torch.Tensor], torch.Tensor], folded: FoldedCnnLstm, batch: int = 3) -> float:
    """Max abs difference in logits between ``fn`` and the eager folded model on random input."""
    s = folded.config.input_size
    x = torch.rand(batch, 1, s, s, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return float((fn(x).float() - folded(x)).abs().max())


def optimize(
    model: CnnLstm, backend: str = "auto", threads: int | None = None, channels_last: bool = True
) -> FastModel:
    """Build a fast inference callable for a trained CnnLstm on CPU.

    Args:
        model: the trained network (not modified).
        backend: ``eager`` (folded PyTorch), ``compile`` (``torch.compile`` of the folded model;
            the first call per batch size compiles, which takes long), ``onnx`` (ONNX Runtime on
            the exported graph, checked to agree within :data:`AGREEMENT_TOL`), or ``auto`` (the
            first of :data:`AUTO_ORDER` that works here).
        threads: intra-op threads for ONNX Runtime. Default: ``torch.get_num_threads()``.
        channels_last: NHWC convolutions in the PyTorch backends. Default: True.

    Any backend that cannot be built falls back to ``eager`` with the reason in
    ``FastModel.fallback`` (and a log warning); an unknown backend name is a ConfigError.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    t0 = time.perf_counter()
    folded = FoldedCnnLstm(model, channels_last=channels_last)
    candidates = [b for b in AUTO_ORDER if b != "onnx" or onnx_available()] if backend == "auto" else [backend]
    reasons = []
    for name in candidates:
        if name == "eager":
            break
        try:
            fn = _compiled(folded) if name == "compile" else OnnxRunner(folded, threads)
            if name == "onnx":
                diff = check_agreement(fn, folded)
                if not diff <= AGREEMENT_TOL:
                    raise RuntimeError(f"logits differ from PyTorch by {diff:.2e} > {AGREEMENT_TOL:.0e}")
        except Exception as exc:  # noqa: BLE001 - whatever breaks a backend, eager still works
            first_line = str(exc).splitlines()[0][:200] if str(exc) else ""
            reasons.append(f"{name} unavailable ({exc.__class__.__name__}: {first_line})")
            continue
        return FastModel(fn, name, backend, folded, time.perf_counter() - t0)
    fallback = "; ".join(reasons) or None
    if fallback and backend != "auto":
        log.warning("fast inference: %s; using eager PyTorch", fallback)
    return FastModel(folded, "eager", backend, folded, time.perf_counter() - t0, fallback)
