"""pneumolens.folding: the BatchNorm-folded inference copy computes the stock model's logits.

Also the shared helpers of the inference tests (test_onnx_export, test_onnx_runtime, test_backends,
test_inference): small configurations and a random model with trained-like BatchNorm statistics.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pneumolens.errors import ConfigError
from pneumolens.folding import FoldedCnnLstm, fold_bn_after, fold_bn_before, fold_bn_into_lstm
from pneumolens.model import CnnLstm, ModelConfig

TINY = ModelConfig(
    input_size=32, channels=(4, 8, 8), conv_dropout=(0.2, 0.2, 0.2), lstm_units=(8, 6), dense_units=(8, 5)
)
TWO_BLOCKS = ModelConfig(input_size=16, channels=(3, 5), conv_dropout=(0.1, 0.1), lstm_units=(7, 4), dense_units=(6,))

#: Largest max-abs difference in logits accepted between the folded copy and the stock model: the
#: folded weights are rounded to float32 once, so the sums run in another order.
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


def test_folded_stages_compose_to_the_folded_model():
    folded = FoldedCnnLstm(reference(TINY), conv_chunk=0)
    x = images(TINY, 5)
    fmap = folded.features(x)
    assert fmap.shape == (5, TINY.channels[-1], TINY.seq_len, TINY.seq_len)
    assert torch.equal(folded.head(fmap), folded(x))


def test_folded_model_has_no_batchnorm_or_dropout_and_leaves_the_original_alone():
    model = reference(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = FoldedCnnLstm(model)
    kinds = {type(m) for m in folded.modules()}
    assert not any(issubclass(k, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for k in kinds)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.features.block1.bn, nn.BatchNorm2d)  # the explainers' model keeps its layers
    assert not any(p.requires_grad for p in folded.parameters())


class _Conv(nn.Conv2d):
    """A subclass with its own forward, as an accelerator's layer may have."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


class _Lstm(nn.LSTM):
    def forward(self, x, hx=None):
        return super().forward(x, hx)


def test_folded_model_is_made_of_stock_layers_even_from_subclassed_ones():
    """The exporter must see PyTorch's own layers, whatever the trained model runs."""
    model = reference(TINY)
    expected = ref_logits(model, images(TINY, 4))
    for block in model.features:
        conv = _Conv(block.conv.in_channels, block.conv.out_channels, 3, padding=1)
        conv.load_state_dict(block.conv.state_dict())
        block.conv = conv
    lstm = _Lstm(model.lstm1.input_size, model.lstm1.hidden_size, batch_first=True)
    lstm.load_state_dict(model.lstm1.state_dict())
    model.lstm1 = lstm
    folded = FoldedCnnLstm(model)
    own = {"FoldedCnnLstm", "FoldedFeatures", "FoldedHead"}
    leaves = {type(m) for m in folded.modules() if type(m).__name__ not in own}
    assert leaves == {nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.LSTM, nn.Linear, nn.Sequential}
    assert (folded(images(TINY, 4)) - expected).abs().max() < TOL


def test_folding_uses_running_statistics_even_from_a_model_in_training_mode():
    model = reference(TINY)
    x = images(TINY, 4)
    expected = ref_logits(model, x)  # eval mode
    model.train()
    got = FoldedCnnLstm(model)(x)
    assert (got - expected).abs().max() < TOL


def test_fold_bn_after_by_hand():
    """1x1 conv 2x + 1, then BN (mean 3, var 4, eps 0, gamma 3, beta 0.5): (2x + 1 - 3) / 2 * 3 + 0.5 = 3x - 2.5."""
    conv = nn.Conv2d(1, 1, 1)
    bn = nn.BatchNorm2d(1, eps=0.0).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(1.0)
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(3.0)
        bn.bias.fill_(0.5)
    fold_bn_after(conv, bn)
    assert conv.weight.item() == 3.0 and conv.bias.item() == -2.5


def test_fold_bn_before_by_hand():
    """BN (mean 1, var 0.25, eps 0, gamma 1, beta 0) is 2x - 2; then W = [3], b = 1: 6x - 5."""
    bn = nn.BatchNorm1d(1, eps=0.0).eval()
    with torch.no_grad():
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(0.25)
    w, b = fold_bn_before(bn, torch.tensor([[3.0]]), torch.tensor([1.0]))
    assert w.tolist() == [[6.0]] and b.tolist() == [-5.0]


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


def test_batchnorm_without_running_statistics_is_refused():
    with pytest.raises(ConfigError, match="running statistics"):
        fold_bn_after(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False))
