"""``pneumolens export --format {onnx,torchscript} --out FILE``: the model as one file that runs without PneumoLens.

Parses arguments and calls :func:`pneumolens.export.export_model`; nothing else.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..outputs import check_output_file
from ..printable import printable

#: = pneumolens.export.FORMATS, listed here so that --help does not import torch.
FORMATS = ("onnx", "torchscript")

DESCRIPTION = """\
Write the model as one file that takes a batch of films and returns calibrated probabilities
(the calibration is applied inside: the numbers `pneumolens predict` prints).

  input:  float32 (B, 1, S, S) in [0, 1] (S: the model's input side, printed when the file is written):
          each film as 8-bit grayscale, resized to S x S (bilinear, antialiased, aspect ratio
          not kept), divided by 255; B may be any batch size
  output: float32 (B,), calibrated P(PNEUMONIA) = sigmoid(logit / temperature + bias);
          PNEUMONIA when p >= the checkpoint's threshold (printed, and stored in the file)

onnx: runs in ONNX Runtime alone (input 'image', output 'probability'; metadata_props hold the
threshold, temperature, bias, class names and this specification; needs `pip install pneumolens[fast]`).
torchscript: torch.jit.load(FILE) needs only torch; the module's `threshold`, `temperature` and
`bias` buffers and the archive's pneumolens.json hold the same facts."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="write the model as ONNX or TorchScript (calibrated probabilities out)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: pneumolens export --format onnx --out pneumolens.onnx",
    )
    p.add_argument("--format", "-f", choices=FORMATS, required=True, help="file format")
    p.add_argument("--checkpoint", "-c", default=None, help="model.pt or a run folder (default: the shipped model)")
    p.add_argument("--out", "-o", type=Path, required=True, help="the file to write (e.g. model.onnx, model.ts)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    check_output_file(args.out)  # before the export: a folder or unwritable place in the way is one line
    from ..export import export_model  # torch only when running

    result = export_model(args.checkpoint, args.format, args.out)
    print(printable(result.summary()))
    return 0
