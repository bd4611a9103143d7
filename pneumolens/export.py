"""One file that runs without PneumoLens: the model as ONNX or TorchScript, returning calibrated probabilities.

Both formats take the documented input, :data:`INPUT_SPEC`, and return :data:`OUTPUT_SPEC`: the
calibration is applied inside, so the numbers are ``Predictor``'s (``pneumolens predict``) and the
checkpoint's threshold applies to them as it is. The network is the BatchNorm-folded copy
(:class:`~pneumolens.folding.FoldedCnnLstm`, the same logits as the checkpoint's model, eval only).

- ONNX: the graph :func:`pneumolens.onnx_export.export_onnx` writes for the fast CPU backend
  (PyTorch's TorchScript-based exporter, opset :data:`~pneumolens.onnx_export.OPSET`, dynamic
  batch axis), with ``Div(temperature)``, ``Add(bias)`` and ``Sigmoid`` appended; threshold,
  calibration, class names and the input specification are in the model's metadata (``metadata_props``) and its
  ``doc_string``. Needs the ``onnx`` package (``pip install pneumolens[fast]``).
- TorchScript: :class:`~pneumolens.calibrated.CalibratedProbability` around the folded network,
  scripted (``torch.jit.load`` needs only torch; scripted rather than traced, so the file runs at
  any batch size on any device); ``threshold``, ``temperature`` and ``bias`` are buffers of the loaded
  module,
  and ``pneumolens.json`` in the archive holds the same metadata as the ONNX file. PyTorch marks
  TorchScript deprecated in favour of ``torch.export``, whose files still lack a stable loader
  outside Python; the deprecation notices are silenced here, and ``torch.jit.load`` shows its own.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .calibrated import CalibratedProbability
from .checkpoint import Checkpoint, load_checkpoint
from .errors import ConfigError
from .folding import FoldedCnnLstm

#: What ``pneumolens export --format`` writes.
FORMATS = ("onnx", "torchscript")

#: Names of the graph's input and output (ONNX).
INPUT_NAME = "image"
OUTPUT_NAME = "probability"

#: The output, in words (the metadata and ``--help`` say it).
OUTPUT_SPEC = "float32 (B,): calibrated P(PNEUMONIA) = sigmoid(logit / temperature + bias)"


def input_spec(size: int) -> str:
    """The input, in words: what a caller must feed the exported file."""
    return (
        f"float32 (B, 1, {size}, {size}) in [0, 1]: the film as 8-bit grayscale, resized to {size}x{size} "
        "(bilinear, antialiased, aspect ratio not kept), divided by 255"
    )


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote."""

    path: Path
    format: str
    input_size: int
    threshold: float
    temperature: float
    bias: float
    class_names: tuple[str, ...]

    def summary(self) -> str:
        """One line: the file, the input and output, and the threshold to apply."""
        s = self.input_size
        io_names = f"'{INPUT_NAME}' -> '{OUTPUT_NAME}' " if self.format == "onnx" else ""
        return (
            f"wrote {self.path} ({'ONNX' if self.format == 'onnx' else 'TorchScript'}): {io_names}"
            f"float32 (B, 1, {s}, {s}) in [0, 1] -> float32 (B,) calibrated P({self.class_names[1]}); "
            f"{self.class_names[1]} when p >= {self.threshold:.6g}"
        )


def format_from_suffix(path: str | Path) -> str:
    """``onnx`` for a ``.onnx`` file name, else ``torchscript``."""
    return "onnx" if Path(path).suffix.lower() == ".onnx" else "torchscript"


def metadata(ckpt: Checkpoint, threshold: float) -> dict[str, str]:
    """The facts a user of the file needs, as strings (ONNX ``metadata_props``, TorchScript ``pneumolens.json``)."""
    return {
        "producer": f"pneumolens {__version__}",
        "input": input_spec(ckpt.input_size),
        "output": OUTPUT_SPEC,
        "threshold": repr(float(threshold)),
        "decision": f"{ckpt.class_names[1]} when probability >= threshold, else {ckpt.class_names[0]}",
        "threshold_rule": str(ckpt.threshold_rule),
        "temperature": repr(float(ckpt.temperature)),
        "bias": repr(float(ckpt.bias)),
        "class_names": json.dumps(list(ckpt.class_names)),
        "input_size": str(int(ckpt.input_size)),
        "notice": "Research and education use only: not a medical device.",
    }


