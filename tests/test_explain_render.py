"""Panels and overlays: valid PNGs, the right colour policy, titles carrying the prediction."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from pneumolens.explain.render import (
    DIVERGING_CMAP,
    SEQUENTIAL_CMAP,
    _colorbar,
    colour_scale,
    display_film,
    draw_overlay,
    is_signed,
    overlay_png,
    prediction_title,
    relative_map,
    render_panel,
    to_film_grid,
)


def _image(size: int = 32) -> np.ndarray:
    return np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))


def test_overlay_png_is_a_png_with_red_for_evidence_and_blue_against() -> None:
    size = 32
    amap = np.zeros((size, size), np.float32)
    amap[:, : size // 2] = 1.0  # left half: evidence for pneumonia
    amap[:, size // 2 :] = -1.0  # right half: against
    data = overlay_png(np.full((size, size), 128, np.uint8), amap, "ig")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    red = (rgb[..., 0] - rgb[..., 2]) > 30
    blue = (rgb[..., 2] - rgb[..., 0]) > 30
    # the overlay fills most of the figure's width left of the colour bar: compare its two halves
    cols = np.nonzero((red | blue).sum(0) > 0.5 * (red | blue).sum(0).max())[0]
    left, right = cols.min(), cols.max()
    mid = (left + right) // 2
    assert red[:, left:mid].sum() > 10 * red[:, mid:right].sum()
    assert blue[:, mid:right].sum() > 10 * blue[:, left:mid].sum()


def test_colour_policy() -> None:
    cam = np.array([[0.0, 2.0], [1.0, 0.5]])
    assert not is_signed("gradcam", cam)
    norm, cmap = colour_scale(relative_map(cam), signed=False)
    assert cmap == SEQUENTIAL_CMAP and (norm.vmin, norm.vmax) == (0.0, 1.0)  # fraction of the maximum
    signed = np.array([[-3.0, 1.0], [0.5, 0.0]])
    assert is_signed("lime", signed) and is_signed("gradcam:relu=false", signed)
    norm, cmap = colour_scale(relative_map(signed), signed=True)
    assert cmap == DIVERGING_CMAP and norm.vmin == -norm.vmax and 0 < norm.vmax <= 1
    norm, _ = colour_scale(np.zeros((4, 4)), signed=True)  # an all-zero map must not divide by zero
    assert norm.vmax > 0


def test_signed_colours_saturate_at_the_99th_percentile_of_the_relative_map() -> None:
    rel = np.zeros(1000)
    rel[:995] = np.linspace(-0.2, 0.2, 995)  # |values| up to 0.2 ...
    rel[995:] = 1.0  # ... and 5 extreme pixels (0.5 %): the 99th percentile of |value| is just under 0.2
    norm, _ = colour_scale(rel, signed=True)
    assert norm.vmax == pytest.approx(0.2, abs=2e-3) and norm.vmin == -norm.vmax
    wide = np.linspace(-1, 1, 101)  # a percentile above 0.9 is taken as the whole range
    assert colour_scale(wide, signed=True)[0].vmax == 1.0


def test_relative_map_divides_by_the_largest_absolute_value() -> None:
    np.testing.assert_allclose(relative_map(np.array([[2.0, -4.0], [0.0, 1.0]])), [[0.5, -1.0], [0.0, 0.25]])
    assert not relative_map(np.zeros((3, 3))).any()


def test_to_film_grid_stretches_the_input_grid_over_the_film() -> None:
    amap = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)  # left half of the input: 1, right half: 0
    film = to_film_grid(amap, (6, 12))
    assert film.shape == (6, 12) and film.dtype == np.float32
    np.testing.assert_allclose(film[:, :3], 1.0)  # the film's left quarter lies wholly over input column 0
    np.testing.assert_allclose(film[:, -3:], 0.0)
    assert np.all(np.diff(film[0]) <= 0) and np.all(film == film[0])  # falls left to right, same on every row
    assert to_film_grid(amap, (2, 2)) is not None and np.array_equal(to_film_grid(amap, (2, 2)), amap)


def test_display_film_keeps_the_aspect_ratio() -> None:
    assert display_film(np.zeros((1000, 500), np.uint8), side=640).shape == (640, 320)
    assert display_film(np.zeros((300, 450), np.uint8), side=640).shape == (300, 450)  # never enlarged


def test_overlay_marks_orientation_and_has_no_offset_on_its_colour_bar() -> None:
    """Raw maps of ~1e-5 gave colour bars with a stray "1e-5" offset; relative units have none."""
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    film = _image(40)[:30]  # 30 x 40: wider than tall
    tiny = np.random.default_rng(0).normal(0, 1e-5, (16, 16))
    mappable = draw_overlay(ax, film, tiny, "ig")
    _colorbar(fig, ax, mappable, True)
    fig.canvas.draw()
    marks = {t.get_text(): t.get_position()[0] for t in ax.texts}
    assert marks["R"] < 0.1 and marks["L"] > 0.9  # patient's right on the image's left
    assert ax.images[-1].get_array().shape == (30, 40)  # the map drawn on the film's grid
    (cax,) = ax.child_axes
    assert cax.yaxis.get_offset_text().get_text() == ""
    assert abs(mappable.norm.vmax) <= 1


def test_overlay_rejects_maps_that_are_not_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        overlay_png(_image(32), np.zeros((2, 16, 16)), "gradcam")


def test_overlay_of_a_wide_film_is_wider_than_tall() -> None:
    wide = overlay_png(np.zeros((100, 200), np.uint8) + 90, np.ones((32, 32)), "gradcam", dpi=50)
    tall = overlay_png(np.zeros((200, 100), np.uint8) + 90, np.ones((32, 32)), "gradcam", dpi=50)
    (ww, wh), (tw, th) = Image.open(io.BytesIO(wide)).size, Image.open(io.BytesIO(tall)).size
    assert ww == tw and th > wh * 1.5


def test_panel_has_one_column_per_method(tmp_path) -> None:
    img = _image()
    maps = {"gradcam": np.random.default_rng(0).random((32, 32)), "lime": np.random.default_rng(1).normal(size=(32, 32))}
    one = render_panel(img, {"gradcam": maps["gradcam"]}, tmp_path / "one.png", title="x")
    two = render_panel(img, maps, tmp_path / "sub" / "two.png", title=prediction_title("a.png", 0.93, "PNEUMONIA", 0.42))
    w1, w2 = Image.open(one).size[0], Image.open(two).size[0]
    assert w2 > w1 * 1.3  # a third column
    Image.open(two).verify()


def test_prediction_title_carries_probability_label_threshold() -> None:
    t = prediction_title("f.jpeg", 0.8766, "PNEUMONIA", 0.42)
    assert "f.jpeg" in t and "PNEUMONIA" in t and "0.877" in t and "0.420" in t
    assert "true label" not in t and " s" not in t.split("\n")[-1][-2:]  # no truth unknown, no timing


def test_prediction_title_tells_the_true_label_from_the_models_answer() -> None:
    wrong = prediction_title("f.jpeg", 0.87, "PNEUMONIA", 0.37, true_label="NORMAL")
    assert wrong.splitlines()[1].startswith("model: PNEUMONIA")
    assert wrong.splitlines()[2] == "true label: NORMAL (the model is wrong)"
    right = prediction_title("f.jpeg", 0.1, "NORMAL", 0.37, None, true_label="NORMAL")
    assert right.splitlines()[2] == "true label: NORMAL (the model is right)"
    flagged = prediction_title("f.jpeg", 0.1, "NORMAL", 0.37, False, true_label="NORMAL")
    assert flagged.splitlines()[2].startswith("true label") and "Warning" in flagged  # the OOD line stays


def test_panel_of_a_tall_film_is_taller_than_of_a_wide_one(tmp_path) -> None:
    maps = {"gradcam": np.random.default_rng(0).random((32, 32))}
    wide = render_panel(np.full((60, 120), 100, np.uint8), maps, tmp_path / "w.png", title="a\nb", dpi=40)
    tall = render_panel(np.full((120, 60), 100, np.uint8), maps, tmp_path / "t.png", title="a\nb", dpi=40)
    (ww, wh), (tw, th) = Image.open(wide).size, Image.open(tall).size
    assert ww == tw and th > 1.5 * wh


def test_display_names_show_settings() -> None:
    from pneumolens.explain.render import display_name

    assert display_name("occlusion:window=8:stride=4") == "Occlusion (window=8, stride=4)"
    assert display_name("shap") == "GradientSHAP (expected gradients)"
    assert display_name("shap:n_samples=8") == "GradientSHAP (expected gradients, n_samples=8)"
