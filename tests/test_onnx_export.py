"""pneumolens.onnx_export: PyTorch's exporter writes the folded model; the graph computes its logits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_folding import TINY, TOL, images, ref_logits, reference

from pneumolens import onnx_export
from pneumolens.errors import ConfigError
from pneumolens.folding import FoldedCnnLstm
from pneumolens.model import ModelConfig
from pneumolens.onnx_export import ONNX_PARTS, clear_export_cache, export_onnx, module_digest, onnx_available

pytestmark = pytest.mark.skipif(
    not onnx_available(), reason="onnx / onnxruntime not installed (pip install pneumolens[fast])"
)

#: Largest max-abs difference in logits accepted between the exported graph and the folded module
#: (same weights, same operations; ONNX Runtime's kernels sum in another order).
EXPORT_TOL = 1e-5


def session(data: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def run(sess, x: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = x.numpy() if isinstance(x, torch.Tensor) else x
    return sess.run(None, {sess.get_inputs()[0].name: arr})[0]


@pytest.fixture(scope="module")
def original():
    """The original architecture with random weights and trained-like BatchNorm statistics, folded and exported."""
    model = reference(ModelConfig())
    folded = FoldedCnnLstm(model)
    return model, folded, session(export_onnx(folded))


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_exported_graph_equals_folded_module_equals_stock_model(original, batch):
    model, folded, graph = original
    x = images(model.config, batch, seed=batch)
    stock = ref_logits(model, x)
    if batch > 1:
        assert stock.std() > 5e-3  # the outputs vary with the input: a meaningful comparison
    with torch.no_grad():
        eager = folded(x)
    exported = torch.from_numpy(run(graph, x))
    assert exported.shape == eager.shape == stock.shape == (batch,)
    assert (eager - stock).abs().max() < TOL
    assert (exported - eager).abs().max() < EXPORT_TOL
    assert (exported - stock).abs().max() < TOL


def test_stages_compose_to_the_whole_graph():
    """``features`` then ``head`` gives the whole graph's logits; the feature map has the folded stage's shape."""
    folded = FoldedCnnLstm(reference(TINY))
    graphs = {part: session(export_onnx(folded, part)) for part in ONNX_PARTS}
    x = images(TINY, 5, seed=3)
    fmap = run(graphs["features"], x)
    assert fmap.shape == (5, TINY.channels[-1], TINY.seq_len, TINY.seq_len)
    with torch.no_grad():
        assert np.abs(fmap - folded.features(x).numpy()).max() < EXPORT_TOL
    assert np.array_equal(run(graphs["head"], fmap), run(graphs["all"], x))


@pytest.mark.parametrize(
    "part, inputs, output",
    [("all", "image", "logit"), ("features", "image", "features"), ("head", "features", "logit")],
)
def test_exported_graphs_are_valid_onnx_with_a_dynamic_batch_axis(part, inputs, output):
    import onnx

    model = onnx.load_from_string(export_onnx(FoldedCnnLstm(reference(TINY)), part))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == [inputs]
    assert [o.name for o in model.graph.output] == [output]
    for value in (model.graph.input[0], model.graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_the_graph_has_no_batchnorm_or_dropout():
    """Folding happened before export: only the folded operations remain."""
    import onnx

    ops = {n.op_type for n in onnx.load_from_string(export_onnx(FoldedCnnLstm(reference(TINY)))).graph.node}
    assert {"Conv", "MaxPool", "Relu", "LSTM", "Gemm"} <= ops
    assert not ops & {"BatchNormalization", "Dropout"}


def test_unknown_part_is_a_config_error():
    with pytest.raises(ConfigError, match="part must be one of"):
        export_onnx(FoldedCnnLstm(reference(TINY)), "lstm")


@pytest.fixture
def exporter_calls(monkeypatch):
    """An empty export cache, and the list of parts PyTorch's exporter was really run for."""
    calls = []
    real = torch.onnx.export

    def spy(module, args, *rest, **kwargs):
        calls.append(tuple(args[0].shape[1:]))
        return real(module, args, *rest, **kwargs)

    clear_export_cache()
    monkeypatch.setattr(torch.onnx, "export", spy)
    yield calls
    clear_export_cache()


def test_equal_weights_export_once_and_get_the_same_graph(exporter_calls):
    """A second folded copy of the same model (a second predictor) re-uses the first export."""
    model = reference(TINY)
    first = export_onnx(FoldedCnnLstm(model))
    second = export_onnx(FoldedCnnLstm(model))
    assert second == first
    assert len(exporter_calls) == 1


def test_other_weights_never_hit_the_cache(exporter_calls):
    """One weight changed by 1e-3, in a new copy or in place: a new export that computes the new logits."""
    model = reference(TINY)
    folded = FoldedCnnLstm(model)
    old = export_onnx(folded)
    x = images(TINY, 3, seed=7)
    with torch.no_grad():
        folded.head.dense[-1].bias.add_(1e-3)  # every logit moves by exactly 1e-3
        want = folded(x)
    new = export_onnx(folded)
    assert len(exporter_calls) == 2 and new != old
    assert np.abs(run(session(new), x) - want.numpy()).max() < EXPORT_TOL
    assert np.abs(run(session(old), x) - (want - 1e-3).numpy()).max() < EXPORT_TOL

    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lstm1.weight_hh_l0[0, 0] += 1e-3
    assert module_digest(FoldedCnnLstm(other)) != module_digest(FoldedCnnLstm(model))
    export_onnx(FoldedCnnLstm(other))
    assert len(exporter_calls) == 3


def test_each_part_and_input_size_is_its_own_export(exporter_calls):
    folded = FoldedCnnLstm(reference(TINY))
    graphs = {part: export_onnx(folded, part) for part in ONNX_PARTS}
    assert len(set(graphs.values())) == 3
    assert exporter_calls == [(1, 32, 32), (1, 32, 32), (TINY.channels[-1], TINY.seq_len, TINY.seq_len)]
    assert {part: export_onnx(folded, part) for part in ONNX_PARTS} == graphs
    assert len(exporter_calls) == 3


def test_the_cache_keeps_only_the_most_recent_exports(exporter_calls, monkeypatch):
    monkeypatch.setattr(onnx_export, "EXPORT_CACHE_SIZE", 2)
    folded = FoldedCnnLstm(reference(TINY))
    for part in ("all", "features", "all", "head", "features", "all"):
        export_onnx(folded, part)
    # all, features: exported; all: kept; head: exported, features dropped (least recent);
    # features: exported again, all dropped; all: exported again
    assert len(exporter_calls) == 5
