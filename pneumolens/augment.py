"""Batch augmentation, applied only in the training step (never at inference or explanation).

Two families, all on a float batch (B, 1, S, S) in [0, 1]:

- The original's Keras layers: random horizontal flip, rotation up to ±0.2 of a turn (±72°),
  zoom ±10 %, translation ±10 %, reflection fill. Flip, rotation, zoom, translation and the
  optional random resized crop are folded into *one* affine matrix per image and applied with a
  single ``grid_sample``: one resampling instead of several.
- Shortcut breakers. A model trained on this dataset learns that burnt-in laterality letters,
  annotations and the body's edge predict the label; these transforms make them uninformative:
  random erasing of the border band or of a corner, letters ("R", "L"), text and marker shapes
  pasted white or black into random corners at random sizes, brightness/contrast, gamma and
  Gaussian noise; and the context swap, which keeps a film's lung fields (with a margin) and
  takes everything around them from another film of the batch, so that nothing outside the
  lungs (markers, text, borders, the body's edge, the arms) can tell the film's label. It needs
  each training film's lung fields (:func:`pneumolens.audit.lungs.lung_mask`, computed once
  when the training data loads).

Every shortcut-breaking knob defaults to off and, when off, draws no random numbers, so a recipe
that does not use them gets exactly the augmentation it had before they existed. Plain torch, so
the same code runs on CPU and GPU; kornia's equivalent transforms cost more on the CPU, where
augmentation competes with the model for time. ``bench/bench_augment.py`` measures the cost
per batch of each preset's augmentation.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .fieldtypes import check_scalar_types

#: Height in pixels of the glyph bank's masks; each paste resizes one to its drawn size.
GLYPH_HEIGHT = 48
#: Laterality letters, and the annotation texts of portable and supine films.
LETTERS = ("R", "L")
TEXTS = ("AP", "PA", "LT", "RT", "SUPINE", "PORTABLE", "ERECT")
#: A pasted marker sits this far (at most, as a fraction of the side) from its corner's edges.
MARKER_MARGIN = 0.06
#: Share of pasted markers drawn white (burnt-in lead markers show white); the rest are black.
MARKER_WHITE = 0.7
#: Random resized crops keep an aspect ratio between 1/RATIO and RATIO.
CROP_RATIO = 4.0 / 3.0
#: The context swap keeps the lung fields grown by this share of the side (the lungs' edges, the
#: costophrenic angles), and blends over as many pixels again.
SWAP_MARGIN = 0.03


@dataclass
class AugmentConfig:
    """Augmentation settings; ``enabled=False`` turns everything off.

    Attributes:
        enabled: apply augmentation while training. Default: True.
        hflip: probability of a horizontal flip. Default: 0.5 (the original).
        degrees: maximum rotation either way, degrees. Default: 72 (±0.2 turn, the original).
        zoom: maximum zoom either way, fraction. Default: 0.1.
        translate: maximum shift either way, fraction of the side. Default: 0.1.
        brightness: maximum additive brightness change (0 = off). Default: 0.
        contrast: maximum multiplicative contrast change around the image mean (0 = off). Default: 0.
        padding_mode: fill outside the image: reflection (Keras default), zeros or border.
        crop: probability of a random resized crop (0 = off). Default: 0.
        crop_scale: smallest share of the image's area a crop keeps (uniform up to 1). Default: 0.7.
        erase: probability of erasing the border band (all four sides, each up to ``erase_size``
            wide) or, as often, one corner square (``erase_size`` to twice that); filled with one
            random grey level (0 = off). Default: 0.
        erase_size: see ``erase``, as a fraction of the side. Default: 0.1.
        marker: probability of pasting one letter, text or marker shape into a random corner of
            the image (0 = off). Default: 0.
        marker_size: the largest pasted height, as a fraction of the side; heights are uniform from a
            third of it up to it. Default: 0.15.
        gamma: gamma correction with an exponent log-uniform in [1 / (1 + gamma), 1 + gamma]
            (0 = off). Default: 0.
        noise: additive Gaussian noise with a standard deviation uniform in [0, noise] (0 = off).
            Default: 0.
        swap: probability of the context swap: the film inside its lung fields (grown by
            :data:`SWAP_MARGIN` of the side, edges softened), another film of the batch outside
            them (0 = off). Needs the films' lung masks. Default: 0.
    """

    enabled: bool = True
    hflip: float = 0.5
    degrees: float = 72.0
    zoom: float = 0.1
    translate: float = 0.1
    brightness: float = 0.0
    contrast: float = 0.0
    padding_mode: str = "reflection"
    crop: float = 0.0
    crop_scale: float = 0.7
    erase: float = 0.0
    erase_size: float = 0.1
    marker: float = 0.0
    marker_size: float = 0.15
    gamma: float = 0.0
    noise: float = 0.0
    swap: float = 0.0

    def __post_init__(self) -> None:
        check_scalar_types(self, "augment.")
        if self.padding_mode not in ("reflection", "zeros", "border"):
            raise ConfigError(f"augment.padding_mode must be reflection, zeros or border, got {self.padding_mode!r}")
        ranges = {
            # name: (low, high, high included)
            "hflip": (0.0, 1.0, True),
            "crop": (0.0, 1.0, True),
            "erase": (0.0, 1.0, True),
            "marker": (0.0, 1.0, True),
            "swap": (0.0, 1.0, True),
            "zoom": (0.0, 1.0, False),
            "translate": (0.0, 1.0, False),
            "brightness": (0.0, 1.0, False),
            "contrast": (0.0, 1.0, False),
            "degrees": (0.0, 180.0, True),
            "gamma": (0.0, 3.0, True),
            "noise": (0.0, 0.5, True),
        }
        for name, (low, high, closed) in ranges.items():
            v = getattr(self, name)
            if not (low <= v <= high if closed else low <= v < high):
                raise ConfigError(f"augment.{name} out of range [{low}, {high}{']' if closed else ')'}: {v}")
        for name, high in (("crop_scale", 1.0), ("erase_size", 0.5), ("marker_size", 0.5)):
            v = getattr(self, name)
            if not 0.0 < v <= high:
                raise ConfigError(f"augment.{name} out of range (0, {high}]: {v}")

    @property
    def needs_lung_masks(self) -> bool:
        """Whether training must pass each film's lung mask (the context swap is on)."""
        return self.enabled and self.swap > 0

    @property
    def geometric(self) -> bool:
        """Whether the flip/rotation/zoom/translation matrix is drawn."""
        return self.hflip > 0 or self.degrees > 0 or self.zoom > 0 or self.translate > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown augment config keys: {sorted(unknown)}")
        return cls(**d)


