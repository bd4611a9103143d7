"""Does a model's answer follow a film's lungs, or what surrounds them? The context-swap probe of
``pneumolens.audit.context`` (see there) on any checkpoint, with where Grad-CAM's evidence lies.

    python scripts/context_swap_probe.py --checkpoint runs/cv/NAME/fold-0/model.pt --pairs 100 --gradcam

Prints a markdown table: per kind of composite (the lungs of a NORMAL film in a PNEUMONIA film,
and the other way round), how many composites are informative (the model labels their two source
films differently), the share whose label follows the lungs' film, the mean probabilities, and with
``--gradcam`` the median share of Grad-CAM's positive evidence inside the kept region against that
region's share of the film. ``pneumolens audit`` reports the same probe without Grad-CAM.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from markdown_output import emit  # scripts/ is on sys.path when this file runs as a script

from pneumolens.audit.context import CONTEXT_PAIRS
from pneumolens.cli import OneLineErrorParser
from pneumolens.commands._common import integer_at_least
from pneumolens.errors import PneumoLensError


def table(result: dict[str, Any], gradcam: bool) -> list[str]:
    """Markdown rows of :func:`pneumolens.audit.context.context_swap`'s result, a row per kind of composite."""
    from pneumolens.audit.context import KIND_TITLES

    lines = [("| composite | composites | informative¹ | label follows the lungs | mean p: lungs' film | "
              "surroundings' film | composite |") + (" Grad-CAM inside kept region² | kept region |" if gradcam else ""),
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if gradcam else "")]
    for key, r in result["kinds"].items():
        followed = f"{100 * r['follow_rate']:.0f} % ({r['followed']})" if r["informative"] else "n/a"
        cells = [KIND_TITLES[key], str(result["pairs"]), str(r["informative"]), followed,
                 f"{r['mean_p_lungs_film']:.3f}", f"{r['mean_p_surroundings_film']:.3f}", f"{r['mean_p_composite']:.3f}"]
        if gradcam:
            g = r["gradcam_inside_median"]
            cells += [f"{100 * g:.0f} % ({r['gradcam_films']} films)" if g is not None else "n/a",
                      f"{100 * r['kept_region_share']:.0f} %"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def probe(args: argparse.Namespace) -> str:
    from pneumolens.audit.context import context_swap, pair_indices
    from pneumolens.audit.lungs import lung_mask
    from pneumolens.checkpoint import SHIPPED, load_checkpoint
    from pneumolens.commands._common import data_root
    from pneumolens.evaluate import split_records
    from pneumolens.explain import explain
    from pneumolens.inference import Predictor, to_input
    from pneumolens.io import load_image

    ckpt = load_checkpoint(args.checkpoint or SHIPPED)
    records = split_records(data_root(args.data), args.split, ckpt.provenance)
    labels = np.array([r.label for r in records])
    if not ((labels == 0).any() and (labels == 1).any()):
        raise PneumoLensError(f"--split {args.split}: needs films of both classes")
    used = sorted({i for pair in pair_indices(labels, args.pairs, args.seed) for i in pair})  # the films read
    films = {i: load_image(records[i].path, ckpt.input_size) for i in used}
    masks = {i: lung_mask(films[i]).mask for i in used}
    predictor = Predictor(ckpt)

    def gradcam(mixed: np.ndarray) -> np.ndarray:
        inputs = to_input(mixed)
        return np.stack([explain(ckpt.model, inputs[i : i + 1], "gradcam").maps[0] for i in range(len(mixed))])

    result = context_swap(films, masks, labels, predictor.probabilities, predictor.threshold, n_pairs=args.pairs,
                          seed=args.seed, gradcam=gradcam if args.gradcam else None)
    which = "the shipped model" if args.checkpoint is None else f"`{args.checkpoint}`"
    command = " ".join(["python scripts/context_swap_probe.py", *sys.argv[1:]])
    rate = result["follow_rate"]
    lines = [(f"{result['pairs']} NORMAL/PNEUMONIA pairs of `{args.split}`, {which}, threshold "
              f"{predictor.threshold:.3f} (`{command}`)."), "", *table(result, args.gradcam), "",
             (f"Both kinds: the label follows the lungs on "
              f"{'n/a' if rate is None else f'{100 * rate:.1f} %'} of {result['informative']} informative composites."),
             "",
             "¹ the model labels the two source films differently. "
             + ("² median over composites with any positive Grad-CAM evidence; the kept region is where the "
                "lungs' film weighs more than half." if args.gradcam else ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--data", default=None, help="dataset root (default: as the CLI finds it)")
    parser.add_argument("--split", default="validation",
                        help="validation (the checkpoint's own, or a fold model's held-out fold), val or test "
                             "(default: validation)")
    parser.add_argument("--pairs", type=integer_at_least(1), default=CONTEXT_PAIRS,
                        help=f"NORMAL/PNEUMONIA pairs (default: {CONTEXT_PAIRS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pairing (default: 0)")
    parser.add_argument("--gradcam", action="store_true", help="also measure where Grad-CAM's evidence lies")
    parser.add_argument("--threads", type=integer_at_least(1), default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return emit(lambda: probe(args), args.out)


if __name__ == "__main__":
    sys.exit(main())
