"""The context-swap probe (pneumolens.audit.context): composites, counts by hand, planted models."""

from __future__ import annotations

import numpy as np
import pytest

from pneumolens.audit.context import (composite, context_swap, follows_lungs, inside_share, keep_weights, pair_indices,
                                      told_apart)


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
    """Films whose lungs are bright for PNEUMONIA and dark for NORMAL, on a surrounding grey that is the
    other way round. NORMAL films' lungs are the centre 8 x 8 pixels, PNEUMONIA films' the centre 6 x 6,
    so that a composite shows whose mask it kept."""
    s = 16
    big, small = np.zeros((s, s), bool), np.zeros((s, s), bool)
    big[4:12, 4:12], small[5:11, 5:11] = True, True
    labels = np.array([0, 1, 0, 1, 1])
    masks = np.stack([small if y else big for y in labels])
    films = np.stack([np.where(m, 200 if y else 50, 60 if y else 190) for m, y in zip(masks, labels)]).astype(np.uint8)
    return films, masks, labels, big


def test_a_model_reading_the_lungs_follows_them_and_one_reading_the_border_does_not() -> None:
    """Two pairs (two NORMAL films) give four composites. The centre reader follows the lungs on all
    four, the border reader on none. Each composite is its lungs' film where that film's own mask
    (grown and blended) says, the other film elsewhere; the kept region is that film's."""
    films, masks, labels, centre = _planted()
    seen: list[np.ndarray] = []

    def reads_centre(x: np.ndarray) -> np.ndarray:
        return x[:, centre].mean(axis=1) / 255.0

    def reads_border(x: np.ndarray) -> np.ndarray:
        return 1.0 - x[:, ~centre].mean(axis=1) / 255.0

    def bright_map(x: np.ndarray) -> np.ndarray:  # evidence where the film is bright: a film-dependent map
        seen.append(x)
        return (x >= 195).astype(float)

    lungs = context_swap(films, masks, labels, reads_centre, 0.5, n_pairs=10, gradcam=bright_map)
    border = context_swap(films, masks, labels, reads_border, 0.5, n_pairs=10)
    assert (lungs["pairs"], lungs["informative"], lungs["followed"], lungs["follow_rate"]) == (2, 4, 4, 1.0)
    assert (border["informative"], border["followed"], border["follow_rate"]) == (4, 0, 0.0)
    pairs = pair_indices(labels, 10, seed=0)
    for composites, (kind, lungs_of) in zip(seen, (("normal_lungs", 0), ("pneumonia_lungs", 1))):
        for got, pair in zip(composites, pairs):
            a, b = pair[lungs_of], pair[1 - lungs_of]
            assert np.array_equal(got, composite(films[a], films[b], keep_weights(masks[a][None])[0]))
    normal, pneumonia = lungs["kinds"]["normal_lungs"], lungs["kinds"]["pneumonia_lungs"]
    # the kept region (weight > 1/2) is each lungs' film's own mask grown by a pixel (10 x 10, 8 x 8)
    # less its four corners, which the 3 x 3 blur leaves at 4/9
    assert normal["kept_region_share"] == pytest.approx(96 / 256)
    assert pneumonia["kept_region_share"] == pytest.approx(60 / 256)
    # PNEUMONIA lungs are the only bright pixels of their composites: all the evidence is inside;
    # NORMAL lungs in PNEUMONIA surroundings leave no bright pixel: no film with positive evidence
    assert (pneumonia["gradcam_inside_median"], pneumonia["gradcam_films"]) == (pytest.approx(1.0), 2)
    assert (normal["gradcam_inside_median"], normal["gradcam_films"]) == (None, 0)
    assert normal["mean_p_lungs_film"] == pytest.approx(50 / 255) and normal["mean_p_surroundings_film"] == pytest.approx(
        (36 * 200 + 28 * 60) / 64 / 255)
    assert pneumonia["mean_p_lungs_film"] == normal["mean_p_surroundings_film"]
    assert "gradcam_inside_median" not in border["kinds"]["normal_lungs"]
    # per pair: both films' and both composites' probabilities. A NORMAL film's lungs (50) fill the centre
    # reader's 8 x 8, so its film and its composite read 50; a PNEUMONIA film reads its lungs (200) on 36
    # of those pixels and its own surroundings (60) on 28; its composite the NORMAL film's centre there
    assert [(r["normal"], r["pneumonia"]) for r in lungs["per_pair"]] == pairs
    for r in lungs["per_pair"]:
        j, i = r["pneumonia"], r["normal"]
        assert r["p_normal"] == pytest.approx(50 / 255) and r["p_normal_lungs"] == pytest.approx(50 / 255)
        assert r["p_pneumonia"] == pytest.approx((36 * 200 + 28 * 60) / 64 / 255)
        mixed = composite(films[j], films[i], keep_weights(masks[j][None])[0])
        assert r["p_pneumonia_lungs"] == pytest.approx(reads_centre(mixed[None])[0])


def test_per_pair_probabilities_recount_to_the_totals() -> None:
    films, masks, labels, _ = _planted()
    rng = np.random.default_rng(3)
    r = context_swap(films, masks, labels, lambda x: rng.uniform(size=len(x)), 0.5, n_pairs=10)
    rows = r["per_pair"]
    for name, lungs_key, rest_key in (("normal_lungs", "p_normal", "p_pneumonia"),
                                      ("pneumonia_lungs", "p_pneumonia", "p_normal")):
        counts = follows_lungs([x[lungs_key] for x in rows], [x[rest_key] for x in rows],
                               [x[f"p_{name}"] for x in rows], 0.5)
        assert counts == (r["kinds"][name]["informative"], r["kinds"][name]["followed"])


