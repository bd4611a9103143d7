"""Write the results of :func:`pneumolens.explain.evaluation.evaluate_explanations`.

``metrics.json`` (everything), ``report.md`` (the tables a reader needs, with how they were
made), ``faithfulness.png`` (mean deletion and insertion curves, cascading randomisation) and,
when maps are given, ``examples.png`` (one example panel per class).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..jsonable import dumps
from .render import display_name as _title
from .render import render_grid


def _fmt(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def plot_faithfulness(result: dict[str, Any], path: Path) -> Path:
    """Three panels: mean deletion curves, mean insertion curves, randomisation Spearman per stage."""
    fig = Figure(figsize=(15, 4.4), dpi=100, layout="constrained")
    ax_del, ax_ins, ax_rnd = fig.subplots(1, 3)
    rows = {**result["methods"], "random": result["random"]}
    for label, entry in rows.items():
        style = {"color": "0.5", "linestyle": "--"} if label == "random" else {}
        frac = np.linspace(0, 1, len(entry["deletion_curve"]))
        d = [np.nan if v is None else v for v in entry["deletion_curve"]]
        i = [np.nan if v is None else v for v in entry["insertion_curve"]]
        ax_del.plot(frac, d, label=f"{_title(label)} {_fmt(entry['deletion_auc']['mean'])}", **style)
        ax_ins.plot(frac, i, label=f"{_title(label)} {_fmt(entry['insertion_auc']['mean'])}", **style)
    ax_del.set(title="Deletion (lower AUC is better)", xlabel="fraction of pixels removed", ylabel="p(pneumonia)")
    ax_ins.set(title="Insertion (higher AUC is better)", xlabel="fraction of pixels inserted", ylabel="p(pneumonia)")
    ax_del.legend(fontsize=7)
    ax_ins.legend(fontsize=7)
    rnd = result.get("randomisation")
    if rnd:
        x = np.arange(len(rnd["stages"]))
        for label, entry in rnd["methods"].items():
            ax_rnd.plot(x, [np.nan if v is None else v for v in entry["spearman"]], marker="o", label=_title(label))
        ax_rnd.set_xticks(x, [s.replace(" + ", "+") for s in rnd["stages"]], rotation=45, ha="right", fontsize=7)
        ax_rnd.axhline(0, color="0.6", linewidth=0.8)
        ax_rnd.set(title="Cascading randomisation (faithful → near 0)", ylabel="Spearman vs trained maps", ylim=(-1, 1))
        ax_rnd.legend(fontsize=7)
    else:
        ax_rnd.set_axis_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def markdown(result: dict[str, Any], context: Mapping[str, Any], figures: Sequence[str]) -> str:
    """The report's text: context, the main table, agreement, randomisation, protocol."""
    lines = ["# Faithfulness of the explanations", ""]
    for k, v in context.items():
        lines.append(f"- **{k}**: {v}")
    lines += ["", f"{result['n_images']} images, seed {result['seed']}, {result['steps']} steps per curve.", ""]
    lines += ["| method | deletion AUC ↓ | reverse-order deletion AUC | gap (reverse − deletion) ↑ | insertion AUC ↑ "
              "| randomised model: Spearman (all layers) ↓ | median s / image |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    rnd = result.get("randomisation") or {"methods": {}}

    def cells(e: dict) -> str:
        return " | ".join(f"{_fmt(e[k]['mean'])} ± {_fmt(e[k]['sd'])}"
                          for k in ("deletion_auc", "reverse_deletion_auc", "deletion_gap", "insertion_auc"))

    for label, e in result["methods"].items():
        r = rnd["methods"].get(label, {}).get("spearman") or [None]
        lines.append(f"| {_title(label)} | {cells(e)} | {_fmt(r[-1], 2)} | {_fmt(e['median_time_s'], 3)} |")
    lines.append(f"| *random map (baseline)* | {cells(result['random'])} | | |")
    lines += ["", "Mean ± SD over images. A faithful map deletes the evidence fast (low deletion AUC), leaves it for last "
              "in reverse order (high reverse AUC: a positive gap; a random map's gap is 0 on average) and rebuilds it "
              "fast on insertion (high insertion AUC); its maps decorrelate from the trained model's when the model's "
              "weights are randomised (Adebayo et al. 2018). Deleting scattered blobs (the random map) makes images "
              "that look unlike any film, which can drop the probability faster than deleting one region: compare "
              "the gap, which both orders share such artefacts in.", ""]
    if result.get("randomisation"):
        stages = rnd["stages"]
        lines += [f"## Cascading randomisation ({rnd['n_images']} images)", "",
                  "Median Spearman rank correlation between the trained model's maps and those of a copy whose layers "
                  "are re-initialised from the top down, cumulatively (absolute-value maps in brackets).", "",
                  "| method | " + " | ".join(stages) + " |", "|---|" + "---:|" * len(stages)]
        for label, ent in rnd["methods"].items():
            cells = [f"{_fmt(a, 2)} ({_fmt(b, 2)})" for a, b in zip(ent["spearman"], ent["spearman_abs"])]
            lines.append(f"| {_title(label)} | " + " | ".join(cells) + " |")
        lines.append("")
    agr = result.get("agreement")
    if agr:
        labels = agr["methods"]
        lines += ["## Agreement between methods", "", "Median Spearman rank correlation of the maps, per image.", "",
                  "| | " + " | ".join(_title(m) for m in labels) + " |", "|---|" + "---:|" * len(labels)]
        for m, row in zip(labels, agr["spearman"]):
            lines.append(f"| {_title(m)} | " + " | ".join(_fmt(v, 2) for v in row) + " |")
        lines.append("")
    lines += ["## Settings", ""]
    for label, e in result["methods"].items():
        shown = {k: v for k, v in e["params"].items() if k not in ("method", "target")}
        lines.append(f"- **{_title(label)}**: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    lines += ["", "## Protocol", ""] + [f"- {k}: {v}" for k, v in result["protocol"].items()] + [""]
    lines += [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def write_eval_report(
    result: dict[str, Any],
    out: str | Path,
    context: Mapping[str, Any],
    images: np.ndarray | None = None,
    maps: Mapping[str, np.ndarray] | None = None,
    labels: Sequence[int] | None = None,
    class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
) -> list[Path]:
    """Write ``metrics.json``, ``faithfulness.png``, ``examples.png`` (if maps) and ``report.md`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"context": dict(context), **result}
    paths = [out / "metrics.json"]
    paths[0].write_text(dumps(doc, indent=2) + "\n", encoding="utf-8")
    figures = [plot_faithfulness(result, out / "faithfulness.png").name]
    if images is not None and maps and labels is not None:
        picks = [next((i for i, y in enumerate(labels) if y == c), None) for c in range(len(class_names))]
        picks = [i for i in picks if i is not None]
        if picks:
            rows = [{k: v[i] for k, v in maps.items()} for i in picks]
            per = result["per_image"]
            titles = [f"{class_names[labels[i]]} (p = {_fmt(per[i]['probability'])})" for i in picks]
            figures.append(render_grid([images[i] for i in picks], rows, out / "examples.png", titles).name)
    paths += [out / f for f in figures]
    report = out / "report.md"
    report.write_text(markdown(result, context, figures), encoding="utf-8")
    paths.append(report)
    return paths
