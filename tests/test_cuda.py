"""The same answers on a CUDA GPU as on the CPU: explanations (cuDNN LSTM off for gradients), training, prediction.

Skipped where no GPU is visible (CI, the 2-core development machine); run them on a GPU
machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from test_explain_support import QuadrantNet, quadrant_images, region_mask, textured_images, tiny_cnnlstm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible (torch.cuda.is_available() is False)")

SIZE = 32
CUDA = torch.device("cuda")


def _params(method: str) -> dict:
    p = {
        "gradcam": {},
        "ig": {"n_steps": 16},
        "shap": {"n_samples": 16, "background": textured_images(4, SIZE, seed=9)},
        "occlusion": {"window": 4, "stride": 2},
        "lime": {"n_samples": 200, "n_segments": 16, "compactness": 0.2},
        "kernelshap": {"n_samples": 200, "n_segments": 16, "compactness": 0.2},
    }
    return p[method]


@pytest.fixture
def full_float32():
    """No TF32 (the default for cuDNN convolutions on Ampere and later): CPU-exact float32 for the comparison.

    With TF32 the maps differ at the 1e-3 level of the logits, which occlusion (a difference of
    two nearly equal logits) turns into percent-level differences of its map.
    """
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("method", ["gradcam", "ig", "shap", "occlusion"])
def test_deterministic_methods_give_the_cpu_maps_on_cuda(method: str, full_float32: None) -> None:
    """Gradients through the eval-mode LSTMs on CUDA need cuDNN off; the maps must equal the CPU's."""
    from pneumolens.explain import explain

    images = textured_images(2, SIZE)
    cpu = explain(tiny_cnnlstm(), images, method, seed=3, **_params(method)).maps
    gpu = explain(tiny_cnnlstm().to(CUDA), images, method, seed=3, **_params(method)).maps
    scale = float(np.abs(cpu).max())
    assert scale > 0, f"{method}: an all-zero CPU map tells nothing"
    if method == "shap":
        # expected gradients draw background images and interpolation points from the device's
        # own generator: compare the estimates by shape, not value by value
        r = np.corrcoef(cpu.ravel(), gpu.ravel())[0, 1]
        assert r > 0.5, f"shap: CUDA and CPU maps correlate only {r:.2f}"
    else:
        np.testing.assert_allclose(gpu, cpu, atol=2e-3 * scale, rtol=0)


@pytest.mark.parametrize("method", ["gradcam", "ig", "shap", "occlusion", "lime", "kernelshap"])
def test_evidence_lands_in_the_only_region_that_matters_on_cuda(method: str) -> None:
    from pneumolens.explain import explain

    att = explain(QuadrantNet(SIZE).to(CUDA), quadrant_images(2, SIZE), method, **_params(method))
    inside = region_mask(SIZE)
    for amap in att.maps:
        pos = np.clip(amap, 0, None)
        assert pos.sum() > 0 and pos[inside].sum() / pos.sum() >= (0.85 if method == "occlusion" else 0.95)


def test_cudnn_lstm_gradient_in_eval_mode_works_inside_the_gradient_scope() -> None:
    from pneumolens.explain.base import gradient_scope

    model = tiny_cnnlstm().to(CUDA)
    x = torch.rand(2, 1, SIZE, SIZE, device=CUDA, requires_grad=True)
    with gradient_scope(CUDA):
        (g,) = torch.autograd.grad(model(x).sum(), x)
    xc = x.detach().cpu().requires_grad_(True)
    (gc,) = torch.autograd.grad(tiny_cnnlstm()(xc).sum(), xc)
    torch.testing.assert_close(g.cpu(), gc, atol=1e-4, rtol=1e-3)


def test_predictor_on_cuda_gives_the_cpu_probabilities(tiny_checkpoint_path: Path) -> None:
    from pneumolens.inference import Predictor

    images = textured_images(5, 32)
    cpu = Predictor(tiny_checkpoint_path, fast=False).probabilities(images)
    gpu = Predictor(tiny_checkpoint_path, device="cuda").probabilities(images)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


def test_training_on_cuda_writes_a_checkpoint_that_loads_on_the_cpu(synthetic_dataset: Path, tmp_path: Path) -> None:
    from pneumolens.checkpoint import load_checkpoint
    from pneumolens.config import TrainConfig
    from pneumolens.inference import Predictor

    from conftest import tiny_model_config

    config = TrainConfig(model=tiny_model_config(), batch_size=8, max_epochs=2, early_stopping_patience=0, seed=1)
    from pneumolens.training import fit

    res = fit(config, synthetic_dataset, tmp_path / "run", accelerator="gpu", progress=False)
    ck = load_checkpoint(res.model_path)  # map_location cpu, weights_only
    assert next(ck.model.parameters()).device.type == "cpu"
    assert ck.provenance["epochs_run"] == 2 and 0.0 < ck.threshold < 1.0
    probs = Predictor(ck).probabilities(textured_images(3, ck.input_size))
    assert np.isfinite(probs).all()
