"""Print the table of training runs (recipe, seed, epochs, validation metrics with CIs, wall time).

Reads ``train_summary.json`` of every run folder given (default: ``runs/*``) and writes the
markdown table to stdout and, with ``--out``, to a file (``docs/results.md``). The training time
is the sum over the run's segments (a run paused and resumed has several) of the time from each
segment's start to its last logged epoch, read from the run's TensorBoard event files: pauses do
not count, and neither does the part of an epoch cut short by a pause (resumed, it is counted
once).

    python scripts/results_table.py runs/seed runs/default --out docs/results.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _ci(m: dict, key: str) -> str:
    v, ci = m.get(key), (m.get("ci") or {}).get(key)
    if v is None:
        return "n/a"
    return f"{v:.3f} [{ci[0]:.3f}–{ci[1]:.3f}]" if ci else f"{v:.3f}"


def training_time_s(run: Path) -> tuple[float, int] | None:
    """(seconds of training summed over segments, number of segments), from ``run/tb`` events.

    A segment that logged no epoch (a finished run resumed only to be finished again, e.g. under
    another calibration) trained nothing and is not counted.
    """
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    except ImportError:
        return None
    total, segments = 0.0, 0
    for events in sorted((run / "tb").glob("events.out.tfevents.*")):
        loaded = list(EventFileLoader(str(events)).Load())
        times = [e.wall_time for e in loaded]
        trained = any(v.tag == "epoch" for e in loaded for v in e.summary.value)
        if len(times) > 1 and trained:
            total += max(times) - min(times)
            segments += 1
    return (total, segments) if segments else None


def row(run: Path) -> str | None:
    f = run / "train_summary.json"
    if not f.exists():
        return None
    s = json.loads(f.read_text())
    m, p = s["validation"], s["provenance"]
    cfg = p.get("train_config", {})
    timed = training_time_s(run)
    wall = f"{timed[0] / 60:.0f} min in {timed[1]} segment(s)" if timed else f"{p.get('wall_s', 0) / 60:.0f} min"
    if p.get("interim"):
        wall += ", run still going: interim export"
    return (
        f"| `{run.name}` | {p.get('recipe')} | {cfg.get('seed')} | {p.get('epochs_run')} (best {p.get('best_epoch')}) "
        f"| {m['n']} | {_ci(m, 'roc_auc')} | {_ci(m, 'accuracy')} | {_ci(m, 'recall')} | {_ci(m, 'specificity')} "
        f"| {m['threshold']:.3f} | {wall} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path, help="run folders (default: runs/*)")
    ap.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = ap.parse_args()
    runs = args.runs or sorted(p for p in Path("runs").glob("*") if p.is_dir())
    lines = [
        "| run | recipe | seed | epochs | n (val) | ROC AUC [95% CI] | accuracy | recall | specificity | threshold | training time |",
        "|---|---|---:|---|---:|---|---|---|---|---:|---:|",
    ]
    lines += [r for r in (row(p) for p in runs) if r]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            "# Training runs\n\nValidation = the patient-level 10 % split of the official train folder (seed 0); "
            "CIs are patient-level bootstrap (1000 resamples).\nMade by `python scripts/results_table.py "
            + " ".join(str(r) for r in runs) + " --out " + str(args.out) + "`.\n\n" + text
        )


if __name__ == "__main__":
    main()
