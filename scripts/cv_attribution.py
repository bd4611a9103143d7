"""Where each cross-validated fold model's explanations put their evidence: outside the lungs or in them.

The shortcut audit measures the share of each explanation's positive attribution outside the
approximate lung fields on the *shipped* model only; one model cannot say whether a recipe moves
that share or a training run happened to. This script runs the audit's attribution part on every
fold model of one or more ``pneumolens cv`` folders, each on its own fold's held-out films (the
same films for every recipe: same folds, same seed), and tables the median share per fold and its
mean ± sd over folds, beside the fold's ROC AUC and marker flip rate from ``cv.json``:

    python scripts/cv_attribution.py runs/cv/s5-base runs/cv/s5-default runs/cv/s5-default-20 \\
        --out docs/cv/attribution.md

Each fold's audit goes to ``FOLD/audit-attribution/`` and is reused when its settings match
(``--fresh`` recomputes). The probes run on ``--n`` films (one marker variant, the six border
probes and the four text/ruler probes each): the table adds the border and text flip rates, which
cross-validation itself does not measure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pneumolens.audit import run_audit
from pneumolens.commands._common import data_root
from pneumolens.cv import read_summary
from pneumolens.errors import PneumoLensError
from pneumolens.jsonable import dumps

#: Both Grad-CAM layers named, so that a cached audit keeps its meaning when the default layer moves.
METHODS = "gradcam:layer=features.block3.pool,gradcam:layer=features.block3.relu,ig"


def audit_settings(n: int, explain_n: int, methods: str, **extra: Any) -> dict[str, Any]:
    """What a cached audit must match to be reused; a bare ``gradcam`` adds the default layer it means now."""
    from pneumolens.explain.gradcam import DEFAULT_BLOCK_PART

    settings: dict[str, Any] = {"n": n, "explain_n": explain_n, "methods": methods, **extra}
    if any(spec.strip() == "gradcam" for spec in methods.split(",")):
        settings["gradcam_default"] = DEFAULT_BLOCK_PART
    return settings


def title(label: str) -> str:
    """A method label as figures name it; Grad-CAM without a layer is on its default layer."""
    from pneumolens.explain.render import display_name

    return display_name(label) + (" (default layer)" if label == "gradcam" else "")


def _fold_dirs(cv_dir: Path) -> list[tuple[int, Path]]:
    """(fold index, folder) of every fold of ``cv_dir`` that has a finished model."""
    out = []
    for d in sorted(cv_dir.glob("fold-*")):
        if (d / "model.pt").is_file() and d.name.split("-")[-1].isdigit():
            out.append((int(d.name.split("-")[-1]), d))
    return out


def _cached_audit(checkpoint: Callable[[], Any], out: Path, data: Path, settings: dict[str, Any],
                  threads: int | None, fresh: bool, what: str) -> dict:
    """The audit's metrics.json in ``out``, run now (on ``checkpoint()``) unless a run with ``settings`` is there."""
    done = out / "metrics.json"
    if done.is_file() and not fresh:
        metrics = json.loads(done.read_text())
        if metrics.get("attribution_settings") == settings:
            return metrics
    if threads:
        import torch

        torch.set_num_threads(threads)
    metrics = run_audit(checkpoint=checkpoint(), data=data, split="validation", out=out, n=settings["n"],
                        markers_per_film=1, methods=settings["methods"], explain_n=settings["explain_n"], seed=0,
                        progress=False, command=f"scripts/cv_attribution.py ({what})",
                        context_pairs=0)  # the context swap: scripts/context_swap_probe.py, 100 pairs of held-out films
    metrics["attribution_settings"] = settings
    done.write_text(dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def audit_fold(fold_dir: Path, data: Path, n: int, explain_n: int, methods: str, threads: int | None,
               fresh: bool) -> dict:
    """The audit's metrics.json of one fold model on its own held-out films, cached in ``fold_dir``."""
    settings = audit_settings(n, explain_n, methods)
    return _cached_audit(lambda: fold_dir / "model.pt", fold_dir / "audit-attribution", data, settings, threads,
                         fresh, str(fold_dir))


def untrained(seed: int = 0) -> Any:
    """The shipped checkpoint with every layer re-initialised (seeded): the architecture, having learned nothing.

    Its explanations give the share outside the lungs that the architecture and the maps' smoothing
    produce on their own, the floor against which a trained model's share means something.
    """
    import torch

    from pneumolens.checkpoint import load_checkpoint

    ckpt = load_checkpoint(None)
    torch.manual_seed(seed)
    for module in ckpt.model.modules():
        if module is not ckpt.model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    ckpt.model.eval()
    return ckpt


def audit_untrained(out: Path, data: Path, n: int, explain_n: int, methods: str, threads: int | None,
                    fresh: bool) -> dict:
    """The audit of :func:`untrained` on the shipped model's validation split, cached in ``out``."""
    settings = audit_settings(n, explain_n, methods, untrained_seed=0)
    return _cached_audit(lambda: untrained(0), out, data, settings, threads, fresh, "shipped architecture, re-initialised")


def _flip_rate(metrics: dict[str, Any], family: str) -> float | None:
    """The audit's label-flip rate for one probe family (``border``, ``annotation``), or None."""
    return ((metrics.get("probes") or {}).get("families") or {}).get(family, {}).get("flip_rate")


def _mean_sd(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{100 * values[0]:.1f} %"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f} %"


def table(rows: list[dict], labels: list[str]) -> str:
    """Two markdown tables: mean ± sd over folds per recipe, then every fold."""
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    head = ("| recipe | folds | " + " | ".join(labels)
            + " | chance | ROC AUC | marker flip rate | border flip rate | text flip rate |")
    lines = [head, "|" + " --- |" * 1 + " ---: |" * (len(labels) + 6)]

    def mean(values: list[float | None]) -> str:
        kept = [v for v in values if v is not None]
        return f"{statistics.mean(kept):.3f}" if kept else ""

    for recipe in recipes:
        mine = [r for r in rows if r["recipe"] == recipe]
        cells = [_mean_sd([r["median"][m] for r in mine if r["median"][m] is not None]) for m in labels]
        lines.append(f"| {recipe} | {','.join(str(r['fold']) for r in mine)} | " + " | ".join(cells)
                     + f" | {_mean_sd([r['chance'] for r in mine])} | "
                     + " | ".join(mean([r.get(k) for r in mine]) for k in ("auc", "flip", "border", "text")) + " |")
    lines += ["", "| recipe | fold | " + " | ".join(labels) + " | films (valid per method) |",
              "| --- | ---: |" + " ---: |" * (len(labels) + 1)]
    for r in rows:
        cells = [f"{100 * r['median'][m]:.1f} %" if r["median"][m] is not None else "n/a" for m in labels]
        lines.append(f"| {r['recipe']} | {r['fold']} | " + " | ".join(cells) + " | "
                     + ", ".join(str(r["valid"][m]) for m in labels) + " |")
    return "\n".join(lines) + "\n"


def axis_start(rows: list[dict], labels: list[str]) -> float:
    """Left end of the share axis: 0.5, or further left so that every fold's dot lies inside it."""
    shares = [r["median"][m] for r in rows for m in labels if r["median"][m] is not None]
    return min([0.5, *(x - 0.03 for x in shares)])


def plot(rows: list[dict], labels: list[str], path: Path) -> None:
    """A panel per method: each fold's median share outside the lungs, a column per recipe, chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 0.45 * len(recipes) + 1.8),
                             sharey=True, squeeze=False)
    low = axis_start(rows, labels)
    for ax, label in zip(axes[0], labels):
        for i, recipe in enumerate(recipes):
            xs = [r["median"][label] for r in rows if r["recipe"] == recipe and r["median"][label] is not None]
            ax.scatter(xs, [i] * len(xs), s=18, alpha=0.75, color="tab:blue")
            if xs:
                ax.plot([statistics.mean(xs)] * 2, [i - 0.3, i + 0.3], color="black", lw=1.5)
        chance = statistics.mean(r["chance"] for r in rows)
        ax.axvline(chance, color="tab:red", ls="--", lw=0.9, label=f"evenly spread map ({100 * chance:.0f} %)")
        ax.set(xlim=(low, 1.02), title=title(label), xlabel="share of positive attribution outside the lungs")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(recipes)), recipes, fontsize=8)
    axes[0][0].invert_yaxis()
    axes[0][0].legend(loc="lower left", fontsize=7)
    fig.suptitle("Each fold model on its own held-out films (a dot per fold, bar: mean)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    try:
        _main()
    except PneumoLensError as exc:
        raise SystemExit(f"error: {exc}") from None


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cv_dirs", nargs="+", type=Path, help="`pneumolens cv --out` folders")
    parser.add_argument("--data", default=None, help="dataset root (default: as the CLI)")
    parser.add_argument("--n", type=int, default=120, help="held-out films probed per fold (default: 120)")
    parser.add_argument("--explain-n", type=int, default=40, help="films explained per fold, half per class (default: 40)")
    parser.add_argument("--methods", default=METHODS, help=f"explanation methods (default: {METHODS})")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--fresh", action="store_true", help="recompute audits already on disk")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the folds' shares to this PNG")
    parser.add_argument("--untrained", type=Path, default=None, metavar="DIR",
                        help="also audit the shipped architecture re-initialised (seed 0; no training) on the "
                             "shipped model's validation split, in DIR, as the first row: the floor")
    args = parser.parse_args()
    data = data_root(args.data)
    labels = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = []
    if args.untrained:
        methods = audit_untrained(args.untrained, data, args.n, args.explain_n, args.methods, args.threads,
                                  args.fresh)["explanations"]["methods"]
        rows.append({"recipe": "untrained (shipped architecture, re-initialised)", "fold": "-",
                     "median": {m: methods[m]["share_outside"]["median"] for m in labels},
                     "valid": {m: methods[m]["n_valid"] for m in labels},
                     "chance": next(iter(methods.values()))["uniform_share"], "auc": None, "flip": None,
                     "border": None, "text": None})
    for cv_dir in args.cv_dirs:
        cv = read_summary(cv_dir)
        per_fold = {int(f["fold"]): f for f in cv.get("per_fold", [])}
        for k, fold_dir in _fold_dirs(cv_dir):
            metrics = audit_fold(fold_dir, data, args.n, args.explain_n, args.methods, args.threads, args.fresh)
            methods = metrics["explanations"]["methods"]
            fold = per_fold.get(k, {})
            rows.append({
                "recipe": cv.get("label", cv_dir.name), "fold": k,
                "median": {m: methods[m]["share_outside"]["median"] for m in labels},
                "valid": {m: methods[m]["n_valid"] for m in labels},
                "chance": next(iter(methods.values()))["uniform_share"],
                "auc": fold.get("roc_auc"), "flip": fold.get("marker_flip_rate"),
                "border": _flip_rate(metrics, "border"), "text": _flip_rate(metrics, "annotation"),
            })
            print(f"{cv_dir.name} fold {k}: " + ", ".join(
                f"{m} {100 * rows[-1]['median'][m]:.1f} %" for m in labels if rows[-1]["median"][m] is not None),
                flush=True)
    text = table(rows, labels)
    print(text)
    if args.out:
        command = " ".join(["python scripts/cv_attribution.py", *sys.argv[1:]])
        header = (
            "# Where each fold model's explanations put their evidence\n\n"
            f"`{command}`\n\n"
            f"Median share of positive attribution outside the approximate lung fields (pneumolens.audit.lungs) over "
            f"{args.explain_n} of each fold's held-out films (half per class; films whose map has no positive value "
            "are left out: the count per method is in the second table), then mean ± sd over folds; chance: an "
            "evenly spread map. Grad-CAM at the last block's pooled output (`block3.pool`) and its ReLU output "
            "(`block3.relu`, the default layer since the context-swap model; docs/figures/gradcam-layers); ROC AUC "
            "and marker flip rate: the fold's, or their mean over the folds, from cv.json; border and text flip "
            "rates: the audit's border-band (6 per film) and text/ruler (4 per film) probes on the fold's "
            f"{args.n} probed films, at the fold model's threshold. The untrained row (if "
            f"any): the shipped architecture re-initialised, on {args.explain_n} films of the shipped model's "
            "validation split.\n\n"
        )
        args.out.write_text(header + text, encoding="utf-8")
    if args.plot:
        plot(rows, labels, args.plot)


if __name__ == "__main__":
    main()
