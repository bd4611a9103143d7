"""An inference-only copy of a trained CnnLstm, rewritten for speed on CPU.

Why: in eval mode every BatchNorm is a fixed affine map and every Dropout is the identity, so
both can be folded into the neighbouring weights; the result computes the same logits with
fewer passes over memory. On top of that: channels-last convolutions (oneDNN's fast layout),
max-pool before ReLU (they commute, and the ReLU then touches a quarter of the values), and a
choice of backend (plain PyTorch, ``torch.compile``, or ONNX Runtime).

The original :class:`~pneumolens.model.CnnLstm` is never modified: explanations need
gradients through its own modules (Grad-CAM hooks ``features.block3``), so the predictor
keeps it as ``predictor.model`` and uses the folded copy only for plain predictions.

Example::

    >>> from pneumolens.model import CnnLstm
    >>> fast = optimize(CnnLstm().eval(), backend="eager")
    >>> fast(torch.rand(2, 1, 128, 128)).shape
    torch.Size([2])
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .errors import ConfigError
from .model import CnnLstm

log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "compile", "onnx")

#: What ``backend="auto"`` tries, in order (``bench/bench_core.py``, 2-core AMD EPYC, AVX2): ONNX
#: Runtime did about the same work per image as the chunked eager model on one thread, and ran
#: 2-3x faster on two busy cores, with 3-4x lower one-image latency. ``compile`` is never
#: automatic: it costs ~1 min of compilation per batch size and was slower than ONNX Runtime.
AUTO_ORDER = ("onnx", "eager")

#: Images per single-threaded ONNX Runtime run (:class:`OnnxRunner`): the LSTM head sees this
#: many feature maps at once, the conv stage :data:`FEATURES_CHUNK` images at a time. With the
#: whole graph per run, 16 ≈ 32 ≈ 64 images per call were the same speed, while the session's
#: memory arena grew with the largest call (predicting 512 files: 565 MB resident with 16, 734
#: MB with 32); the staged head's activations are small at any of these sizes.
ONNX_CHUNK = 16

#: Images per call of the conv stage on the single-threaded path (:meth:`OnnxRunner.serial`).
#: One image's activations (2 MB after the first convolution) stay in the core's cache, where
#: :data:`ONNX_CHUNK` images' (32 MB) do not: per operator on one thread, the second and third
#: convolutions took 1.75 ms per image in calls of 1-2 images against 1.91-2.07 ms in calls of
#: 16-32, the first block 0.31 against 0.63 ms. The LSTMs want the opposite (the first: 1.97 ms
#: per image alone, 1.04 ms in 16), so the head runs on the whole chunk. ``predict_files`` on 512
#: dataset files, 16 interleaved rounds (``bench/bench_onnx_stages.py``, 2-core EPYC): 292
#: against 277 images/s for whole-graph runs, x1.05 median per round; 2 images per call: 281.
FEATURES_CHUNK = 1

#: Batches of at least this many images are split across single-threaded runs in parallel
#: (:class:`OnnxRunner`); smaller ones, down to one image, run on all threads at once.
PARALLEL_MIN = 16

#: Largest max-abs difference in logits accepted between an exported backend and the eager one.
AGREEMENT_TOL = 1e-4


# --------------------------------------------------------------------------- BatchNorm folding


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``y = x * scale + shift`` (per feature), in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError(f"cannot fold BatchNorm without running statistics ({bn})")
    var = bn.running_var.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.detach().double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def fold_bn_after(layer: nn.Conv2d | nn.Linear, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """In place: ``bn(layer(x)) == layer'(x)`` (BatchNorm on the layer's outputs)."""
    scale, shift = _bn_affine(bn)
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(scale)
    shape = (-1,) + (1,) * (w.ndim - 1)
    new_w, new_b = w * scale.view(shape), b * scale + shift
    layer.weight = nn.Parameter(new_w.to(layer.weight.dtype), requires_grad=False)
    layer.bias = nn.Parameter(new_b.to(layer.weight.dtype), requires_grad=False)


def fold_bn_before(
    bn: nn.modules.batchnorm._BatchNorm, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``W @ bn(x) + b == W' @ x + b'`` for a (out, in) weight: returns ``(W', b')``."""
    scale, shift = _bn_affine(bn)
    w = weight.detach().double()
    return (w * scale[None, :]).to(weight.dtype), (bias.detach().double() + w @ shift).to(weight.dtype)


