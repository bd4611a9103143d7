"""Decode every image once and keep the resized uint8 array on disk.

Re-decoding full-size JPEGs every epoch was the original's main waste. Each array is stored
under a key made of the file's SHA-256 and the preprocessing tag, so a renamed file still
hits the cache, an edited file misses it, and a different input size gets its own entries.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .errors import InvalidImageError
from .io import load_image, read_file_bytes

log = logging.getLogger(__name__)

#: Bump when decoding or resizing changes, so old cache entries are never reused.
#: v2: DICOM windowing maps the window's range (not the image's) to 0..255, 8-bit DICOM kept
#: as is, EXIF orientation applied (no JPEG or PNG of the Kaggle data changes).
#: v3: JPEGs of at least 4x the input size on both sides are decoded in libjpeg's draft mode
#: (:data:`pneumolens.io.DRAFT_FACTOR`; within one grey level; no Kaggle file is that large).
#: v4: JPEGs whose data ends early and blank inputs are refused (no array changes; an entry
#: cached before would let such a file through).
PREPROCESS_VERSION = 4

#: Fewer files than this are decoded in this process: starting workers would cost more.
POOL_MIN_FILES = 200


def default_cache_dir() -> Path:
    """``$PNEUMOLENS_CACHE``, else ``~/.cache/pneumolens``."""
    env = os.environ.get("PNEUMOLENS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pneumolens"


def preprocess_tag(size: int) -> str:
    """Names the preprocessing: decoder version, grayscale, size, filter."""
    return f"v{PREPROCESS_VERSION}-gray8-{size}x{size}-bilinear"


@dataclass
class LoadResult:
    """Decoded arrays for the files that could be read, and the reasons for those that could not."""

    images: np.ndarray  # (N, size, size) uint8
    kept: list[int]  # indices into the requested paths, in order
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)


def _read_entry(entry: Path, size: int) -> np.ndarray | None:
    """A cached array, or ``None`` when the entry is missing, damaged or of another shape."""
    try:
        arr = np.load(entry, allow_pickle=False)
    except FileNotFoundError:
        return None
    except Exception as exc:  # truncated or overwritten entry: rebuilt by the caller
        log.debug("damaged cache entry %s (%s): rebuilding it", entry, exc)
        return None
    return arr if arr.shape == (size, size) and arr.dtype == np.uint8 else None


def _write_entry(entry: Path, arr: np.ndarray) -> None:
    """Store an array atomically; a cache that cannot be written only costs speed, so errors are logged."""
    tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
        os.replace(tmp, entry)  # atomic: a killed run never leaves a half-written entry
    except OSError as exc:
        log.debug("cannot write cache entry %s (%s)", entry, exc)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _load_one(args: tuple[str, int, str | None]) -> tuple[np.ndarray | None, str | None]:
    """Decode one file (or fetch it from the cache): (array, None) or (None, one-line reason)."""
    path, size, cache_root = args
    try:
        data = read_file_bytes(path)
        entry = None
        if cache_root:
            key = hashlib.sha256(data).hexdigest()
            entry = Path(cache_root) / key[:2] / f"{key}.npy"
            arr = _read_entry(entry, size)
            if arr is not None:
                return arr, None
        arr = load_image(data, size, name=path)
    except InvalidImageError as exc:
        return None, str(exc)
    if entry is not None:
        _write_entry(entry, arr)
    return arr, None


def load_images(
    paths: list[str | Path],
    size: int,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "decoding",
) -> LoadResult:
    """Decode (or fetch from the cache) every path, resized to ``size x size`` uint8.

    Bad files do not stop the batch: they are returned in ``LoadResult.bad`` with the reason,
    and the caller decides whether that is fatal (the CLI's ``--skip-bad``).

    Args:
        paths: files to read, in the order the result keeps.
        size: side of the square output.
        cache_dir: cache root. Default: :func:`default_cache_dir`.
        use_cache: read and write the on-disk cache. Default: ``True``.
        workers: decoding processes, used from :data:`POOL_MIN_FILES` files on.
            Default: ``min(4, cpu_count)``.
        progress: show a progress bar from 50 files on. Default: ``True``.
        desc: the progress bar's label.
    """
    cache_root = None
    if use_cache:
        cache_root = str(Path(cache_dir or default_cache_dir()) / preprocess_tag(size))
    jobs = [(str(p), size, cache_root) for p in paths]
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress or len(jobs) < 50, leave=False)
    results: list[tuple[np.ndarray | None, str | None]] = []
    if workers > 1 and len(jobs) >= POOL_MIN_FILES:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for res in pool.map(_load_one, jobs, chunksize=32):
                results.append(res)
                bar.update()
    else:
        for job in jobs:
            results.append(_load_one(job))
            bar.update()
    bar.close()
    kept, bad, arrays = [], [], []
    for i, (arr, err) in enumerate(results):
        if arr is None:
            bad.append((str(paths[i]), err or "unknown error"))
        else:
            kept.append(i)
            arrays.append(arr)
    images = np.stack(arrays) if arrays else np.zeros((0, size, size), dtype=np.uint8)
    return LoadResult(images=images, kept=kept, bad=bad)
