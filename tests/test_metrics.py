"""Metrics against hand-computed values, threshold rules, temperature scaling, bootstrap CIs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from pneumolens.metrics import (
    CI_METRICS,
    binary_metrics,
    bootstrap_ci,
    calibration_bins,
    choose_threshold,
    expected_calibration_error,
    fit_calibration,
    fit_platt,
    fit_temperature,
    resample_weights,
    subtype_recall,
    weighted_metrics,
)

# Hand example: at threshold 0.5, predictions are [1,1,0,1,0,0,1,1] -> TP 3, FN 1, FP 2, TN 2.
Y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
P = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.5, 0.8])


def test_binary_metrics_hand_computed():
    m = binary_metrics(Y, P, 0.5)
    assert m["confusion"] == {"tn": 2, "fp": 2, "fn": 1, "tp": 3}
    assert (m["n"], m["n_pos"], m["n_neg"]) == (8, 4, 4)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    # positive-negative pairs ranked correctly: 0.9 and 0.8 beat all 4, 0.6 beats 3, 0.4 beats 2
    assert m["roc_auc"] == pytest.approx(13 / 16)
    assert m["brier"] == pytest.approx(1.36 / 8)
    assert m["threshold"] == 0.5


def test_probability_equal_to_threshold_is_positive():
    m = binary_metrics([1, 0], [0.5, 0.5], threshold=0.5)
    assert m["confusion"] == {"tn": 0, "fp": 1, "fn": 0, "tp": 1}


def test_degenerate_cases_do_not_crash():
    one_class = binary_metrics([0, 0, 0], [0.1, 0.7, 0.2], 0.5)
    assert one_class["roc_auc"] is None and one_class["pr_auc"] is None
    assert one_class["recall"] == 0.0 and one_class["specificity"] == pytest.approx(2 / 3)
    all_pos = binary_metrics([1, 1], [0.2, 0.9], 0.5)
    assert all_pos["roc_auc"] is None and all_pos["pr_auc"] == pytest.approx(1.0)
    nothing_predicted = binary_metrics([1, 0], [0.1, 0.2], 0.5)
    assert nothing_predicted["precision"] == 0.0 and nothing_predicted["f1"] == 0.0


@pytest.mark.parametrize(
    "y, p, match",
    [([0, 1], [0.1], "2 values"), ([0, 2], [0.1, 0.2], "only 0"), ([0, 1], [0.1, 1.2], r"\[0, 1\]"), ([], [], "empty")],
)
def test_bad_inputs_raise_value_error(y, p, match):
    with pytest.raises(ValueError, match=match):
        binary_metrics(y, p, 0.5)


def test_ece_constructed_case():
    # 4 bins. Bin [0, .25): p=0.1, observed 1/4 -> gap .15 over 4 images; bin [.75, 1]: p=0.8,
    # observed 5/6 -> gap 1/30 over 6 images. ECE = 0.4 * 0.15 + 0.6 / 30 = 0.08.
    y = [0, 0, 0, 1, 1, 1, 1, 1, 1, 0]
    p = [0.1] * 4 + [0.8] * 6
    assert expected_calibration_error(y, p, n_bins=4) == pytest.approx(0.08)
    assert expected_calibration_error([0, 1], [0.5, 0.5]) == pytest.approx(0.0)
    count, observed, mean_prob = calibration_bins(y, p, n_bins=4)
    assert count.tolist() == [4, 0, 0, 6]
    assert observed[0] == pytest.approx(0.25) and np.isnan(observed[1]) and mean_prob[3] == pytest.approx(0.8)


def test_ece_puts_probability_one_in_last_bin():
    assert expected_calibration_error([1], [1.0], n_bins=10) == pytest.approx(0.0)


def test_weighted_metrics_match_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1), 2)  # rounding makes many ties
    w = rng.integers(0, 4, (4, 300))
    got = weighted_metrics(y, p, 0.5, w)
    for b in range(4):
        assert got["roc_auc"][b] == pytest.approx(roc_auc_score(y, p, sample_weight=w[b]), abs=1e-12)
        assert got["pr_auc"][b] == pytest.approx(average_precision_score(y, p, sample_weight=w[b]), abs=1e-12)
    ones = weighted_metrics(y, p, 0.5, np.ones((1, 300)))
    point = binary_metrics(y, p, 0.5)
    for name in CI_METRICS:
        assert ones[name][0] == pytest.approx(point[name], abs=1e-12), name


# --------------------------------------------------------------------------- threshold rules


def test_youden_on_separable_case_is_the_gap_midpoint():
    y = [0, 0, 0, 1, 1]
    p = [0.1, 0.2, 0.3, 0.6, 0.7]
    assert choose_threshold(y, p, "youden") == pytest.approx(0.45)
    assert choose_threshold(y, p, "balanced") == pytest.approx(0.45)
    assert binary_metrics(y, p, choose_threshold(y, p))["accuracy"] == 1.0


def test_youden_ties_go_to_the_lowest_threshold_and_never_sit_on_a_score():
    # J = 0.5 at both 0.15 and 0.35.
    y, p = [0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]
    t = choose_threshold(y, p, "youden")
    assert t == pytest.approx(0.15)
    assert t not in p


def test_f1_rule_hand_computed():
    # F1 = 2tp / (2tp + fp + fn) at each candidate: 0.0 -> 6/9 ; 0.05 -> 6/8 ; 0.15 -> 6/7 ;
    # 0.3 -> 4/6 ; 0.45 -> 4/5 ; 0.6 -> 2/4. Best: 0.15 (Youden prefers 0.45: J .67 vs .67, tie -> 0.15).
    y = [0, 0, 1, 0, 1, 1]
    p = [0.0, 0.1, 0.2, 0.4, 0.5, 0.7]
    assert choose_threshold(y, p, "f1") == pytest.approx(0.15)
    y2, p2 = [0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.6, 0.7]
    # 0.325 -> tp 4, fp 1: F1 8/9 ; 0.45 -> tp 3, fp 0: F1 6/7. Different from Youden's tie-break.
    assert choose_threshold(y2, p2, "f1") == pytest.approx(0.325)


def test_sensitivity_rule_takes_the_highest_threshold_meeting_the_target():
    y = [1, 1, 1, 1, 0, 0, 0]
    p = [0.9, 0.8, 0.7, 0.2, 0.5, 0.4, 0.1]
    assert choose_threshold(y, p, "sensitivity:0.75") == pytest.approx(0.6)
    assert choose_threshold(y, p, "sensitivity:0.95") == pytest.approx(0.15)
    assert choose_threshold(y, p, "sensitivity:1") == pytest.approx(0.15)
    assert choose_threshold(y, p, "sensitivity:0.5") == pytest.approx(0.75)
    assert choose_threshold(y, p, "fixed:0.3") == 0.3


@pytest.mark.parametrize(
    "rule", ["median", "sensitivity", "fixed", "fixed:abc", "fixed:1.5", "sensitivity:0", "youden:0.3"]
)
def test_bad_rules_raise_naming_the_valid_ones(rule):
    with pytest.raises(ValueError, match="youden|must be in"):
        choose_threshold([0, 1], [0.2, 0.8], rule)


def test_data_driven_rule_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold([1, 1], [0.2, 0.8], "youden")
    assert choose_threshold([1, 1], [0.2, 0.8], "fixed:0.5") == 0.5


# --------------------------------------------------------------------------- temperature


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    rng = np.random.default_rng(0)
    calibrated = rng.normal(0.0, 2.5, 20000)  # logits whose sigmoid is the true probability
    y = (rng.random(calibrated.size) < 1 / (1 + np.exp(-calibrated))).astype(int)
    logits = calibrated * true_t  # the model's logits are too sharp (T > 1) or too soft (T < 1)
    assert fit_temperature(logits, y) == pytest.approx(true_t, rel=0.06)


def test_fit_temperature_rejects_one_class_and_nan():
    with pytest.raises(ValueError, match="both classes"):
        fit_temperature([1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match="finite"):
        fit_temperature([np.nan, 2.0], [0, 1])


def test_fit_platt_matches_hand_computed_optima():
    """Two logit values make the fit saturate: sigmoid(-a + b) and sigmoid(a + b) equal the observed rates.

    z = -1: 2 of 4 positive, z = +1: 4 of 5 -> -a + b = logit(0.5) = 0, a + b = logit(0.8) = ln 4,
    so a = b = ln 2 (T = 1 / ln 2). Rates 1/4 and 3/4 are symmetric: b = 0, a = ln 3.
    """
    z = [-1.0] * 4 + [1.0] * 5
    t, b = fit_platt(z, [1, 1, 0, 0] + [1, 1, 1, 1, 0])
    assert t == pytest.approx(1 / np.log(2), rel=1e-5) and b == pytest.approx(np.log(2), rel=1e-5)
    t, b = fit_platt([-1.0] * 4 + [1.0] * 4, [1, 0, 0, 0, 1, 1, 1, 0])
    assert t == pytest.approx(1 / np.log(3), rel=1e-5) and b == pytest.approx(0.0, abs=1e-6)


def test_fit_platt_recovers_an_off_centre_model_that_temperature_cannot():
    """Logits shifted by a class-weighting-like offset: Platt finds T and b; temperature alone stays off."""
    rng = np.random.default_rng(1)
    calibrated = rng.normal(0.5, 2.0, 20000)
    y = (rng.random(calibrated.size) < 1 / (1 + np.exp(-calibrated))).astype(int)
    logits = 0.5 * (calibrated - 3.0)  # calibrated = logits / 0.5 + 3
    t, b = fit_platt(logits, y)
    assert t == pytest.approx(0.5, rel=0.05) and b == pytest.approx(3.0, abs=0.15)

    def mean_gap(p):  # how far the mean probability sits from the positive rate
        return abs(p.mean() - y.mean())

    platt = 1 / (1 + np.exp(-(logits / t + b)))
    temp = 1 / (1 + np.exp(-logits / fit_temperature(logits, y)))
    assert mean_gap(platt) < 0.005 and mean_gap(temp) > 0.05


def test_fit_calibration_names_its_methods():
    z, y = [-1.0] * 4 + [1.0] * 4, [1, 0, 0, 0, 1, 1, 1, 0]
    assert fit_calibration(z, y, "none") == (1.0, 0.0)
    assert fit_calibration(z, y, "temperature") == (pytest.approx(1 / np.log(3), rel=1e-4), 0.0)
    assert fit_calibration(z, y, "platt") == pytest.approx((1 / np.log(3), 0.0), abs=1e-5)
    with pytest.raises(ValueError, match="calibration must be one of"):
        fit_calibration(z, y, "isotonic")
    with pytest.raises(ValueError, match="fit_platt needs both classes"):
        fit_platt([1.0, 2.0], [1, 1])


# --------------------------------------------------------------------------- bootstrap


def _sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    return y, p


def _width(ci: dict, name: str) -> float:
    return ci[name][1] - ci[name][0]


def test_bootstrap_ci_contains_point_estimate_and_is_deterministic():
    y, p = _sample(400, 1)
    point = binary_metrics(y, p, 0.5)
    ci = bootstrap_ci(y, p, 0.5, n_boot=500, seed=7)
    assert set(ci) == set(CI_METRICS)
    for name in CI_METRICS:
        lo, hi = ci[name]
        assert lo <= point[name] <= hi, name
        assert lo < hi, name
    assert bootstrap_ci(y, p, 0.5, n_boot=500, seed=7) == ci


def test_bootstrap_ci_narrows_with_more_data():
    small = bootstrap_ci(*_sample(100, 2), 0.5, n_boot=500)
    large = bootstrap_ci(*_sample(2000, 2), 0.5, n_boot=500)
    for name in ("accuracy", "recall", "roc_auc", "brier"):
        assert _width(large, name) < 0.5 * _width(small, name), name


def test_cluster_bootstrap_is_wider_when_patients_are_duplicated():
    y, p = _sample(150, 4)
    copies = 5  # each patient contributes 5 identical films: 750 images, but only 150 patients' worth of evidence
    yy, pp = np.repeat(y, copies), np.repeat(p, copies)
    groups = np.repeat([f"patient{i}" for i in range(150)], copies)
    iid = bootstrap_ci(yy, pp, 0.5, n_boot=800)
    cluster = bootstrap_ci(yy, pp, 0.5, groups=groups, n_boot=800)
    for name in ("accuracy", "roc_auc", "recall"):
        assert _width(cluster, name) > 1.5 * _width(iid, name), name  # ~sqrt(5) = 2.2 expected


def test_resample_weights_keep_patients_whole():
    groups = ["a", "a", "b", "c", "c", "c"]
    w = resample_weights(6, 50, seed=0, groups=groups)
    assert w.shape == (50, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all() and (w[:, 4] == w[:, 5]).all()
    patients_drawn = w[:, 0] + w[:, 2] + w[:, 3]
    assert (patients_drawn == 3).all()
    assert (resample_weights(10, 20, seed=1).sum(1) == 10).all()
    with pytest.raises(ValueError, match="groups"):
        resample_weights(3, 5, groups=["a"])


def test_bootstrap_undefined_metric_gives_none():
    ci = bootstrap_ci([1, 1, 1], [0.2, 0.6, 0.9], 0.5, n_boot=50)
    assert ci["roc_auc"] is None
    assert ci["recall"][0] <= 2 / 3 <= ci["recall"][1]


def test_subtype_recall():
    y = [1, 1, 1, 1, 0, 0]
    p = [0.9, 0.2, 0.8, 0.7, 0.1, 0.6]
    s = ["bacteria", "bacteria", "virus", "virus", "normal", "normal"]
    out = subtype_recall(y, p, s, 0.5)
    assert out == {
        "bacteria": {"n": 2, "recall": 0.5},
        "normal": {"n": 2, "specificity": 0.5},
        "virus": {"n": 2, "recall": 1.0},
    }
    with pytest.raises(ValueError, match="subtypes"):
        subtype_recall(y, p, s[:3], 0.5)
