"""Faithfulness measures (explain/faithfulness.py) and their evaluation (explain/evaluation.py), on answers
known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_explain_support import (  # noqa: F401 (one_thread is a fixture)
    QuadrantNet,
    one_thread,
    quadrant_images,
    region_mask,
    textured_images,
    tiny_cnnlstm,
)
from pneumolens.explain.base import as_batch
from pneumolens.explain.evaluation import evaluate_explanations, randomisation_check
from pneumolens.explain.faithfulness import (
    auc,
    available_stages,
    curve_inputs,
    deletion_insertion,
    finite_or_none,
    nan_median,
    pixel_order,
    randomised_copy,
    random_map,
    spearman,
)
from pneumolens.explain.runner import MethodSpec

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32


def test_curve_inputs_switch_pixels_in_order() -> None:
    start, end = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    order = np.arange(16)[::-1]  # last pixel first
    imgs = curve_inputs(start, end, order, steps=4)
    assert imgs.shape == (5, 1, 4, 4)
    assert [int(i.sum()) for i in imgs] == [0, 4, 8, 12, 16]
    assert imgs[1].flatten()[-4:].tolist() == [1, 1, 1, 1]  # the first quarter of the order


def test_pixel_order_breaks_ties_by_seed_only() -> None:
    amap = np.zeros((4, 4))
    amap[0, 0] = 5
    a, b, c = pixel_order(amap, 0), pixel_order(amap, 0), pixel_order(amap, 1)
    assert a[0] == 0 and np.array_equal(a, b) and not np.array_equal(a, c)


def test_true_map_beats_random_and_inverted_maps() -> None:
    model = QuadrantNet(SIZE).eval()
    x = torch.as_tensor(quadrant_images(1, SIZE)).float()[:, None] / 255
    truth = region_mask(SIZE).astype(np.float32)
    dele, rev, ins = deletion_insertion(model, x, [truth, random_map(SIZE, 0), 1 - truth], steps=16)
    d_auc, r_auc, i_auc = [auc(c) for c in dele], [auc(c) for c in rev], [auc(c) for c in ins]
    assert d_auc[0] < d_auc[1] < d_auc[2]
    assert i_auc[0] > i_auc[1] > i_auc[2]
    assert r_auc[0] - d_auc[0] > 0.1 > abs(r_auc[1] - d_auc[1])  # the true map's gap is large, random's small
    assert r_auc[2] - d_auc[2] < -0.1  # the inverted map ranks backwards
    assert dele[:, 0] == pytest.approx(dele[0, 0])  # every curve starts at the image's probability
    np.testing.assert_allclose(rev[:, -1], dele[:, -1])  # and all deletions end on the same fully deleted image


def test_blur_substrate_ends_on_the_blurred_image() -> None:
    from pneumolens.explain.base import blur

    model = QuadrantNet(SIZE).eval()
    x = torch.as_tensor(quadrant_images(1, SIZE)).float()[:, None] / 255
    dele, rev, _ = deletion_insertion(model, x, [random_map(SIZE, 1)], steps=4, substrate="blur")
    with torch.no_grad():
        expected = torch.sigmoid(model(blur(x, SIZE / 16))).item()
    assert dele[0, -1] == pytest.approx(expected, abs=1e-6) and rev[0, -1] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="substrate"):
        deletion_insertion(model, x, [random_map(SIZE, 1)], substrate="white")


def test_auc_of_known_curves() -> None:
    assert auc(np.ones(11)) == pytest.approx(1.0)
    assert auc(np.linspace(0, 1, 11)) == pytest.approx(0.5)


def test_spearman() -> None:
    a = np.arange(16.0).reshape(4, 4)
    assert spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(spearman(a, np.zeros_like(a)))


def test_json_numbers_of_the_report() -> None:
    assert nan_median([3.0, float("nan"), 1.0, 2.0]) == 2.0  # NaN ignored: median of 1, 2, 3
    assert np.isnan(nan_median([float("nan"), float("inf")]))  # no finite value at all
    assert finite_or_none(0.1234567) == 0.123457
    assert finite_or_none(np.float32(2.0)) == 2.0
    assert finite_or_none(float("nan")) is None and finite_or_none(-np.inf) is None and finite_or_none(None) is None


def test_randomised_copy_changes_only_the_named_layers() -> None:
    model = tiny_cnnlstm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rnd = randomised_copy(model, ["head.out", "lstm2"], seed=1)
    after = rnd.state_dict()
    for k, v in before.items():
        changed = not torch.equal(v, after[k])
        expected = k.startswith(("head.out.", "lstm2.")) and after[k].is_floating_point()
        assert changed == expected, k
        assert torch.equal(v, model.state_dict()[k])  # the original is untouched
    assert available_stages(model)[:3] == [("head.out",), ("head.dense2",), ("head.dense1",)]
    assert len(available_stages(QuadrantNet())) == 2  # head.out and features.block1 only


def test_evaluate_explanations_end_to_end() -> None:
    model = tiny_cnnlstm()
    images = textured_images(3, SIZE)
    methods = [MethodSpec("gradcam", "gradcam"), MethodSpec("occlusion", "occlusion", {"window": 16, "stride": 16})]
    maps: dict = {}
    res = evaluate_explanations(model, images, methods, labels=[0, 1, 0], seed=0, steps=8, sanity_n=1,
                                progress=False, maps_out=maps)
    assert set(res["methods"]) == {"gradcam", "occlusion"}
    for entry in [*res["methods"].values(), res["random"]]:
        assert len(entry["deletion_curve"]) == 9 and "mean" in entry["deletion_gap"]
        assert 0 <= entry["deletion_auc"]["mean"] <= 1 and 0 <= entry["insertion_auc"]["mean"] <= 1
    assert res["methods"]["gradcam"]["median_time_s"] > 0
    assert res["agreement"]["methods"] == ["gradcam", "occlusion"]
    assert res["agreement"]["spearman"][0][0] == 1.0
    rnd = res["randomisation"]
    assert rnd["stages"][0] == "head.out" and len(rnd["methods"]["gradcam"]["spearman"]) == len(rnd["stages"])
    assert len(res["per_image"]) == 3 and res["per_image"][1]["label"] == 1
    assert maps["gradcam"].shape == (3, SIZE, SIZE)


def test_randomisation_check_tells_model_maps_from_image_only_maps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A "method" that just returns the image (an edge detector would do the same) must stay at 1.0;
    gradients of a fully re-initialised model must not."""
    from pneumolens.explain import core, settings

    def image_only(model, x, forward=None):
        return x.clone(), {}

    monkeypatch.setitem(core.METHODS, "image_only", image_only)
    monkeypatch.setitem(settings.SETTINGS, "image_only", {})  # a method without settings to check
    model = tiny_cnnlstm()
    images = textured_images(3, SIZE)
    specs = [MethodSpec("image_only", "image_only"), MethodSpec("ig", "ig", {"n_steps": 8})]
    ref = {s.label: core.explain(model, images, s.name, **s.params).maps for s in specs}
    res = randomisation_check(model, as_batch(images), specs, ref, progress=False)
    assert res["methods"]["image_only"]["spearman"] == [1.0] * len(res["stages"])
    assert abs(res["methods"]["ig"]["spearman"][-1]) < 0.5
