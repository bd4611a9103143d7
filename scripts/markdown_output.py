"""The ending the table-making scripts share: print the markdown, also write it to ``--out``, and
turn a :class:`~pneumolens.errors.PneumoLensError` into one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from pneumolens.errors import PneumoLensError


def emit(make: Callable[[], str], out: Path | None) -> int:
    """Run ``make``; print its markdown and write it to ``out`` (folders created) when given. Returns the exit code."""
    try:
        text = make()
    except PneumoLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return 0
