"""Context swap: does the model's answer follow a film's lungs, or what surrounds them?

Pairs of films of opposite truth (one NORMAL, one PNEUMONIA) are crossed: the approximate lung
fields of one film (:func:`pneumolens.audit.lungs.lung_mask`, grown and blended as the ``swap``
augmentation keeps them, :func:`pneumolens.augment.lung_keep_weights`) are set into the other, so
a composite has the lungs of film A and everything else of film B — markers, text, borders, the
body's edges, the heart and the diaphragm. A model that reads the lungs gives the composite A's
answer; one that reads the surroundings gives B's: 100 % of composites follow the lungs, 0 % for
a model that reads only the surroundings, 50 % a coin.

Counted over composites whose two source films the model labels differently (otherwise the
composite cannot tell lungs from surroundings). The lung fields are an approximation and the seam
a blend: no composite is a real film, so this measures what the model relies on, not how it
performs. A model trained with ``augment.swap`` has seen such composites, which favours it here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .lungs import outside_share

#: Pairs crossed by default (each gives two composites).
CONTEXT_PAIRS = 100
#: Kinds of composite: (name, which film of a (NORMAL, PNEUMONIA) pair gives the lungs, which the rest).
KINDS = (("normal_lungs", 0, 1), ("pneumonia_lungs", 1, 0))
#: How reports name each kind.
KIND_TITLES = {"normal_lungs": "NORMAL lungs, PNEUMONIA surroundings",
               "pneumonia_lungs": "PNEUMONIA lungs, NORMAL surroundings"}


def composite(lungs_film: np.ndarray, context_film: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """uint8 film: ``keep * lungs_film + (1 - keep) * context_film``, rounded (arrays (S, S); keep in [0, 1])."""
    mixed = keep * lungs_film.astype(np.float64) + (1.0 - keep) * context_film.astype(np.float64)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def follows_lungs(p_lungs: Any, p_context: Any, p_mixed: Any, threshold: float) -> tuple[int, int]:
    """``(informative, followed)``: composites whose two source films get different labels, and of
    those, how many get the label of the film whose lungs they kept (``p >= threshold`` = PNEUMONIA).
    A composite with a probability that is not finite is not informative."""
    ps = [np.asarray(p, dtype=np.float64) for p in (p_lungs, p_context, p_mixed)]
    lab_l, lab_c, lab_m = (p >= threshold for p in ps)
    informative = (lab_l != lab_c) & np.isfinite(ps[0]) & np.isfinite(ps[1]) & np.isfinite(ps[2])
    return int(informative.sum()), int((informative & (lab_m == lab_l)).sum())


def told_apart(per_pair: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """The rows of a result's ``per_pair`` whose two films get different labels and whose four
    probabilities are all numbers: the pairs that can tell lungs from surroundings both ways."""
    keys = ("p_normal", "p_pneumonia", "p_normal_lungs", "p_pneumonia_lungs")
    return [r for r in per_pair if all(np.isfinite(r[k]) for k in keys)
            and (r["p_normal"] >= threshold) != (r["p_pneumonia"] >= threshold)]


def pair_indices(labels: Any, n: int, seed: int) -> list[tuple[int, int]]:
    """Up to ``n`` (NORMAL index, PNEUMONIA index) pairs, each film used at most once, drawn at random."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(labels == 0))
    pneumonia = rng.permutation(np.flatnonzero(labels == 1))
    k = min(n, len(normal), len(pneumonia))
    return [(int(normal[i]), int(pneumonia[i])) for i in range(k)]


