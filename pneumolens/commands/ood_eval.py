"""``pneumolens ood-eval``: how well the out-of-distribution guard tells chest films from other images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import DATA_HELP, data_root, integer_at_least

DESCRIPTION = """\
Measure a checkpoint's out-of-distribution guard: the OOD score of the checkpoint's validation
films (in distribution) against sets of images that are not paediatric chest films, all built
here without downloads: constant images, noise, gradients, scikit-image's sample photographs,
CT / MR / ultrasound slices from pydicom's test files, and corrupted validation films (half-black,
rotated 90 degrees, inverted grey scale, JPEG quality 5, heavy blur).

Writes under --out: metrics.json (AUROC and flagged share per set), report.md and ood.png.
A checkpoint without a guard gets one fitted on its training films first (about a minute);
--fit-into FILE also saves the checkpoint with that guard, so every prediction carries it.
Takes one to three minutes on two CPU cores."""


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ood-eval",
        help="measure the out-of-distribution guard against images that are not chest films",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", metavar="C", help="model.pt or its folder (default: the shipped model)")
    p.add_argument("--data", metavar="DIR", help=DATA_HELP)
    p.add_argument("--out", metavar="DIR", type=Path, required=True, help="folder for metrics.json, report.md, ood.png")
    p.add_argument("--n", metavar="N", type=integer_at_least(1), default=100,
                   help="validation films corrupted for the corrupted-film sets (default: 100)")
    p.add_argument("--refit", action="store_true", help="fit a new guard even if the checkpoint has one")
    p.add_argument("--fit-into", metavar="FILE", type=Path,
                   help="save the checkpoint, with the guard measured here, to FILE (may be the checkpoint itself)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..errors import ConfigError
    from ..ood_eval import fit_guard, run_ood_eval

    if args.fit_into is not None and args.fit_into.is_dir():
        raise ConfigError(f"--fit-into {args.fit_into}: is a folder; name the model file to write")
    ckpt = load_checkpoint(args.checkpoint)
    root = data_root(args.data)
    guard = None
    if args.refit or ckpt.ood is None:
        print("fitting the out-of-distribution guard on the checkpoint's training films ...")
        guard = fit_guard(ckpt, root, progress=not args.no_progress)
    result = run_ood_eval(ckpt, root, args.out, n_films=args.n, guard=guard, progress=not args.no_progress)
    ind = result["in_distribution"]
    print(f"threshold {result['threshold']:.3f}; validation films flagged {ind['flagged']:.1%} of {ind['n']}")
    for name, m in result["sets"].items():
        if m["n"]:
            print(f"  {name:12s} n={m['n']:4d}  AUROC {m['auroc']:.4f}  flagged {m['flagged']:.1%}")
    if args.fit_into is not None:
        if guard is not None:
            ckpt.ood = guard
        print(f"checkpoint with its guard -> {save_checkpoint(ckpt, args.fit_into)}")
    print(f"report -> {args.out / 'report.md'}")
    return 0
