"""Approximate lung fields of a frontal chest film, and how much of an attribution map falls outside them.

No lung segmentation model or mask set can be installed here from a package registry (the
candidates download their weights from elsewhere at run time, or give only bounding boxes; see
``docs/audit/README.md``), so the lung fields are approximated, and the approximation's error is
measured by eye in that document. It is an anatomical prior refined by intensity:

1. **Prior**: one lung-shaped polygon per side in normalised film coordinates (:data:`PRIOR_RIGHT`,
   :data:`PRIOR_LEFT`, drawn for the framing of this dataset's paediatric AP films: apices near
   the top eighth, bases near three quarters of the height, the heart's notch on the patient's
   left, i.e. the image's right).
2. **Outside air**: dark pixels (below the film's Otsu threshold) connected to the left, right or
   bottom edge are air around the body, never lung.
3. **Refinement per side**: within the prior grown by 6 % of the side, pixels darker than that
   region's own Otsu threshold are lung candidates; after a small opening, the connected
   pieces lying mostly (≥ 30 %) in the prior's core are kept, and their convex hull (ribs cut
   the aerated lung into strips) clipped to the prior grown by 3 % is that lung.
4. **Fallbacks**: a side whose area comes out below 45 % or above 160 % of its prior's is not
   trusted; it becomes the mirror image of the other side when that one is trusted, else the
   prior itself. :class:`LungMask` says which happened, so a report can count them.

All sizes scale with the image, so the same function serves the model's 128 px input and a
full-size film.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import draw, filters, measure, morphology

#: The image-left lung (the patient's right) as (x, y) vertices, x and y in [0, 1] of the width and height.
PRIOR_RIGHT = ((0.36, 0.13), (0.26, 0.19), (0.17, 0.35), (0.13, 0.58), (0.13, 0.74), (0.24, 0.76),
               (0.44, 0.68), (0.46, 0.40), (0.43, 0.17))
#: The image-right lung (the patient's left), with the heart's notch at its lower medial side.
PRIOR_LEFT = tuple((1.0 - x, y) for x, y in ((0.36, 0.13), (0.26, 0.19), (0.17, 0.35), (0.13, 0.58), (0.13, 0.76),
                                              (0.24, 0.78), (0.40, 0.70), (0.44, 0.58), (0.45, 0.40), (0.43, 0.17)))
#: A refined side is trusted when its area lies in this range of its prior's area.
TRUSTED_AREA = (0.45, 1.6)


@dataclass(frozen=True)
class LungMask:
    """Both lung fields of one image.

    Attributes:
        mask: bool (H, W), True inside either lung field.
        sides: how each side (image-left, image-right) was obtained: ``refined``, ``mirrored``
            (the other side's refined mask, mirrored) or ``prior``.
    """

    mask: np.ndarray
    sides: tuple[str, str]

    @property
    def area(self) -> float:
        """Share of the image inside the lung fields."""
        return float(self.mask.mean())

    @property
    def status(self) -> str:
        """``refined`` when both sides are, else the fallbacks used (``refined+mirrored``, ``prior+prior``...)."""
        return "refined" if self.sides == ("refined", "refined") else "+".join(self.sides)


def prior_mask(shape: tuple[int, int], vertices: tuple[tuple[float, float], ...]) -> np.ndarray:
    """The polygon ``vertices`` (normalised x, y) rasterised on an image of ``shape``."""
    h, w = shape
    rc = np.array([(y * (h - 1), x * (w - 1)) for x, y in vertices])
    return draw.polygon2mask(shape, rc)


def prior_lungs(shape: tuple[int, int]) -> np.ndarray:
    """Both prior polygons: the mask used when nothing can be refined."""
    return prior_mask(shape, PRIOR_RIGHT) | prior_mask(shape, PRIOR_LEFT)


def _disk(image_height: int, fraction: float) -> np.ndarray:
    return morphology.disk(max(1, round(fraction * image_height)))


def _outside_air(x: np.ndarray) -> np.ndarray:
    """Dark pixels connected to the left, right or bottom edge: air around the body."""
    labels = measure.label(x < filters.threshold_otsu(x))
    edge = np.unique(np.concatenate([labels[:, 0], labels[:, -1], labels[-1, :]]))
    return np.isin(labels, edge[edge > 0])


def _refine_side(x: np.ndarray, prior: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """One lung from the smoothed image ``x`` inside its grown ``prior``; empty when nothing qualifies."""
    h = x.shape[0]
    core = ndi.binary_erosion(prior, _disk(h, 0.04))
    if not core.any():
        core = prior
    search = ndi.binary_dilation(prior, _disk(h, 0.06))
    if (outside & core).sum() < 0.3 * core.sum():  # else the "outside air" is the lung itself (a very dark film)
        search &= ~outside
    if search.sum() < 2:
        return np.zeros_like(prior)
    values = x[search]
    if values.max() - values.min() < 1e-6:
        return np.zeros_like(prior)
    dark = ndi.binary_opening((x < filters.threshold_otsu(values)) & search, _disk(h, 1 / 64))
    labels = measure.label(dark)
    keep = np.zeros_like(prior)
    for region in measure.regionprops(labels):
        piece = labels == region.label
        if (piece & core).sum() >= 0.3 * region.area and region.area >= 0.02 * prior.sum():
            keep |= piece
    if not keep.any():
        return keep
    return morphology.convex_hull_image(keep) & ndi.binary_dilation(prior, _disk(h, 0.03))


def lung_mask(image: np.ndarray) -> LungMask:
    """Approximate lung fields of a frontal chest film (uint8 (H, W)); see the module docstring.

    Raises:
        ValueError: not a 2-D image, or smaller than 16 pixels on a side.
    """
    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) < 16:
        raise ValueError(f"lung_mask: expected a 2-D image of at least 16x16 pixels, got shape {image.shape}")
    h = image.shape[0]
    x = filters.gaussian(image.astype(np.float64) / 255.0, sigma=h / 128)
    priors = (prior_mask(image.shape, PRIOR_RIGHT), prior_mask(image.shape, PRIOR_LEFT))
    if float(x.max() - x.min()) < 1e-6:  # a flat image: nothing to refine
        return LungMask(priors[0] | priors[1], ("prior", "prior"))
    outside = _outside_air(x)
    refined = [_refine_side(x, p, outside) for p in priors]
    ok = [TRUSTED_AREA[0] <= r.sum() / max(p.sum(), 1) <= TRUSTED_AREA[1] for r, p in zip(refined, priors)]
    masks, sides = [], []
    for i in (0, 1):
        if ok[i]:
            masks.append(refined[i])
            sides.append("refined")
        elif ok[1 - i]:
            masks.append(refined[1 - i][:, ::-1])
            sides.append("mirrored")
        else:
            masks.append(priors[i])
            sides.append("prior")
    return LungMask(masks[0] | masks[1], (sides[0], sides[1]))


def outside_share(attribution: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the positive attribution (evidence for pneumonia) that lies outside ``mask``.

    ``sum(max(a, 0) outside) / sum(max(a, 0))``; None when the map has no positive value (the
    share is undefined, not 0). A map spread evenly over the image scores the share of the image
    outside the mask, ``1 - mask.mean()``: the chance level to read it against.

    Raises:
        ValueError: the map and the mask differ in shape.
    """
    a = np.asarray(attribution, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if a.shape != m.shape:
        raise ValueError(f"attribution map {a.shape} and lung mask {m.shape} differ in shape")
    positive = np.clip(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    total = float(positive.sum())
    if total <= 0.0:
        return None
    return float(positive[~m].sum() / total)


def peak_outside(attribution: np.ndarray, mask: np.ndarray) -> bool | None:
    """Whether the map's largest positive value lies outside ``mask``; None when nothing is positive."""
    a = np.nan_to_num(np.asarray(attribution, dtype=np.float64), nan=-np.inf)
    if a.shape != np.shape(mask):
        raise ValueError(f"attribution map {a.shape} and lung mask {np.shape(mask)} differ in shape")
    if not np.any(a > 0):
        return None
    return not bool(np.asarray(mask, dtype=bool).flat[int(np.argmax(a))])
