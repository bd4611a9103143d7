"""Which modules of a :class:`CnnLstm` each accelerated kernel replaces, and the swapping itself.

A swap changes a module's class, in place, to a subclass that adds a faster CPU training pass
and otherwise runs the parent's ``forward``: parameters, buffers, hooks, state-dict keys and the
optimiser's references stay as they are. Swapping is idempotent: a module already swapped is
left alone and not reported again.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..model import CnnLstm, ConvBlock
from . import conv, convbn, dropout, lstm, poolfirst


def _swap(model: CnnLstm, name: str, cls: type[nn.Module]) -> list[str]:
    module = model.get_submodule(name)
    if isinstance(module, cls):
        return []
    module.__class__ = cls
    return [name]


def _dropouts(model: CnnLstm) -> list[str]:
    names = [n for n, m in model.named_modules() if type(m) is nn.Dropout]
    return [s for n in names for s in _swap(model, n, dropout.FastDropout)]


def _convs(model: CnnLstm) -> list[str]:
    names = [n for n, m in model.named_modules() if type(m) is nn.Conv2d and conv.fits(m)]
    return [s for n in names for s in _swap(model, n, conv.BlockedConv2d)]


def _first_lstm(model: CnnLstm) -> list[str]:
    # Only the first LSTM: the second (256 inputs, 128 units) is too small for the unrolled pass to pay.
    return _swap(model, "lstm1", lstm.UnrolledLSTM) if type(model.lstm1) is nn.LSTM and lstm.fits(model.lstm1) else []


def _first_block(model: CnnLstm) -> list[str]:
    block = model.features.block1
    return _swap(model, "features.block1", convbn.FoldedFirstBlock) if type(block) is ConvBlock else []


def _pool_first(model: CnnLstm) -> list[str]:
    names = [n for n, m in model.features.named_children() if type(m) is ConvBlock]
    return [s for n in names for s in _swap(model, f"features.{n}", poolfirst.PoolFirstBlock)]


#: Every swap by name, in the order they are applied.
SWAPS: dict[str, Callable[[CnnLstm], list[str]]] = {
    "dropout": _dropouts,
    "conv": _convs,
    "lstm": _first_lstm,
    "fold": _first_block,
    "pool-first": _pool_first,
}

#: The swaps :func:`pneumolens.accel.accelerate_cpu_training` applies: those that pay on a whole
#: training step (``bench/bench_accel.py``; results in ``bench/results/accel-ab.md``).
KEPT: tuple[str, ...] = ("dropout", "conv", "lstm", "fold", "pool-first")


def apply_swaps(model: CnnLstm, names: tuple[str, ...] | list[str]) -> list[str]:
    """Apply the named swaps to ``model`` in place; the dotted names of the modules swapped now."""
    unknown = set(names) - set(SWAPS)
    if unknown:
        raise ValueError(f"unknown accelerator swaps: {sorted(unknown)}")
    return [m for key in SWAPS if key in names for m in SWAPS[key](model)]