def test_each_pair_keeps_its_own_composites_probabilities() -> None:
    """Films of different brightness, so every pair's composites differ: a shuffled row would not match."""
    rng = np.random.default_rng(5)
    labels = np.array([0, 1] * 4)
    masks = np.zeros((8, 16, 16), bool)
    masks[:, 4:12, 4:12] = True
    films = rng.integers(0, 256, size=(8, 16, 16)).astype(np.uint8)

    def predict(x: np.ndarray) -> np.ndarray:
        return x.mean(axis=(1, 2)) / 255.0

    r = context_swap(films, masks, labels, predict, 0.5, n_pairs=4)
    assert len(r["per_pair"]) == 4
    for row in r["per_pair"]:
        i, j = row["normal"], row["pneumonia"]
        assert (labels[i], labels[j]) == (0, 1)
        assert row["p_normal"] == pytest.approx(predict(films[i][None])[0])
        for key, a, b in (("p_normal_lungs", i, j), ("p_pneumonia_lungs", j, i)):
            mixed = composite(films[a], films[b], keep_weights(masks[a][None])[0])
            assert row[key] == pytest.approx(predict(mixed[None])[0])


def test_told_apart_needs_two_labels_and_four_numbers() -> None:
    rows = [{"p_normal": 0.1, "p_pneumonia": 0.9, "p_normal_lungs": 0.2, "p_pneumonia_lungs": 0.8},
            {"p_normal": 0.6, "p_pneumonia": 0.9, "p_normal_lungs": 0.2, "p_pneumonia_lungs": 0.8},  # both PNEUMONIA
            {"p_normal": np.nan, "p_pneumonia": 0.9, "p_normal_lungs": 0.2, "p_pneumonia_lungs": 0.8},
            {"p_normal": 0.1, "p_pneumonia": 0.9, "p_normal_lungs": np.nan, "p_pneumonia_lungs": 0.8},
            {"p_normal": 0.5, "p_pneumonia": 0.4, "p_normal_lungs": 0.2, "p_pneumonia_lungs": 0.8}]  # p = t: PNEUMONIA
    assert told_apart(rows, 0.5) == [rows[0], rows[4]]


def test_the_context_figure_draws_one_row_per_pair_told_apart(tmp_path) -> None:
    """The figure's height is fixed by its rows (no tight crop): two told-apart pairs draw two rows; a
    result in which none is told apart draws one empty row beside its bars."""
    from matplotlib.image import imread

    from pneumolens.audit.figures import plot_context

    films, masks, labels, centre = _planted()
    r = context_swap(films, masks, labels, lambda x: x[:, centre].mean(axis=1) / 255.0, 0.5)
    assert len(told_apart(r["per_pair"], 0.5)) == 2
    image = imread(plot_context(films, masks, r, 0.5, tmp_path / "context.png"))
    height, width = image.shape[:2]  # inches x 85 dpi, to the pixel below
    assert abs(height - (2.45 * 2 + 0.7) * 85) < 1 and abs(width - 12.4 * 85) < 1 and image[..., :3].std() > 0.05
    flat = context_swap(films, masks, labels, lambda x: np.full(len(x), 0.9), 0.5)
    assert abs(imread(plot_context(films, masks, flat, 0.5, tmp_path / "flat.png")).shape[0] - (2.45 + 0.7) * 85) < 1


def test_given_probabilities_are_used_and_not_recomputed() -> None:
    films, masks, labels, _ = _planted()
    calls: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x.mean(axis=(1, 2)) / 255.0

    context_swap(films, masks, labels, predict, 0.5, p=np.linspace(0, 1, len(labels)))
    assert calls == [2, 2]  # the composites only, one batch per kind


def test_a_model_that_labels_everything_alike_has_nothing_informative() -> None:
    films, masks, labels, _ = _planted()
    r = context_swap(films, masks, labels, lambda x: np.full(len(x), 0.9), 0.5)
    assert (r["informative"], r["followed"], r["follow_rate"]) == (0, 0, None)
    assert r["kinds"]["pneumonia_lungs"]["follow_rate"] is None
    one_class = labels == 1
    assert context_swap(films[one_class], masks[one_class], labels[one_class], lambda x: x.mean((1, 2)), 0.5) == {
        "pairs": 0, "requested": 100, "seed": 0, "kinds": {}, "informative": 0, "followed": 0, "follow_rate": None,
        "per_pair": []}


def test_a_probability_that_is_not_a_number_makes_a_composite_uninformative() -> None:
    assert follows_lungs([0.9, np.nan], [0.1, 0.1], [0.8, 0.8], 0.5) == (1, 1)
    assert follows_lungs([0.9], [0.1], [np.nan], 0.5) == (0, 0)


def test_the_report_says_why_fewer_pairs_than_asked_and_counts_one_pair_in_the_singular() -> None:
    from pneumolens.audit.markdown import _context_lines

    films, masks, labels, centre = _planted()  # two NORMAL films: at most two pairs
    r = context_swap(films, masks, labels, lambda x: x[:, centre].mean(axis=1) / 255.0, 0.5, n_pairs=10)
    text = "\n".join(_context_lines(r))
    assert (r["pairs"], r["requested"]) == (2, 10)
    assert "2 NORMAL/PNEUMONIA pairs (seed 0; 10 asked: each film is used once" in text
    one = context_swap(films, masks, labels, lambda x: x[:, centre].mean(axis=1) / 255.0, 0.5, n_pairs=1)
    assert "1 NORMAL/PNEUMONIA pair (seed 0)" in "\n".join(_context_lines(one))
    assert _context_lines(None)[2] == "Not run (`--context-pairs 0`)."