def inside_share(maps: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Share of each map's positive values inside ``region`` (bool, one per map or one for all); NaN
    for a map with none. The complement of :func:`pneumolens.audit.lungs.outside_share`."""
    maps = np.asarray(maps, dtype=np.float64)
    regions = np.broadcast_to(np.asarray(region, dtype=bool), maps.shape)
    shares = [outside_share(m, r) for m, r in zip(maps, regions)]
    return np.array([np.nan if s is None else 1.0 - s for s in shares])


def keep_weights(masks: np.ndarray) -> np.ndarray:
    """What a composite keeps of its lungs' film: float64 (N, S, S) in [0, 1] from lung masks (N, S, S)."""
    import torch

    from ..augment import lung_keep_weights

    t = torch.from_numpy(np.asarray(masks, dtype=np.float32))[:, None]
    return lung_keep_weights(t)[:, 0].numpy().astype(np.float64)


def context_swap(
    films: Any, masks: Any, labels: Any, predict: Callable[[np.ndarray], np.ndarray], threshold: float,
    n_pairs: int = CONTEXT_PAIRS, seed: int = 0, gradcam: Callable[[np.ndarray], np.ndarray] | None = None,
    p: Any = None,
) -> dict[str, Any]:
    """Cross up to ``n_pairs`` NORMAL/PNEUMONIA pairs both ways and score the composites.

    Only the paired films are read, so ``films`` and ``masks`` may be any mapping from a film's
    index to its array (a dict of the films :func:`pair_indices` picks, or arrays of all).

    Args:
        films: film index -> uint8 (S, S) at the model's input size.
        masks: film index -> bool lung mask (S, S) (:func:`pneumolens.audit.lungs.lung_mask`).
        labels: 0 / 1 truth per film (all films: the pairs are drawn from them).
        predict: uint8 (N, S, S) -> P(PNEUMONIA) (N,).
        threshold: the decision threshold.
        gradcam: optional, the same films -> attribution maps (N, S, S): also report the median share
            of positive evidence inside the kept region (where the lungs' film weighs more than half).
        p: optional P(PNEUMONIA) of every film, already computed (else the paired films are predicted).

    Returns:
        ``pairs`` (fewer than ``requested`` = ``n_pairs`` when a class has fewer films), ``seed``,
        ``informative``, ``followed``, ``follow_rate`` (None without an informative composite) over
        both kinds; ``kinds``: per kind (``normal_lungs``,
        ``pneumonia_lungs``) the same counts and the mean P(PNEUMONIA) of the lungs' films, the
        surroundings' films and the composites; and ``per_pair``: per pair the two films' indices
        (``normal``, ``pneumonia``) and P(PNEUMONIA) of both films and both composites (``p_normal``,
        ``p_pneumonia``, ``p_normal_lungs``, ``p_pneumonia_lungs``), for figures and re-counting.
    """
    pairs = pair_indices(labels, n_pairs, seed)
    out: dict[str, Any] = {"pairs": len(pairs), "requested": n_pairs, "seed": seed, "kinds": {}}
    if not pairs:
        return {**out, "informative": 0, "followed": 0, "follow_rate": None, "per_pair": []}
    used = sorted({i for pair in pairs for i in pair})
    keep = dict(zip(used, keep_weights(np.stack([masks[i] for i in used]))))
    if p is None:
        prob = dict(zip(used, np.asarray(predict(np.stack([films[i] for i in used])), dtype=np.float64)))
    else:
        prob = {i: float(p[i]) for i in used}
    per_pair = [{"normal": i, "pneumonia": j, "p_normal": float(prob[i]),
                 "p_pneumonia": float(prob[j])} for i, j in pairs]
    for name, lungs_of, rest_of in KINDS:
        src = [(pair[lungs_of], pair[rest_of]) for pair in pairs]
        mixed = np.stack([composite(films[a], films[b], keep[a]) for a, b in src])
        p_mixed = np.asarray(predict(mixed), dtype=np.float64)
        for row, value in zip(per_pair, p_mixed):
            row[f"p_{name}"] = float(value)
        p_l, p_c = np.array([prob[a] for a, _ in src]), np.array([prob[b] for _, b in src])
        n_inf, n_follow = follows_lungs(p_l, p_c, p_mixed, threshold)
        kind = {"informative": n_inf, "followed": n_follow, "follow_rate": n_follow / n_inf if n_inf else None,
                "mean_p_lungs_film": float(p_l.mean()), "mean_p_surroundings_film": float(p_c.mean()),
                "mean_p_composite": float(p_mixed.mean())}
        if gradcam is not None:
            region = np.stack([keep[a] > 0.5 for a, _ in src])
            share = inside_share(gradcam(mixed), region)
            finite = np.isfinite(share)
            kind["gradcam_inside_median"] = float(np.median(share[finite])) if finite.any() else None
            kind["gradcam_films"] = int(finite.sum())
            kind["kept_region_share"] = float(region.mean())
        out["kinds"][name] = kind
    informative = sum(k["informative"] for k in out["kinds"].values())
    followed = sum(k["followed"] for k in out["kinds"].values())
    return {**out, "informative": informative, "followed": followed,
            "follow_rate": followed / informative if informative else None, "per_pair": per_pair}