def fold_bn_into_lstm(bn: nn.modules.batchnorm._BatchNorm, lstm: nn.LSTM) -> None:
    """In place: ``lstm(bn(x)) == lstm'(x)`` by rewriting the first layer's input weights."""
    if lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size:
        raise ConfigError("BatchNorm folding supports single-layer, unidirectional LSTMs only")
    if not lstm.bias:
        raise ConfigError("BatchNorm folding into an LSTM needs its bias vectors")
    w, b = fold_bn_before(bn, lstm.weight_ih_l0, lstm.bias_ih_l0)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(w)
        lstm.bias_ih_l0.copy_(b)


class FoldedCnnLstm(nn.Module):
    """The CnnLstm with BatchNorm folded away and Dropout removed: same logits, eval only.

    Args:
        model: a trained :class:`CnnLstm` (its train/eval mode does not matter: the running
            statistics are used, as in eval mode). It is copied, never changed.
        channels_last: run the convolutions in NHWC memory layout. Default: True.
        conv_chunk: run the conv stage on at most this many images at a time (0: all at once).
            Keeps every activation well under glibc's 32 MB mmap threshold and in cache: at
            batch 64 the first block's output alone is 134 MB, and allocating that afresh on
            every call costs ~90,000 page faults. The LSTMs still see the whole batch.
            Default: 8.
    """

    def __init__(self, model: CnnLstm, channels_last: bool = True, conv_chunk: int = 8) -> None:
        super().__init__()
        src = copy.deepcopy(model).float().cpu().eval()
        self.config = src.config
        self.channels_last = channels_last
        self.conv_chunk = int(conv_chunk)
        convs = []
        for block in src.features:
            fold_bn_after(block.conv, block.bn)
            convs.append(block.conv)
        self.convs = nn.ModuleList(convs)
        self.lstm1 = src.lstm1
        self.lstm2 = src.lstm2
        fold_bn_into_lstm(src.bn1, src.lstm2)  # BN over lstm1's features feeds every lstm2 step
        linears = [block.fc for block in list(src.head)[:-1]] + [src.head.out]
        first = linears[0]
        w, b = fold_bn_before(src.bn2, first.weight, first.bias)  # BN on lstm2's last step
        first.weight = nn.Parameter(w, requires_grad=False)
        first.bias = nn.Parameter(b, requires_grad=False)
        for block in list(src.head)[:-1]:
            fold_bn_after(block.fc, block.bn)
        self.linears = nn.ModuleList(linears)
        for p in self.parameters():
            p.requires_grad_(False)
        if channels_last:
            for conv in self.convs:
                conv.to(memory_format=torch.channels_last)
        self.lstm1.flatten_parameters()
        self.lstm2.flatten_parameters()
        self.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The conv stage: (B, 1, S, S) → (B, C, S/8, S/8)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for conv in self.convs:
            x = F.relu(F.max_pool2d(conv(x), 2))  # they commute; pooling first makes the ReLU 4x cheaper
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if 0 < self.conv_chunk < x.shape[0]:
            x = torch.cat([self.features(part) for part in x.split(self.conv_chunk)])
        else:
            x = self.features(x)
        b, c, h, w = x.shape
        seq = x.permute(0, 2, 3, 1).reshape(b, h, w * c)  # free in channels-last memory
        seq, _ = self.lstm1(seq)
        seq, _ = self.lstm2(seq)
        z = seq[:, -1]
        for lin in self.linears[:-1]:
            z = F.relu(lin(z))
        return self.linears[-1](z).squeeze(-1)


# --------------------------------------------------------------------------- backends


