"""Binary classification metrics, calibration, bootstrap intervals and threshold rules.

Pure numpy / scikit-learn / scipy: no torch, so the training code, the evaluator and the tests
can all call these on plain arrays. Conventions used everywhere:

* ``y_true`` holds 0 (NORMAL) / 1 (PNEUMONIA); ``prob`` is the PNEUMONIA probability in [0, 1].
* An image is predicted positive when ``prob >= threshold`` (as :class:`~pneumolens.inference.Predictor` does).
* Zero division: a rate whose denominator is empty (precision with no predicted positive,
  recall with no positive, specificity with no negative, F1 with no positive at all) is ``0.0``,
  scikit-learn's ``zero_division=0`` convention, so numbers stay numbers. A ranking metric that
  is undefined — ROC AUC with a single class, PR AUC with no positive — is ``None``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from sklearn.metrics import average_precision_score, roc_auc_score

from .calibrated import CALIBRATIONS

#: Metrics that :func:`bootstrap_ci` gives an interval for.
CI_METRICS = (
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "balanced_accuracy",
    "roc_auc",
    "pr_auc",
    "brier",
    "ece",
)
THRESHOLD_RULES = ("youden", "balanced", "f1", "sensitivity:X", "fixed:X")


def _check(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Turn inputs into (int 0/1 labels, float probabilities), rejecting anything else."""
    y = np.asarray(y_true).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but prob has {p.size}")
    if y.size == 0:
        raise ValueError("no samples: y_true and prob are empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 (NORMAL) and 1 (PNEUMONIA)")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("prob must be finite probabilities in [0, 1]")
    return y.astype(np.int64), p


