"""Shortcut probes: things burnt into a film that say nothing about the lungs.

Each probe is a pure function ``uint8 (H, W) -> uint8 (H, W)`` applied to the film as decoded,
before the model's resize, so a probe looks on the film the way a marker looks on a real one
(its size is a fraction of the film's height, whatever the film's resolution). Three families:

- ``marker``: a white laterality letter ("R" or "L") in one of the four corners, in one of three
  bold fonts (DejaVu Sans, Serif and Sans Mono, the fonts matplotlib ships, so no download), its
  ink height a fraction of the film's height (6, 9 or 12 % by default). The films of this
  dataset already carry such letters; a model that learned "a letter means pneumonia" answers
  differently when one is added.
- ``border``: the outer band of the film (every side, a fraction of the shorter side wide)
  replaced by the film's median grey, black or white: collimation edges, scanner frames and the
  body's edge live there.
- ``annotation``: a short line of white text ("AP PORTABLE" at the top, "SUPINE" at the bottom,
  as technologists stamp them) or a tick-marked ruler along the right or the bottom edge.

White ink is blended with its anti-aliased coverage (``out = film * (1 - a) + 255 * a``), the way
a burnt-in annotation looks after the film is rescaled.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FAMILIES = ("marker", "border", "annotation")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
#: Font label -> file under matplotlib's ``mpl-data/fonts/ttf`` (DejaVu licence: free, bundled with matplotlib).
FONTS = {"sans": "DejaVuSans-Bold.ttf", "serif": "DejaVuSerif-Bold.ttf", "mono": "DejaVuSansMono-Bold.ttf"}
MARKER_LETTERS = ("R", "L")
MARKER_HEIGHTS = (0.06, 0.09, 0.12)
BORDER_WIDTHS = (0.04, 0.08)
BORDER_FILLS = ("median", "black", "white")
#: Gap between a pasted letter and the film's edges, as a fraction of the film's height.
MARGIN = 0.04
#: Ink height of annotation text, as a fraction of the film's height.
TEXT_HEIGHT = 0.04


@dataclass(frozen=True, eq=False)
class Probe:
    """One perturbation: its family, a unique readable name, its settings, and the function applying it."""

    family: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    fn: Callable[[np.ndarray], np.ndarray] = field(default=lambda film: film, repr=False)

    def apply(self, film: np.ndarray) -> np.ndarray:
        """The probed copy of ``film`` (uint8 (H, W)); ``film`` itself is not changed."""
        film = np.asarray(film)
        if film.ndim != 2 or film.dtype != np.uint8:
            raise ValueError(f"probe {self.name}: expected a uint8 (H, W) film, got {film.dtype} {film.shape}")
        return self.fn(film)


# ---------------------------------------------------------------------------------------- drawing


def font_path(font: str) -> Path:
    """The TrueType file of a font label in :data:`FONTS`, from matplotlib's bundled fonts.

    Raises:
        ValueError: an unknown label, or matplotlib without its bundled fonts.
    """
    import matplotlib

    if font not in FONTS:
        raise ValueError(f"unknown font {font!r}; choose from {', '.join(FONTS)}")
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / FONTS[font]
    if not path.is_file():
        raise ValueError(f"font file {path} is missing from this matplotlib install")
    return path


def _render(text: str, font: str, size: int) -> np.ndarray:
    """Anti-aliased ink of ``text`` at font ``size``, cropped to its bounding box: float32 alpha in [0, 1]."""
    face = ImageFont.truetype(str(font_path(font)), size)
    left, top, right, bottom = face.getbbox(text)
    canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), text, fill=255, font=face)
    alpha = np.asarray(canvas, dtype=np.float32) / 255.0
    rows, cols = np.nonzero(alpha > 0)
    if rows.size == 0:
        return np.zeros((0, 0), np.float32)
    return alpha[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


@functools.lru_cache(maxsize=1024)
def text_alpha(text: str, font: str, height: int) -> np.ndarray:
    """The ink of ``text`` scaled so that its bounding box is ``height`` pixels tall (± 1), float32 in [0, 1].

    The font size is searched, not guessed: glyph heights differ between fonts and letters.
    Cached: the audit pastes the same few glyphs on every film. The returned array is read-only.
    """
    if height < 1:
        raise ValueError(f"text height must be at least 1 pixel, got {height}")
    first = _render(text, font, 100)
    guess = max(1, round(100 * height / max(first.shape[0], 1)))
    trials = [_render(text, font, size) for size in range(max(1, guess - 2), guess + 3)]
    best = min(trials, key=lambda a: abs(a.shape[0] - height))
    best.setflags(write=False)
    return best


def paste_alpha(film: np.ndarray, alpha: np.ndarray, top: int, left: int, value: int = 255) -> np.ndarray:
    """A copy of ``film`` with ink ``alpha`` blended in at (top, left) in grey ``value``; clipped to the film."""
    out = film.astype(np.float32)
    h, w = alpha.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, film.shape[0]), min(left + w, film.shape[1])
    if y1 > y0 and x1 > x0:
        a = alpha[y0 - top : y1 - top, x0 - left : x1 - left]
        out[y0:y1, x0:x1] = out[y0:y1, x0:x1] * (1.0 - a) + float(value) * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def corner_origin(shape: tuple[int, int], ink: tuple[int, int], corner: str, margin: int) -> tuple[int, int]:
    """(top, left) that puts an ``ink``-sized box ``margin`` pixels from the edges of ``corner``."""
    (H, W), (h, w) = shape, ink
    if corner not in CORNERS:
        raise ValueError(f"unknown corner {corner!r}; choose from {', '.join(CORNERS)}")
    top = margin if corner.startswith("top") else H - margin - h
    left = margin if corner.endswith("left") else W - margin - w
    return top, left


def paste_letter(
    film: np.ndarray, letter: str, font: str, height: float, corner: str, margin: float = MARGIN
) -> np.ndarray:
    """``film`` with a white ``letter``, its ink ``height`` x the film's height, ``margin`` x height from the corner."""
    H = film.shape[0]
    alpha = text_alpha(letter, font, max(1, round(height * H)))
    top, left = corner_origin(film.shape, alpha.shape, corner, round(margin * H))
    return paste_alpha(film, alpha, top, left)


