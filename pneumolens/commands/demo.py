"""``pneumolens demo``: the whole pipeline in a few minutes (what ``make demo`` runs)."""

from __future__ import annotations

import argparse

from ._common import DATA_HELP, data_root
from ._help import DefaultsHelpFormatter


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="evaluate the shipped model on validation and explain a few films (make demo)",
        description=(
            "Evaluate the model (the shipped one, or --checkpoint) on the patient-level validation split of train "
            "and on the official 16-image val folder (and test, when present), with metrics, bootstrap CIs and "
            "figures; then explain a few official val films with Grad-CAM, SHAP and LIME. Writes OUT/summary.md. "
            "Without a shipped model it first trains a short demo model."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--checkpoint", help="model file (default: the shipped model)")
    p.add_argument("--n-explain", type=int, default=2, help="official val films to explain (half per class)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    s = run_demo(data_root(args.data), args.out, args.checkpoint, args.n_explain, progress=not args.no_progress)
    for split, m in s["splits"].items():
        auc = f"{m['roc_auc']:.3f}" if m.get("roc_auc") is not None else "n/a"
        print(f"{split:>10}: n={m['n']:<4} accuracy {m['accuracy']:.3f}  ROC AUC {auc}")
    print(f"report: {args.out}/summary.md ({s['wall_s']} s)")
    return 0
