"""Figures: a panel per image (the film, then one overlay per method), and single overlays as PNG bytes.

What a reader sees:

* **the film in its own aspect ratio**: the decoded file (shrunk to :data:`DISPLAY_SIDE` on its
  longer side), not the square model input it was squashed to; a map computed on the S x S
  input is stretched back to the film's pixel grid (:func:`to_film_grid`), so each value lies
  over the part of the film it came from;
* **orientation**: a small "R" on the image's left edge and "L" on its right: frontal (PA/AP)
  films are shown as radiologists read them, the patient's right on the image's left (the
  caption says so; the marks assume the file follows that convention, as the Kermany films do);
* **relative colour scales**: each map divided by its largest absolute value. Grad-CAM
  (non-negative after its ReLU) uses a sequential colormap (inferno) from 0 to 1; signed maps a
  diverging red/blue colormap symmetric about 0 (red = evidence for pneumonia, blue = against)
  that saturates at the 99th percentile of |value| (:func:`colour_scale`). Raw values differ by
  orders of magnitude between methods and images and mean nothing to a reader; the raw range
  stays in the JSON. The overlay's opacity grows with |value|, so the film stays visible where
  the map is near 0;
* **titles**: the file, the model's answer and, when known, the true label; method timings
  stay in the JSON, out of the figure.

Only ``matplotlib.figure.Figure`` is used (no pyplot state), so rendering is thread-safe for
the web service.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from ..films import map_on_film

TITLES = {
    "gradcam": "Grad-CAM",
    "lime": "LIME",
    "kernelshap": "KernelSHAP",
    "shap": "GradientSHAP (expected gradients)",
    "ig": "Integrated Gradients",
    "occlusion": "Occlusion",
}
SEQUENTIAL_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"
MAX_ALPHA = 0.8
#: Percentile of |value| at which the colours reach their ends (see :func:`colour_scale`).
SATURATE_AT = 99
#: Longest side, in pixels, of the film drawn under the maps; larger films are shrunk (aspect kept).
DISPLAY_SIDE = 640
#: The caption under every panel and overlay: what the orientation marks and the colours mean.
CAPTION = ("R / L: the patient's right / left (frontal film shown as read: the patient's right on the image's left). "
           "Colours: fraction of each map's largest |value| (arrows: beyond the colour range); red = evidence "
           "for pneumonia, blue = against (Grad-CAM: brighter = more evidence).")
#: Characters of 7-point text per inch of figure width (to wrap the caption).
CHARS_PER_INCH = 15
#: Colour of a panel's title when it carries the out-of-distribution warning.
WARNING_COLOUR = "#b00020"
#: Characters per line of that warning in a title: what the narrowest panel (two images) holds.
WARNING_WIDTH = 60


def base_method(label: str) -> str:
    """``"gradcam:layer=x"`` → ``"gradcam"``."""
    return label.split(":", 1)[0]


def display_name(label: str) -> str:
    """``"occlusion:window=8:stride=4"`` → ``"Occlusion (window=8, stride=4)"``."""
    name, _, rest = label.partition(":")
    title = TITLES.get(name, name)
    if not rest:
        return title
    settings = rest.replace(":", ", ")
    return f"{title[:-1]}, {settings})" if title.endswith(")") else f"{title} ({settings})"


def _method_title(label: str, amap: np.ndarray, extra: str | None = None) -> str:
    """Display name, an optional line (e.g. the time), and a note when Grad-CAM found no positive evidence."""
    lines = [display_name(label)]
    if extra:
        lines.append(extra)
    if base_method(label) == "gradcam" and not np.any(np.asarray(amap) > 0):
        lines.append("(no positive evidence)")
    return "\n".join(lines)


def is_signed(method: str, amap: np.ndarray | None = None) -> bool:
    """Signed (diverging colormap) unless it is Grad-CAM with no negative values."""
    if base_method(method) == "gradcam":
        return amap is not None and bool(np.any(np.asarray(amap) < 0))
    return True


def display_film(gray: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """A decoded film (uint8 (H, W)) shrunk, aspect ratio kept, so its longer side is at most ``side``."""
    gray = np.asarray(gray, dtype=np.uint8)
    h, w = gray.shape
    scale = side / max(h, w)
    if scale >= 1:
        return gray
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(gray)).resize(size, Image.BILINEAR), dtype=np.uint8)


def to_film_grid(amap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map computed on the model's square input, stretched bilinearly to a film's (H, W) grid.

    The input is the whole film resized to S x S without keeping the aspect ratio
    (:func:`pneumolens.io.resize_square`), so stretching the map back by the same factors puts each
    value over the film pixels its input pixel came from. Returns float32 (H, W).
    """
    amap = np.asarray(amap, dtype=np.float32)
    if amap.ndim != 2 or len(shape) != 2:
        raise ValueError(f"to_film_grid: expected a 2-D map and a 2-D shape, got {amap.shape} and {tuple(shape)}")
    return map_on_film(amap, (int(shape[0]), int(shape[1])))  # the Python API's resampling, shared


