"""Where the model runs: ``auto`` (a CUDA GPU when one is visible, else the CPU), ``cpu`` or ``cuda``.

One rule for the command line's ``--device`` (predict, explain, evaluate, serve) and the Python
API's ``pneumolens.load(device=...)``. Importing this module does not import torch, so that
``--help`` stays fast; torch is imported when a device is resolved.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

#: What ``--device`` accepts (``cuda:N`` is accepted too, for a machine with several GPUs).
DEVICES = ("auto", "cpu", "cuda")

DEVICE_HELP = "where the model runs: auto (a CUDA GPU when one is visible, else the CPU), cpu or cuda (default: auto)"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--device {auto,cpu,cuda}`` (default ``auto``) to a command's parser."""
    parser.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)


def resolve_device(device: str | torch.device | None = "auto", option: str = "device") -> torch.device:
    """The torch device for ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` (or a ``torch.device``).

    Args:
        device: what the user asked for; ``None`` means ``auto``.
        option: how the user named it, for the error message (``--device`` on the command line).

    Raises:
        ConfigError: an unknown device, or ``cuda`` where no CUDA GPU is visible (one line, which
            the command line turns into exit code 2).
    """
    import torch

    text = str(device if device is not None else "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"{option} {text}: unknown device; choose auto, cpu or cuda") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ConfigError(f"{option} {text}: unsupported device type {dev.type!r}; choose auto, cpu or cuda")
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"{option} {text}: {why} (torch.cuda.is_available() is False); use cpu or auto")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ConfigError(f"{option} {text}: this machine has {count} CUDA device(s), numbered from 0")
    return dev