def _div(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def _confusion(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, int]:
    pred = p >= threshold
    pos = y == 1
    return {
        "tn": int(np.sum(~pred & ~pos)),
        "fp": int(np.sum(pred & ~pos)),
        "fn": int(np.sum(~pred & pos)),
        "tp": int(np.sum(pred & pos)),
    }


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability: bin b holds [b/n, (b+1)/n), the last one also holds 1.0."""
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def calibration_bins(y_true: Any, prob: Any, n_bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: (image count, observed PNEUMONIA fraction, mean probability); NaN in empty bins."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y, p = _check(y_true, prob)
    b = _bin_index(p, n_bins)
    count = np.bincount(b, minlength=n_bins)
    nan = np.full(n_bins, np.nan)
    observed = np.divide(np.bincount(b, weights=y, minlength=n_bins), count, out=nan.copy(), where=count > 0)
    mean_prob = np.divide(np.bincount(b, weights=p, minlength=n_bins), count, out=nan.copy(), where=count > 0)
    return count, observed, mean_prob


def expected_calibration_error(y_true: Any, prob: Any, n_bins: int = 15) -> float:
    """Expected calibration error of the PNEUMONIA probability (Guo et al., 2017).

    Equal-width bins over [0, 1]; ``ECE = sum_b (n_b / N) * |mean(y in b) - mean(prob in b)|``.
    This is the calibration of ``P(PNEUMONIA)`` itself (the binary reliability diagram), not of
    the top-class confidence.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y, p = _check(y_true, prob)
    b = _bin_index(p, n_bins)
    gap = np.bincount(b, weights=y - p, minlength=n_bins)  # per bin: n_b * (mean y - mean p)
    return float(np.abs(gap).sum() / y.size)


def binary_metrics(y_true: Any, prob: Any, threshold: float = 0.5, n_bins: int = 15) -> dict[str, Any]:
    """Threshold, ranking and calibration metrics of a binary classifier.

    Returns:
        dict with ``n, n_pos, n_neg, accuracy, precision, recall, specificity, f1,
        balanced_accuracy, roc_auc, pr_auc`` (average precision), ``brier, ece, threshold`` and
        ``confusion {tn, fp, fn, tp}``. See the module docstring for the zero-division rules.
    """
    y, p = _check(y_true, prob)
    c = _confusion(y, p, threshold)
    tn, fp, fn, tp = c["tn"], c["fp"], c["fn"], c["tp"]
    n_pos, n_neg = tp + fn, tn + fp
    recall = _div(tp, n_pos)
    specificity = _div(tn, n_neg)
    both = n_pos > 0 and n_neg > 0
    return {
        "n": int(y.size),
        "n_pos": int(n_pos),
        "n_neg": int(n_neg),
        "accuracy": _div(tp + tn, y.size),
        "precision": _div(tp, tp + fp),
        "recall": recall,
        "specificity": specificity,
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (recall + specificity) / 2,
        "roc_auc": float(roc_auc_score(y, p)) if both else None,
        "pr_auc": float(average_precision_score(y, p)) if n_pos > 0 else None,
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(y, p, n_bins),
        "threshold": float(threshold),
        "confusion": c,
    }


# ---------------------------------------------------------------------------------------------
# Bootstrap: every resample is a row of integer weights (how often each image was drawn), so all
# resamples are scored at once with array operations instead of a Python loop.


def weighted_metrics(
    y: np.ndarray, p: np.ndarray, threshold: float, weights: np.ndarray, n_bins: int = 15
) -> dict[str, np.ndarray]:
    """Metrics of :data:`CI_METRICS` for each row of ``weights`` (B, N), vectorised.

    Row ``b`` scores the sample in which image ``i`` appears ``weights[b, i]`` times, so a
    bootstrap resample needs no copying. Undefined ranking metrics are NaN; rates with an empty
    denominator are 0.0, as in :func:`binary_metrics`. Ties in ``p`` count one half in the AUC
    and are grouped as one threshold in the average precision, as scikit-learn does.
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    yf = y.astype(np.float64)
    pred = (p >= threshold).astype(np.float64)
    wpos, wneg = w * yf, w * (1.0 - yf)
    n_pos, n_neg = wpos.sum(1), wneg.sum(1)
    total = n_pos + n_neg
    tp, fp = wpos @ pred, wneg @ pred
    fn, tn = n_pos - tp, n_neg - fp

    def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    recall, spec = div(tp, n_pos), div(tn, n_neg)
    out = {
        "accuracy": div(tp + tn, total),
        "precision": div(tp, tp + fp),
        "recall": recall,
        "specificity": spec,
        "f1": div(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (recall + spec) / 2,
        "brier": div(w @ ((p - yf) ** 2), total),
    }
    onehot = np.zeros((p.size, n_bins))
    onehot[np.arange(p.size), _bin_index(p, n_bins)] = 1.0
    out["ece"] = div(np.abs((w * (yf - p)) @ onehot).sum(1), total)

    # Ranking metrics: sort once, pool tied scores into groups, then cumulative sums per row.
    order = np.argsort(p, kind="stable")
    ps = p[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    pos_g = np.add.reduceat(wpos[:, order], starts, axis=1)  # (B, G), ascending score
    neg_g = np.add.reduceat(wneg[:, order], starts, axis=1)
    neg_below = np.cumsum(neg_g, axis=1) - neg_g
    with np.errstate(invalid="ignore", divide="ignore"):
        out["roc_auc"] = (pos_g * (neg_below + 0.5 * neg_g)).sum(1) / (n_pos * n_neg)
        tp_c = np.cumsum(pos_g[:, ::-1], axis=1)  # descending thresholds
        fp_c = np.cumsum(neg_g[:, ::-1], axis=1)
        prec = np.divide(tp_c, tp_c + fp_c, out=np.zeros_like(tp_c), where=(tp_c + fp_c) > 0)
        out["pr_auc"] = (pos_g[:, ::-1] * prec).sum(1) / n_pos
    out["roc_auc"][(n_pos == 0) | (n_neg == 0)] = np.nan
    out["pr_auc"][n_pos == 0] = np.nan
    return out


def resample_weights(n: int, n_boot: int, seed: int = 0, groups: Sequence[Any] | None = None) -> np.ndarray:
    """Bootstrap draw counts (n_boot, n): iid over images, or over ``groups`` (patients) when given.

    With groups, each resample draws as many patients as there are, with replacement, and every
    image of a drawn patient comes along (cluster bootstrap).
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        inverse, n_units = np.arange(n), n
    else:
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} values but there are {n} samples")
        _, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        n_units = int(inverse.max()) + 1
    draws = rng.integers(0, n_units, size=(n_boot, n_units))
    offsets = (np.arange(n_boot) * n_units)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_units).reshape(n_boot, n_units)
    return counts[:, inverse]


