"""Compare two shortcut audits' explanation shares film by film (a paired comparison).

The audit's "share of positive attribution outside the lung fields" is a median over a few dozen
films; two models' medians from different films differ by chance alone. When both audits
explained the same films (same split, ``--n``, ``--explain-n`` and ``--seed``, as two checkpoints
with the same validation split do), this pairs them by film and reports, per method: the films
where both maps had positive evidence, both medians on those films, the mean paired difference
(B - A) with its standard error, and how many films B puts less outside than A; and the same per
true class when the audits' films.csv give the labels. A figure plots B against A, a point per
film (coloured by class):

    pneumolens audit -c OLD.pt --n 523 --explain-n 100 --markers-per-film 1 --out runs/audit-old
    pneumolens audit --n 523 --explain-n 100 --markers-per-film 1 --out runs/audit-new
    python scripts/compare_audits.py runs/audit-old runs/audit-new --names old new --out docs/audit/compare
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from pneumolens.data import CLASS_NAMES


def _read(audit_dir: Path) -> dict[str, Any]:
    path = audit_dir / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read an audit's metrics ({exc})") from None


def _labels(audit_dir: Path) -> dict[str, int]:
    """File name -> true label (0 NORMAL, 1 PNEUMONIA) from the audit's films.csv; empty when absent."""
    path = audit_dir / "films.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["file"]: int(row["label"]) for row in csv.DictReader(fh) if row.get("label") not in (None, "")}


def _summary(pairs: list[tuple[float, float]]) -> dict[str, Any]:
    diffs = [y - x for x, y in pairs]
    return {
        "films": len(pairs),
        "median_a": statistics.median(x for x, _ in pairs),
        "median_b": statistics.median(y for _, y in pairs),
        "mean_diff": statistics.mean(diffs),
        "se_diff": statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan"),
        "b_lower": sum(d < 0 for d in diffs),
    }


def paired(a: dict[str, Any], b: dict[str, Any], labels: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Per method explained in both audits: the paired shares and their summary, and per true class
    (``by_class``) when ``labels`` names the films' classes.

    Raises:
        SystemExit: the audits share no explained film (different splits, subsets or seeds).
    """
    films_a, films_b = a["explanations"]["films"], b["explanations"]["films"]
    common = [f for f in films_a if f in set(films_b)]
    if not common:
        raise SystemExit("the two audits explained no film in common: run both with the same split, --n, "
                         "--explain-n and --seed")
    ia, ib = {f: i for i, f in enumerate(films_a)}, {f: i for i, f in enumerate(films_b)}
    out = {}
    for label, ma in a["explanations"]["methods"].items():
        mb = b["explanations"]["methods"].get(label)
        if mb is None:
            continue
        named = [(f, ma["share_per_film"][ia[f]], mb["share_per_film"][ib[f]]) for f in common]
        named = [(f, x, y) for f, x, y in named if x is not None and y is not None]
        if not named:
            continue
        out[label] = {**_summary([(x, y) for _, x, y in named]), "pairs": [(x, y) for _, x, y in named]}
        if labels:
            out[label]["classes"] = [labels.get(f) for f, _, _ in named]
            out[label]["by_class"] = {
                cls: _summary(mine) for cls in (0, 1)
                if (mine := [(x, y) for f, x, y in named if labels.get(f) == cls])
            }
    return out


def _row(first: str, r: dict[str, Any]) -> str:
    return (f"| {first} | {r['films']} | {100 * r['median_a']:.1f} % | {100 * r['median_b']:.1f} % | "
            f"{100 * r['mean_diff']:+.1f} ± {100 * r['se_diff']:.1f} points | {r['b_lower']} of {r['films']} |")


def markdown(result: dict[str, dict[str, Any]], names: tuple[str, str], chance: float | None) -> str:
    a, b = names
    head = f"median outside, {a} | median outside, {b} | {b} − {a}, mean ± SE | films {b} lower |"
    lines = [f"| method | films | {head}", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [_row(label, r) for label, r in result.items()]
    if chance is not None:
        lines.append(f"\nAn evenly spread map: {100 * chance:.1f} % outside.")
    if any(r.get("by_class") for r in result.values()):
        lines += ["", "By true class:", "", f"| method, class | films | {head}", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for label, r in result.items():
            for cls, rc in (r.get("by_class") or {}).items():
                lines.append(_row(f"{label}, {CLASS_NAMES[cls]}", rc))
    return "\n".join(lines) + "\n"


def plot(result: dict[str, dict[str, Any]], names: tuple[str, str], chance: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pneumolens.explain.render import display_name

    fig, axes = plt.subplots(1, len(result), figsize=(3.4 * len(result), 3.6), squeeze=False)
    for ax, (label, r) in zip(axes[0], result.items()):
        classes = r.get("classes") or [None] * len(r["pairs"])
        for cls, colour, name in ((None, "tab:blue", None), (0, "tab:green", "NORMAL"), (1, "tab:purple", "PNEUMONIA")):
            mine = [p for p, c in zip(r["pairs"], classes) if c == cls]
            if mine:
                xs, ys = zip(*mine)
                ax.scatter(xs, ys, s=12, alpha=0.7, color=colour, label=name)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        if chance is not None:
            ax.axvline(chance, color="tab:red", lw=0.7, ls=":", label=f"evenly spread map ({100 * chance:.0f} %)")
            ax.axhline(chance, color="tab:red", lw=0.7, ls=":")
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel=f"{names[0]}: share outside",
               ylabel=f"{names[1]}: share outside")
        ax.set_title(f"{display_name(label)}\n{r['films']} films, {r['b_lower']} below the diagonal", fontsize=9)
        ax.set_aspect("equal")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(loc="lower right", fontsize=7)
    fig.suptitle("Share of positive attribution outside the approximate lung fields, a point per film "
                 "(below the diagonal: less outside in the second)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audit_a", type=Path, help="first audit folder (pneumolens audit --out)")
    parser.add_argument("audit_b", type=Path, help="second audit folder")
    parser.add_argument("--names", nargs=2, default=("A", "B"), metavar=("A", "B"), help="names in the table")
    parser.add_argument("--out", type=Path, default=None, help="folder for compare.md, compare.json, compare.png")
    args = parser.parse_args()
    a, b = _read(args.audit_a), _read(args.audit_b)
    result = paired(a, b, _labels(args.audit_a) or _labels(args.audit_b))
    if not result:
        raise SystemExit("the two audits share no explanation method with a positive map on a common film")
    chance = next(iter(a["explanations"]["methods"].values())).get("uniform_share")
    text = markdown(result, tuple(args.names), chance)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.md").write_text(text, encoding="utf-8")
        (args.out / "compare.json").write_text(json.dumps(
            {k: {kk: vv for kk, vv in v.items() if kk not in ("pairs", "classes")} for k, v in result.items()},
            indent=2) + "\n")
        plot(result, tuple(args.names), chance, args.out / "compare.png")


if __name__ == "__main__":
    main()
