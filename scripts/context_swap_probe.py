"""Does the model's answer follow a film's lungs, or what surrounds them?

Pairs of films of opposite truth (one NORMAL, one PNEUMONIA) are crossed: the approximate lung
fields of one film (``pneumolens.audit.lungs.lung_mask``, grown and blended as the ``swap``
augmentation keeps them, ``pneumolens.augment.lung_keep_weights``) are set into the other, so
the composite has the lungs of film A and everything else of film B — markers, text, borders,
the body's edges, the heart and the diaphragm. A model that reads the lungs gives the composite
A's answer; one that reads the surroundings gives B's.

    python scripts/context_swap_probe.py --pairs 100 --out docs/audit/context-swap.md

Counted over composites whose two source films the model labels differently (otherwise the
composite cannot tell lungs from surroundings): the share whose label follows the lungs' film.
Also the mean probability of each kind of composite, and where Grad-CAM puts its positive
evidence on them: the share inside the kept region against that region's share of the film.
The lung fields are an approximation (docs/audit/README.md measures its error); the seam is a
blend, and no composite is a real film, so this probes what the model relies on, not how it
performs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pneumolens.errors import PneumoLensError


def composite(lungs_film: np.ndarray, context_film: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """uint8 film: ``keep * lungs_film + (1 - keep) * context_film``, rounded (arrays (S, S); keep in [0, 1])."""
    mixed = keep * lungs_film.astype(np.float64) + (1.0 - keep) * context_film.astype(np.float64)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def follows_lungs(p_lungs: np.ndarray, p_context: np.ndarray, p_mixed: np.ndarray, threshold: float) -> tuple[int, int]:
    """``(informative, followed)``: composites whose two source films get different labels, and of
    those, how many get the label of the film whose lungs they kept (``p >= threshold`` = PNEUMONIA)."""
    lab_l, lab_c, lab_m = (np.asarray(p) >= threshold for p in (p_lungs, p_context, p_mixed))
    informative = lab_l != lab_c
    return int(informative.sum()), int((informative & (lab_m == lab_l)).sum())


def pair_indices(labels: np.ndarray, n: int, seed: int) -> list[tuple[int, int]]:
    """Up to ``n`` (NORMAL index, PNEUMONIA index) pairs, each film used at most once, drawn at random."""
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(labels == 0))
    pneumonia = rng.permutation(np.flatnonzero(labels == 1))
    k = min(n, len(normal), len(pneumonia))
    return [(int(normal[i]), int(pneumonia[i])) for i in range(k)]


def inside_share(maps: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Share of each map's positive values inside ``region`` (bool, same shape); NaN for a map with none."""
    pos = np.clip(np.asarray(maps, dtype=np.float64), 0.0, None)
    total = pos.sum(axis=(1, 2))
    inside = (pos * region).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def cross(
    films: dict[int, np.ndarray], keep: dict[int, np.ndarray], pairs: list[tuple[int, int]],
    predict: Callable[[np.ndarray], np.ndarray], threshold: float,
    gradcam: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Both kinds of composite for each (NORMAL, PNEUMONIA) pair, scored: one row per kind.

    ``films``: uint8 (S, S) by index; ``keep``: the lungs' weights (S, S) in [0, 1] by index;
    ``predict``: uint8 (N, S, S) -> P(PNEUMONIA) (N,); ``gradcam``: the same films -> maps (N, S, S).
    """
    used = sorted({i for pair in pairs for i in pair})
    p = dict(zip(used, predict(np.stack([films[i] for i in used]))))
    rows = []
    for name, order in (("NORMAL lungs, PNEUMONIA surroundings", (0, 1)),
                        ("PNEUMONIA lungs, NORMAL surroundings", (1, 0))):
        src = [(pair[order[0]], pair[order[1]]) for pair in pairs]
        mixed = np.stack([composite(films[a], films[b], keep[a]) for a, b in src])
        p_mixed = np.asarray(predict(mixed), dtype=np.float64)
        p_l, p_c = np.array([p[a] for a, _ in src]), np.array([p[b] for _, b in src])
        n_inf, n_follow = follows_lungs(p_l, p_c, p_mixed, threshold)
        row = {"name": name, "n": len(src), "informative": n_inf, "followed": n_follow,
               "p_lungs": float(p_l.mean()), "p_context": float(p_c.mean()), "p_mixed": float(p_mixed.mean())}
        if gradcam is not None:
            region = np.stack([keep[a] > 0.5 for a, _ in src])
            share = inside_share(gradcam(mixed), region)
            row["gradcam_inside"] = float(np.nanmedian(share)) if np.isfinite(share).any() else None
            row["gradcam_films"] = int(np.isfinite(share).sum())
            row["region"] = float(region.mean())
        rows.append(row)
    return rows


def probe(args: argparse.Namespace) -> str:
    import torch

    from pneumolens.audit.lungs import lung_mask
    from pneumolens.augment import lung_keep_weights
    from pneumolens.checkpoint import SHIPPED, load_checkpoint
    from pneumolens.commands._common import data_root
    from pneumolens.evaluate import split_records
    from pneumolens.explain import explain
    from pneumolens.inference import Predictor, to_input
    from pneumolens.io import load_image

    if args.pairs < 1:
        raise PneumoLensError(f"--pairs {args.pairs}: must be at least 1")
    ckpt = load_checkpoint(args.checkpoint or SHIPPED)
    records = split_records(data_root(args.data), args.split, ckpt.provenance)
    labels = np.array([r.label for r in records])
    pairs = pair_indices(labels, args.pairs, args.seed)
    if not pairs:
        raise PneumoLensError(f"--split {args.split}: needs films of both classes")
    used = sorted({i for pair in pairs for i in pair})
    films = {i: load_image(records[i].path, ckpt.input_size) for i in used}
    masks = np.stack([lung_mask(films[i]).mask for i in used]).astype(np.float32)
    keeps = lung_keep_weights(torch.from_numpy(masks)[:, None])[:, 0].numpy().astype(np.float64)
    keep = dict(zip(used, keeps))
    predictor = Predictor(ckpt)

    def gradcam(mixed: np.ndarray) -> np.ndarray:
        inputs = to_input(mixed)
        return np.stack([explain(ckpt.model, inputs[i : i + 1], "gradcam").maps[0] for i in range(len(mixed))])

    rows = cross(films, keep, pairs, predictor.probabilities, predictor.threshold, gradcam if args.gradcam else None)
    which = "the shipped model" if args.checkpoint is None else f"`{args.checkpoint}`"
    command = " ".join(["python scripts/context_swap_probe.py", *sys.argv[1:]])
    lines = [(f"{len(pairs)} NORMAL/PNEUMONIA pairs of `{args.split}`, {which}, threshold "
              f"{predictor.threshold:.3f} (`{command}`)."), "",
              ("| composite | composites | informative¹ | label follows the lungs | mean p: lungs' film | "
               "surroundings' film | composite |") + (" Grad-CAM inside kept region² | kept region |" if args.gradcam else ""),
              "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.gradcam else "")]
    for r in rows:
        followed = f"{100 * r['followed'] / r['informative']:.0f} % ({r['followed']})" if r["informative"] else "n/a"
        cells = [r["name"], str(r["n"]), str(r["informative"]), followed,
                 f"{r['p_lungs']:.3f}", f"{r['p_context']:.3f}", f"{r['p_mixed']:.3f}"]
        if args.gradcam:
            g = r["gradcam_inside"]
            cells += [f"{100 * g:.0f} % ({r['gradcam_films']} films)" if g is not None else "n/a",
                      f"{100 * r['region']:.0f} %"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "¹ the model labels the two source films differently. "
              + ("² median over composites with any positive Grad-CAM evidence; the kept region is where the "
                 "lungs' film weighs more than half." if args.gradcam else ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--data", default=None, help="dataset root (default: as the CLI finds it)")
    parser.add_argument("--split", default="validation",
                        help="validation (the checkpoint's own, or a fold model's held-out fold), val or test "
                             "(default: validation)")
    parser.add_argument("--pairs", type=int, default=100, help="NORMAL/PNEUMONIA pairs (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pairing (default: 0)")
    parser.add_argument("--gradcam", action="store_true", help="also measure where Grad-CAM's evidence lies")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        text = probe(args)
    except PneumoLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