# --- the glyph bank ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GlyphBank:
    """Masks in [0, 1], each ``GLYPH_HEIGHT`` high, cropped to their ink; ``names`` say what each is."""

    masks: tuple[torch.Tensor, ...]
    names: tuple[str, ...]


#: TrueType fonts shipped with matplotlib (a dependency): regular sans, bold serif, Computer Modern
#: sans. None of them is a font of the shortcut audit's probes (:mod:`pneumolens.audit.probes`), so
#: the audit measures whether the model ignores markers in fonts it never saw while training.
FONT_FILES = ("DejaVuSans.ttf", "STIXGeneralBol.ttf", "cmss10.ttf")


def _font_files() -> list[Path]:
    """The :data:`FONT_FILES` that exist in this install's matplotlib."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf"
    return [folder / n for n in FONT_FILES if (folder / n).is_file()]


def _text_mask(text: str, font: object, stroke: int = 0) -> np.ndarray:
    from PIL import Image, ImageDraw

    size = 4 * GLYPH_HEIGHT
    img = Image.new("L", (size * max(1, len(text)), 2 * size))
    ImageDraw.Draw(img).text((size // 4, size // 4), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    box = img.getbbox()
    assert box is not None, f"font drew nothing for {text!r}"
    ink = img.crop(box)
    width = max(1, round(ink.width * GLYPH_HEIGHT / ink.height))
    return np.asarray(ink.resize((width, GLYPH_HEIGHT), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


def _shape_masks() -> dict[str, np.ndarray]:
    """Marker shapes: a filled square and tab, an outlined box, a ruler with ticks, a disc."""
    h = GLYPH_HEIGHT
    box = np.ones((h, 2 * h), np.float32)
    box[h // 8 : -h // 8, h // 8 : -h // 8] = 0.0
    ruler = np.zeros((h, 4 * h), np.float32)
    ruler[-h // 4 :, :] = 1.0
    for i, x0 in enumerate(range(0, 4 * h - 3, h // 4)):
        ruler[(0 if i % 4 == 0 else h // 2) :, x0 : x0 + 3] = 1.0
    yy, xx = np.mgrid[0:h, 0:h] + 0.5
    disc = (((yy - h / 2) ** 2 + (xx - h / 2) ** 2) <= (h / 2) ** 2).astype(np.float32)
    return {
        "square": np.ones((h, h), np.float32),
        "tab": np.ones((h, 3 * h), np.float32),
        "box": box,
        "ruler": ruler,
        "disc": disc,
    }


@functools.lru_cache(maxsize=1)
def glyph_bank() -> GlyphBank:
    """Render the bank once per process: "R" and "L" in four fonts, plain and heavy; texts; shapes.

    Letters are over half of the bank, so most pasted markers are the laterality letters the
    shortcut audit found; the fonts are Pillow's built-in one and :data:`FONT_FILES`.
    """
    from PIL import ImageFont

    size = 4 * GLYPH_HEIGHT
    fonts: list[object] = [ImageFont.load_default(size=size)]
    fonts += [ImageFont.truetype(str(path), size=size) for path in _font_files()]
    masks: list[np.ndarray] = []
    names: list[str] = []
    for letter in LETTERS:
        for i, font in enumerate(fonts):
            for stroke in (0, size // 24):
                masks.append(_text_mask(letter, font, stroke))
                names.append(f"letter:{letter}:{i}:{stroke}")
    for i, text in enumerate(TEXTS):
        masks.append(_text_mask(text, fonts[i % len(fonts)]))
        names.append(f"text:{text}")
    for name, mask in _shape_masks().items():
        masks.append(mask)
        names.append(f"shape:{name}")
    return GlyphBank(tuple(torch.from_numpy(m.copy()) for m in masks), tuple(names))


# --- the transforms ----------------------------------------------------------------------------
def random_affine(
    batch: int, cfg: AugmentConfig, generator: torch.Generator | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """Draw (B, 2, 3) matrices mapping output to input coordinates (``affine_grid`` convention).

    Each image gets a flip (probability ``cfg.hflip``), a rotation in ±``cfg.degrees``, a zoom in
    1 ± ``cfg.zoom`` and a shift in ±``cfg.translate`` of the side, all uniform.
    """
    u = torch.rand(batch, 5, generator=generator, device=device)
    angle = (u[:, 0] * 2 - 1) * math.radians(cfg.degrees)
    zoom = 1.0 + (u[:, 1] * 2 - 1) * cfg.zoom
    flip = torch.where(u[:, 2] < cfg.hflip, -1.0, 1.0)
    shift = (u[:, 3:5] * 2 - 1) * (2.0 * cfg.translate)  # normalised coordinates span 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    row0 = torch.stack([cos * flip, -sin, shift[:, 0]], dim=1)
    row1 = torch.stack([sin * flip, cos, shift[:, 1]], dim=1)
    return torch.stack([row0, row1], dim=1)


def random_crop(
    batch: int, cfg: AugmentConfig, generator: torch.Generator | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """Draw (B, 2, 3) matrices of random resized crops (the identity for images not cropped).

    With probability ``cfg.crop`` an image keeps a rectangle of ``crop_scale`` to all of its
    area, aspect ratio log-uniform in [3/4, 4/3], placed uniformly inside it, stretched back to
    the full side: border bands and corners leave the picture.
    """
    u = torch.rand(batch, 5, generator=generator, device=device)
    on = u[:, 0] < cfg.crop
    area = cfg.crop_scale + (1.0 - cfg.crop_scale) * u[:, 1]
    ratio = torch.exp((u[:, 2] * 2 - 1) * math.log(CROP_RATIO))
    sx = torch.where(on, torch.sqrt(area * ratio).clamp(max=1.0), 1.0)
    sy = torch.where(on, torch.sqrt(area / ratio).clamp(max=1.0), 1.0)
    cx = (u[:, 3] * 2 - 1) * (1.0 - sx)
    cy = (u[:, 4] * 2 - 1) * (1.0 - sy)
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1)


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The (B, 2, 3) matrix of ``outer`` after ``inner``: input = outer(inner(output))."""
    lin = outer[:, :, :2] @ inner[:, :, :2]
    shift = outer[:, :, :2] @ inner[:, :, 2:] + outer[:, :, 2:]
    return torch.cat([lin, shift], dim=2)


