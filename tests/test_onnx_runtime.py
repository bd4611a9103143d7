"""pneumolens.onnx_runtime: ONNX Runtime sessions on the exported stages, spread over threads."""

from __future__ import annotations

import threading

import pytest
from test_folding import TINY, TOL, images, ref_logits, reference

from pneumolens import onnx_runtime
from pneumolens.folding import FoldedCnnLstm
from pneumolens.onnx_export import export_onnx, onnx_available
from pneumolens.onnx_runtime import OnnxRunner

pytestmark = pytest.mark.skipif(
    not onnx_available(), reason="onnx / onnxruntime not installed (pip install pneumolens[fast])"
)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_runs_and_serial_match_reference(threads):
    """Batches from PARALLEL_MIN images on are cut into chunks run in parallel: same logits, same order."""
    model = reference(TINY)
    runner = OnnxRunner(FoldedCnnLstm(model), threads=threads, chunk=4)  # several chunks per worker, a ragged last
    assert runner.threads == threads
    for n in (1, onnx_runtime.PARALLEL_MIN - 1, onnx_runtime.PARALLEL_MIN, 23):
        x = images(TINY, n, seed=n)
        expected = ref_logits(model, x)
        assert runner(x).shape == (n,)
        assert (runner(x) - expected).abs().max() < TOL, n
        assert (runner.serial(x) - expected).abs().max() < TOL, n


def test_which_session_runs_what_on_which_thread(monkeypatch):
    """Small batches: the multi-threaded session on the calling thread. Large ones: chunks of at most
    ``chunk`` images on the single-threaded session, on the worker threads. ``serial``: the
    single-threaded session on the calling thread."""
    runner = OnnxRunner(FoldedCnnLstm(reference(TINY)), threads=2, chunk=4)
    names = {id(runner._wide): "wide", id(runner._narrow): "narrow"}
    seen: list[tuple[str, int, int]] = []
    real = OnnxRunner._run

    def spy(session, arr):
        seen.append((names[id(session)], len(arr), threading.get_ident()))
        return real(session, arr)

    monkeypatch.setattr(OnnxRunner, "_run", staticmethod(spy))
    me = threading.get_ident()
    runner(images(TINY, 3))
    assert seen == [("wide", 3, me)]
    seen.clear()
    runner(images(TINY, onnx_runtime.PARALLEL_MIN + 2))  # 18 images: chunks of 4, 4, 4, 4, 2
    assert sorted(n for _, n, _ in seen) == [2, 4, 4, 4, 4]
    assert {s for s, _, _ in seen} == {"narrow"} and me not in {t for _, _, t in seen}
    seen.clear()
    runner.serial(images(TINY, 9))
    assert seen == [("narrow", 4, me), ("narrow", 4, me), ("narrow", 1, me)]


def test_a_batch_smaller_than_the_workers_goes_to_as_many_workers_as_it_fills(monkeypatch):
    """``PARALLEL_MIN`` images on 3 threads: chunks of ceil(n / 3) images, so every worker gets one."""
    runner = OnnxRunner(FoldedCnnLstm(reference(TINY)), threads=3)
    sizes: list[int] = []
    real = OnnxRunner._one_thread

    def spy(self, arr):
        sizes.append(len(arr))
        return real(self, arr)

    monkeypatch.setattr(OnnxRunner, "_one_thread", spy)
    runner(images(TINY, onnx_runtime.PARALLEL_MIN))
    assert sorted(sizes) == [4, 6, 6]
