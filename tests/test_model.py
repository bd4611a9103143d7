"""The CNN-LSTM matches the original's architecture exactly."""

from __future__ import annotations

import pytest
import torch

from pneumolens.errors import ConfigError
from pneumolens.model import CnnLstm, ModelConfig, count_parameters


def test_parameter_count_matches_the_original() -> None:
    # Keras reports 2,720,129: it adds BatchNorm running stats (1,984) and has one LSTM bias, not two.
    assert count_parameters(CnnLstm(ModelConfig())) == 2_719_681


def test_sequence_is_16_steps_of_2048_features() -> None:
    cfg = ModelConfig()
    assert (cfg.seq_len, cfg.seq_features) == (16, 2048)
    net = CnnLstm(cfg)
    assert net.lstm1.input_size == 2048 and net.lstm1.hidden_size == 256
    assert net.lstm2.hidden_size == 128


def test_to_sequence_uses_keras_channels_last_order() -> None:
    """Step = feature-map row; within a step, width varies slowest and channel fastest."""
    net = CnnLstm(ModelConfig())
    fmap = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)  # B, C, H, W
    seq = net.to_sequence(fmap)
    assert seq.shape == (2, 4, 5 * 3)
    b, h, w, c = 1, 2, 3, 1
    assert seq[b, h, w * 3 + c] == fmap[b, c, h, w]


def test_forward_returns_one_logit_per_image_and_is_batch_independent_in_eval() -> None:
    torch.manual_seed(0)
    net = CnnLstm(ModelConfig()).eval()
    x = torch.rand(3, 1, 128, 128)
    with torch.no_grad():
        out = net(x)
        single = torch.stack([net(x[i : i + 1])[0] for i in range(3)])
    assert out.shape == (3,)
    torch.testing.assert_close(out, single, rtol=1e-4, atol=1e-5)


def test_gradient_reaches_the_input_without_nans() -> None:
    net = CnnLstm(ModelConfig()).eval()
    x = torch.rand(2, 1, 128, 128, requires_grad=True)
    torch.sigmoid(net(x)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_other_input_sizes_change_the_sequence() -> None:
    cfg = ModelConfig(input_size=224)
    assert (cfg.seq_len, cfg.seq_features) == (28, 28 * 128)
    assert CnnLstm(cfg).eval()(torch.rand(1, 1, 224, 224)).shape == (1,)


@pytest.mark.parametrize(
    "kwargs",
    [{"input_size": 100}, {"channels": (32, 64)}, {"lstm_units": (256,)}],
)
def test_invalid_configs_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ModelConfig(**kwargs)


def test_config_round_trips_and_rejects_unknown_keys() -> None:
    cfg = ModelConfig(input_size=64)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_dict({"input_size": 64, "colour": True})


def test_training_forward_runs_the_layers_in_the_written_order() -> None:
    """No training-mode shortcut in the model itself: conv, BN, ReLU, pool, dropout, as written."""
    from pneumolens.model import ConvBlock

    torch.manual_seed(0)
    block = ConvBlock(1, 4, dropout=0.0).train()
    x = torch.randn(3, 1, 8, 8)
    written = block.pool(block.relu(block.bn.train()(block.conv(x))))
    assert torch.equal(block(x), written)
    assert [name for name, _ in block.named_children()] == ["conv", "bn", "relu", "pool", "drop"]
