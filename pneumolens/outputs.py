"""Check where a command will write before it does any work, and write files so that a failure loses nothing.

A prediction over a large folder or a run of explanations can take minutes; finding out only at
the end that ``--out`` names a folder, an existing file, or a place without write permission
would throw that work away. The commands call :func:`check_output_file` /
:func:`check_output_dir` first; :func:`write_text_atomically` then writes through a temporary
file renamed into place, so a half-written file never replaces a good one.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (the folder that will receive new folders)."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _check_creatable(path: Path, option: str) -> None:
    """The folders missing above ``path`` can be created: the nearest existing one is a writable folder."""
    anchor = _nearest_existing(path.parent)
    if not anchor.is_dir():
        raise ConfigError(f"{option} {path}: {anchor} is not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: no permission to write in {anchor}")


def check_output_file(path: Path, option: str = "--out") -> None:
    """Refuse an output file that cannot be written: an existing folder, a parent that is a file, no permission.

    Creates nothing. Raises:
        ConfigError: one line naming the option, the path and the reason.
    """
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name (e.g. {path / 'predictions.csv'})")
    if path.exists():
        if not path.is_file():
            raise ConfigError(f"{option} {path}: exists and is not a regular file")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{option} {path}: the file exists and is not writable")
    _check_creatable(path, option)


def check_output_dir(path: Path, option: str = "--out") -> None:
    """Refuse an output folder that cannot be used: an existing file, a parent that is a file, no permission.

    Creates nothing. Raises:
        ConfigError: one line naming the option, the path and the reason.
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: exists and is not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {path}: no permission to write in this folder")
        return
    anchor = _nearest_existing(path)
    if not anchor.is_dir():
        raise ConfigError(f"{option} {path}: {anchor} is not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: no permission to write in {anchor}")


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through ``path.tmp`` renamed into place; parent folders are created.

    Raises:
        OSError: the file could not be written (the temporary file is removed, ``path`` is untouched).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