def _pixel_centres(n: int, like: torch.Tensor) -> torch.Tensor:
    return (torch.arange(n, device=like.device, dtype=like.dtype) + 0.5) / n


def erase_border(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``cfg.erase`` per image, fill its border band or one corner with a random grey.

    Half the erased images lose a band on each side (each side's width uniform in [0,
    ``erase_size``] of the side), the other half one corner square (side uniform in
    [``erase_size``, 2 ``erase_size``]). The fill is one grey level, uniform in [0, 1].
    """
    b, _, h, w = x.shape
    u = torch.rand(b, 8, 1, 1, generator=generator, device=x.device, dtype=x.dtype)
    py, px = _pixel_centres(h, x).view(1, h, 1), _pixel_centres(w, x).view(1, 1, w)
    top, bottom, left, right = (u[:, i] * cfg.erase_size for i in range(3, 7))
    band = (py < top) | (py > 1 - bottom) | (px < left) | (px > 1 - right)
    side = cfg.erase_size * (1.0 + u[:, 3])
    corner_top, corner_left = u[:, 7] < 0.5, u[:, 4] < 0.5
    in_rows = torch.where(corner_top, py < side, py > 1 - side)
    in_cols = torch.where(corner_left, px < side, px > 1 - side)
    mask = (u[:, 0] < cfg.erase) & torch.where(u[:, 1] < 0.5, band, in_rows & in_cols)
    return torch.where(mask.unsqueeze(1), u[:, 2].unsqueeze(1), x)


def lung_keep_weights(masks: torch.Tensor) -> torch.Tensor:
    """What the context swap keeps of each film: float (B, 1, S, S) in [0, 1] from lung masks (B, 1, S, S).

    The masks grown by :data:`SWAP_MARGIN` of the side (a max-pool) and softened over as many pixels
    (a mean-pool), so the seam is a blend, not an edge the model could learn. Computed once per
    film when the training data loads (the pools cost more than the rest of the augmentation).
    """
    k = max(1, round(SWAP_MARGIN * masks.shape[-1]))
    keep = F.max_pool2d(masks.float(), 2 * k + 1, stride=1, padding=k)
    return F.avg_pool2d(keep, 2 * k + 1, stride=1, padding=k, count_include_pad=False)


def swap_context(
    x: torch.Tensor, keep: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """With probability ``cfg.swap`` per image, keep it where ``keep`` (float (B, 1, S, S) in [0, 1],
    :func:`lung_keep_weights` resampled with the image) says and take the rest from another image
    of the batch (a random permutation; an image may draw itself): ``keep * x + (1 - keep) * other``.
    """
    b = x.shape[0]
    chosen = torch.rand(b, 1, 1, 1, generator=generator, device=x.device, dtype=x.dtype) < cfg.swap
    other = torch.randperm(b, generator=generator, device="cpu").to(x.device)
    return torch.where(chosen, keep * x + (1.0 - keep) * x[other], x)


def paste_markers(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``cfg.marker`` per image, paste one glyph of :func:`glyph_bank` into a corner.

    The glyph's height is uniform in [``marker_size`` / 3, ``marker_size``] of the side (narrowed
    so that it is at most 45 % of the width), its corner uniform among the four, its distance
    from the two edges uniform in [0, ``MARKER_MARGIN``] of the side; it is white (grey level
    0.85-1) with probability ``MARKER_WHITE``, else black (0-0.15), blended by the mask's
    anti-aliased edge. Returns a new tensor when anything is pasted.
    """
    b, _, h, w = x.shape
    u = torch.rand(b, 8, generator=generator, device=x.device).tolist()
    chosen = [i for i in range(b) if u[i][0] < cfg.marker]
    if not chosen:
        return x
    bank = glyph_bank().masks
    x = x.clone()
    for i in chosen:
        _, pick, size, dy, dx, corner, colour, grey = u[i]
        glyph = bank[min(int(pick * len(bank)), len(bank) - 1)]
        gh = cfg.marker_size * (1.0 + 2.0 * size) / 3.0 * h
        gw = gh * glyph.shape[1] / glyph.shape[0]
        shrink = min(1.0, 0.45 * w / gw)
        gh, gw = max(2, round(gh * shrink)), max(2, round(gw * shrink))
        mask = F.interpolate(
            glyph[None, None].to(device=x.device, dtype=x.dtype), size=(gh, gw), mode="bilinear",
            align_corners=False, antialias=True,
        )[0].clamp_(0.0, 1.0)
        my, mx = round(dy * MARKER_MARGIN * h), round(dx * MARKER_MARGIN * w)
        corner_index = min(int(corner * 4), 3)
        y0 = my if corner_index < 2 else h - gh - my
        x0 = mx if corner_index % 2 == 0 else w - gw - mx
        value = 0.85 + 0.15 * grey if colour < MARKER_WHITE else 0.15 * grey
        region = x[i, :, y0 : y0 + gh, x0 : x0 + gw]
        region.mul_(1.0 - mask).add_(value * mask)
    return x


