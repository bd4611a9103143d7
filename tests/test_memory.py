"""``pneumolens.accel.keep_freed_memory``: the malloc setting the training command applies, and its opt-out."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = "from pneumolens.accel import keep_freed_memory as k; print(k(), k())"


def _probe(**env: str) -> str:
    full = {**os.environ, **env}
    if not env:
        full.pop("PNEUMOLENS_MALLOC", None)
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=full, check=True)
    return done.stdout.strip()


@pytest.mark.slow  # real processes / whole pipelines: runs in `make test`, not in test-fast
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are a glibc feature")
def test_glibc_accepts_the_thresholds_once_and_for_all() -> None:
    assert _probe() == "True True"


@pytest.mark.slow  # real processes / whole pipelines: runs in `make test`, not in test-fast
def test_opt_out_keeps_the_c_library_defaults() -> None:
    assert _probe(PNEUMOLENS_MALLOC="system") == "False False"
