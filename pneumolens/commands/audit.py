"""``pneumolens audit``: does the model answer differently when a marker, a border or a text is added?

Parses arguments and calls :func:`pneumolens.audit.run.run_audit`; nothing else.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ._common import DATA_HELP, data_root, integer_at_least
from .evaluate import SPLITS

DEFAULT_METHODS = "gradcam,ig,occlusion"  # = pneumolens.audit.run.DEFAULT_METHODS, here so --help needs no torch
CONTEXT_PAIRS = 100  # = pneumolens.audit.context.CONTEXT_PAIRS, likewise

DESCRIPTION = """\
Shortcut audit of a checkpoint on one split of the dataset.

For every film, P(pneumonia) clean and with probes drawn on the film before the model's resize:
  marker      a white "R" or "L" in a corner (3 bold fonts, 6/9/12 % of the film's height,
              4 corners: 72 variants, --markers-per-film of them per film)
  border      the outer band (4 or 8 % wide) replaced by the film's median, black or white
  annotation  a line of text ("AP PORTABLE", "SUPINE") or a tick-marked ruler at an edge
Reported per family: the label-flip rate at the checkpoint's threshold, the |delta p|
distribution (median, 90th percentile, max), and specificity and sensitivity clean -> probed.

Context swap: --context-pairs NORMAL/PNEUMONIA pairs crossed both ways (the lung fields of one
film set into the other, the seam blended): the share of composites whose label follows the
lungs' film, over those whose two source films the model labels differently. 100 % = the answer
rests on the lungs, 0 % = on the surroundings, 50 % = a coin between them.

Then, on --explain-n films, each explanation method's share of positive attribution that falls
outside the lung fields (approximate masks: an anatomical prior refined by intensity; see
docs/audit/README.md for their measured error), beside the chance level; overall and on NORMAL
and PNEUMONIA films apart.

Writes under --out: metrics.json, report.md, films.csv (one row per film), probes.csv (one row
per film and probe), probes.png, lungs.png and context.png (pairs crossed both ways, when the model
tells any apart). Deterministic for a given --seed."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "audit",
        help="shortcut audit: do pasted markers, borders, text change the answer? where does attribution fall?",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: pneumolens audit --split validation --out runs/audit",
    )
    add = p.add_argument
    add("--checkpoint", "-c", metavar="C", default=None,
        help="model.pt or a run folder (default: the shipped model)")
    add("--data", metavar="DIR", default=None, help=DATA_HELP)
    add("--split", choices=SPLITS, default="validation",
        help="validation = the checkpoint's patient-level held-out part of train (default); "
             "val, test = official folders")
    add("--out", "-o", metavar="DIR", type=Path, required=True, help="output folder")
    add("--n", metavar="N", type=integer_at_least(1), default=None,
        help="probe a seeded subset of N films, class proportions kept (default: the whole split)")
    add("--markers-per-film", metavar="K", type=integer_at_least(0), default=12,
        help="marker variants per film, of 72; 0 = all (default: 12)")
    add("--methods", "-m", default=DEFAULT_METHODS,
        help="explanation methods, comma-separated, NAME:KEY=VALUE for settings; '' for none "
             f"(default: {DEFAULT_METHODS})")
    add("--explain-n", metavar="N", type=integer_at_least(0), default=20,
        help="films explained, half per class; 0 skips the explanations (default: 20)")
    add("--context-pairs", metavar="N", type=integer_at_least(0), default=CONTEXT_PAIRS,
        help="NORMAL/PNEUMONIA pairs crossed for the context swap (lungs of one film, surroundings of the other: "
             f"does the answer follow the lungs?); 0 skips it (default: {CONTEXT_PAIRS})")
    add("--seed", type=int, default=0, help="seed for the subsets, the markers per film and the methods (default: 0)")
    add("--skip-bad", action="store_true", help="warn about unreadable files and audit the rest")
    add("--threads", type=integer_at_least(1), default=None,
        help="CPU threads for torch and ONNX Runtime (default: torch's choice; 1 is best when the CPU is shared)")
    add("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..audit.run import run_audit

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)  # before the fast copy is built: ONNX Runtime takes the same count
    command = "pneumolens " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    m = run_audit(
        checkpoint=args.checkpoint,
        data=data_root(args.data),
        split=args.split,
        out=args.out,
        n=args.n,
        seed=args.seed,
        methods=args.methods,
        explain_n=args.explain_n,
        markers_per_film=args.markers_per_film or None,
        skip_bad=args.skip_bad,
        progress=not args.no_progress,
        command=command,
        context_pairs=args.context_pairs,
    )
    fam = m["probes"]["families"]
    print(f"{args.split}: {m['n_films']} films ({m['n_pneumonia']} PNEUMONIA, {m['n_normal']} NORMAL), "
          f"threshold {m['threshold']:.4f}")
    for name, s in fam.items():
        spec = s["specificity"]
        spec_text = f", specificity {spec['clean']:.3f} -> {spec['probed']:.3f}" if spec["clean"] is not None else ""
        print(f"  {name:<10} flip rate {100 * (s['flip_rate'] or 0):5.1f} % of {s['n_pairs']} pairs, "
              f"median |dp| {s['abs_dp']['median']:.4f}{spec_text}")
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.0f} %"

    for label, s in m["explanations"]["methods"].items():
        by_class = ", ".join(f"{c} films {pct(b['median'])}" for c, b in (s.get("by_class") or {}).items())
        print(f"  {label:<10} median share of positive attribution outside the lungs {pct(s['share_outside']['median'])} "
              f"({by_class + '; ' if by_class else ''}chance {pct(s['uniform_share'])})")
    c = m.get("context_swap")
    if c and c["follow_rate"] is not None:
        print(f"  context swap: the label follows the lungs on {pct(c['follow_rate'])} of {c['informative']} "
              f"informative composites ({c['pairs']} of {c.get('requested', c['pairs'])} pairs asked)")
    elif c:
        print("  context swap: not measured (needs films of both classes that the model labels differently)")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
