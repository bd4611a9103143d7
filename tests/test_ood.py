"""The out-of-distribution guard: its measures by hand, its threshold rule, and what it flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pneumolens.errors import CheckpointError
from pneumolens.ood import STAT_NAMES, THUMB, OodGuard, choose_threshold, image_statistics, thumbnails


def synthetic_films(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """Film-like images: a bright body with two darker lung ellipses, varied a little, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    films = []
    for _ in range(n):
        body = 150 + 40 * rng.random()
        img = np.full((size, size), 30.0)
        img[(np.abs(xx - 0.5) < 0.42) & (yy > 0.05)] = body
        for cx in (0.32, 0.68):
            cx += 0.03 * rng.standard_normal()
            lung = ((xx - cx) / 0.13) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
            img[lung] = body - 90 + 10 * rng.standard_normal()
        img += rng.normal(0, 6, img.shape)
        films.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(films)


def test_image_statistics_by_hand():
    img = np.zeros((32, 32), np.uint8)
    img[:, 16:] = 200  # left half black, right half 200
    s = dict(zip(STAT_NAMES, image_statistics(img)[0]))
    assert s["mean"] == pytest.approx(100.0)
    assert s["std"] == pytest.approx(100.0)
    assert s["p1"] == pytest.approx(0.0) and s["p99"] == pytest.approx(200.0)
    # one jump of 200 per row among 31 horizontal differences; no vertical differences
    assert s["log_edge"] == pytest.approx(np.log(200 / 31 + 1e-3))
    assert s["flat_share"] == pytest.approx(30 / 31)
    assert s["left_minus_right"] == pytest.approx(-200.0)
    assert s["top_minus_bottom"] == pytest.approx(0.0)
    # centre columns 12..19: half 0, half 200 -> 100; sides 0 and 200 -> 100
    assert s["centre_minus_sides"] == pytest.approx(0.0)


def test_thumbnails_ignore_brightness_and_contrast_and_keep_flat_images_flat():
    rng = np.random.default_rng(1)
    a = rng.integers(50, 100, (64, 64)).astype(np.uint8)
    b = (a.astype(int) * 2 + 20).astype(np.uint8)  # brighter, twice the contrast
    ta, tb = thumbnails(a), thumbnails(b)
    assert ta.shape == (1, THUMB * THUMB)
    assert np.corrcoef(ta[0], tb[0])[0, 1] == pytest.approx(1.0, abs=1e-9)
    assert np.abs(thumbnails(np.full((64, 64), 37, np.uint8))).max() == 0.0


def test_choose_threshold_flags_at_most_the_share_asked():
    scores = np.arange(100, dtype=float)  # 0..99
    thr, share = choose_threshold(scores, 0.01)
    assert thr == 98.0 and share == pytest.approx(0.01)  # only 99 lies above
    thr, share = choose_threshold(scores, 0.0)
    assert thr == 99.0 and share == 0.0
    thr, share = choose_threshold(np.array([1.0, 2.0, 3.0]), 0.01)  # 1 % of 3 films: none may be flagged
    assert thr == 3.0 and share == 0.0
    with pytest.raises(ValueError):
        choose_threshold(np.array([1.0, np.nan]), 0.01)


@pytest.fixture(scope="module")
def guard() -> OodGuard:
    return OodGuard.fit(synthetic_films(300, seed=0), synthetic_films(100, seed=1))


def test_threshold_flags_at_most_one_percent_of_validation(guard):
    assert guard.flagged_share <= 0.01
    _, ok = guard.flags(synthetic_films(100, seed=1))
    assert ok.mean() >= 0.99


def test_fresh_films_pass_and_non_films_are_flagged(guard):
    fresh = synthetic_films(200, seed=2)
    scores, ok = guard.flags(fresh)
    assert ok.mean() >= 0.95
    rng = np.random.default_rng(3)
    others = {
        "black": np.zeros((64, 64), np.uint8),
        "grey": np.full((64, 64), 128, np.uint8),
        "white": np.full((64, 64), 255, np.uint8),
        "noise": rng.integers(0, 256, (64, 64)).astype(np.uint8),
        "inverted": 255 - fresh[0],
        "rotated": np.rot90(fresh[0]).copy(),
        "half black": np.where(np.arange(64)[:, None] < 32, fresh[0], 0).astype(np.uint8),
    }
    for name, img in others.items():
        s, inside = guard.flags(img)
        assert not inside[0], f"{name} was not flagged (score {s[0]:.2f}, threshold {guard.threshold:.2f})"
        assert s[0] > np.percentile(scores, 99), name


def test_state_round_trips_through_torch_save_weights_only(guard, tmp_path):
    path = tmp_path / "g.pt"
    torch.save({"ood": guard.state()}, path)
    again = OodGuard.from_state(torch.load(path, weights_only=True)["ood"])
    imgs = synthetic_films(5, seed=4)
    np.testing.assert_allclose(again.score(imgs), guard.score(imgs))
    assert again.threshold == guard.threshold


def test_malformed_or_non_finite_state_is_refused(guard):
    state = guard.state()
    bad = dict(state, threshold=float("nan"))
    with pytest.raises(CheckpointError, match="non-finite threshold"):
        OodGuard.from_state(bad)
    bad = dict(state, stats_mean=torch.full((len(STAT_NAMES),), float("inf"), dtype=torch.float64))
    with pytest.raises(CheckpointError, match="non-finite values in stats_mean"):
        OodGuard.from_state(bad)
    bad = {k: v for k, v in state.items() if k != "scales"}
    with pytest.raises(CheckpointError, match="incomplete"):
        OodGuard.from_state(bad)
    with pytest.raises(CheckpointError, match="unknown"):
        OodGuard.from_state(dict(state, method="autoencoder"))


def test_wrong_input_size_is_a_clear_error(guard):
    with pytest.raises(ValueError, match="fitted on 64px"):
        guard.score(np.zeros((2, 96, 96), np.uint8))
    with pytest.raises(ValueError, match="multiple of 32"):
        guard.score(np.zeros((2, 50, 50), np.uint8))