def replace_border(film: np.ndarray, width: float, fill: str) -> np.ndarray:
    """``film`` with its outer band, ``width`` x the shorter side wide on every side, set to ``fill``.

    ``fill``: ``median`` (the film's median grey), ``black`` or ``white``.
    """
    fills = {"black": 0, "white": 255}
    if fill == "median":
        value = int(np.median(film))
    elif fill in fills:
        value = fills[fill]
    else:
        raise ValueError(f"unknown border fill {fill!r}; choose from {', '.join(BORDER_FILLS)}")
    band = max(1, round(width * min(film.shape)))
    out = film.copy()
    out[:band], out[-band:], out[:, :band], out[:, -band:] = value, value, value, value
    return out


def paste_text(film: np.ndarray, text: str, where: str, height: float = TEXT_HEIGHT, font: str = "sans") -> np.ndarray:
    """``film`` with a white line of ``text`` centred horizontally at the ``top`` or ``bottom``, margin as markers."""
    H, W = film.shape
    alpha = text_alpha(text, font, max(1, round(height * H)))
    if alpha.shape[1] > W - 2:  # a very narrow film: shrink the line to fit
        alpha = text_alpha(text, font, max(1, int(alpha.shape[0] * (W - 2) / alpha.shape[1])))
    margin = round(MARGIN * H)
    if where not in ("top", "bottom"):
        raise ValueError(f"text position must be 'top' or 'bottom', got {where!r}")
    top = margin if where == "top" else H - margin - alpha.shape[0]
    return paste_alpha(film, alpha, top, (W - alpha.shape[1]) // 2)


def draw_ruler(film: np.ndarray, edge: str, length: float = 0.6, value: int = 255) -> np.ndarray:
    """``film`` with a white tick-marked ruler along the ``right`` or ``bottom`` edge.

    The ruler runs over ``length`` of that edge, centred, ``MARGIN`` x height inside it; its line is
    ~0.8 % of the shorter side thick (at least 1 px); a tick every 2.5 % of the edge, every fourth
    twice as long, pointing into the film.
    """
    H, W = film.shape
    out = film.copy()
    thick = max(1, round(0.008 * min(H, W)))
    gap = round(MARGIN * H)
    if edge == "right":
        x = W - gap - thick
        y0, y1 = round((1 - length) / 2 * H), round((1 + length) / 2 * H)
        out[y0:y1, x : x + thick] = value
        step, short = max(2, round(0.025 * H)), max(2, round(0.02 * W))
        for k, y in enumerate(range(y0, y1, step)):
            n = short * (2 if k % 4 == 0 else 1)
            out[y : y + thick, max(0, x - n) : x] = value
    elif edge == "bottom":
        y = H - gap - thick
        x0, x1 = round((1 - length) / 2 * W), round((1 + length) / 2 * W)
        out[y : y + thick, x0:x1] = value
        step, short = max(2, round(0.025 * W)), max(2, round(0.02 * H))
        for k, x in enumerate(range(x0, x1, step)):
            n = short * (2 if k % 4 == 0 else 1)
            out[max(0, y - n) : y, x : x + thick] = value
    else:
        raise ValueError(f"ruler edge must be 'right' or 'bottom', got {edge!r}")
    return out


# ---------------------------------------------------------------------------------------- probe sets


def marker_probes(
    letters: Sequence[str] = MARKER_LETTERS,
    fonts: Sequence[str] = tuple(FONTS),
    heights: Sequence[float] = MARKER_HEIGHTS,
    corners: Sequence[str] = CORNERS,
) -> list[Probe]:
    """Every combination of letter, font, ink height and corner (72 by default)."""
    out = []
    for letter in letters:
        for font in fonts:
            font_path(font)  # fail now, not on the first film
            for height in heights:
                for corner in corners:
                    params = {"letter": letter, "font": font, "height": float(height), "corner": corner}
                    fn = functools.partial(paste_letter, letter=letter, font=font, height=height, corner=corner)
                    out.append(Probe("marker", f"{letter} {font} {height:.0%} {corner}", params, fn))
    return out


def border_probes(widths: Sequence[float] = BORDER_WIDTHS, fills: Sequence[str] = BORDER_FILLS) -> list[Probe]:
    """The outer band replaced, for each width and fill (6 by default)."""
    return [
        Probe("border", f"border {width:.0%} {fill}", {"width": float(width), "fill": fill},
              functools.partial(replace_border, width=width, fill=fill))
        for width in widths
        for fill in fills
    ]


def annotation_probes() -> list[Probe]:
    """Two lines of text and two rulers."""
    return [
        Probe("annotation", "text 'AP PORTABLE' top", {"kind": "text", "text": "AP PORTABLE", "where": "top"},
              functools.partial(paste_text, text="AP PORTABLE", where="top")),
        Probe("annotation", "text 'SUPINE' bottom", {"kind": "text", "text": "SUPINE", "where": "bottom"},
              functools.partial(paste_text, text="SUPINE", where="bottom")),
        Probe("annotation", "ruler right edge", {"kind": "ruler", "edge": "right"},
              functools.partial(draw_ruler, edge="right")),
        Probe("annotation", "ruler bottom edge", {"kind": "ruler", "edge": "bottom"},
              functools.partial(draw_ruler, edge="bottom")),
    ]


def default_probes() -> dict[str, list[Probe]]:
    """The audit's probes, by family (:data:`FAMILIES` order)."""
    return {"marker": marker_probes(), "border": border_probes(), "annotation": annotation_probes()}


def quick_marker_probes() -> list[Probe]:
    """The fixed marker set of :func:`pneumolens.audit.marker_flip_rate`: R and L, Sans Bold, 9 %, four corners."""
    return marker_probes(fonts=("sans",), heights=(0.09,))


def assign(n_films: int, n_probes: int, per_film: int | None, seed: int) -> list[list[int]]:
    """Which probes of a family each film gets: all of them, or ``per_film`` distinct ones.

    With ``per_film`` < ``n_probes`` the probes are taken in turn from one seeded permutation
    (film ``i`` gets entries ``i*k .. i*k+k-1``, wrapping), so every probe is used about equally
    often across the films and each class gets every probe. Deterministic for a seed.
    """
    if per_film is None or per_film >= n_probes:
        return [list(range(n_probes)) for _ in range(n_films)]
    if per_film < 1:
        raise ValueError(f"probes per film must be at least 1, got {per_film}")
    order = np.random.default_rng(seed).permutation(n_probes)
    return [[int(order[(i * per_film + j) % n_probes]) for j in range(per_film)] for i in range(n_films)]
