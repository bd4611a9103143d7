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


def _start_note(result: dict[str, Any]) -> tuple[str, float | None]:
    """The insertion panel's title and the start probability, from ``result["insertion_start"]``."""
    start = result.get("insertion_start") or {}
    p0 = start.get("mean_probability")
    if start.get("kind") == "normal training film":
        return ("Insertion into a NORMAL film the model calls normal\n"
                "(higher is better; random map: scattered pixels alone)"), p0
    if start.get("called_normal") is False:
        return ("Insertion into the blurred image, which the model calls PNEUMONIA:\n"
                "read each curve relative to its start"), p0
    return "Insertion into the blurred image\n(higher AUC is better)", p0


def plot_faithfulness(result: dict[str, Any], path: Path) -> Path:
    """The faithfulness figure (:func:`faithfulness_figure`) saved as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    faithfulness_figure(result).savefig(path, format="png")
    return path


def faithfulness_figure(result: dict[str, Any]) -> Figure:
    """Mean deletion gap and insertion curves per method beside the random map's; the cascading
    randomisation panel when the check ran (no empty panel when it did not).

    Deletion is drawn as its gap: p(pneumonia) when the pixels go least relevant first minus when
    they go most relevant first. Deleting scattered blobs (the random map) makes images unlike any
    film and can drop p faster than deleting one region, so plain deletion curves mislead (the
    random map would look best); the gap compares two orders that make the same kind of images.
    """
    rnd = result.get("randomisation")
    n_panels = 3 if rnd else 2
    fig = Figure(figsize=(5.0 * n_panels, 4.9), dpi=100, layout="constrained")
    axes = fig.subplots(1, n_panels)
    ax_gap, ax_ins = axes[0], axes[1]
    rows = {**result["methods"], "random": result["random"]}
    colours = {label: f"C{k % 10}" for k, label in enumerate(result["methods"])}
    handles = {}
    for label, entry in rows.items():
        style = {"color": "0.45", "linestyle": "--"} if label == "random" else {"color": colours[label]}
        name = "random map (baseline)" if label == "random" else _title(label)
        d = np.asarray([np.nan if v is None else v for v in entry["deletion_curve"]], dtype=np.float64)
        r = np.asarray([np.nan if v is None else v for v in entry.get("reverse_deletion_curve") or []], dtype=np.float64)
        i = np.asarray([np.nan if v is None else v for v in entry["insertion_curve"]], dtype=np.float64)
        frac = np.linspace(0, 1, len(d))
        gap = r - d if r.size == d.size else np.full_like(d, np.nan)
        (handles[name],) = ax_gap.plot(frac, gap, **style)
        ax_ins.plot(np.linspace(0, 1, len(i)), i, **style)
    ax_gap.axhline(0, color="0.6", linewidth=0.8)
    ax_gap.set(title="Deletion: reverse order minus map order\n(higher: the map ranks the evidence first; random ≈ 0)",
               xlabel="fraction of pixels removed", ylabel="p(pneumonia), least relevant first − most relevant first")
    title, p0 = _start_note(result)
    ax_ins.set(title=title, xlabel="fraction of the image's pixels inserted", ylabel="p(pneumonia)", ylim=(0, 1.02))
    if p0 is not None:
        ax_ins.axhline(p0, color="0.3", linestyle=":", linewidth=1)
        ax_ins.annotate(f"start: mean p = {p0:.3f}", (0.99, p0), xycoords=("axes fraction", "data"), ha="right",
                        va="bottom", fontsize=8, color="0.3")
    if rnd:
        ax_rnd = axes[2]
        x = np.arange(len(rnd["stages"]))
        for label, entry in rnd["methods"].items():
            ax_rnd.plot(x, [np.nan if v is None else v for v in entry["spearman"]], marker="o",
                        color=colours.get(label))
        ax_rnd.set_xticks(x, [s.replace(" + ", "+") for s in rnd["stages"]], rotation=45, ha="right", fontsize=7)
        ax_rnd.axhline(0, color="0.6", linewidth=0.8)
        ax_rnd.set(title=f"Cascading randomisation ({rnd['n_images']} images)\n(faithful → near 0)",
                   ylabel="Spearman vs trained maps", ylim=(-1, 1), xlabel="layers re-initialised, top down")
    for ax in axes:  # two-line titles at the default 12 pt ran into the next panel's
        ax.title.set_fontsize(10)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(len(handles), 7),
               fontsize=8, frameon=False)
    return fig


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
              "the gap, which both orders share such artefacts in (the figure's first panel shows it).", ""]
    start = result.get("insertion_start")
    if start:
        lines += [f"Insertion: {result['protocol']['insertion']}. A start image the model already calls pneumonia "
                  "(the blurred film RISE uses is one, for this model) leaves the curve no room to rise. Inserting scattered pixels also makes composites unlike any film: read "
                  "each method against the random map's curve.", ""]
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


def example_title(class_names: Sequence[str], true: int | None, probability: float | None, threshold: float) -> str:
    """``true NORMAL`` over ``model: PNEUMONIA (p = 0.870)``: the true label and the model's answer, told apart."""
    model = "–" if probability is None else class_names[int(probability >= threshold)]
    truth = f"true {class_names[true]}" if true is not None else "true label unknown"
    return f"{truth}\nmodel: {model} (p = {_fmt(probability)})"


def write_eval_report(
    result: dict[str, Any],
    out: str | Path,
    context: Mapping[str, Any],
    images: np.ndarray | None = None,
    maps: Mapping[str, np.ndarray] | None = None,
    labels: Sequence[int] | None = None,
    class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
) -> list[Path]:
    """Write ``metrics.json``, ``faithfulness.png``, ``examples.png`` (if maps) and ``report.md`` into ``out``.

    ``examples.png`` shows one image per true class, each row titled with its true label and the
    model's answer at ``result["threshold"]``, on the film in its own aspect ratio when the file
    named in ``result["per_image"]`` can be read (else on the model input).
    """
    from .runner import film_for_display

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
            threshold = float(result.get("threshold", 0.5))
            titles = [example_title(class_names, labels[i], per[i]["probability"], threshold) for i in picks]
            films = [film_for_display(per[i]["file"], images[i]) if Path(per[i]["file"]).is_file() else images[i]
                     for i in picks]
            figures.append(render_grid(films, rows, out / "examples.png", titles).name)
    paths += [out / f for f in figures]
    report = out / "report.md"
    report.write_text(markdown(result, context, figures), encoding="utf-8")
    paths.append(report)
    return paths