def _cpu_model(ckpt: Checkpoint) -> nn.Module:
    """The checkpoint's model on the CPU, without moving the caller's copy (a model on a GPU is copied)."""
    model = ckpt.model
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()
    return model


def calibrated_network(ckpt: Checkpoint, threshold: float | None = None) -> CalibratedProbability:
    """The folded network (no conv chunking: one graph for every batch size) with the calibration applied."""
    folded = FoldedCnnLstm(_cpu_model(ckpt))
    net = nn.Sequential(folded.features, folded.head)
    thr = float(ckpt.threshold if threshold is None else threshold)
    return CalibratedProbability(net, ckpt.temperature, thr, ckpt.bias).eval()


def onnx_bytes(ckpt: Checkpoint, threshold: float | None = None) -> bytes:
    """The ONNX file's bytes: the fast backend's logit graph, then ``/ temperature``, ``+ bias`` and ``Sigmoid``."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError as exc:
        raise ConfigError("exporting ONNX needs the onnx package: pip install 'pneumolens[fast]'") from exc
    from .onnx_export import export_onnx

    thr = float(ckpt.threshold if threshold is None else threshold)
    model = onnx.load_from_string(export_onnx(FoldedCnnLstm(_cpu_model(ckpt)), "all"))
    graph = model.graph
    (logit,) = [o for o in graph.output]
    graph.output.remove(logit)
    graph.initializer.extend([
        helper.make_tensor("temperature", TensorProto.FLOAT, [], [float(ckpt.temperature)]),
        helper.make_tensor("bias", TensorProto.FLOAT, [], [float(ckpt.bias)]),
    ])
    graph.node.extend([
        helper.make_node("Div", [logit.name, "temperature"], ["scaled_logit"], name="apply_temperature"),
        helper.make_node("Add", ["scaled_logit", "bias"], ["calibrated_logit"], name="apply_bias"),
        helper.make_node("Sigmoid", ["calibrated_logit"], [OUTPUT_NAME], name="probability"),
    ])
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch"]))
    graph.name = "pneumolens_calibrated"
    meta = metadata(ckpt, thr)
    model.doc_string = (f"PneumoLens CnnLstm. Input '{INPUT_NAME}': {meta['input']}. Output '{OUTPUT_NAME}': "
                        f"{meta['output']}. {meta['decision']} (threshold {thr:.6g}). {meta['notice']}")
    model.producer_name, model.producer_version = "pneumolens", __version__
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def torchscript_bytes(ckpt: Checkpoint, threshold: float | None = None) -> bytes:
    """The TorchScript archive's bytes: the calibrated, folded network, scripted (any batch size, any device)."""
    thr = float(ckpt.threshold if threshold is None else threshold)
    buf = io.BytesIO()
    extra = {"pneumolens.json": json.dumps(metadata(ckpt, thr), indent=2)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.(script|save)` is deprecated", DeprecationWarning)
        torch.jit.save(torch.jit.script(calibrated_network(ckpt, thr)), buf, _extra_files=extra)
    return buf.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    """Write through ``.NAME.tmp`` renamed into place: a failed export never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_model(
    checkpoint: str | Path | Checkpoint | None, format: str, out: str | Path, threshold: float | None = None
) -> ExportResult:
    """Write the model to ``out`` as ``format`` (``onnx`` or ``torchscript``); see the module docstring.

    Args:
        checkpoint: a path, a loaded checkpoint, or None for the shipped model.
        format: one of :data:`FORMATS`.
        out: the file to write (its folder is created).
        threshold: the threshold written into the metadata. Default: the checkpoint's.

    Raises:
        ConfigError: an unknown format, or ONNX without the ``onnx`` package.
        CheckpointError: a missing or foreign checkpoint.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    thr = float(ckpt.threshold if threshold is None else threshold)
    data = onnx_bytes(ckpt, thr) if format == "onnx" else torchscript_bytes(ckpt, thr)
    path = Path(out)
    _write_atomically(path, data)
    return ExportResult(
        path, format, int(ckpt.input_size), thr, float(ckpt.temperature), float(ckpt.bias), tuple(ckpt.class_names)
    )


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported file (ONNX ``metadata_props`` or TorchScript ``pneumolens.json``)."""
    path = Path(path)
    if format_from_suffix(path) == "onnx":
        import onnx

        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    extra = {"pneumolens.json": ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra["pneumolens.json"])
