"""pneumolens.backends: the backend choice, its checks and its fallbacks to the eager folded model."""

from __future__ import annotations

import sys

import pytest
import torch
from test_folding import TINY, TOL, TWO_BLOCKS, images, ref_logits, reference

from pneumolens import backends
from pneumolens.backends import optimize
from pneumolens.errors import ConfigError
from pneumolens.model import ModelConfig
from pneumolens.onnx_export import onnx_available

needs_onnx = pytest.mark.skipif(
    not onnx_available(), reason="onnx / onnxruntime not installed (pip install pneumolens[fast])"
)


@pytest.mark.parametrize("backend", ["eager", pytest.param("onnx", marks=needs_onnx)])
@pytest.mark.parametrize("config", [TINY, ModelConfig()], ids=["tiny", "original"])
def test_backends_match_reference_logits(backend, config):
    model = reference(config)
    x = images(config, 5, seed=4)
    f = optimize(model, backend=backend)
    assert f.backend == backend and f.fallback is None
    expected = ref_logits(model, x)
    assert (f(x) - expected).abs().max() < TOL
    assert (f(x[:1]) - expected[:1]).abs().max() < TOL  # another batch size: the graph's batch axis is dynamic


@needs_onnx
@pytest.mark.parametrize("threads", [1, 2])
def test_onnx_backend_offers_one_worker_per_thread(threads):
    model = reference(TINY)
    f = optimize(model, backend="onnx", threads=threads)
    assert f.backend == "onnx" and f.workers == threads
    x = images(TINY, 5)
    assert (f.serial(x) - ref_logits(model, x)).abs().max() < TOL


def test_pytorch_backends_have_one_worker():
    f = optimize(reference(TINY), backend="eager")
    assert f.workers == 1
    x = images(TINY, 3)
    assert torch.equal(f.serial(x), f(x))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own import
def test_compile_backend_matches_reference():
    model = reference(TWO_BLOCKS, seed=5)
    x = images(TWO_BLOCKS, 4)
    f = optimize(model, backend="compile")
    got = f(x)
    assert f.backend in ("compile", "eager")  # eager only when compilation is impossible here (reason kept)
    assert f.backend == "compile" or f.fallback
    assert (got - ref_logits(model, x)).abs().max() < TOL


def test_auto_prefers_onnx_when_installed_else_eager(monkeypatch):
    model = reference(TINY)
    if onnx_available():
        assert optimize(model, "auto").backend == "onnx"
    monkeypatch.setattr(backends, "onnx_available", lambda: False)
    f = optimize(model, "auto")
    assert f.backend == "eager" and f.fallback is None


def test_without_onnxruntime_auto_is_eager_and_onnx_falls_back_with_the_reason(monkeypatch, caplog):
    """A machine without the ``fast`` extra: nothing to import, predictions still right."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    assert not onnx_available()
    model = reference(TINY)
    x = images(TINY, 3)
    auto = optimize(model, "auto")
    assert auto.backend == "eager" and auto.fallback is None and auto.workers == 1
    f = optimize(model, "onnx")
    assert f.backend == "eager" and f.requested == "onnx"
    assert "onnx unavailable" in f.fallback and "onnxruntime" in f.fallback and "onnxruntime" in caplog.text
    for fn in (auto, f):
        assert (fn(x) - ref_logits(model, x)).abs().max() < TOL


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="backend must be one of"):
        optimize(reference(TINY), backend="tensorrt")


def test_a_backend_that_cannot_be_built_falls_back_to_eager(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no runtime here")

    monkeypatch.setattr(backends, "OnnxRunner", broken)
    model = reference(TINY)
    f = optimize(model, backend="onnx")
    assert f.backend == "eager" and f.requested == "onnx"
    assert "no runtime here" in f.fallback and "no runtime here" in caplog.text
    x = images(TINY, 3)
    assert (f(x) - ref_logits(model, x)).abs().max() < TOL


def test_a_backend_that_disagrees_with_pytorch_is_not_used(monkeypatch):
    monkeypatch.setattr(backends, "OnnxRunner", lambda folded, threads: lambda x: torch.zeros(x.shape[0]))
    f = optimize(reference(TINY), backend="onnx")
    assert f.backend == "eager" and "differ" in f.fallback


def test_a_backend_failing_at_run_time_falls_back_to_eager(monkeypatch):
    calls = []

    def compiled(folded):
        def run(x):
            calls.append(len(x))
            raise RuntimeError("compiler crashed")

        return run

    monkeypatch.setattr(backends, "_compiled", compiled)
    model = reference(TINY)
    f = optimize(model, backend="compile")
    assert f.backend == "compile"
    x = images(TINY, 2)
    assert (f(x) - ref_logits(model, x)).abs().max() < TOL
    assert f.backend == "eager" and "compiler crashed" in f.fallback
    f(x)
    assert calls == [2]  # not retried


def test_input_shape_is_checked_and_empty_batches_work():
    f = optimize(reference(TINY), backend="eager")
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        f(torch.rand(2, 1, 64, 64))
    assert f(torch.rand(0, 1, 32, 32)).shape == (0,)
