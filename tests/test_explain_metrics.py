"""Faithfulness measures (explain/faithfulness.py) and their evaluation (explain/evaluation.py), on answers
known by construction."""

from __future__ import annotations

import itertools

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
    random_map,
    randomised_copy,
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


# --------------------------------------------------------------------------- insertion start, resuming, figures


def test_insertion_starts_from_the_given_image() -> None:
    model = QuadrantNet(SIZE).eval()  # logit = 8 * (mean of the top-left quadrant) - 1
    x = torch.as_tensor(quadrant_images(1, SIZE)).float()[:, None] / 255
    start = torch.zeros_like(x)
    _, _, ins = deletion_insertion(model, x, [region_mask(SIZE).astype(np.float32)], steps=4, insertion_start=start)
    with torch.no_grad():
        p_x = torch.sigmoid(model(x)).item()
    assert ins[0, 0] == pytest.approx(1 / (1 + np.exp(1.0)), abs=1e-6)  # the black start: sigmoid(-1)
    assert ins[0, -1] == pytest.approx(p_x, abs=1e-6)


def test_normal_references_keep_the_films_the_model_calls_normal() -> None:
    from pneumolens.explain.faithfulness import normal_references

    model = QuadrantNet(SIZE).eval()
    films = torch.stack([torch.full((1, SIZE, SIZE), v) for v in (0.0, 0.1, 0.2, 0.5)])
    kept, probs = normal_references(model, films, temperature=1.0, threshold=0.5)
    # p = sigmoid(8 v - 1): 0.269, 0.450, 0.646, 0.953
    assert kept.shape[0] == 2 and torch.equal(kept, films[:2])
    np.testing.assert_allclose(probs, [1 / (1 + np.exp(1.0)), 1 / (1 + np.exp(0.2))], atol=1e-6)


def test_evaluation_reports_the_insertion_start_it_used() -> None:
    model = tiny_cnnlstm()
    images = textured_images(2, SIZE)
    films = textured_images(4, SIZE, seed=5)
    with torch.no_grad():
        p = torch.sigmoid(model(as_batch(films))).numpy()
    threshold = float(np.sort(p)[1]) + 1e-6  # two of the four films are "normal" to this model
    res = evaluate_explanations(model, images, [MethodSpec("gradcam", "gradcam")], steps=4, sanity_n=0,
                                progress=False, insertion_films=films, threshold=threshold)
    start = res["insertion_start"]
    assert start["kind"] == "normal training film" and start["candidates"] == 2 and start["called_normal"]
    assert all(r["insertion_start_probability"] < threshold for r in res["per_image"])
    assert res["methods"]["gradcam"]["insertion_curve"][0] == pytest.approx(start["mean_probability"], abs=1e-5)
    assert "NORMAL training film" in res["protocol"]["insertion"]


def _without_times(result: dict) -> dict:
    out = dict(result)
    out["methods"] = {k: {kk: vv for kk, vv in v.items() if kk != "median_time_s"} for k, v in result["methods"].items()}
    return out