class Augment(nn.Module):
    """Random augmentation of a float batch (B, 1, S, S) in [0, 1]; identity when disabled.

    Order: one resampling (crop, flip, rotation, zoom, shift; the lung masks resampled with their
    films), the context swap, border erasing, pasted markers, brightness/contrast, gamma, noise,
    then a clamp to [0, 1]. Uses the global torch RNG unless a ``generator`` is given, so
    ``seed_everything`` makes a run repeatable. ``masks``: what the context swap keeps of each film,
    (B, 1, S, S), float in [0, 1] or uint8 in [0, 255] (:func:`lung_keep_weights` times 255, as the
    data module serves them); needed when the swap is on, ignored otherwise.
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        super().__init__()
        self.config = config or AugmentConfig()
        if self.config.enabled and self.config.marker > 0:
            glyph_bank()  # rendered once, at start-up, not inside the first training step

    @property
    def active(self) -> bool:
        c = self.config
        knobs = (c.brightness, c.contrast, c.crop, c.erase, c.marker, c.gamma, c.noise, c.swap)
        return c.enabled and (c.geometric or any(v > 0 for v in knobs))

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not self.active:
            return x
        cfg, b = self.config, x.shape[0]
        if cfg.swap > 0:
            if masks is None or masks.shape != x.shape:
                got = "none" if masks is None else f"shape {tuple(masks.shape)}"
                raise ValueError(f"augment.swap needs each film's lung mask, shaped like the batch {tuple(x.shape)}; "
                                 f"got {got}")
            keep = masks.to(x.dtype) / 255.0 if masks.dtype == torch.uint8 else masks.to(x.dtype)
            x = torch.cat([x, keep], dim=1)  # resampled together below
        if cfg.geometric or cfg.crop > 0:
            if cfg.geometric:
                theta = random_affine(b, cfg, generator, x.device).to(x.dtype)
            else:
                theta = torch.eye(2, 3, device=x.device, dtype=x.dtype).expand(b, 2, 3)
            if cfg.crop > 0:
                theta = compose(random_crop(b, cfg, generator, x.device).to(x.dtype), theta)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode=cfg.padding_mode, align_corners=False)
        if cfg.swap > 0:
            x = swap_context(x[:, :1], x[:, 1:], cfg, generator)
        if cfg.erase > 0:
            x = erase_border(x, cfg, generator)
        if cfg.marker > 0:
            x = paste_markers(x, cfg, generator)
        if cfg.brightness > 0 or cfg.contrast > 0:
            u = torch.rand(b, 2, 1, 1, 1, generator=generator, device=x.device, dtype=x.dtype)
            contrast = 1.0 + (u[:, 0] * 2 - 1) * cfg.contrast
            bright = (u[:, 1] * 2 - 1) * cfg.brightness
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * contrast + mean + bright
        if cfg.gamma > 0:
            u = torch.rand(b, 1, 1, 1, generator=generator, device=x.device, dtype=x.dtype)
            x = x.clamp(0.0, 1.0).pow(torch.exp(math.log1p(cfg.gamma) * (u * 2 - 1)))
        if cfg.noise > 0:
            sigma = cfg.noise * torch.rand(b, 1, 1, 1, generator=generator, device=x.device, dtype=x.dtype)
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x.clamp(0.0, 1.0)
