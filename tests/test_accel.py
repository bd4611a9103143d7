"""pneumolens.accel: a stock model, and an optional accelerator that trains it to the same weights."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pneumolens.accel import accelerate_cpu_training
from pneumolens.accel import dropout as fast_dropout
from pneumolens.accel.fallback import kernel_serves
from pneumolens.accel.swaps import KEPT, SWAPS
from pneumolens.model import CnnLstm, ModelConfig

PACKAGE = Path(__file__).resolve().parents[1] / "pneumolens"

#: A small CnnLstm with dropout everywhere (32x32: 4 LSTM steps of 64 features).
SMALL = ModelConfig(input_size=32, channels=(8, 16, 16), lstm_units=(16, 8), dense_units=(16, 8))


def custom_nodes(out: torch.Tensor) -> set[str]:
    """Names of the custom autograd.Function nodes in ``out``'s backward graph."""
    seen, todo, found = set(), [out.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.add(type(node).__name__)
        todo += [n for n, _ in node.next_functions]
    return found


def batch(n: int = 6, size: int = 32, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, size, size, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    return x, (torch.arange(n) % 2).to(dtype)


# --- the model is stock -------------------------------------------------------------------------


def test_every_leaf_module_of_the_model_is_a_torch_nn_layer() -> None:
    leaves = [m for m in CnnLstm().modules() if not list(m.children())]
    assert len(leaves) == 3 * 5 + 6 + 2 * 4 + 1  # conv blocks, LSTMs with BN and dropout, dense blocks, output
    for m in leaves:
        assert type(m).__module__.startswith("torch.nn.modules."), type(m)
    kinds = {type(m).__name__ for m in leaves}
    assert kinds == {"Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Dropout", "LSTM", "BatchNorm1d", "Linear"}


def test_the_stock_model_has_no_custom_autograd_node_in_training() -> None:
    model = CnnLstm(SMALL).train()
    x, _ = batch()
    assert custom_nodes(model(x)) == set()


def test_no_autograd_function_outside_the_accelerator() -> None:
    pattern = re.compile(r"autograd\.Function\b|\bFunction\)")
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "accel" not in p.relative_to(PACKAGE).parts and pattern.search(p.read_text())
    ]
    assert offenders == []


# --- the swap ------------------------------------------------------------------------------------


def test_accelerate_swaps_in_place_idempotently_and_keeps_the_state_dict() -> None:
    model = CnnLstm(SMALL)
    params = {n: p for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    swapped = accelerate_cpu_training(model)
    assert swapped and len(swapped) == len(set(swapped))
    assert all(type(model.get_submodule(n)) is not type(CnnLstm(SMALL).get_submodule(n)) for n in swapped)
    assert accelerate_cpu_training(model) == []  # second call: nothing more to do
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())  # an optimiser built before still works
    for name in swapped:  # each swapped module is still the stock layer's kind
        assert isinstance(model.get_submodule(name), nn.Dropout)


def test_kept_swaps_are_known_and_the_swapped_names_are_reported() -> None:
    assert set(KEPT) <= set(SWAPS)
    swapped = accelerate_cpu_training(CnnLstm(ModelConfig()))
    assert swapped == ["features.block1.drop", "features.block2.drop", "features.block3.drop", "drop1", "drop2",
                       "head.dense1.drop", "head.dense2.drop"]


def test_a_model_off_the_cpu_is_left_alone() -> None:
    model = CnnLstm(SMALL).to("meta")
    before = [type(m) for m in model.modules()]
    assert accelerate_cpu_training(model) == []
    assert [type(m) for m in model.modules()] == before


def test_kernels_do_not_serve_off_the_cpu_or_in_other_dtypes() -> None:
    m = nn.Linear(2, 2).train()
    w = torch.zeros(2, requires_grad=True)
    assert kernel_serves(m, w)
    assert not kernel_serves(m, torch.zeros(2, device="meta", requires_grad=True))
    assert not kernel_serves(m, w.detach().bfloat16().requires_grad_())
    assert not kernel_serves(m, w, torch.zeros(2, dtype=torch.float64))
    assert not kernel_serves(m.eval(), w)
    with torch.no_grad():
        assert not kernel_serves(m.train(), w)


def test_shipped_checkpoint_gives_the_same_logits_accelerated_in_eval_mode() -> None:
    from pneumolens.checkpoint import SHIPPED, load_checkpoint

    if not SHIPPED.exists():
        pytest.skip("no shipped checkpoint in this install")
    model = load_checkpoint().model
    x = torch.rand(3, 1, 128, 128, generator=torch.Generator().manual_seed(2))
    stock = model(x.clone().requires_grad_())  # with autograd on, as Grad-CAM runs it
    accelerate_cpu_training(model)
    y = model.eval()(x.clone().requires_grad_())
    assert custom_nodes(y) == set()  # Grad-CAM and the export see the stock layers
    assert torch.equal(y, stock)


# --- same training, same weights -------------------------------------------------------------------


def record_masks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, float]]:
    """From now on, every fast dropout mask drawn, in order, with its scale."""
    masks: list[tuple[torch.Tensor, float]] = []
    draw = fast_dropout.keep_mask

    def recorded(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
        keep, scale = draw(x, p, generator)
        masks.append((keep, scale))
        return keep, scale

    monkeypatch.setattr(fast_dropout, "keep_mask", recorded)
    return masks


@contextmanager
def replay_masks(model: CnnLstm, masks: list[tuple[torch.Tensor, float]]) -> Iterator[None]:
    """The stock model's dropout layers apply the recorded masks, in order (forward hooks)."""
    replay = iter(masks)

    def same_mask(module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        keep, scale = next(replay)
        return inputs[0] * keep * scale

    handles = [m.register_forward_hook(same_mask) for m in model.modules() if type(m) is nn.Dropout]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    assert next(replay, None) is None  # every recorded mask replayed


def train(model: CnnLstm, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """SGD steps on (x, y); the state dict's tensors afterwards."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(x), y).backward()
        opt.step()
    return list(model.state_dict().values())


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_stock_and_accelerated_training_reach_the_same_weights(dtype, tol, monkeypatch) -> None:
    """Same seed, same batches, same dropout masks (the stock run replays the accelerated run's)."""
    masks = record_masks(monkeypatch)
    torch.manual_seed(0)
    stock = CnnLstm(SMALL).to(dtype).to(memory_format=torch.channels_last)
    accelerated = copy.deepcopy(stock)
    start = [t.clone() for t in stock.state_dict().values()]
    assert accelerate_cpu_training(accelerated)
    x, y = batch(dtype=dtype)
    fast = train(accelerated, x, y, steps=3)
    assert len(masks) == 3 * 7  # every dropout drew its mask from the fast path, at every step
    with replay_masks(stock, masks):
        slow = train(stock, x, y, steps=3)
    moved = sum(float((a.double() - b.double()).abs().sum()) for a, b in zip(slow, start) if a.is_floating_point())
    assert moved > 1.0  # the weights did move, by far more than the tolerance
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_a_few_bfloat16_autocast_steps_run_and_update_the_weights() -> None:
    torch.manual_seed(0)
    model = CnnLstm(SMALL).to(memory_format=torch.channels_last)
    accelerate_cpu_training(model)
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = batch()
    for _ in range(2):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
            assert logits.dtype == torch.bfloat16
            assert custom_nodes(logits) == set()  # every swapped module ran its stock layer
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), name


def test_the_accelerated_kernels_run_in_a_plain_training_step() -> None:
    model = CnnLstm(SMALL).train()
    accelerate_cpu_training(model)
    assert custom_nodes(model(batch()[0])) == {"_MaskedScaleBackward"}


@pytest.mark.parametrize("wrt", ["input", "parameters"])
def test_double_backward_through_the_accelerated_model_equals_stock(wrt: str, monkeypatch) -> None:
    """A gradient penalty (gradients of gradients) gives the stock model's parameter gradients."""
    masks = record_masks(monkeypatch)
    torch.manual_seed(3)
    stock = CnnLstm(SMALL).double().train()
    accelerated = copy.deepcopy(stock)
    accelerate_cpu_training(accelerated)
    x, y = batch(dtype=torch.float64)

    def penalised_grads(model: CnnLstm) -> list[torch.Tensor]:
        xx = x.clone().requires_grad_(wrt == "input")
        loss = F.binary_cross_entropy_with_logits(model(xx), y)
        of = [xx] if wrt == "input" else list(model.parameters())
        grads = torch.autograd.grad(loss, of, create_graph=True)
        (loss + sum(g.square().sum() for g in grads)).backward()
        return [p.grad.clone() for p in model.parameters()]

    got = penalised_grads(accelerated)
    assert len(masks) == 7  # the fast masks were drawn
    with replay_masks(stock, masks):
        expected = penalised_grads(stock)
    for (name, _), a, b in zip(stock.named_parameters(), got, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.slow
def test_accelerating_in_a_lightning_modules_setup_trains(tmp_path) -> None:
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = CnnLstm(SMALL).to(memory_format=torch.channels_last)
            self.swapped: list[str] = []

        def setup(self, stage: str) -> None:
            self.swapped = accelerate_cpu_training(self.model)

        def training_step(self, b, i):
            return F.binary_cross_entropy_with_logits(self.model(b[0]), b[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3, fused=True)

    x, y = batch(8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    module = Module()
    before = copy.deepcopy(module.model.state_dict())
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", deterministic=True, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, loader)
    assert module.swapped == accelerate_cpu_training(CnnLstm(SMALL))
    assert all(type(m).__module__.startswith("pneumolens.accel.") for n, m in module.model.named_modules()
               if n in module.swapped)
    assert any(not torch.equal(p, before[n]) for n, p in module.model.named_parameters())
