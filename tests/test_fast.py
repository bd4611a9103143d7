"""pneumolens.fast: the BatchNorm-folded inference copy computes the reference model's logits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from pneumolens import fast
from pneumolens.errors import ConfigError
from pneumolens.fast import FoldedCnnLstm, fold_bn_after, fold_bn_before, fold_bn_into_lstm, optimize
from pneumolens.model import CnnLstm, ModelConfig

TINY = ModelConfig(
    input_size=32, channels=(4, 8, 8), conv_dropout=(0.2, 0.2, 0.2), lstm_units=(8, 6), dense_units=(8, 5)
)
TWO_BLOCKS = ModelConfig(input_size=16, channels=(3, 5), conv_dropout=(0.1, 0.1), lstm_units=(7, 4), dense_units=(6,))
TOL = 1e-4


def randomize_bn(model: nn.Module, seed: int = 0, x: torch.Tensor | None = None) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so folding is really tested.

    With ``x``, the statistics are first measured on it (so activations stay in a range where the
    output varies with the input; random statistics alone saturate the LSTMs and make every
    logit the same), then shifted and rescaled at random.
    """
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        if x is not None:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the one batch
            model.train()(x)
        for m in norms:
            n = m.num_features
            m.momentum = 0.01
            m.running_mean.add_(torch.randn(n, generator=g) * 0.2 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return model.eval()


def images(config: ModelConfig, n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, config.input_size, config.input_size, generator=torch.Generator().manual_seed(seed))


_MODELS: dict[tuple[str, int], CnnLstm] = {}


def reference(config: ModelConfig, seed: int = 0) -> CnnLstm:
    """A random CnnLstm whose BatchNorm statistics are random but in a sensible range (a fresh copy)."""
    key = (repr(config), seed)
    if key not in _MODELS:
        torch.manual_seed(seed)
        _MODELS[key] = randomize_bn(CnnLstm(config), seed, x=images(config, 8, seed=100 + seed))
    return copy.deepcopy(_MODELS[key])


def ref_logits(model: CnnLstm, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("config", [TINY, TWO_BLOCKS, ModelConfig()], ids=["tiny", "two-blocks", "original"])
@pytest.mark.parametrize("chunk", [0, 3])
def test_folded_model_matches_reference(config, chunk):
    model = reference(config)
    x = images(config, 7)
    expected = ref_logits(model, x)
    assert expected.std() > 5e-3  # the outputs vary with the input: a meaningful comparison
    got = FoldedCnnLstm(model, conv_chunk=chunk)(x)
    assert got.shape == (7,)
    assert (got - expected).abs().max() < TOL


def test_folded_model_has_no_batchnorm_or_dropout_and_leaves_the_original_alone():
    model = reference(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = FoldedCnnLstm(model)
    kinds = {type(m) for m in folded.modules()}
    assert not any(issubclass(k, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for k in kinds)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.features.block1.bn, nn.BatchNorm2d)  # the explainers' model keeps its layers


def test_folding_uses_running_statistics_even_from_a_model_in_training_mode():
    model = reference(TINY)
    x = images(TINY, 4)
    expected = ref_logits(model, x)  # eval mode
    model.train()
    got = FoldedCnnLstm(model)(x)
    assert (got - expected).abs().max() < TOL


def test_fold_bn_after_conv_and_linear():
    torch.manual_seed(0)
    conv, bn2 = nn.Conv2d(3, 4, 3, padding=1), randomize_bn(nn.BatchNorm2d(4, eps=1e-3)).eval()
    x = torch.randn(2, 3, 5, 5)
    expected = bn2(conv(x))
    fold_bn_after(conv, bn2)
    assert (conv(x) - expected).abs().max() < 1e-5
    lin, bn1 = nn.Linear(6, 3), randomize_bn(nn.BatchNorm1d(3, eps=1e-3), seed=1).eval()
    z = torch.randn(4, 6)
    expected = bn1(lin(z))
    fold_bn_after(lin, bn1)
    assert (lin(z) - expected).abs().max() < 1e-5


def test_fold_bn_before_linear_and_lstm():
    torch.manual_seed(0)
    bn = randomize_bn(nn.BatchNorm1d(5, eps=1e-3)).eval()
    lin = nn.Linear(5, 3)
    z = torch.randn(4, 5)
    w, b = fold_bn_before(bn, lin.weight, lin.bias)
    assert (z @ w.T + b - lin(bn(z))).abs().max() < 1e-5
    lstm = nn.LSTM(5, 4, batch_first=True)
    seq = torch.randn(2, 6, 5)
    with torch.no_grad():
        expected, _ = lstm(bn(seq.transpose(1, 2)).transpose(1, 2))
        fold_bn_into_lstm(bn, lstm)
        got, _ = lstm(seq)
    assert (got - expected).abs().max() < 1e-5


def test_fold_bn_into_a_stacked_lstm_is_refused():
    with pytest.raises(ConfigError, match="single-layer"):
        fold_bn_into_lstm(nn.BatchNorm1d(5), nn.LSTM(5, 4, num_layers=2))


@pytest.mark.parametrize("backend", ["eager", "onnx"])
@pytest.mark.parametrize("config", [TINY, ModelConfig()], ids=["tiny", "original"])
def test_backends_match_reference_logits(backend, config):
    if backend == "onnx" and not fast.onnx_available():
        pytest.skip("onnx / onnxruntime not installed (pip install pneumolens[fast])")
    model = reference(config)
    x = images(config, 5, seed=4)
    f = optimize(model, backend=backend)
    assert f.backend == backend and f.fallback is None
    expected = ref_logits(model, x)
    assert (f(x) - expected).abs().max() < TOL
    assert (f(x[:1]) - expected[:1]).abs().max() < TOL  # another batch size: the graph's batch axis is dynamic


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_onnx_parallel_runs_and_serial_match_reference(threads, monkeypatch):
    """Batches from PARALLEL_MIN images on are cut into chunks run in parallel: same logits, same order."""
    if not fast.onnx_available():
        pytest.skip("onnx / onnxruntime not installed (pip install pneumolens[fast])")
    monkeypatch.setattr(fast, "ONNX_CHUNK", 4)  # several chunks per worker, and a ragged last one
    model = reference(TINY)
    f = optimize(model, backend="onnx", threads=threads)
    assert f.backend == "onnx" and f.workers == threads
    for n in (1, fast.PARALLEL_MIN - 1, fast.PARALLEL_MIN, 23):
        x = images(TINY, n, seed=n)
        expected = ref_logits(model, x)
        assert (f(x) - expected).abs().max() < TOL, n
        assert (f.serial(x) - expected).abs().max() < TOL, n


def test_parallel_path_uses_the_single_threaded_sessions_on_several_threads(monkeypatch):
    """Small batches: the multi-threaded whole-network session. Large ones and ``serial``: the
    single-threaded staged sessions, conv stage FEATURES_CHUNK images per call, head per chunk."""
    if not fast.onnx_available():
        pytest.skip("onnx / onnxruntime not installed (pip install pneumolens[fast])")
    import threading

    monkeypatch.setattr(fast, "FEATURES_CHUNK", 3)
    runner = fast.OnnxRunner(FoldedCnnLstm(reference(TINY)), threads=2, chunk=4)
    names = {id(runner._wide): "wide", id(runner._features): "features", id(runner._head): "head"}
    seen: list[tuple[str, int, int]] = []
    real = fast.OnnxRunner._run

    def spy(session, arr):
        seen.append((names[id(session)], len(arr), threading.get_ident()))
        return real(session, arr)

    monkeypatch.setattr(fast.OnnxRunner, "_run", staticmethod(spy))
    runner(images(TINY, 3))
    assert [(s, n) for s, n, _ in seen] == [("wide", 3)]
    seen.clear()
    runner(images(TINY, fast.PARALLEL_MIN + 2))  # 18 images: chunks of 4, 4, 4, 4, 2
    assert sorted(n for s, n, _ in seen if s == "head") == [2, 4, 4, 4, 4]
    assert sorted(n for s, n, _ in seen if s == "features") == [1, 1, 1, 1, 2, 3, 3, 3, 3]
    assert threading.get_ident() not in {t for _, _, t in seen}
    seen.clear()
    runner.serial(images(TINY, 9))
    me = threading.get_ident()
    calls = [("features", 3), ("features", 1), ("head", 4)] * 2 + [("features", 1), ("head", 1)]
    assert seen == [(s, n, me) for s, n in calls]


def test_onnx_stages_compose_to_the_whole_graph():
    """``features`` then ``head`` gives the whole graph's logits; a wrong part name is a ConfigError."""
    if not fast.onnx_available():
        pytest.skip("onnx / onnxruntime not installed (pip install pneumolens[fast])")
    import onnxruntime as ort

    folded = FoldedCnnLstm(reference(TINY))
    cpu = ["CPUExecutionProvider"]
    run = {p: ort.InferenceSession(fast.export_onnx(folded, p), providers=cpu) for p in fast.ONNX_PARTS}
    x = images(TINY, 5, seed=3).numpy()
    fmap = run["features"].run(None, {"image": x})[0]
    c, s = TINY.channels[-1], TINY.input_size // 2 ** len(TINY.channels)
    assert fmap.shape == (5, c, s, s)
    staged = run["head"].run(None, {"features": fmap})[0]
    whole = run["all"].run(None, {"image": x})[0]
    assert np.array_equal(staged, whole)
    serial = fast.OnnxRunner(folded, threads=1).serial(torch.from_numpy(x))  # conv stage one image per call
    assert np.array_equal(serial.numpy(), whole)
    with pytest.raises(ConfigError, match="part must be one of"):
        fast.export_onnx(folded, "lstm")


def test_pytorch_backends_have_one_worker():
    f = optimize(reference(TINY), backend="eager")
    assert f.workers == 1
    x = images(TINY, 3)
    assert torch.equal(f.serial(x), f(x))


@pytest.mark.parametrize("part, output", [("all", "logit"), ("features", "features"), ("head", "logit")])
def test_onnx_graph_is_valid_onnx(part, output):
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(fast.export_onnx(FoldedCnnLstm(reference(TINY)), part))
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == [output]


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
    if fast.onnx_available():
        assert optimize(model, "auto").backend == "onnx"
    monkeypatch.setattr(fast, "onnx_available", lambda: False)
    f = optimize(model, "auto")
    assert f.backend == "eager" and f.fallback is None


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="backend must be one of"):
        optimize(reference(TINY), backend="tensorrt")


def test_a_backend_that_cannot_be_built_falls_back_to_eager(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no runtime here")

    monkeypatch.setattr(fast, "OnnxRunner", broken)
    model = reference(TINY)
    f = optimize(model, backend="onnx")
    assert f.backend == "eager" and f.requested == "onnx"
    assert "no runtime here" in f.fallback and "no runtime here" in caplog.text
    x = images(TINY, 3)
    assert (f(x) - ref_logits(model, x)).abs().max() < TOL


def test_a_backend_that_disagrees_with_pytorch_is_not_used(monkeypatch):
    monkeypatch.setattr(fast, "OnnxRunner", lambda folded, threads: lambda x: torch.zeros(x.shape[0]))
    f = optimize(reference(TINY), backend="onnx")
    assert f.backend == "eager" and "differ" in f.fallback


def test_a_backend_failing_at_run_time_falls_back_to_eager(monkeypatch):
    calls = []

    def compiled(folded):
        def run(x):
            calls.append(len(x))
            raise RuntimeError("compiler crashed")

        return run

    monkeypatch.setattr(fast, "_compiled", compiled)
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
