"""Partial results of ``explain-eval``, written as it goes, so an interrupted run keeps its work.

The folder (``OUT/partial/``) holds:

* ``run.json``: what the results depend on (checkpoint, files, methods, seed, steps...). A run
  given the same values continues where the last one stopped; given other values, it clears
  the folder and starts afresh (and says so);
* ``images.jsonl``: one JSON line per finished image (probability, curves, timings, settings);
* ``maps/<index>.npz``: that image's maps (float32), written before its line;
* ``randomisation.jsonl``: one line per finished (stage, method) of the randomisation check.

A line is appended, flushed and synced only once everything it refers to is on disk; a torn
last line (the process killed mid-write) is ignored, so that image is simply done again.
Every record goes through JSON before it is used, on a fresh run as on a resumed one, so both
compute the final metrics from the very same numbers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

log = logging.getLogger(__name__)

#: Bumped when the layout of the files changes: older partial results are then not reused.
FORMAT = 1


def roundtrip(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` as it reads back from a JSON line (NaN kept as NaN)."""
    return json.loads(json.dumps(record))


def _append(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of ``path`` (a torn or foreign line is skipped)."""
    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


class PartialResults:
    """Reads and appends the partial results of one explain-eval run (see the module docstring).

    Args:
        folder: where they live (created).
        key: everything the results depend on, JSON-friendly. Compared with the folder's
            ``run.json``: equal → continue; different or missing → start afresh.
    """

    def __init__(self, folder: str | Path, key: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.key = roundtrip({"format": FORMAT, **key})
        run = self.folder / "run.json"
        earlier = None
        if run.is_file():
            try:
                earlier = json.loads(run.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                earlier = None
        if earlier != self.key:
            if earlier is not None:
                changed = sorted(k for k in set(earlier) | set(self.key) if earlier.get(k) != self.key.get(k))
                log.warning("%s holds partial results made with other settings (%s): starting afresh",
                            self.folder, ", ".join(changed))
            shutil.rmtree(self.folder, ignore_errors=True)
        (self.folder / "maps").mkdir(parents=True, exist_ok=True)
        if earlier != self.key:
            run.write_text(json.dumps(self.key, indent=1) + "\n", encoding="utf-8")
        self._images = {int(r["index"]): r for r in _read_lines(self.folder / "images.jsonl") if "index" in r}
        self._randomisation = {(int(r["stage"]), str(r["method"])): r
                               for r in _read_lines(self.folder / "randomisation.jsonl")
                               if "stage" in r and "method" in r}

    @property
    def images_done(self) -> int:
        """How many images an earlier run finished."""
        return len(self._images)

    @property
    def randomisation_done(self) -> int:
        """How many (stage, method) pairs of the randomisation check an earlier run finished."""
        return len(self._randomisation)

    def _maps_path(self, index: int) -> Path:
        return self.folder / "maps" / f"{index:05d}.npz"

    def image(self, index: int) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """The record and maps of image ``index`` if an earlier run finished it, else None."""
        record = self._images.get(index)
        if record is None:
            return None
        try:
            with np.load(self._maps_path(index), allow_pickle=False) as data:
                maps = {name: data[name] for name in data.files}
        except (OSError, ValueError, KeyError):
            return None
        labels = record.get("map_names", [])
        if sorted(labels) != sorted(maps):
            return None
        return record, {label: maps[label] for label in labels}

    def add_image(self, index: int, record: Mapping[str, Any],
                  maps: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Store a finished image (maps first, then its line); returns both as a rerun reads them."""
        arrays = {label: np.asarray(m, dtype=np.float32) for label, m in maps.items()}
        tmp = self._maps_path(index).with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(self._maps_path(index))
        line = roundtrip({**record, "index": int(index), "map_names": list(arrays)})
        _append(self.folder / "images.jsonl", line)
        self._images[int(index)] = line
        return line, arrays

    def randomisation(self, stage: int, label: str) -> dict[str, Any] | None:
        """The per-image correlations of one (stage, method) if an earlier run finished it."""
        return self._randomisation.get((int(stage), label))

    def add_randomisation(self, stage: int, label: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Store one finished (stage, method); returns it as a rerun reads it."""
        line = roundtrip({**entry, "stage": int(stage), "method": label})
        _append(self.folder / "randomisation.jsonl", line)
        self._randomisation[(int(stage), label)] = line
        return line
