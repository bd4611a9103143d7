"""The explainers on models whose answer is known: where, sign, shape, determinism, no side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_explain_support import (  # noqa: F401 (one_thread is a fixture)
    QuadrantNet,
    hook_count,
    one_thread,
    quadrant_images,
    region_mask,
    textured_images,
    tiny_cnnlstm,
)
from pneumolens.explain import METHODS, Attribution, explain, parse_method_spec
from pneumolens.explain.superpixel import kernel_shap_samples, superpixels, switch_forward, unique_rows_forward

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
FAST = {  # few samples: these tests check where the evidence goes, not the estimate's precision
    "gradcam": {},
    "lime": {"n_samples": 200, "n_segments": 16, "compactness": 0.2},
    "kernelshap": {"n_samples": 200, "n_segments": 16, "compactness": 0.2},
    "shap": {"n_samples": 16},
    "ig": {"n_steps": 16},
    "occlusion": {"window": 4, "stride": 2},
}


def dark_background(k: int = 6) -> np.ndarray:
    """Stand-in training images: dark, textured, unlike the bright quadrant."""
    return np.random.default_rng(5).integers(0, 60, size=(k, SIZE, SIZE)).astype(np.uint8)


def params_for(method: str) -> dict:
    p = dict(FAST[method])
    if method == "shap":
        p["background"] = dark_background()
    return p


@pytest.mark.parametrize("method", sorted(METHODS))
def test_evidence_lands_in_the_only_region_that_matters(method: str) -> None:
    model = QuadrantNet(SIZE)
    images = quadrant_images(2, SIZE)
    att = explain(model, images, method, **params_for(method))
    assert isinstance(att, Attribution) and att.method == method
    assert att.maps.shape == (2, SIZE, SIZE) and att.maps.dtype == np.float32
    inside = region_mask(SIZE)
    for amap in att.maps:
        pos = np.clip(amap, 0, None)
        assert pos.sum() > 0, f"{method}: no positive evidence at all"
        share = pos[inside].sum() / pos.sum()
        # occlusion windows straddling the border credit a thin rim outside: allow it
        assert share >= (0.85 if method == "occlusion" else 0.95), f"{method}: only {share:.2f} of the evidence inside"
        # brightening the quadrant raises the logit: its net attribution is positive
        assert amap[inside].sum() > 0
        assert np.abs(amap[~inside]).sum() <= 0.1 * np.abs(amap[inside]).sum()


def test_integrated_gradients_is_complete_on_the_linear_region() -> None:
    model = QuadrantNet(SIZE)
    images = quadrant_images(1, SIZE)
    att = explain(model, images, "ig", n_steps=8, baseline="black")
    x = torch.as_tensor(images).float()[:, None] / 255
    with torch.no_grad():
        expected = float(model(x) - model(torch.zeros_like(x)))
    assert att.maps.sum() == pytest.approx(expected, rel=1e-4)
    assert abs(att.params["convergence_delta"][0]) < 1e-4


@pytest.mark.parametrize("method", ["lime", "kernelshap", "shap"])
def test_sampling_methods_are_deterministic_for_a_seed(method: str) -> None:
    model = tiny_cnnlstm()
    images = textured_images(1, SIZE)
    p = params_for(method)
    a = explain(model, images, method, seed=3, **p).maps
    b = explain(model, images, method, seed=3, **p).maps
    c = explain(model, images, method, seed=4, **p).maps
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_explain_restores_the_callers_random_streams() -> None:
    model = tiny_cnnlstm()
    torch.manual_seed(123)
    np.random.seed(123)
    expected_t, expected_n = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    explain(model, textured_images(1, SIZE), "lime", seed=9, **FAST["lime"])
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected_t.numpy())
    np.testing.assert_array_equal(np.random.rand(3), expected_n)


@pytest.mark.parametrize("method", ["gradcam", "ig"])
def test_batched_equals_one_image_at_a_time(method: str) -> None:
    model = tiny_cnnlstm()
    images = textured_images(3, SIZE)
    batched = explain(model, images, method, **FAST[method]).maps
    single = np.concatenate([explain(model, images[i : i + 1], method, **FAST[method]).maps for i in range(3)])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-6 * max(1e-12, float(np.abs(single).max())) + 1e-9)


def test_float_and_uint8_inputs_give_the_same_maps() -> None:
    model = tiny_cnnlstm()
    images = textured_images(2, SIZE)
    a = explain(model, images, "gradcam").maps
    b = explain(model, torch.as_tensor(images).float()[:, None] / 255, "gradcam").maps
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_no_hooks_are_left_and_training_flag_is_restored(method: str) -> None:
    model = tiny_cnnlstm()
    model.train()
    before = hook_count(model)
    explain(model, textured_images(1, SIZE), method, **params_for(method))
    assert hook_count(model) == before == 0
    assert model.training  # restored, and never switched on during the call


def test_training_mode_model_is_explained_in_eval_mode() -> None:
    model = tiny_cnnlstm()
    images = textured_images(1, SIZE)
    eval_maps = explain(model.eval(), images, "gradcam").maps
    model.train()
    np.testing.assert_allclose(explain(model, images, "gradcam").maps, eval_maps, rtol=1e-5, atol=1e-9)


def test_no_hooks_are_left_after_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_cnnlstm()

    def boom(*args, **kwargs):
        raise RuntimeError("failure after the hooked layer")

    monkeypatch.setattr(model.head.out, "forward", boom)
    for method in ("gradcam", "ig"):
        with pytest.raises(RuntimeError, match="failure after"):
            explain(model, textured_images(1, SIZE), method, **FAST[method])
        assert hook_count(model) == 0
    assert not model.training


def test_gradcam_layer_by_dotted_name_and_default() -> None:
    model = tiny_cnnlstm()
    images = textured_images(1, SIZE)
    default = explain(model, images, "gradcam")
    assert default.params["layer"] == "features.block3.relu" and default.params["layer_resolution"] == [SIZE // 4, SIZE // 4]
    other = explain(model, images, "gradcam", layer="features.block2.relu")
    assert other.params["layer_resolution"] == [16, 16] and other.maps.shape == (1, SIZE, SIZE)


def test_unknown_layer_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown layer 'features.block9'.*features.block1.conv"):
        explain(tiny_cnnlstm(), textured_images(1, SIZE), "gradcam", layer="features.block9")


def test_layer_without_a_feature_map_is_refused() -> None:
    with pytest.raises(ValueError, match="feature map"):
        explain(tiny_cnnlstm(), textured_images(1, SIZE), "gradcam", layer="head.dense1")


def test_unknown_method_and_parameter() -> None:
    with pytest.raises(ValueError, match="unknown method 'gradcam\\+\\+'.*gradcam, lime"):
        explain(tiny_cnnlstm(), textured_images(1, SIZE), "gradcam++")
    with pytest.raises(ValueError, match="unknown parameter.*n_sample"):
        explain(tiny_cnnlstm(), textured_images(1, SIZE), "lime", n_sample=10)
    with pytest.raises(ValueError, match="unknown baseline 'white'"):
        explain(tiny_cnnlstm(), textured_images(1, SIZE), "ig", baseline="white")


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((1, 16, 16), np.uint8), "takes 32x32"),
        (np.zeros((1, 32, 30), np.uint8), "square"),
        (np.zeros((1, 3, 32, 32), np.float32), "expected"),
        (np.full((1, 1, 32, 32), 255.0, np.float32), r"\[0, 1\]"),
        (np.zeros((0, 32, 32), np.uint8), "empty"),
    ],
)
def test_bad_inputs_are_rejected(images: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        explain(tiny_cnnlstm(), images, "gradcam")


def test_shap_never_uses_the_explained_image_as_background() -> None:
    model = QuadrantNet(SIZE)
    images = quadrant_images(1, SIZE)
    with pytest.raises(ValueError, match="every background image is an explained image"):
        explain(model, images, "shap", background=images)
    # the explained image is dropped from a mixed background; the rest is used
    mixed = np.concatenate([images, dark_background(3)])
    att = explain(model, images, "shap", background=mixed, n_samples=8)
    assert att.params["background"] == "3 training images"
    assert np.abs(att.maps).sum() > 0


def test_shap_fallback_is_stated_in_params() -> None:
    att = explain(QuadrantNet(SIZE), quadrant_images(1, SIZE), "shap", n_samples=8)
    assert att.params["background"].startswith("fallback:blur")
    assert np.abs(att.maps).sum() > 0


def test_superpixels_cover_the_image_and_fall_back_to_a_grid() -> None:
    seg = superpixels(textured_images(1, 64)[0] / 255.0, n_segments=30)
    assert seg.shape == (64, 64) and seg.min() == 0
    assert set(np.unique(seg)) == set(range(seg.max() + 1))
    flat = superpixels(np.full((64, 64), 0.5), n_segments=16)
    assert flat.max() + 1 == 16  # a 4x4 grid


def test_method_specs_parse_values_and_reject_unknown_keys() -> None:
    assert parse_method_spec("ig:baseline=blur:n_steps=64") == ("ig", {"baseline": "blur", "n_steps": 64})
    assert parse_method_spec("gradcam:relu=false") == ("gradcam", {"relu": False})
    with pytest.raises(ValueError, match="unknown parameter 'steps'"):
        parse_method_spec("ig:steps=3")
    with pytest.raises(ValueError, match="key=value"):
        parse_method_spec("ig:blur")


@pytest.mark.parametrize("method", ["lime", "kernelshap"])
def test_switch_space_equals_captums_pixel_space_attribution(method: str) -> None:
    """Perturbing K superpixel switches is Captum's pixel-space method with feature_mask=segments."""
    import math

    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import KernelShap, Lime

    from pneumolens.explain.base import as_batch, column, seeded

    model = tiny_cnnlstm()
    images = textured_images(1, SIZE)
    p = dict(FAST[method], n_samples=60)
    ours = explain(model, images, method, seed=2, **p).maps[0]
    x = as_batch(images)
    seg = torch.as_tensor(superpixels(x[0], p["n_segments"], p["compactness"]))[None, None]

    def lime_kernel(original, perturbed, interpretable, **kwargs):  # lime_image's kernel, on the on/off vector
        z = interpretable.float().flatten()
        d = 1 - float(z.sum()) / (float(z.norm()) * math.sqrt(z.numel())) if z.any() else 1.0
        return math.exp(-(d * d) / (2 * 0.25**2))

    fwd = column(model)
    if method == "lime":
        ref_explainer = Lime(fwd, interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=lime_kernel)
    else:
        ref_explainer = KernelShap(fwd)
    with torch.no_grad(), seeded(2):
        ref = ref_explainer.attribute(x, baselines=0.0, target=0, feature_mask=seg, n_samples=60,
                                      perturbations_per_eval=32)
    np.testing.assert_allclose(ours, ref[0, 0].numpy(), rtol=1e-3, atol=1e-6)


