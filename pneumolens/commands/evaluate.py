"""``pneumolens evaluate``: metrics with 95 % CIs, report and figures for one split or your own labelled films."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..devices import add_device_argument, resolve_device
from ..errors import ConfigError
from ..printable import printable
from ._common import DATA_DEFAULT_HELP, data_root, integer_at_least, probability

SPLITS = ("validation", "val", "test")  # = pneumolens.evaluate.SPLITS, kept here so --help needs no torch

DESCRIPTION = """\
Evaluate a checkpoint on one split of the dataset, or on your own labelled films
(--labels), and write, under --out:
metrics.json (accuracy, precision, recall, specificity, F1, ROC/PR AUC, Brier, ECE,
confusion matrix, bootstrap 95 % CIs resampled by patient, recall per subtype),
predictions.csv, report.md and figures (confusion.png, roc.png, pr.png, reliability.png).

Splits: 'validation' is the patient-level part of train held out when the checkpoint was
trained (recreated from its provenance); 'val' is the official 16-image folder (reported,
never tuned on); 'test' is the official test folder when your copy has it.
The decision threshold is the checkpoint's (chosen on validation) unless --threshold is given.

Your own films: --labels labels.csv, a CSV whose header names the columns file and label
(NORMAL / PNEUMONIA or 0 / 1, any case) and optionally patient_id; relative file names are
read from the CSV's folder. Or --labels DIR, a folder holding NORMAL/ and PNEUMONIA/.
A film's patient (the bootstrap resamples patients) is its patient_id, else its DICOM
PatientID, else its Kaggle-style file name, else the film alone.
  Example: pneumolens evaluate --labels my_films/labels.csv --out runs/my-eval"""


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="metrics with 95%% CIs, report and figures on a split",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--checkpoint", metavar="C",
        help="model.pt (or its folder); default: the model shipped in the package")
    add("--data", metavar="DIR", help=f"dataset root holding train/ val/ [test/]; {DATA_DEFAULT_HELP}")
    add("--split", choices=SPLITS, default=None, help="which images to evaluate (default: validation)")
    add("--labels", metavar="CSV_OR_DIR", type=Path, default=None,
        help="evaluate your own films instead of a split: a CSV of file,label[,patient_id] or a folder "
             "with NORMAL/ and PNEUMONIA/ (see above)")
    add("--out", metavar="DIR", required=True, type=Path,
        help="output folder for metrics.json, predictions.csv, report.md and figures")
    add("--threshold", metavar="T", type=probability,
        help="decision threshold on P(PNEUMONIA); default: the checkpoint's")
    add("--skip-bad", action="store_true",
        help="warn about unreadable files and evaluate the rest (counted as 'skipped')")
    add("--batch-size", metavar="N", type=integer_at_least(1), default=64, help="images per forward pass (default: 64)")
    add("--bootstrap", metavar="N", type=integer_at_least(0), default=1000,
        help="bootstrap resamples for the CIs, 0 for none (default: 1000)")
    add_device_argument(p)
    p.set_defaults(func=run)


def _with_ci(m: dict[str, Any], key: str) -> str:
    value = m.get(key)
    if value is None:
        return f"{key} n/a"
    rng = (m.get("ci") or {}).get(key)
    return f"{key} {value:.3f}" + (f" [{rng[0]:.3f}, {rng[1]:.3f}]" if rng else "")


def run(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate_labels, evaluate_split  # torch and scikit-learn only when running

    if args.labels is not None:
        for given, flag in ((args.split, "--split"), (args.data, "--data")):
            if given is not None:
                raise ConfigError(f"{flag} and --labels exclude each other: --labels names the films to evaluate")
    device = resolve_device(args.device, "--device")
    common = {"checkpoint": args.checkpoint, "out": args.out, "threshold": args.threshold, "skip_bad": args.skip_bad,
              "batch_size": args.batch_size, "n_boot": args.bootstrap, "device": str(device)}
    if args.labels is not None:
        m = evaluate_labels(args.labels, **common)
        name = printable(args.labels)
    else:
        args.split = args.split or "validation"
        m = evaluate_split(data=data_root(args.data), split=args.split, **common)
        name = args.split
    skipped = f", {m['skipped']} skipped" if m.get("skipped") else ""
    counts = f"{m['n']} images ({m['n_pos']} PNEUMONIA, {m['n_neg']} NORMAL{skipped})"
    print(f"{name}: {counts}, threshold {m['threshold']:.4f} ({m['threshold_source']})")
    print("  " + "  ".join(_with_ci(m, k) for k in ("accuracy", "recall", "specificity", "roc_auc")))
    if m.get("ci"):
        print(f"  (95% bootstrap CIs, {m['bootstrap']['n_boot']} resamples by {m['bootstrap']['unit']})")
    ood = m.get("ood")
    if ood and ood.get("flagged"):
        from ..ood import WARNING

        print(f"  warning: {ood['flagged']} of {m['n']} images ({100 * ood['flagged_share']:.1f} %) flagged out of "
              f"distribution: {WARNING} (their ood_score and in_distribution are in predictions.csv)")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
