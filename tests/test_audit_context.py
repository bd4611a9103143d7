"""The context-swap probe (pneumolens.audit.context): composites, counts by hand, planted models."""

from __future__ import annotations

import numpy as np
import pytest

from pneumolens.audit.context import composite, context_swap, follows_lungs, inside_share, keep_weights, pair_indices


def test_composite_blends_by_the_keep_weights_and_rounds() -> None:
    a, b = np.full((2, 2), 200, np.uint8), np.full((2, 2), 100, np.uint8)
    keep = np.array([[1.0, 0.0], [0.25, 0.5]])
    assert composite(a, b, keep).tolist() == [[200, 100], [125, 150]]


def test_follows_lungs_counts_only_pairs_the_model_tells_apart() -> None:
    """Threshold 0.5. Pair 1: lungs 0.9 / context 0.1, composite 0.8 -> follows the lungs. Pair 2:
    0.9 / 0.1, composite 0.2 -> follows the context. Pair 3: both source films 0.9 -> not informative."""
    assert follows_lungs([0.9, 0.9, 0.9], [0.1, 0.1, 0.9], [0.8, 0.2, 0.1], 0.5) == (2, 1)


def test_pairs_use_each_film_once_and_pair_opposite_classes() -> None:
    labels = np.array([0, 1, 1, 0, 1, 0, 0])
    pairs = pair_indices(labels, 10, seed=3)
    assert len(pairs) == 3 and all(labels[n] == 0 and labels[p] == 1 for n, p in pairs)
    assert len({i for pair in pairs for i in pair}) == 6
    assert pair_indices(labels, 2, seed=3) == pairs[:2] and pair_indices(labels[:1], 5, seed=0) == []


def test_inside_share_by_hand() -> None:
    """Map 1: 3 of its 4 positive units inside; map 2: only negative values -> NaN."""
    region = np.array([[True, False], [False, False]])
    maps = np.array([[[3.0, 1.0], [-5.0, 0.0]], [[-1.0, -1.0], [-1.0, -1.0]]])
    share = inside_share(maps, region)
    assert share[0] == pytest.approx(0.75) and np.isnan(share[1])


def test_keep_weights_cover_the_mask_and_fade_outside_it() -> None:
    mask = np.zeros((1, 64, 64), bool)
    mask[0, 24:40, 24:40] = True
    keep = keep_weights(mask)
    assert keep.shape == (1, 64, 64) and keep.min() >= 0.0 and keep.max() <= 1.0
    assert keep[0, 30, 30] == pytest.approx(1.0) and keep[0, 0, 0] == 0.0
    assert 0.0 < keep[0, 41, 32] < 1.0  # the blended seam just outside the mask


def _planted() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Films whose centre (the "lungs") is bright for PNEUMONIA and dark for NORMAL, and whose border
    grey is the other way round."""
    s = 16
    centre = np.zeros((s, s), bool)
    centre[4:12, 4:12] = True
    labels = np.array([0, 1, 0, 1, 1])
    films = np.stack([np.where(centre, 200 if y else 50, 60 if y else 190) for y in labels]).astype(np.uint8)
    keep = np.broadcast_to(centre.astype(float), films.shape)
    return films, keep, labels, centre


def test_a_model_reading_the_lungs_follows_them_and_one_reading_the_border_does_not() -> None:
    """Two pairs (two NORMAL films) give four composites. The centre reader follows the lungs on all
    four, the border reader on none; a Grad-CAM stand-in that puts everything in the centre is 100 %
    inside a kept region of a quarter of the film."""
    films, keep, labels, centre = _planted()

    def reads_centre(x: np.ndarray) -> np.ndarray:
        return x[:, centre].mean(axis=1) / 255.0

    def reads_border(x: np.ndarray) -> np.ndarray:
        return 1.0 - x[:, ~centre].mean(axis=1) / 255.0

    def centre_map(x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(centre.astype(float), x.shape)

    lungs = context_swap(films, keep, labels, reads_centre, 0.5, n_pairs=10, gradcam=centre_map)
    border = context_swap(films, keep, labels, reads_border, 0.5, n_pairs=10)
    assert (lungs["pairs"], lungs["informative"], lungs["followed"], lungs["follow_rate"]) == (2, 4, 4, 1.0)
    assert (border["informative"], border["followed"], border["follow_rate"]) == (4, 0, 0.0)
    kind = lungs["kinds"]["normal_lungs"]
    assert kind["gradcam_inside_median"] == pytest.approx(1.0) and kind["kept_region_share"] == pytest.approx(0.25)
    assert kind["mean_p_lungs_film"] == pytest.approx(50 / 255) and kind["mean_p_surroundings_film"] == pytest.approx(200 / 255)
    assert "gradcam_inside_median" not in border["kinds"]["normal_lungs"]


def test_a_model_that_labels_everything_alike_has_nothing_informative() -> None:
    films, keep, labels, _ = _planted()
    r = context_swap(films, keep, labels, lambda x: np.full(len(x), 0.9), 0.5)
    assert (r["informative"], r["followed"], r["follow_rate"]) == (0, 0, None)
    assert r["kinds"]["pneumonia_lungs"]["follow_rate"] is None
    assert context_swap(films[labels == 1], keep[labels == 1], labels[labels == 1], lambda x: x.mean((1, 2)), 0.5) == {
        "pairs": 0, "seed": 0, "kinds": {}, "informative": 0, "followed": 0, "follow_rate": None}