def test_cudnn_is_disabled_only_inside_a_cuda_gradient_call() -> None:
    from pneumolens.explain.base import gradient_scope

    before = torch.backends.cudnn.enabled
    with gradient_scope(torch.device("cuda")):
        assert torch.backends.cudnn.enabled is False
    assert torch.backends.cudnn.enabled == before
    with gradient_scope(torch.device("cpu")):
        assert torch.backends.cudnn.enabled == before


@pytest.mark.parametrize("method", ["ig", "shap", "lime", "occlusion"])
def test_fast_copies_give_the_models_maps(method: str) -> None:
    """The BatchNorm-folded / ONNX copies used for speed compute the same function, hence the same maps."""
    from pneumolens.explain.runner import fast_forwards

    model = tiny_cnnlstm()
    images = textured_images(1, SIZE)
    p = params_for(method) if method != "shap" else {"n_samples": 8, "background": textured_images(4, SIZE, seed=9)}
    forward, grad_forward = fast_forwards(model, [method])
    assert (forward if method in ("lime", "occlusion") else grad_forward) is not None
    plain = explain(model, images, method, seed=1, **p)
    fast = explain(model, images, method, seed=1, forward=forward, grad_forward=grad_forward, **p)
    scale = float(np.abs(plain.maps).max())
    np.testing.assert_allclose(fast.maps, plain.maps, rtol=0, atol=2e-3 * scale)