def relative_map(amap: np.ndarray) -> np.ndarray:
    """The map divided by its largest absolute value (so in [-1, 1]); all zeros stays all zeros."""
    a = np.asarray(amap, dtype=np.float32)
    top = float(np.abs(a).max()) if a.size else 0.0
    return a / top if top > 0 and np.isfinite(top) else np.zeros_like(a)


def colour_scale(rel: np.ndarray, signed: bool) -> tuple[Normalize, str]:
    """The colour normalisation and colormap of a relative map (:func:`relative_map`, values in [-1, 1]).

    Not signed (Grad-CAM, smooth): 0 to 1 on the sequential colormap. Signed (pixel-level,
    speckled maps): symmetric about 0 on the diverging colormap, the colours reaching their ends
    at the 99th percentile of |value| (:data:`SATURATE_AT`), so that one extreme pixel (often a
    lead marker) does not wash the rest of the map out; the colour bar then shows arrows for the
    values beyond. A percentile above 0.9 is taken as 1.
    """
    if not signed:
        return Normalize(vmin=0.0, vmax=1.0), SEQUENTIAL_CMAP
    a = np.abs(np.asarray(rel, dtype=np.float64))
    top = float(np.percentile(a, SATURATE_AT)) if a.size else 1.0
    top = 1.0 if top > 0.9 or not np.isfinite(top) else max(top, 1e-6)
    return Normalize(vmin=-top, vmax=top), DIVERGING_CMAP


def mark_orientation(ax: Axes, fontsize: float = 7) -> None:
    """A small "R" on the image's left edge and "L" on its right (the patient's right and left)."""
    outline = [patheffects.withStroke(linewidth=1.5, foreground="black")]
    for x, text, ha in ((0.012, "R", "left"), (0.988, "L", "right")):
        ax.text(x, 0.5, text, transform=ax.transAxes, ha=ha, va="center", fontsize=fontsize, color="white",
                fontweight="bold", path_effects=outline)


def show_film(ax: Axes, image: np.ndarray, title: str | None = None, fontsize: float = 9) -> None:
    """The film in grey, orientation marked, no axes."""
    image = np.asarray(image)
    ax.imshow(image, cmap="gray", vmin=0, vmax=255 if image.dtype == np.uint8 else 1.0, interpolation="bilinear")
    mark_orientation(ax)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=fontsize)


def draw_overlay(ax: Axes, image: np.ndarray, amap: np.ndarray, method: str, title: str | None = None,
                 fontsize: float = 9) -> ScalarMappable:
    """Draw the film in grey and the map on top with value-dependent opacity; returns the colour mapping.

    ``amap`` may be on the model's input grid: it is stretched to ``image``'s grid
    (:func:`to_film_grid`) and divided by its largest absolute value (:func:`relative_map`).
    """
    image = np.asarray(image)
    amap = np.asarray(amap, dtype=np.float32)
    signed = is_signed(method, amap)
    rel = relative_map(to_film_grid(amap, image.shape[:2]))
    norm, cmap_name = colour_scale(rel, signed)
    cmap = colormaps[cmap_name]
    alpha = MAX_ALPHA * np.clip(np.abs(rel) / norm.vmax, 0.0, 1.0)
    show_film(ax, image, title, fontsize)
    ax.imshow(rel, cmap=cmap, norm=norm, alpha=alpha, interpolation="bilinear")
    return ScalarMappable(norm=norm, cmap=cmap)


def _colorbar(fig: Figure, ax: Axes, mappable: ScalarMappable, signed: bool, fontsize: float = 7) -> None:
    top = float(mappable.norm.vmax)
    extend = "neither" if top >= 1 else "both" if signed else "max"
    cax = ax.inset_axes([1.03, 0.0, 0.045, 1.0])  # as tall as the film, whatever its aspect ratio
    cb = fig.colorbar(mappable, cax=cax, extend=extend)
    cb.set_label("fraction of max |value|" if signed else "fraction of max", fontsize=fontsize)
    cb.ax.tick_params(labelsize=fontsize - 1)


def prediction_title(
    name: str, probability: float, label: str, threshold: float, in_distribution: bool | None = None,
    true_label: str | None = None,
) -> str:
    """``name`` then ``model: PNEUMONIA · p(pneumonia) = 0.930 · threshold 0.420``; then, when
    ``true_label`` is known, ``true label: NORMAL (the model is wrong)``; then the
    out-of-distribution warning when ``in_distribution`` is False (None: no guard, no line)."""
    title = f"{name}\nmodel: {label} · p(pneumonia) = {probability:.3f} · threshold {threshold:.3f}"
    if true_label:
        verdict = "the model is right" if true_label == label else "the model is wrong"
        title += f"\ntrue label: {true_label} ({verdict})"
    if in_distribution is False:
        from ..ood import WARNING

        # wrapped to fit the narrowest panel (the input and one map)
        title += "\n" + textwrap.fill(f"Warning: this image {WARNING}", width=WARNING_WIDTH)
    return title


