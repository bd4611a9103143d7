"""Keep freed memory inside the process instead of handing it back to the kernel at every step.

Why: glibc's ``malloc`` serves large blocks (above a threshold that grows to at most 32 MB) with
``mmap`` and gives them back with ``munmap`` as soon as they are freed, and it trims the top of its
heap likewise. A training step allocates and frees the same large activations and gradients
(32 x 32 x 128 x 128 floats = 64 MB per tensor at batch 32) every time, so each step faults all of
those pages in afresh and the kernel zeroes them. ``bench/bench_accel.py`` runs with it on, as
training does. PyTorch's performance guide suggests jemalloc or tcmalloc for the same reason;
this needs no extra library.

The cost: memory freed after a peak stays with the process (its resident size does not shrink
back). That suits a training run, which reuses it at every step, but not a long-lived server
whose peaks are rare, so only the training commands call :func:`keep_freed_memory`; never call
it from ``serve``. Set ``PNEUMOLENS_MALLOC=system`` to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

#: ``mallopt`` parameter numbers from glibc's ``malloc.h``.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks larger than this still come from ``mmap`` (and go back when freed): 1 GiB.
DEFAULT_LIMIT = 1 << 30

_applied = False


def keep_freed_memory(limit: int = DEFAULT_LIMIT) -> bool:
    """Ask glibc to serve blocks up to ``limit`` bytes from its heap and never trim it.

    Returns True when the setting took effect; False on a C library without ``mallopt`` (macOS,
    musl), when ``PNEUMOLENS_MALLOC=system``, or when glibc refused the values. Idempotent.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("PNEUMOLENS_MALLOC", "").lower() == "system":
        log.debug("PNEUMOLENS_MALLOC=system: glibc malloc defaults kept")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(int(limit), 2**31 - 1)
    _applied = bool(mallopt(M_MMAP_THRESHOLD, value)) and bool(mallopt(M_TRIM_THRESHOLD, value))
    log.debug("malloc: mmap and trim thresholds %s to %d bytes", "set" if _applied else "NOT set", value)
    return _applied
