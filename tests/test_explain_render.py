"""Panels and overlays: valid PNGs, the right colour policy, titles carrying the prediction."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pneumolens.explain.render import (
    DIVERGING_CMAP,
    SEQUENTIAL_CMAP,
    colour_scale,
    is_signed,
    overlay_png,
    prediction_title,
    render_panel,
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
    norm, cmap = colour_scale(cam, signed=False)
    assert cmap == SEQUENTIAL_CMAP and norm.vmin == 0 and norm.vmax == 2.0
    signed = np.array([[-3.0, 1.0], [0.5, 0.0]])
    assert is_signed("lime", signed) and is_signed("gradcam:relu=false", signed)
    norm, cmap = colour_scale(signed, signed=True)
    assert cmap == DIVERGING_CMAP and norm.vmin == -norm.vmax and norm.vmax > 0
    norm, _ = colour_scale(np.zeros((4, 4)), signed=True)  # an all-zero map must not divide by zero
    assert norm.vmax > 0


def test_overlay_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same 2-D shape"):
        overlay_png(_image(32), np.zeros((16, 16)), "gradcam")


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


def test_display_names_show_settings() -> None:
    from pneumolens.explain.render import display_name

    assert display_name("occlusion:window=8:stride=4") == "Occlusion (window=8, stride=4)"
    assert display_name("shap") == "GradientSHAP"