class FastModel:
    """A callable ``float (B, 1, S, S) -> logits (B,)`` for inference on CPU, with its backend.

    Attributes:
        backend: the backend actually in use (``eager``, ``compile`` or ``onnx``).
        requested: the backend asked for.
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


def onnx_available() -> bool:
    """Whether the ``onnx`` backend can be built here (``pip install pneumolens[fast]``)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _lstm_onnx_weights(lstm: nn.LSTM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch LSTM weights → ONNX ``W, R, B``: gates reordered from (i, f, g, o) to (i, o, f, c)."""
    order = [0, 3, 1, 2]

    def gates(t: torch.Tensor) -> np.ndarray:
        return torch.cat([t.detach().float().chunk(4)[k] for k in order]).numpy()

    w, r = gates(lstm.weight_ih_l0)[None], gates(lstm.weight_hh_l0)[None]
    b = np.concatenate([gates(lstm.bias_ih_l0), gates(lstm.bias_hh_l0)])[None]
    return w, r, b


#: The parts :func:`export_onnx` can write: the whole network, or its two stages on either side
#: of the last feature map (the conv stage and the LSTM head), run by separate sessions.
ONNX_PARTS = ("all", "features", "head")


def export_onnx(folded: FoldedCnnLstm, part: str = "all") -> bytes:
    """The folded model, or one of its stages, as an ONNX graph (opset 17, dynamic batch), node by node.

    Building the graph directly from the folded weights takes milliseconds, where tracing with
    ``torch.onnx.export`` takes about a second, and does not depend on an exporter that PyTorch
    is retiring. Conv → ReLU → MaxPool (ReLU first here, so ORT fuses it into the convolution);
    the feature map goes to the LSTMs sequence-first, as ONNX's LSTM wants it.

    Args:
        folded: the folded model.
        part: ``all`` (``image`` → ``logit``), ``features`` (``image`` → ``features``, the last
            pooled map (B, C, S/8, S/8)) or ``head`` (``features`` → ``logit``).
    """
    from onnx import TensorProto, helper, numpy_helper

    if part not in ONNX_PARTS:
        raise ConfigError(f"part must be one of {', '.join(ONNX_PARTS)}, got {part!r}")
    cfg = folded.config
    inits, nodes = [], []

    def const(name: str, value: np.ndarray | torch.Tensor) -> str:
        arr = value.detach().float().numpy() if isinstance(value, torch.Tensor) else value
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    s, h, feats = cfg.input_size, cfg.seq_len, cfg.seq_features
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, s, s])
    fmap = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", cfg.channels[-1], h, h])
    logit = helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch"])
    if part != "head":
        x = "image"
        for i, conv in enumerate(folded.convs, start=1):
            w, b = const(f"conv{i}.w", conv.weight.contiguous()), const(f"conv{i}.b", conv.bias)
            x = node("Conv", [x, w, b], f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
            x = node("Relu", [x], f"relu{i}")
            last = i == len(folded.convs)
            x = node("MaxPool", [x], "features" if last else f"pool{i}", kernel_shape=[2, 2], strides=[2, 2])
    if part != "features":
        # Rows in (C, W) order, not the model's channels-last (W, C): the transpose then moves runs
        # of W floats instead of single floats (~6 % of the run time at batch 32 as (H, B, W, C)),
        # and lstm1's input weights are permuted to match, so the logits are the same.
        x = node("Transpose", ["features"], "rows", perm=[2, 0, 1, 3])  # (B, C, H, W) → (H, B, C, W)
        x = node("Reshape", [x, const("seq_shape", np.array([h, -1, feats], dtype=np.int64))], "seq")
        for i, lstm in enumerate((folded.lstm1, folded.lstm2), start=1):
            w, r, b = _lstm_onnx_weights(lstm)
            if i == 1:  # input features w * C + c (channels-last) → c * W + w
                c = cfg.channels[-1]
                w = np.ascontiguousarray(w.reshape(1, -1, feats // c, c).transpose(0, 1, 3, 2).reshape(w.shape))
            w, r, b = (const(f"lstm{i}.{k}", v) for k, v in zip("WRB", (w, r, b)))
            outs = [f"lstm{i}.y", f"lstm{i}.h"]
            nodes.append(helper.make_node("LSTM", [x, w, r, b], outs, name=f"lstm{i}", hidden_size=lstm.hidden_size))
            axis = const(f"axis{i}", np.array([1 if i == 1 else 0], dtype=np.int64))
            # lstm1: all steps (T, 1, B, H) → (T, B, H); lstm2: last hidden state (1, B, H) → (B, H)
            x = node("Squeeze", [outs[0] if i == 1 else outs[1], axis], f"lstm{i}.out")
        for i, lin in enumerate(folded.linears, start=1):
            x = node("Gemm", [x, const(f"fc{i}.w", lin.weight), const(f"fc{i}.b", lin.bias)], f"fc{i}", transB=1)
            if i < len(folded.linears):
                x = node("Relu", [x], f"fc{i}.relu")
        node("Reshape", [x, const("flat", np.array([-1], dtype=np.int64))], "logit")
    inputs, outputs = {"all": ([image], [logit]), "features": ([image], [fmap]), "head": ([fmap], [logit])}[part]
    graph = helper.make_graph(nodes, f"pneumolens_cnn_lstm_folded_{part}", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pneumolens")
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    return model.SerializeToString()


def onnx_session(folded: FoldedCnnLstm, part: str, threads: int) -> Any:
    """An ONNX Runtime CPU session on ``export_onnx(folded, part)`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(export_onnx(folded, part), opts, providers=["CPUExecutionProvider"])


class OnnxRunner:
    """ONNX Runtime on the folded model: one multi-threaded session for latency, single-threaded runs in parallel for throughput.

    A small batch runs the whole graph on one session whose ``threads`` intra-op threads split
    every operator (one image: 3.7-4.0 ms on two threads against 5.8-7.0 ms on one). A batch of at least
    :data:`PARALLEL_MIN` images is cut into chunks that ``threads`` workers run at the same time
    on single-threaded sessions: no barrier after every operator, so the cores never wait for
    each other. On 2 cores, decoding 512 dataset files on the same threads: 331 against 275
    images/s in an interleaved A/B; on decoded arrays within noise of the 2-thread session.
    :meth:`serial` is that single-threaded run for callers that bring their own threads
    (``Predictor.predict_files``).

    The single-threaded run is staged in two sessions: the conv stage sees
    :data:`FEATURES_CHUNK` images per call, so its activations stay in the core's cache, and the
    LSTM head sees the chunk's feature maps together, so its matrix products stay wide. The
    logits are the whole graph's, bit for bit (tested).

    ORT keeps its activations in an arena that only grows with the largest batch seen, per
    session: the staged sessions' arenas stay small, and the multi-threaded one sees fewer than
    :data:`PARALLEL_MIN` images at a time.
    """

    def __init__(self, folded: FoldedCnnLstm, threads: int | None = None, chunk: int | None = None) -> None:
        self.threads = max(1, int(threads or torch.get_num_threads()))
        self.chunk = int(chunk or ONNX_CHUNK)
        self._wide = onnx_session(folded, "all", self.threads)
        self._features = onnx_session(folded, "features", 1)
        self._head = onnx_session(folded, "head", 1)
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

    def _staged(self, arr: np.ndarray) -> np.ndarray:
        """Logits of one chunk on the calling thread: conv stage a few images at a time, then the head."""
        fmaps = [self._run(self._features, part) for part in self._split(arr, FEATURES_CHUNK)]
        return self._run(self._head, np.concatenate(fmaps))

    def serial(self, x: torch.Tensor) -> torch.Tensor:
        """Logits computed on the calling thread only (several threads may call this at once)."""
        return torch.from_numpy(np.concatenate([self._staged(c) for c in self._split(x, self.chunk)]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n < PARALLEL_MIN:
            return torch.from_numpy(np.concatenate([self._run(self._wide, c) for c in self._split(x, self.chunk)]))
        if self.threads == 1:
            return self.serial(x)
        size = min(self.chunk, -(-n // self.threads))  # every worker gets at least one chunk
        return torch.from_numpy(np.concatenate(list(self._executor().map(self._staged, self._split(x, size)))))

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pneumolens-onnx")
            return self._pool


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
            the first call per batch size compiles, ~tens of seconds), ``onnx`` (ONNX Runtime,
            exported and checked to agree within :data:`AGREEMENT_TOL`), or ``auto`` (the
            fastest measured one that works here, see :data:`AUTO_ORDER`).
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
            reasons.append(
                f"{name} unavailable ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
            )
            continue
        return FastModel(fn, name, backend, folded, time.perf_counter() - t0)
    fallback = "; ".join(reasons) or None
    if fallback and backend != "auto":
        log.warning("fast inference: %s; using eager PyTorch", fallback)
    return FastModel(folded, "eager", backend, folded, time.perf_counter() - t0, fallback)
