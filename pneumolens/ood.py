"""Out-of-distribution guard: does this image look like the paediatric chest films the model saw?

A classifier answers every input, a photograph or a blank page included. This guard scores each
model input (the uint8 ``S x S`` array the network reads) by how far it lies from the training
films, with three complementary views, each fitted on the training films:

1. **Shape** — the film shrunk to 32 x 32 and standardised (zero mean, unit spread, so brightness
   and contrast do not matter), then a principal-component model of the training films: the
   log of the mean squared residual off the first ``n_components`` components. Catches anything
   whose layout is not a chest film (photographs, CT/MR slices, rotated or half-blank films).
2. **Typicality within that shape space** — the log Mahalanobis distance of the same image's
   component coefficients (scaled by the components' variances). Catches inverted and otherwise
   re-arranged films whose layout the components can express, but with unusual weights.
3. **Image statistics** — eleven global measures (brightness, spread, percentiles, edge energy,
   flat-pixel share, Laplacian energy, top/bottom, left/right and centre/side contrast), log
   Mahalanobis distance under a Gaussian fitted to the training films. Catches flat, saturated,
   noise-like, blurred and heavily compressed images.

Each view's log score is centred on its training median and scaled by the training spread up to
the 99th percentile; the **OOD score** is the largest of the three (higher = less like the
training films). The threshold is chosen on validation films so that at most ``max_flagged`` of
them (default 1 %) score above it. Everything is stored as plain tensors and floats in the
checkpoint, so it loads with ``torch.load(weights_only=True)``.

``pneumolens ood-eval`` measures it against sets of images that are not chest films.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

#: Side of the thumbnail the shape model reads.
THUMB = 32

#: Names of the image statistics, in the order :func:`image_statistics` returns them.
STAT_NAMES = (
    "mean",
    "std",
    "p1",
    "p99",
    "log_edge",
    "flat_share",
    "log_laplacian",
    "log_laplacian_per_std",
    "top_minus_bottom",
    "left_minus_right",
    "centre_minus_sides",
)

#: The message shown beside a flagged prediction (CLI, page, panels).
WARNING = "does not look like the paediatric chest films this model was trained on"

_EPS = 1e-6


def _as_batch(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"expected square images (N, S, S) or (S, S), got shape {arr.shape}")
    if arr.shape[1] % THUMB:
        raise ValueError(f"image side must be a multiple of {THUMB}, got {arr.shape[1]}")
    return arr


def image_statistics(images: np.ndarray) -> np.ndarray:
    """Eleven global measures per image (see :data:`STAT_NAMES`), float64 (N, 11).

    Args:
        images: uint8 (N, S, S) or (S, S), the model's input before scaling to [0, 1].
    """
    batch = _as_batch(images)
    x = batch.astype(np.float32)
    n, s, _ = x.shape
    flat = x.reshape(n, -1)
    mean = flat.mean(1)
    std = flat.std(1)
    p1, p99 = _percentiles(batch, (0.01, 0.99))
    dx = np.abs(np.diff(x, axis=2))
    dy = np.abs(np.diff(x, axis=1))
    edge = dx.mean((1, 2)) + dy.mean((1, 2))
    flat_share = (dx < 0.5).mean((1, 2))
    lap = x[:, 1:-1, 1:-1] * 4  # the 4-neighbour Laplacian, in place to spare temporaries
    for neighbour in (x[:, :-2, 1:-1], x[:, 2:, 1:-1], x[:, 1:-1, :-2], x[:, 1:-1, 2:]):
        lap -= neighbour
    lap = np.abs(lap, out=lap).mean((1, 2))
    q = s // 4  # quarter of the side
    top, bottom = x[:, :q].mean((1, 2)), x[:, -q:].mean((1, 2))
    left, right = x[:, :, :q].mean((1, 2)), x[:, :, -q:].mean((1, 2))
    centre = x[:, q : 3 * q, 3 * s // 8 : 5 * s // 8].mean((1, 2))
    return np.stack(
        [
            mean,
            std,
            p1,
            p99,
            np.log(edge + 1e-3),
            flat_share,
            np.log(lap + 1e-3),
            np.log(lap + 1e-3) - np.log(std + 1e-3),
            top - bottom,
            left - right,
            centre - (left + right) / 2,
        ],
        axis=1,
    ).astype(np.float64)


def _percentiles(images: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """Per image, the smallest grey level at or below which a share ``q`` of its pixels lie.

    From one 256-bin histogram per image (cheaper than sorting); uint8 input is expected, other
    dtypes are clipped and rounded to 0..255 first.
    """
    arr = images if images.dtype == np.uint8 else np.clip(np.rint(images), 0, 255).astype(np.uint8)
    n = arr.shape[0]
    offsets = (np.arange(n, dtype=np.int64) * 256)[:, None]
    hist = np.bincount((arr.reshape(n, -1) + offsets).ravel(), minlength=256 * n).reshape(n, 256)
    cum = np.cumsum(hist, axis=1) / arr[0].size
    return [np.argmax(cum >= q - 1e-12, axis=1).astype(np.float64) for q in qs]


def thumbnails(images: np.ndarray) -> np.ndarray:
    """Each image shrunk to ``THUMB x THUMB`` by block means, then standardised: float64 (N, THUMB²).

    Standardised = minus its own mean, divided by its own standard deviation plus one grey level,
    so brightness and contrast do not count but a flat image stays (near) zero, not amplified.
    """
    x = _as_batch(images).astype(np.float64)
    n, s, _ = x.shape
    f = s // THUMB
    t = x.reshape(n, THUMB, f, THUMB, f).mean((2, 4)).reshape(n, -1)
    t -= t.mean(1, keepdims=True)
    return t / (t.std(1, keepdims=True) + 1.0)


def _log_mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = x - mean
    return np.log(np.einsum("ij,jk,ik->i", d, precision, d) + _EPS)


@dataclass
class OodGuard:
    """A fitted guard: ``score(images)`` and ``flags(images)`` for uint8 model inputs.

    Build one with :meth:`fit`; store it with :meth:`state` and rebuild with :meth:`from_state`.

    Attributes:
        input_size: side of the images it was fitted on (the model's input size).
        pca_mean, pca_components, pca_variance: the shape model (thumbnail mean, the first
            components as rows, their variances over the training films).
        stats_mean, stats_precision: the Gaussian of the image statistics.
        centers, scales: per view, the training median of its log score and its spread (99th
            percentile minus median), which put the three views on one scale.
        threshold: scores above it are flagged.
        flagged_share: share of the validation films flagged at ``threshold`` when it was chosen.
    """

    input_size: int
    pca_mean: np.ndarray
    pca_components: np.ndarray
    pca_variance: np.ndarray
    stats_mean: np.ndarray
    stats_precision: np.ndarray
    centers: np.ndarray
    scales: np.ndarray
    threshold: float
    flagged_share: float = float("nan")

    VIEWS = ("shape_residual", "shape_mahalanobis", "statistics_mahalanobis")

    @classmethod
    def fit(
        cls,
        train_images: np.ndarray,
        validation_images: np.ndarray,
        n_components: int = 16,
        max_flagged: float = 0.01,
    ) -> OodGuard:
        """Fit the three views on training films and choose the threshold on validation films.

        Args:
            train_images: uint8 (N, S, S) training films (the model's inputs).
            validation_images: uint8 (M, S, S) films not used for fitting; the threshold is set
                so that at most ``max_flagged`` of them are flagged.
            n_components: principal components of the shape model. Default: 16.
            max_flagged: largest share of validation films flagged. Default: 0.01.
        """
        train = _as_batch(train_images)
        val = _as_batch(validation_images)
        if train.shape[1:] != val.shape[1:]:
            raise ValueError(f"train and validation images differ in size: {train.shape[1:]} vs {val.shape[1:]}")
        if len(train) <= max(n_components, len(STAT_NAMES)) + 1:
            raise ValueError(f"need more than {max(n_components, len(STAT_NAMES)) + 1} training films, got {len(train)}")
        if len(val) == 0:
            raise ValueError("need at least one validation film to choose the threshold")
        if not 0.0 <= max_flagged < 1.0:
            raise ValueError(f"max_flagged must be in [0, 1), got {max_flagged}")
        thumbs = thumbnails(train)
        mean = thumbs.mean(0)
        _, sv, vt = np.linalg.svd(thumbs - mean, full_matrices=False)
        k = min(n_components, vt.shape[0])
        stats = image_statistics(train)
        cov = np.cov(stats, rowvar=False) + 1e-6 * np.eye(stats.shape[1])
        guard = cls(
            input_size=int(train.shape[1]),
            pca_mean=mean,
            pca_components=vt[:k],
            pca_variance=sv[:k] ** 2 / (len(train) - 1),
            stats_mean=stats.mean(0),
            stats_precision=np.linalg.inv(cov),
            centers=np.zeros(3),
            scales=np.ones(3),
            threshold=float("inf"),
        )
        views = guard.views(train)
        guard.centers = np.median(views, axis=0)
        guard.scales = np.maximum(np.percentile(views, 99, axis=0) - guard.centers, 1e-3)
        guard.threshold, guard.flagged_share = choose_threshold(guard.score(val), max_flagged)
        return guard

    def views(self, images: np.ndarray) -> np.ndarray:
        """The three views' log scores, float64 (N, 3), in the order of :attr:`VIEWS`."""
        batch = _as_batch(images)
        if batch.shape[1] != self.input_size:
            raise ValueError(f"the guard was fitted on {self.input_size}px inputs, got {batch.shape[1]}px")
        d = thumbnails(batch) - self.pca_mean
        coef = d @ self.pca_components.T
        resid = d - coef @ self.pca_components
        return np.stack(
            [
                np.log(np.mean(resid**2, axis=1) + _EPS),
                np.log(np.sum(coef**2 / self.pca_variance, axis=1) + _EPS),
                _log_mahalanobis(image_statistics(batch), self.stats_mean, self.stats_precision),
            ],
            axis=1,
        )

    def score(self, images: np.ndarray) -> np.ndarray:
        """OOD score per image, float64 (N,): higher = less like the training films."""
        return np.max((self.views(images) - self.centers) / self.scales, axis=1)

    def flags(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, in_distribution)``: the scores and a boolean array, False where flagged."""
        scores = self.score(images)
        return scores, scores <= self.threshold

    # ------------------------------------------------------------------ storage in a checkpoint

    def state(self) -> dict[str, Any]:
        """Tensors and plain values only (loads with ``torch.load(weights_only=True)``)."""
        arrays = ("pca_mean", "pca_components", "pca_variance", "stats_mean", "stats_precision", "centers", "scales")
        out: dict[str, Any] = {name: torch.from_numpy(np.asarray(getattr(self, name), dtype=np.float64)) for name in arrays}
        out.update(
            method="pca-shape+statistics/v1",
            input_size=int(self.input_size),
            threshold=float(self.threshold),
            flagged_share=float(self.flagged_share),
        )
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> OodGuard:
        """Rebuild from :meth:`state`; refuses missing, misshapen or non-finite values."""
        if state.get("method") != "pca-shape+statistics/v1":
            raise CheckpointError(f"unknown out-of-distribution guard {state.get('method')!r}")
        try:
            arrays = {
                name: np.asarray(torch.as_tensor(state[name]), dtype=np.float64)
                for name in ("pca_mean", "pca_components", "pca_variance", "stats_mean", "stats_precision", "centers", "scales")
            }
            guard = cls(
                input_size=int(state["input_size"]),
                threshold=float(state["threshold"]),
                flagged_share=float(state.get("flagged_share", float("nan"))),
                **arrays,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"out-of-distribution guard is incomplete or malformed ({exc})") from None
        for name, arr in arrays.items():
            if not np.all(np.isfinite(arr)):
                raise CheckpointError(f"out-of-distribution guard holds non-finite values in {name}")
        if not np.isfinite(guard.threshold):
            raise CheckpointError("out-of-distribution guard has a non-finite threshold")
        d = THUMB * THUMB
        k = guard.pca_components.shape[0] if guard.pca_components.ndim == 2 else -1
        shapes_ok = (
            guard.pca_mean.shape == (d,)
            and guard.pca_components.shape == (k, d)
            and guard.pca_variance.shape == (k,)
            and guard.stats_mean.shape == (len(STAT_NAMES),)
            and guard.stats_precision.shape == (len(STAT_NAMES), len(STAT_NAMES))
            and guard.centers.shape == (3,)
            and guard.scales.shape == (3,)
        )
        if not shapes_ok or guard.input_size % THUMB or np.any(guard.pca_variance <= 0) or np.any(guard.scales <= 0):
            raise CheckpointError("out-of-distribution guard has inconsistent shapes or values")
        return guard


def choose_threshold(scores: np.ndarray, max_flagged: float) -> tuple[float, float]:
    """The smallest threshold among the scores that flags at most ``max_flagged`` of them.

    Returns ``(threshold, share flagged)``; a score equal to the threshold is not flagged.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if len(s) == 0 or not np.all(np.isfinite(s)):
        raise ValueError("scores must be a non-empty array of finite values")
    allowed = int(np.floor(max_flagged * len(s) + 1e-9))  # films that may lie above
    threshold = float(s[len(s) - 1 - allowed])
    return threshold, float(np.mean(s > threshold))
