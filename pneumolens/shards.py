"""Shards of a file list, so that a large archive fans out over a cluster's array jobs.

``--shard I/N`` (0-based: I is 0 .. N-1, as SLURM's ``--array=0-<N-1>`` numbers its tasks) takes
every file whose position in the list sorted by path is I modulo N. The sort is by the path's
text (code points, no locale), so every machine given the same inputs makes the same shards, and
the N shards together hold every file exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .errors import ConfigError

P = TypeVar("P", str, Path)

_SHARD_RE = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"I/N"`` → :class:`Shard`; N at least 1 and I from 0 to N-1.

    Raises:
        ConfigError: one line naming the value and what is wrong with it.
    """
    m = _SHARD_RE.match(text)
    if not m:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4 (shard I of N, I from 0 to N-1)")
    index, count = int(m[1]), int(m[2])
    if count < 1:
        raise ConfigError(f"--shard {text}: the number of shards N must be at least 1")
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text}: I must be from 0 to {count - 1} (shards are numbered from 0)")
    return Shard(index, count)


def sort_key(path: str | Path) -> str:
    """The order shards are dealt in: the path's text, with ``/`` separators."""
    return Path(path).as_posix()


def take_shard(files: Sequence[P], shard: Shard | None) -> list[P]:
    """The files of ``shard``: every N-th of ``files`` sorted by :func:`sort_key`, from the I-th.

    ``shard=None`` returns ``files`` as they are (in their own order).
    """
    if shard is None:
        return list(files)
    return sorted(files, key=sort_key)[shard.index :: shard.count]