def test_each_distinct_perturbation_runs_once_and_every_sample_gets_its_logit() -> None:
    torch.manual_seed(0)
    z, _ = kernel_shap_samples(12, 300)  # few superpixels: many repeated coalitions
    seen: list[torch.Tensor] = []
    weights = torch.randn(12)

    def fn(rows: torch.Tensor) -> torch.Tensor:
        seen.append(rows)
        return (rows @ weights)[:, None] + 0.5

    y = unique_rows_forward(fn, z, per_eval=40, device=torch.device("cpu"))
    ran = torch.cat(seen)
    assert len(ran) == len(torch.unique(z, dim=0)) < len(z) and max(len(r) for r in seen) <= 40
    assert len(torch.unique(ran, dim=0)) == len(ran)  # no row twice
    torch.testing.assert_close(y, z @ weights + 0.5)


def test_switched_images_are_base_plus_the_switched_on_superpixels() -> None:
    g = torch.Generator().manual_seed(0)
    x, base = torch.rand(1, 1, 8, 8, generator=g), torch.rand(1, 1, 8, 8, generator=g)
    segments = (np.arange(64).reshape(8, 8) // 10).astype(np.int64)  # 7 regions
    z = (torch.rand(5, 7, generator=g) > 0.5).float()
    built: list[torch.Tensor] = []

    def fn(images: torch.Tensor) -> torch.Tensor:
        built.append(images.clone())
        return images.flatten(1).sum(1)

    logits = switch_forward(fn, x, base, segments)(z)
    on = z[:, torch.as_tensor(segments).reshape(-1)].view(5, 1, 8, 8)
    expected = on.mul(x - base).add(base)  # PyTorch's float32 arithmetic, in the same order
    assert torch.equal(built[0], expected)
    torch.testing.assert_close(logits[:, 0], expected.flatten(1).sum(1))


def test_prototype_background_is_the_cluster_means_largest_first():
    from pneumolens.explain.shap import prototype_background

    a = np.full((5, 8, 8), 10, np.uint8)  # five dark films
    b = np.full((3, 8, 8), 200, np.uint8)  # three bright films
    b[0] = 203
    protos, counts = prototype_background(np.concatenate([b, a]), k=2, seed=0)
    assert protos.dtype == np.uint8 and protos.shape == (2, 8, 8)
    assert counts.tolist() == [5, 3]
    assert (protos[0] == 10).all() and (protos[1] == 201).all()  # (203 + 200 + 200) / 3 = 201
