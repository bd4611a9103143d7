"""Which modules of a :class:`CnnLstm` each accelerated kernel replaces, and the swapping itself.

A swap changes a module's class, in place, to a subclass that adds a faster CPU training pass
and otherwise runs the parent's ``forward``: parameters, buffers, hooks, state-dict keys and the
optimiser's references stay as they are. Swapping is idempotent: a module already swapped is
left alone and not reported again.

Only swaps that pay on a whole training step stay here (``bench/bench_accel.py``, results in
``bench/results/accel-ab.md``). Blocked convolution weight gradients, an unrolled first LSTM, the
first block's convolution folded with its BatchNorm and max-pooling before the ReLU were measured
the same way and removed (``bench/results/accel-candidates.md``; their code is in the git
history, commit 36806ac).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..model import CnnLstm
from .dropout import FastDropout


def _swap(model: CnnLstm, name: str, cls: type[nn.Module]) -> list[str]:
    module = model.get_submodule(name)
    if isinstance(module, cls):
        return []
    module.__class__ = cls
    return [name]


def _dropouts(model: CnnLstm) -> list[str]:
    names = [n for n, m in model.named_modules() if type(m) is nn.Dropout]
    return [s for n in names for s in _swap(model, n, FastDropout)]


#: Every swap by name, in the order they are applied.
SWAPS: dict[str, Callable[[CnnLstm], list[str]]] = {
    "dropout": _dropouts,
}

#: The swaps :func:`pneumolens.accel.accelerate_cpu_training` applies.
KEPT: tuple[str, ...] = ("dropout",)


def apply_swaps(model: CnnLstm, names: tuple[str, ...] | list[str]) -> list[str]:
    """Apply the named swaps to ``model`` in place; the dotted names of the modules swapped now."""
    unknown = set(names) - set(SWAPS)
    if unknown:
        raise ValueError(f"unknown accelerator swaps: {sorted(unknown)}")
    return [m for key in SWAPS if key in names for m in SWAPS[key](model)]
