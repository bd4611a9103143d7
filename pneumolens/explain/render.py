"""Figures: a panel per image (the X-ray, then one overlay per method), and single overlays as PNG bytes.

Colour policy: Grad-CAM (non-negative after its ReLU) uses a sequential colormap (inferno)
from 0 to its maximum; signed maps use a diverging red/blue colormap centred on 0 (red =
evidence for pneumonia, blue = against), symmetric at the 99th percentile of |value| so one
extreme pixel does not wash the rest out. The overlay's opacity grows with |value|, so the film
stays visible where the map is near 0. Every overlay has a colour bar.

Only ``matplotlib.figure.Figure`` is used (no pyplot state), so rendering is thread-safe for
the web service.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

TITLES = {
    "gradcam": "Grad-CAM",
    "lime": "LIME",
    "kernelshap": "KernelSHAP",
    "shap": "GradientSHAP",
    "ig": "Integrated Gradients",
    "occlusion": "Occlusion",
}
SEQUENTIAL_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"
MAX_ALPHA = 0.8
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
    return f"{title} ({rest.replace(':', ', ')})" if rest else title


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


def colour_scale(amap: np.ndarray, signed: bool) -> tuple[Normalize, str]:
    """The colour normalisation and colormap name for one map."""
    a = np.asarray(amap, dtype=np.float64)
    if signed:
        m = float(np.percentile(np.abs(a), 99)) if a.size else 0.0
        m = m if m > 0 else float(np.abs(a).max()) or 1e-12
        return Normalize(vmin=-m, vmax=m), DIVERGING_CMAP
    top = float(a.max()) if a.size else 0.0
    return Normalize(vmin=0.0, vmax=top if top > 0 else 1e-12), SEQUENTIAL_CMAP


def draw_overlay(ax: Axes, image: np.ndarray, amap: np.ndarray, method: str, title: str | None = None) -> ScalarMappable:
    """Draw the X-ray in grey and the map on top with value-dependent opacity; returns the colour mapping."""
    amap = np.asarray(amap, dtype=np.float32)
    signed = is_signed(method, amap)
    norm, cmap_name = colour_scale(amap, signed)
    cmap = colormaps[cmap_name]
    strength = np.abs(amap) / max(abs(norm.vmax), 1e-12)
    alpha = MAX_ALPHA * np.clip(strength, 0.0, 1.0)
    ax.imshow(np.asarray(image), cmap="gray", vmin=0, vmax=255 if np.asarray(image).dtype == np.uint8 else 1.0,
              interpolation="bilinear")
    ax.imshow(amap, cmap=cmap, norm=norm, alpha=alpha, interpolation="bilinear")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ScalarMappable(norm=norm, cmap=cmap)


def _colorbar(fig: Figure, ax: Axes, mappable: ScalarMappable, signed: bool) -> None:
    cb = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label("+ pneumonia / − normal" if signed else "evidence for pneumonia", fontsize=7)
    cb.ax.tick_params(labelsize=6)


def prediction_title(
    name: str, probability: float, label: str, threshold: float, in_distribution: bool | None = None
) -> str:
    """``name`` then ``PNEUMONIA · p = 0.930 · threshold 0.420``; a third line with the
    out-of-distribution warning when ``in_distribution`` is False (None: no guard, no line)."""
    title = f"{name}\n{label} · p(pneumonia) = {probability:.3f} · threshold {threshold:.3f}"
    if in_distribution is False:
        from ..ood import WARNING

        # wrapped to fit the narrowest panel (the input and one map)
        title += "\n" + textwrap.fill(f"Warning: this image {WARNING}", width=WARNING_WIDTH)
    return title


def render_panel(
    image: np.ndarray,
    maps: Mapping[str, np.ndarray],
    path: str | Path,
    title: str = "",
    subtitles: Mapping[str, str] | None = None,
    dpi: int = 110,
    flagged: bool = False,
) -> Path:
    """Write a panel PNG: the X-ray, then one overlay with a colour bar per entry of ``maps``.

    Args:
        image: uint8 (S, S) (the model's input) or any grey image the maps were resized to.
        maps: method label → map (S, S), in display order.
        path: the PNG to write (folders are created).
        title: the figure title (e.g. :func:`prediction_title`).
        subtitles: method label → text under the method name (e.g. its time).
        flagged: the image was flagged out of distribution: the title (which then carries
            :func:`prediction_title`'s warning line) is drawn in :data:`WARNING_COLOUR`.
    """
    n = 1 + len(maps)
    fig = Figure(figsize=(2.9 * n, 3.5), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    axes[0].imshow(np.asarray(image), cmap="gray", vmin=0, vmax=255 if np.asarray(image).dtype == np.uint8 else 1.0)
    axes[0].set_title("input", fontsize=9)
    axes[0].set_axis_off()
    for ax, (label, amap) in zip(axes[1:], maps.items()):
        mappable = draw_overlay(ax, image, amap, label, _method_title(label, amap, (subtitles or {}).get(label)))
        _colorbar(fig, ax, mappable, is_signed(label, amap))
    if title:
        fig.suptitle(title, fontsize=10, color=WARNING_COLOUR if flagged else "black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def overlay_png(image_uint8: np.ndarray, attribution_map: np.ndarray, method: str, title: str | None = None,
                dpi: int = 100) -> bytes:
    """One overlay with its colour bar (the legend), as PNG bytes: what the web service returns.

    Args:
        image_uint8: the model input, uint8 (S, S).
        attribution_map: the map (S, S) for that input.
        method: the method's name (decides the colormap).
        title: optional title; default: the method's display name.
    """
    image = np.asarray(image_uint8)
    amap = np.asarray(attribution_map)
    if image.ndim != 2 or amap.shape != image.shape:
        raise ValueError(f"overlay_png: image {image.shape} and map {amap.shape} must be the same 2-D shape")
    fig = Figure(figsize=(4.2, 3.6), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    mappable = draw_overlay(ax, image, amap, method, title or _method_title(method, amap))
    _colorbar(fig, ax, mappable, is_signed(method, amap))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_grid(images: Sequence[np.ndarray], rows: Sequence[Mapping[str, np.ndarray]], path: str | Path,
                row_titles: Sequence[str] = (), dpi: int = 90) -> Path:
    """Several panels stacked (one row per image), e.g. an example per class for the README."""
    methods = list(rows[0]) if rows else []
    n_cols = 1 + len(methods)
    fig = Figure(figsize=(2.6 * n_cols, 2.8 * len(rows)), dpi=dpi, layout="constrained")
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, (image, maps) in enumerate(zip(images, rows)):
        axes[r, 0].imshow(image, cmap="gray", vmin=0, vmax=255)
        axes[r, 0].set_axis_off()
        axes[r, 0].set_title(row_titles[r] if r < len(row_titles) else "input", fontsize=8)
        for c, label in enumerate(methods, start=1):
            mappable = draw_overlay(axes[r, c], image, maps[label], label, _method_title(label, maps[label]))
            _colorbar(fig, axes[r, c], mappable, is_signed(label, maps[label]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
