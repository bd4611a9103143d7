"""Where on the film an explanation method puts its positive evidence, band by band.

The audit's share outside the lung fields is one number; this script shows where the evidence
lies instead: the share of each method's positive attribution in each of eight horizontal bands
(top to bottom) and eight vertical bands (left to right), averaged over films, beside the share
of the lung fields in the same bands. With ``--flip`` it also explains the films turned upside
down and reports the bands in the input's own coordinates: evidence that follows the anatomy
moves to the other end of the film; evidence tied to the network's reading order stays put.

    python scripts/attribution_profile.py --split val --methods gradcam,ig --flip

Each film's positive attribution is normalised to sum to one before averaging, so every film
counts alike. Films whose map has no positive value are left out (counted in the output).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from markdown_output import emit  # scripts/ is on sys.path when this file runs as a script

from pneumolens.errors import PneumoLensError

BANDS = 8


def band_shares(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean share of positive attribution per row band and per column band over maps (N, S, S).

    Returns ``(rows, cols, n_used)``: two arrays of :data:`BANDS` shares (each sums to 1 when any map
    has positive values) and how many maps had any positive value.
    """
    pos = np.clip(np.asarray(maps, dtype=np.float64), 0.0, None)
    total = pos.sum(axis=(1, 2))
    used = total > 0
    if not used.any():
        return np.zeros(BANDS), np.zeros(BANDS), 0
    share = pos[used] / total[used, None, None]
    rows = np.array([b.sum(axis=(1, 2)).mean() for b in np.array_split(share, BANDS, axis=1)])
    cols = np.array([b.sum(axis=(1, 2)).mean() for b in np.array_split(share, BANDS, axis=2)])
    return rows, cols, int(used.sum())


def _row(label: str, values: np.ndarray) -> str:
    return f"| {label} | " + " | ".join(f"{100 * v:.0f} %" for v in values) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--data", default=None, help="dataset root (default: as the CLI finds it)")
    parser.add_argument("--split", default="val", help="validation (the checkpoint's own), val or test (default: val)")
    parser.add_argument("--n", type=int, default=40, help="films, evenly spaced over the split (default: 40)")
    parser.add_argument("--methods", default="gradcam,ig", help="explanation methods (default: gradcam,ig)")
    parser.add_argument("--flip", action="store_true", help="also explain the films upside down")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    return emit(lambda: profile(args), args.out)


def profile(args: argparse.Namespace) -> str:
    from pneumolens.audit.lungs import lung_mask
    from pneumolens.checkpoint import SHIPPED, load_checkpoint
    from pneumolens.commands._common import data_root
    from pneumolens.evaluate import split_records
    from pneumolens.explain import explain
    from pneumolens.inference import to_input
    from pneumolens.io import load_image

    ckpt = load_checkpoint(args.checkpoint or SHIPPED)
    records = split_records(data_root(args.data), args.split, ckpt.provenance)
    if not records:
        raise PneumoLensError(f"--split {args.split}: no films")
    picked = [records[i] for i in np.linspace(0, len(records) - 1, min(args.n, len(records))).round().astype(int)]
    films = np.stack([load_image(r.path, ckpt.input_size) for r in picked])
    lungs = np.stack([lung_mask(f).mask for f in films]).astype(np.float64)
    which = "the shipped model" if args.checkpoint is None else f"`{args.checkpoint}`"
    command = " ".join(["python scripts/attribution_profile.py", *sys.argv[1:]])
    lines = [f"{len(films)} films of `{args.split}`, {which}; share of positive attribution per band, mean over "
             f"films (`{command}`).", ""]
    for axis, name in ((0, "rows, top to bottom"), (1, "columns, left to right")):
        lines += [f"| {name} | " + " | ".join(str(b + 1) for b in range(BANDS)) + " |",
                  "|---|" + "---:|" * BANDS, _row("lung fields", band_shares(lungs)[axis])]
        for method in args.methods.split(","):
            for flipped in (False, True) if args.flip else (False,):
                x = films[:, ::-1].copy() if flipped else films
                batch = to_input(x)
                maps = np.stack([explain(ckpt.model, batch[i : i + 1], method).maps[0] for i in range(len(x))])
                shares = band_shares(maps)
                label = f"{method}{', upside down' if flipped else ''} ({shares[2]} films)"
                lines.append(_row(label, shares[axis]))
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
