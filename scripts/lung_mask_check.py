"""Draw the audit's approximate lung masks over films, to check them by eye.

Picks ``--n`` films of a split at random (seeded), computes :func:`pneumolens.audit.lung_mask` on
each model input, and writes a grid PNG (outside the repository by default: it shows dataset
films). The counts in ``docs/audit/README.md`` come from looking at such grids:

    python scripts/lung_mask_check.py --split validation --n 24 --seed 3 --out runs/lung-check-3.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumolens.audit.figures import plot_mask_grid
from pneumolens.audit.lungs import lung_mask
from pneumolens.audit.run import pick
from pneumolens.cache import load_images
from pneumolens.checkpoint import load_checkpoint
from pneumolens.commands._common import data_root
from pneumolens.evaluate import split_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="dataset root (default: as the CLI)")
    parser.add_argument("--split", default="validation", choices=("validation", "val", "test"))
    parser.add_argument("--n", type=int, default=24, help="films to draw (default: 24)")
    parser.add_argument("--seed", type=int, default=3, help="which films (default: 3)")
    parser.add_argument("--checkpoint", default=None, help="its input size and validation split (default: shipped)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    records = split_records(data_root(args.data), args.split, ckpt.provenance)
    idx = pick([r.label for r in records], args.n, args.seed)
    loaded = load_images([records[i].path for i in idx], ckpt.input_size, progress=False)
    chosen = [records[idx[k]] for k in loaded.kept]
    masks = [lung_mask(x) for x in loaded.images]
    titles = [f"{k}: {r.path.name[:22]}\n{'PNEUMONIA' if r.label else 'NORMAL'}, {m.status}"
              for k, (r, m) in enumerate(zip(chosen, masks))]
    plot_mask_grid(list(loaded.images), [m.mask for m in masks], titles, args.out)
    print(f"wrote {args.out} ({len(chosen)} films)")


if __name__ == "__main__":
    main()