def bootstrap_ci(
    y_true: Any,
    prob: Any,
    threshold: float,
    groups: Sequence[Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    n_bins: int = 15,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap confidence intervals, ``{metric: [lo, hi]}`` for :data:`CI_METRICS`.

    Args:
        y_true: 0/1 labels.
        prob: PNEUMONIA probabilities.
        threshold: the fixed operating point (the interval does not include the uncertainty of
            choosing it).
        groups: patient id of each image. When given, patients are resampled (cluster
            bootstrap): one child's films are correlated, and resampling them one by one would
            give intervals that are too narrow. Default: images are resampled independently.
        n_boot: number of resamples. Default: 1000.
        seed: random seed; the same inputs and seed give the same intervals.
        alpha: 1 - confidence level. Default: 0.05 (95 % intervals).

    A metric undefined in a resample (AUC with one class drawn) is left out of that metric's
    percentiles; a metric undefined in every resample gets ``None``.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y, p = _check(y_true, prob)
    w = resample_weights(y.size, n_boot, seed, groups)
    values = weighted_metrics(y, p, threshold, w, n_bins)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    ci: dict[str, list[float] | None] = {}
    for name in CI_METRICS:
        v = values[name][np.isfinite(values[name])]
        ci[name] = [float(x) for x in np.percentile(v, q)] if v.size else None
    return ci


# ---------------------------------------------------------------------------------------------
# Operating point and calibration, chosen on validation data.


def _candidates(p: np.ndarray) -> np.ndarray:
    """Thresholds between neighbouring distinct scores, plus one below all (everything positive)."""
    u = np.unique(p)
    low = u[0] / 2 if u[0] > 0 else u[0]
    return np.r_[low, (u[:-1] + u[1:]) / 2]


def choose_threshold(y_true: Any, prob: Any, rule: str = "youden") -> float:
    """Pick the decision threshold on ``prob`` by ``rule`` (on validation data, never test).

    Rules:
        ``youden``: maximise Youden's J = sensitivity + specificity - 1.
        ``balanced``: maximise balanced accuracy = (sensitivity + specificity) / 2; the same
            threshold as ``youden`` (J = 2 * balanced accuracy - 1), under the name people search for.
        ``f1``: maximise F1 of the PNEUMONIA class.
        ``sensitivity:X``: the highest threshold whose sensitivity (recall) is at least X,
            e.g. ``sensitivity:0.95`` for a screening operating point.
        ``fixed:X``: X itself, e.g. ``fixed:0.5``.

    The returned threshold is the midpoint between two neighbouring distinct scores, never a
    score itself, so tiny numeric changes in the model do not flip a validation image. Ties
    (several thresholds with the same best value) go to the lowest threshold, i.e. the most
    sensitive one: missing pneumonia costs more than a second look at a normal film.

    Raises:
        ValueError: unknown rule, bad X, or (for data-driven rules) a single class in ``y_true``.
    """
    name, _, arg = rule.partition(":")
    name = name.strip().lower()
    valid = f"valid rules: {', '.join(THRESHOLD_RULES)}"
    takes_value = name in ("sensitivity", "fixed")
    if name not in ("youden", "balanced", "f1", "sensitivity", "fixed") or bool(arg) != takes_value:
        raise ValueError(f"unknown threshold rule '{rule}'; {valid}")
    if arg:
        try:
            x = float(arg)
        except ValueError:
            raise ValueError(f"threshold rule '{rule}': '{arg}' is not a number; {valid}") from None
        if not 0.0 <= x <= 1.0 or (name == "sensitivity" and x == 0.0):
            allowed = "(0, 1]" if name == "sensitivity" else "[0, 1]"
            raise ValueError(f"threshold rule '{rule}': value must be in {allowed}")
        if name == "fixed":
            return x
    y, p = _check(y_true, prob)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"threshold rule '{rule}' needs both classes in y_true (got {n_pos} positive, {n_neg} negative)"
        )
    cand = _candidates(p)  # ascending
    # Counts at every candidate: predicted positive = score >= t.
    p_pos, p_neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    tp = n_pos - np.searchsorted(p_pos, cand, side="left")
    fp = n_neg - np.searchsorted(p_neg, cand, side="left")
    if name in ("youden", "balanced"):
        score = tp * n_neg - fp * n_pos  # J * n_pos * n_neg (up to a constant): exact integers
        best = np.flatnonzero(score == score.max())
    elif name == "f1":
        f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
        best = np.flatnonzero(np.isclose(f1, f1.max(), rtol=0, atol=1e-12))
    else:  # sensitivity:x — recall falls as the threshold rises; take the highest that still meets x
        need = math.ceil(x * n_pos - 1e-9)
        return float(cand[np.flatnonzero(tp >= need)[-1]])
    return float(cand[best[0]])


def _nll(log_t: float, z: np.ndarray, y: np.ndarray) -> float:
    s = z / math.exp(log_t)
    return float(np.mean(np.logaddexp(0.0, s) - y * s))  # binary cross-entropy on logits, stable


def _check_logits(logits: Any, y_true: Any, who: str) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(y_true).ravel()
    if z.shape != y.shape or z.size == 0:
        raise ValueError(f"logits ({z.size}) and y_true ({y.size}) must be non-empty and the same length")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if y.min() == y.max():
        raise ValueError(f"{who} needs both classes in y_true")
    return z, y.astype(np.float64)


def fit_temperature(logits: Any, y_true: Any, bounds: tuple[float, float] = (1e-2, 1e2)) -> float:
    """Temperature scaling (Guo et al., 2017): the T > 0 minimising the NLL of ``sigmoid(logits / T)``.

    One parameter, fitted on validation logits, so the ranking (AUC) and the decision at a
    probability threshold mapped accordingly are unchanged while probabilities become honest.
    Searched over ``log T`` within ``bounds`` (bounded Brent); T > 1 softens an overconfident model.

    Raises:
        ValueError: non-finite logits, labels other than 0/1, or a single class.
    """
    z, y = _check_logits(logits, y_true, "fit_temperature")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(_nll, bounds=(lo, hi), args=(z, y), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))


