"""Optional CPU-training accelerator for :class:`pneumolens.model.CnnLstm`.

The model is built from stock ``torch.nn`` layers. This sub-package holds the only custom
autograd code of the project and swaps it in explicitly, the way an accelerator library
optimises a stock model: the training code calls :func:`accelerate_cpu_training` when it trains
on the CPU (switched off by the training config's ``accelerate`` flag). Each swapped module runs
its stock layer wherever its kernel cannot serve — eval mode, no autograd, autocast, non-CPU
tensors, other dtypes, tracing/compiling (:mod:`pneumolens.accel.fallback`) — and its backward
pass stays differentiable for double backward. Inference, explanations and the export never
need it. The one swap that pays on a whole training step (:mod:`pneumolens.accel.swaps`,
measured by ``bench/bench_accel.py``): dropout masks drawn four per random word
(:mod:`pneumolens.accel.dropout`).

:func:`keep_freed_memory` (glibc malloc tuning) is for the training command only; a server
should not call it.
"""

from __future__ import annotations

from ..model import CnnLstm
from .memory import keep_freed_memory
from .swaps import KEPT, apply_swaps

__all__ = ["accelerate_cpu_training", "keep_freed_memory"]


def accelerate_cpu_training(model: CnnLstm) -> list[str]:
    """Swap ``model``'s modules, in place, for the CPU-training kernels that pay.

    Returns the dotted names of the modules swapped by this call (``[]`` when called again:
    idempotent). When any parameter or buffer of ``model`` is not on the CPU, nothing changes and
    ``[]`` is returned. Parameters, buffers and state-dict keys are untouched, so it may be
    called before or after the optimiser is built, and checkpoints load either way.
    """
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" for t in tensors):
        return []
    return apply_swaps(model, KEPT)
