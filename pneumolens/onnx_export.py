"""The folded model as ONNX, written by PyTorch's exporter (``torch.onnx.export``).

The graph is the exporter's trace of :class:`~pneumolens.folding.FoldedCnnLstm` (or of one of
its two stages), so the architecture is defined once, in :class:`~pneumolens.model.CnnLstm`,
and the folded module and the ONNX graph follow from it.

Exporter: the TorchScript-based one (``dynamo=False``), which PyTorch marks deprecated. It needs
only the ``onnx`` package (``pip install pneumolens[fast]``) and exports faster than the
``torch.export``-based one (``dynamo=True``, PyTorch's default), which gives the same logits but
also needs ``onnxscript``; the export is paid at every predictor's first use
(``bench/results/onnx-export.md`` has the times). Switching is the ``dynamo`` argument plus that dependency.

Exports are kept in memory (:data:`EXPORT_CACHE_SIZE` graphs, least recently used dropped first)
under a digest of everything the exporter reads: the module's class, layout and every parameter
and buffer, the model configuration, the part, the opset and the PyTorch version. A process that
builds several predictors on the same weights (tests, the service's workers, the explanation
runner's fast copy) exports once; different weights always export anew.
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from collections import OrderedDict

import torch
from torch import nn

from .errors import ConfigError
from .folding import FoldedCnnLstm

#: The parts :func:`export_onnx` can write: the whole network (what :mod:`pneumolens.onnx_runtime`
#: runs), or one of its two stages on either side of the last feature map, the conv stage and the
#: LSTM head (``bench/bench_onnx_stages.py`` runs them as separate sessions).
ONNX_PARTS = ("all", "features", "head")

#: ONNX operator set of the exported graphs (readable by every onnxruntime >= 1.14).
OPSET = 17

#: How many exported graphs :func:`export_onnx` keeps in memory (each about the size of the weights).
EXPORT_CACHE_SIZE = 4

_exports: OrderedDict[str, bytes] = OrderedDict()
_exports_lock = threading.Lock()


def onnx_available() -> bool:
    """Whether ONNX graphs can be exported and run here (``pip install pneumolens[fast]``)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def module_digest(module: nn.Module) -> str:
    """SHA-256 of a module's class, its layout (``repr``) and every parameter and buffer (name, dtype, shape, values).

    Two modules of the same class with equal digests compute the same function, so the
    exporter traces the same graph from both.
    """
    h = hashlib.sha256()
    h.update(f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}\n".encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


def _export_key(folded: FoldedCnnLstm, part: str) -> str:
    """Cache key of one export: what the exporter reads, and which exporter reads it."""
    layout = f"channels_last={getattr(folded.features, 'channels_last', None)}"
    return f"{module_digest(folded)}|{folded.config!r}|{layout}|{part}|opset{OPSET}|torch{torch.__version__}"


def clear_export_cache() -> None:
    """Forget every exported graph kept by :func:`export_onnx`."""
    with _exports_lock:
        _exports.clear()


def export_onnx(folded: FoldedCnnLstm, part: str = "all") -> bytes:
    """The folded model, or one of its stages, as a serialised ONNX graph with a dynamic batch axis.

    Args:
        folded: the folded model.
        part: ``all`` (``image`` → ``logit``), ``features`` (``image`` → ``features``, the last
            pooled map (B, C, S/8, S/8)) or ``head`` (``features`` → ``logit``).

    ``all`` is ``features`` followed by ``head``: the folded model without the eager-only
    splitting of large batches into conv chunks. A graph exported before from an equal module
    (same digest, see the module docstring) is returned from memory.
    """
    if part not in ONNX_PARTS:
        raise ConfigError(f"part must be one of {', '.join(ONNX_PARTS)}, got {part!r}")
    key = _export_key(folded, part)
    with _exports_lock:
        graph = _exports.get(key)
        if graph is not None:
            _exports.move_to_end(key)
            return graph
    graph = _export(folded, part)
    with _exports_lock:
        _exports[key] = graph
        while len(_exports) > EXPORT_CACHE_SIZE:
            _exports.popitem(last=False)
    return graph


def _export(folded: FoldedCnnLstm, part: str) -> bytes:
    """Run the exporter (see :func:`export_onnx`)."""
    cfg = folded.config
    s, h = cfg.input_size, cfg.seq_len
    image = torch.rand(2, 1, s, s, generator=torch.Generator().manual_seed(0))
    fmap = torch.rand(2, cfg.channels[-1], h, h, generator=torch.Generator().manual_seed(0))
    module: nn.Module
    module, example, names = {
        "all": (nn.Sequential(folded.features, folded.head), image, ("image", "logit")),
        "features": (folded.features, image, ("image", "features")),
        "head": (folded.head, fmap, ("features", "logit")),
    }[part]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The exporter announces its own deprecation; the tracer flags nn.LSTM's checks of the
        # input's shape (they only raise errors); and the exporter warns that LSTMs traced at a
        # batch size other than 1 may not take other sizes: here their initial states are built
        # from the input's shape (the tests run the graphs at batch sizes 1, 3 and 64).
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.modules\.rnn")
        warnings.filterwarnings("ignore", message=r"Exporting a model to ONNX with a batch_size other than 1")
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_axes={names[0]: {0: "batch"}, names[1]: {0: "batch"}},
        )
    return buf.getvalue()