def _platt_nll(params: np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    a, b = params
    s = a * z + b
    q = 0.5 * (1.0 + np.tanh(0.5 * s))  # sigmoid(s), stable
    return float(np.mean(np.logaddexp(0.0, s) - y * s)), np.array([np.mean((q - y) * z), np.mean(q - y)])


def fit_platt(logits: Any, y_true: Any, bounds: tuple[float, float] = (1e-2, 1e2)) -> tuple[float, float]:
    """Platt scaling (Platt, 1999): the temperature T and bias b minimising the NLL of
    ``sigmoid(logits / T + b)`` — a logistic regression on the logit.

    Temperature scaling's one parameter can sharpen or soften the probabilities but not move
    them: a model trained with class weights (the ``default`` recipes) sits off-centre, its
    probabilities low for every film, and only the bias moves it back. Both are monotone in the
    logit, so the ranking (AUC) and the decisions at a threshold mapped accordingly are unchanged.
    ``1 / T`` is kept within ``1 / bounds``.

    Returns:
        ``(temperature, bias)``.

    Raises:
        ValueError: non-finite logits, labels other than 0/1, or a single class.
    """
    z, y = _check_logits(logits, y_true, "fit_platt")
    start = np.array([1.0 / fit_temperature(z, y, bounds), 0.0])
    res = minimize(_platt_nll, start, args=(z, y), jac=True, method="L-BFGS-B",
                   bounds=[(1.0 / bounds[1], 1.0 / bounds[0]), (None, None)], options={"ftol": 1e-12, "gtol": 1e-9})
    a, b = (float(v) for v in res.x)
    return 1.0 / a, b


def fit_calibration(logits: Any, y_true: Any, method: str) -> tuple[float, float]:
    """``(temperature, bias)`` for ``sigmoid(logits / temperature + bias)`` by ``method``:
    ``none`` (1, 0), ``temperature`` (:func:`fit_temperature`, bias 0) or ``platt`` (:func:`fit_platt`)."""
    if method not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {method!r}")
    if method == "platt":
        return fit_platt(logits, y_true)
    return (fit_temperature(logits, y_true) if method == "temperature" else 1.0), 0.0


def subtype_recall(y_true: Any, prob: Any, subtypes: Sequence[str], threshold: float) -> dict[str, dict[str, Any]]:
    """Per subtype (``bacteria``, ``virus``, ``normal`` ...): how many images, and how many were caught.

    Returns ``{subtype: {"n": int, "recall": float}}`` for subtypes of PNEUMONIA images and
    ``{"n": int, "specificity": float}`` for subtypes of NORMAL images (a subtype holding both
    gets both keys, each over its own images). Sorted by subtype name.
    """
    y, p = _check(y_true, prob)
    s = np.asarray(subtypes, dtype=str).ravel()
    if s.size != y.size:
        raise ValueError(f"subtypes has {s.size} values but there are {y.size} samples")
    pred = p >= threshold
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(s.tolist())):
        m = s == name
        entry: dict[str, Any] = {"n": int(m.sum())}
        pos, neg = m & (y == 1), m & (y == 0)
        if pos.any():
            entry["recall"] = float(pred[pos].mean())
        if neg.any():
            entry["specificity"] = float((~pred[neg]).mean())
        out[name] = entry
    return out
