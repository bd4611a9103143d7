"""The LightningModule's set-up: the CPU-training accelerator swapped in on CPU only, when the recipe asks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_model_config
from torch import nn

from pneumolens.config import TrainConfig
from pneumolens.model import CnnLstm
from pneumolens.training.module import PneumoniaClassifier


def _module(accelerate: bool, device: str) -> PneumoniaClassifier:
    module = PneumoniaClassifier(TrainConfig(model=tiny_model_config(), accelerate=accelerate))
    # What setup reads of the Trainer: the device the strategy will move the model to.
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
    return module


def _classes(model: nn.Module) -> dict[str, type]:
    return {name: type(m) for name, m in model.named_modules()}


def test_setup_swaps_the_accelerator_in_on_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    from pneumolens.accel import accelerate_cpu_training

    expected = accelerate_cpu_training(CnnLstm(tiny_model_config()))  # the same swaps on a fresh copy
    assert expected  # the tiny model has modules the accelerator serves
    module = _module(accelerate=True, device="cpu")
    stock = _classes(module.model)
    keys = list(module.state_dict())
    with caplog.at_level("INFO", logger="pneumolens.training.module"):
        module.setup("fit")
    try:
        assert module.accelerated == expected
        changed = {name for name, cls in _classes(module.model).items() if cls is not stock[name]}
        assert changed == set(expected)
        assert list(module.state_dict()) == keys  # checkpoints of either path load into the other
        assert f"CPU training accelerator: {', '.join(expected)}" in caplog.text
    finally:
        module.teardown("fit")


@pytest.mark.parametrize(("accelerate", "device", "stage"), [(False, "cpu", "fit"), (True, "cuda", "fit"),
                                                            (True, "cpu", "validate")])
def test_setup_keeps_the_stock_layers(accelerate: bool, device: str, stage: str) -> None:
    """--no-accel, a GPU run (setup runs before the model moves), or no training: nothing is swapped."""
    module = _module(accelerate=accelerate, device=device)
    stock = _classes(module.model)
    module.setup(stage)
    module.teardown(stage)
    assert module.accelerated == [] and _classes(module.model) == stock


def test_setup_and_teardown_restore_the_nan_fill_setting() -> None:
    before = torch.utils.deterministic.fill_uninitialized_memory
    module = _module(accelerate=False, device="cpu")
    module.setup("fit")
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    module.teardown("fit")
    assert torch.utils.deterministic.fill_uninitialized_memory == before
