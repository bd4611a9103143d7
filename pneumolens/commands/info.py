"""``pneumolens info [--checkpoint C] [--json]``: what a checkpoint holds, without its weights.

Prints :meth:`~pneumolens.checkpoint.Checkpoint.info` (architecture, parameter count, input
size, classes, threshold and how it was chosen, preprocessing, provenance, metrics) as
readable text, or as JSON for scripts.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..jsonable import dumps


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help="show a checkpoint's architecture, threshold, preprocessing and provenance",
        description="Show what a checkpoint holds: everything but the weights.",
    )
    p.add_argument("--checkpoint", "-c", default=None, help="model.pt or a run folder (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)
    return p


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value) if value else "(none)"
    return str(value)


def format_info(info: dict[str, Any], indent: int = 0) -> list[str]:
    """Render nested dicts as aligned ``key  value`` lines, sub-dicts indented under their key."""
    width = max((len(str(k)) for k in info), default=0)
    lines = []
    for key, value in info.items():
        pad = " " * indent
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:" + ("" if value else " (none)"))
            lines += format_info(value, indent + 2)
        else:
            lines.append(f"{pad}{str(key):<{width}}  {_format_value(value)}")
    return lines


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import SHIPPED, load_checkpoint  # torch only when running

    ckpt = load_checkpoint(args.checkpoint)
    info = {"checkpoint": str(args.checkpoint) if args.checkpoint else f"{SHIPPED} (shipped)", **ckpt.info()}
    if args.json:
        print(dumps(info, indent=2))
    else:
        print("\n".join(format_info(info)))
    return 0