def test_an_interrupted_run_resumes_and_ends_with_the_uninterrupted_numbers(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pneumolens.explain import evaluation
    from pneumolens.explain.partial import PartialResults

    model = tiny_cnnlstm()
    images = textured_images(4, SIZE)
    methods = [MethodSpec("gradcam", "gradcam"), MethodSpec("occlusion", "occlusion", {"window": 16, "stride": 16})]
    kwargs = dict(labels=[0, 1, 0, 1], seed=0, steps=6, sanity_n=2, progress=False)
    key = {"run": "test"}
    whole = evaluate_explanations(model, images, methods, partial=PartialResults(tmp_path / "whole", key), **kwargs)

    real = evaluation.explain
    calls = {"n": 0, "fail_at": None}

    def counting(*args, **kw):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C here
        return real(*args, **kw)

    monkeypatch.setattr(evaluation, "explain", counting)
    folder = tmp_path / "cut"
    calls["fail_at"] = 2 * len(methods) + 1  # the first map of image 3: images 1 and 2 are finished
    with pytest.raises(KeyboardInterrupt):
        evaluate_explanations(model, images, methods, partial=PartialResults(folder, key), **kwargs)
    assert len((folder / "images.jsonl").read_text().splitlines()) == 2

    calls.update(n=0, fail_at=2 * len(methods) + 5)  # the last 2 images, then into the randomisation check
    with pytest.raises(KeyboardInterrupt):
        evaluate_explanations(model, images, methods, partial=PartialResults(folder, key), **kwargs)
    # 4 randomisation calls made it: (stage 1, gradcam) and (stage 1, occlusion) on 2 images each
    assert len((folder / "randomisation.jsonl").read_text().splitlines()) == 2

    calls.update(n=0, fail_at=None)
    partial = PartialResults(folder, key)
    assert partial.images_done == 4 and partial.randomisation_done == 2
    resumed = evaluate_explanations(model, images, methods, partial=partial, **kwargs)
    n_stages = len(available_stages(model))
    assert calls["n"] == (n_stages - 1) * len(methods) * 2  # nothing finished was computed again
    assert _without_times(resumed) == _without_times(whole)


def test_partial_results_skip_a_torn_line_and_start_afresh_on_other_settings(tmp_path) -> None:
    from pneumolens.explain.partial import PartialResults

    store = PartialResults(tmp_path, {"seed": 0})
    store.add_image(0, {"probability": 0.25}, {"gradcam": np.ones((2, 2))})
    with open(tmp_path / "images.jsonl", "a") as fh:
        fh.write('{"index": 1, "probabil')  # killed mid-write
    again = PartialResults(tmp_path, {"seed": 0})
    assert again.images_done == 1 and again.image(1) is None
    record, maps = again.image(0)
    assert record["probability"] == 0.25 and maps["gradcam"].dtype == np.float32 and maps["gradcam"].sum() == 4
    other = PartialResults(tmp_path, {"seed": 1})
    assert other.images_done == 0 and not (tmp_path / "maps" / "00000.npz").exists()


def test_faithfulness_figure_has_no_blank_panel_and_draws_deletion_as_its_gap() -> None:
    from pneumolens.explain.eval_report import faithfulness_figure

    model = tiny_cnnlstm()
    res = evaluate_explanations(model, textured_images(2, SIZE), [MethodSpec("gradcam", "gradcam")], steps=4,
                                sanity_n=0, progress=False)
    fig = faithfulness_figure(res)
    assert len(fig.axes) == 2  # deletion gap and insertion; no empty randomisation panel
    gap_ax = fig.axes[0]
    assert "reverse order minus map order" in gap_ax.get_title()
    entry = res["methods"]["gradcam"]
    expected = np.subtract(entry["reverse_deletion_curve"], entry["deletion_curve"])
    np.testing.assert_allclose(gap_ax.get_lines()[0].get_ydata(), expected)
    res_rnd = evaluate_explanations(model, textured_images(1, SIZE), [MethodSpec("gradcam", "gradcam")], steps=4,
                                    sanity_n=1, progress=False)
    assert len(faithfulness_figure(res_rnd).axes) == 3


def test_faithfulness_figure_titles_do_not_run_into_each_other() -> None:
    """Each panel's two-line title stays within its own column (they overlapped when drawn at 12 pt)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from pneumolens.explain.eval_report import faithfulness_figure

    model = tiny_cnnlstm()
    res = evaluate_explanations(model, textured_images(1, SIZE), [MethodSpec("gradcam", "gradcam")], steps=4,
                                sanity_n=1, progress=False)
    res["insertion_start"] = {"kind": "normal training film", "mean_probability": 0.1}
    fig = faithfulness_figure(res)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    assert len(boxes) == 3
    for left, right in itertools.pairwise(boxes):
        assert left.x1 < right.x0, (left, right)


def test_example_rows_name_the_true_label_and_the_models_answer() -> None:
    from pneumolens.explain.eval_report import example_title

    names = ("NORMAL", "PNEUMONIA")
    assert example_title(names, 0, 0.87, 0.37) == "true NORMAL\nmodel: PNEUMONIA (p = 0.870)"
    assert example_title(names, 1, 0.2, 0.37) == "true PNEUMONIA\nmodel: NORMAL (p = 0.200)"
    assert example_title(names, 0, 0.37, 0.37).endswith("model: PNEUMONIA (p = 0.370)")  # at the threshold


# --------------------------------------------------------------------------- the expected cost


COSTS = {"methods_s": {"a": [1.0, 2.0], "b": [0.5, 1.0]}, "curves_per_map_s": [0.1, 0.2], "steps": 50, "stages": 8,
         "stage_setup_s": [1.0, 1.0], "settings": {"a": {"n_samples": 100}}, "machine": "2 x CPU",
         "load": "load average 6.0 (busy)", "date": "2026-01-01"}


def test_cost_estimate_by_hand() -> None:
    from pneumolens.explain_cost import estimate, span

    e = estimate(COSTS, [("a", {"n_samples": 200}), ("b", {})], n=10, sanity_n=2, steps=50)
    # a at 200 samples: 2-4 s; + b: 2.5-5 s of maps per image; + 3 maps' curves (a, b, random): 0.3-0.6 s
    assert e["per_image"] == pytest.approx((2.8, 5.6))
    assert e["images"] == pytest.approx((28.0, 56.0))
    assert e["randomisation"] == pytest.approx((2 * 8 * 2.5 + 8, 2 * 8 * 5 + 8))  # 2 images x 8 stages + set-ups
    assert e["total"] == pytest.approx((76.0, 144.0))
    assert span(76, 144) == "76 s–2 min" and span(600, 900) == "10–15 min"
    assert estimate(COSTS, [("a", {})], n=3, sanity_n=0, steps=101)["per_image"] == pytest.approx((1.4, 2.8))


def test_first_line_and_help_state_the_cost() -> None:
    from pneumolens.explain_cost import first_line, help_text, load_costs

    line = first_line(COSTS, [("a", {}), ("c", {})], n=4, sanity_n=8, steps=50)
    assert line.startswith("explain-eval: 4 image(s) x 2 method(s), randomisation test on 4 image(s); expect roughly")
    assert "load average 6.0 (busy)" in line and "not counted (never measured): c" in line
    text = help_text(COSTS)
    assert "a 1.0–2.0 s" in text and "b 0.5–1.0 s" in text and "--sanity-n" in text
    assert "not measured" in help_text(None)
    shipped = load_costs()  # the measured file ships with the package and covers every method
    from pneumolens.explain.core import METHODS

    assert shipped is not None and set(shipped["methods_s"]) == set(METHODS)