def _panel_size(image: np.ndarray, n_cols: int, col_width: float, extra_height: float) -> tuple[float, float]:
    """Figure size (inches) for ``n_cols`` images of ``image``'s aspect ratio side by side (each
    image about 75 % of its column; the rest is its colour bar)."""
    h, w = np.asarray(image).shape[:2]
    return col_width * n_cols, col_width * 0.75 * h / w + extra_height


def _caption(fig: Figure, fontsize: float, width: int) -> None:
    fig.get_layout_engine().set(h_pad=0.04)
    fig.supxlabel(textwrap.fill(CAPTION, width=width), fontsize=fontsize, color="0.35")


def render_panel(
    image: np.ndarray,
    maps: Mapping[str, np.ndarray],
    path: str | Path,
    title: str = "",
    subtitles: Mapping[str, str] | None = None,
    dpi: int = 110,
    flagged: bool = False,
) -> Path:
    """Write a panel PNG: the film, then one overlay with a colour bar per entry of ``maps``.

    Args:
        image: the film, uint8 (H, W) in its own aspect ratio (e.g. :func:`display_film` of the
            decoded file), or the model's input.
        maps: method label → map (S, S) on the model's input grid (stretched to the film's grid
            here) or already on the film's grid, in display order.
        path: the PNG to write (folders are created).
        title: the figure title (e.g. :func:`prediction_title`).
        subtitles: method label → text under the method name (e.g. its settings); timings belong
            in the JSON, not here.
        flagged: the image was flagged out of distribution: the title (which then carries
            :func:`prediction_title`'s warning line) is drawn in :data:`WARNING_COLOUR`.
    """
    n = 1 + len(maps)
    fig = Figure(figsize=_panel_size(image, n, 3.2, 1.2 + 0.17 * (title.count("\n") + 1)), dpi=dpi,
                 layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    show_film(axes[0], image, "film")
    for ax, (label, amap) in zip(axes[1:], maps.items()):
        mappable = draw_overlay(ax, image, amap, label, _method_title(label, amap, (subtitles or {}).get(label)))
        _colorbar(fig, ax, mappable, is_signed(label, amap))
    if title:
        fig.suptitle(title, fontsize=10, color=WARNING_COLOUR if flagged else "black")
    _caption(fig, 7, int(CHARS_PER_INCH * 3.2 * n))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def overlay_png(image_uint8: np.ndarray, attribution_map: np.ndarray, method: str, title: str | None = None,
                dpi: int = 120) -> bytes:
    """One overlay with its colour bar (the legend) and the caption, as PNG bytes: what the web service returns.

    Args:
        image_uint8: the film, uint8 (H, W) in its own aspect ratio, or the model's input (S, S).
        attribution_map: the map on the model's input grid (S, S), or on the film's grid.
        method: the method's name (decides the colormap).
        title: optional title; default: the method's display name.
        dpi: pixels per inch; the figure is 5 inches wide.
    """
    image = np.asarray(image_uint8)
    amap = np.asarray(attribution_map)
    if image.ndim != 2 or amap.ndim != 2:
        raise ValueError(f"overlay_png: image {image.shape} and map {amap.shape} must both be 2-D")
    fig = Figure(figsize=_panel_size(image, 1, 5.0, 1.3), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    mappable = draw_overlay(ax, image, amap, method, title or _method_title(method, amap), fontsize=10)
    _colorbar(fig, ax, mappable, is_signed(method, amap), fontsize=8)
    _caption(fig, 7, int(CHARS_PER_INCH * 5.0))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_grid(images: Sequence[np.ndarray], rows: Sequence[Mapping[str, np.ndarray]], path: str | Path,
                row_titles: Sequence[str] = (), dpi: int = 90) -> Path:
    """Several panels stacked (one row per image), e.g. an example per class for the README.

    ``images`` are films (any aspect ratio; a row's maps are stretched to its film's grid);
    ``row_titles`` name each row (e.g. the true label and the model's answer).
    """
    methods = list(rows[0]) if rows else []
    n_cols = 1 + len(methods)
    heights = [_panel_size(img, 1, 2.8, 0.0)[1] + 0.7 for img in images]
    fig = Figure(figsize=(2.8 * n_cols, sum(heights) + 0.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(len(rows), n_cols, squeeze=False, gridspec_kw={"height_ratios": heights})
    for r, (image, maps) in enumerate(zip(images, rows)):
        show_film(axes[r, 0], image, row_titles[r] if r < len(row_titles) else "film", fontsize=8)
        for c, label in enumerate(methods, start=1):
            mappable = draw_overlay(axes[r, c], image, maps[label], label, _method_title(label, maps[label]),
                                    fontsize=8)
            _colorbar(fig, axes[r, c], mappable, is_signed(label, maps[label]), fontsize=7)
    _caption(fig, 7, int(CHARS_PER_INCH * 2.8 * n_cols))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
