"""``report.md`` of a shortcut audit: what was probed, how, and the numbers, readable without the JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..data import CLASS_NAMES
from .context import KIND_TITLES
from .figures import CREDIT, FAMILY_TITLES
from .probes import BORDER_WIDTHS, FAMILIES, FONTS, MARKER_HEIGHTS, MARGIN, TEXT_HEIGHT

PROBE_TEXT = {
    "marker": (
        f"a white laterality letter (\"R\" or \"L\") in one corner, {MARGIN:.0%} of the film's height from its edges, "
        f"in one of {len(FONTS)} bold fonts (DejaVu {', '.join(FONTS)}), its ink "
        f"{', '.join(f'{h:.0%}' for h in MARKER_HEIGHTS)} of the film's height: "
        f"{2 * len(FONTS) * len(MARKER_HEIGHTS) * 4} variants"
    ),
    "border": (
        f"the outer band of the film, {' or '.join(f'{w:.0%}' for w in BORDER_WIDTHS)} of its shorter side wide on "
        "every side, replaced by the film's median grey, by black or by white"
    ),
    "annotation": (
        f"a white line of text ({TEXT_HEIGHT:.0%} of the film's height: \"AP PORTABLE\" at the top, \"SUPINE\" at the "
        "bottom), or a white tick-marked ruler along the right or the bottom edge"
    ),
}


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _change(d: Mapping[str, Any]) -> str:
    if d.get("clean") is None:
        return "n/a"
    return f"{d['clean']:.3f} → {d['probed']:.3f} ({d['delta']:+.3f})"


def _row(name: str, m: Mapping[str, Any]) -> str:
    a = m["abs_dp"]
    return (
        f"| {name} | {m['n_pairs']} | **{_pct(m['flip_rate'])}** | "
        f"{m['flips_to_pneumonia']} / {m['flips_to_normal']} | "
        f"{_pct(m['films_with_flip_rate'])} | {_f(a['median'], 4)} / {_f(a['p90'], 3)} / {_f(a['max'], 3)} | "
        f"{_f(m['mean_dp'], 4)} | {_change(m['specificity'])} | {_change(m['sensitivity'])} |"
    )


HEADER = (
    "| {first} | pairs | flip rate | flips →PNEUMONIA / →NORMAL | films with ≥ 1 flip | "
    "\\|Δp\\| median / p90 / max | "
    "mean Δp | specificity | sensitivity |\n|---|---|---|---|---|---|---|---|---|"
)


def _pairs_text(c: Mapping[str, Any], seed: int | None = None) -> str:
    """"8 NORMAL/PNEUMONIA pairs (seed 0; 10 asked: ...)": how many pairs were crossed, and why fewer than asked."""
    n, asked = c["pairs"], c.get("requested", c["pairs"])
    notes = [f"seed {seed}"] if seed is not None else []
    if asked > n:
        notes.append(f"{asked} asked: each film is used once, so the rarer class's films set the limit")
    return f"{n} NORMAL/PNEUMONIA pair{'' if n == 1 else 's'}" + (f" ({'; '.join(notes)})" if notes else "")


def _context_lines(c: Mapping[str, Any] | None, figure: str | None = None) -> list[str]:
    """The context-swap section: does the answer follow the lungs or their surroundings?"""
    lines = ["## Context swap: does the answer follow the lungs?", ""]
    if not c:
        return [*lines, "Not run (`--context-pairs 0`).", ""]
    if c["follow_rate"] is None:
        return [*lines, f"Not measured: {_pairs_text(c)}, {c['informative']} composites whose two "
                "source films the model labels differently (it needs films of both classes, told apart).", ""]
    lines += [
        (f"{_pairs_text(c, c['seed'])}, crossed both ways: the approximate lung fields of "
         "one film (grown and blended at the seam) set into the other, so a composite has the lungs of one film and "
         "everything else — markers, text, borders, the body's edges, heart and diaphragm — of the other. Counted "
         "over *informative* composites, whose two source films the model labels differently. A model that reads "
         "the lungs follows them every time, one that reads the surroundings never; 50 % is a coin. Composites "
         "are not real films: this measures what the answer rests on, not accuracy; a model trained with "
         "`augment.swap` has seen such composites."),
        "",
        ("| composite | informative | label follows the lungs | mean P(pneumonia) over all pairs: lungs' film / "
         "surroundings' film / composite |"),
        "|---|---|---|---|",
    ]
    for key, k in c["kinds"].items():
        lines.append(f"| {KIND_TITLES[key]} | {k['informative']} | {_pct(k['follow_rate'])} ({k['followed']}) | "
                     f"{_f(k['mean_p_lungs_film'])} / {_f(k['mean_p_surroundings_film'])} / "
                     f"{_f(k['mean_p_composite'])} |")
    lines += [f"| **both** | {c['informative']} | **{_pct(c['follow_rate'])}** ({c['followed']}) | |", ""]
    if figure:
        lines += [f"![context swap]({figure})", ""]
    return lines


def write_report(metrics: Mapping[str, Any], out: str | Path, figures: Mapping[str, str | None]) -> Path:
    """Write ``out/report.md`` from the audit's ``metrics`` and the figure file names."""
    m = metrics
    fam = m["probes"]["families"]
    clean = m["clean"]
    lines = [
        f"# Shortcut audit: {m['checkpoint']}, split `{m['split']}`",
        "",
        f"{m['n_films']} films ({m['n_normal']} NORMAL, {m['n_pneumonia']} PNEUMONIA) from `{m['data']}`; threshold "
        f"{m['threshold']:.4f} ({m['threshold_rule']}), input {m['input_size']} px, seed {m['seed']}.",
        f"Clean: accuracy {_f(clean['accuracy'])}, specificity {_f(clean['specificity'])}, "
        f"sensitivity {_f(clean['sensitivity'])}.",
    ]
    if m.get("command"):
        lines += ["", f"Command: `{m['command']}`"]
    if m.get("skipped_files"):
        lines += ["", f"Skipped (unreadable): {len(m['skipped_files'])} files, listed in metrics.json."]
    lines += [
        "",
        "Each film is predicted clean and with probes: things burnt into a film that say nothing about the lungs. "
        "A model that reads the lungs should not care. Probes are drawn on the decoded film before the model's "
        "resize, as a real marker would be. A *flip* is a (film, probe) pair whose label at the threshold differs "
        "from the clean film's; Δp is P(pneumonia | probed) − P(pneumonia | clean). Specificity and sensitivity "
        "are over the pairs, clean → probed.",
        "",
        "## Headline",
        "",
        HEADER.format(first="probe family"),
    ]
    lines += [_row(FAMILY_TITLES[f], fam[f]) for f in FAMILIES if f in fam]
    quick = m.get("quick_marker")
    if quick:
        lines += [
            "",
            f"Quick marker probe (`pneumolens.audit.marker_flip_rate`: R and L, DejaVu Sans Bold, 9 %, four corners, "
            f"drawn on the {m['input_size']} px model input; the measure used in cross-validation): flip rate "
            f"**{_pct(quick['flip_rate'])}** of {quick['n_pairs']} pairs, specificity {_change(quick['specificity'])}.",
        ]
    lines += ["", "## The probes", ""]
    per_film = m.get("markers_per_film")
    for f in FAMILIES:
        extra = ""
        if f == "marker" and per_film:
            extra = (f"; each film gets {per_film} of them, taken in turn from a seeded permutation so that each "
                     "is used equally often")
        else:
            extra = "; every film gets all of them"
        lines.append(f"- **{FAMILY_TITLES[f]}**: {PROBE_TEXT[f]}{extra}.")
    factors = m["probes"].get("marker_factors") or {}
    if factors:
        lines += ["", "### Laterality markers by factor", ""]
        for factor, levels in factors.items():
            lines += [HEADER.format(first=factor)]
            lines += [_row(str(level), s) for level, s in levels.items()]
            lines.append("")
    others = [p for p in m["probes"]["by_probe"] if p["family"] != "marker"]
    if others:
        lines += ["### Border and annotation probes, one by one", "", HEADER.format(first="probe")]
        lines += [_row(p["probe"], p) for p in others]
        lines.append("")
    lines += ["Every probe's scores, markers included, are in `metrics.json` (`probes.by_probe`); every pair in "
              "`probes.csv`; per film in `films.csv`.", ""]
    if figures.get("probes"):
        lines += [f"![probes]({figures['probes']})", ""]

    lines += _context_lines(m.get("context_swap"), figures.get("context"))
    lungs = m["lungs"]
    ex = m["explanations"]
    lines += [
        "## Where the explanations put the evidence",
        "",
        "The share of each map's positive attribution (evidence for pneumonia) that lies outside the lung fields, "
        f"on {ex['n_films']} films (half per class where possible). *Chance* is the share of the film outside the "
        "mask, what a map spread evenly would score; *peak outside* is how often the map's maximum lies outside. "
        "By class: the median on NORMAL films (evidence for pneumonia left over on a film the model should call "
        "normal) and on PNEUMONIA films (what the answer rests on).",
        "",
    ]
    if ex["methods"]:
        lines += ["| method | films | share outside: median / mean / p90 | median: NORMAL / PNEUMONIA films | "
                  "peak outside | chance | s per film |",
                  "|---|---|---|---|---|---|---|"]
        for label, s in ex["methods"].items():
            so = s["share_outside"]
            by = s.get("by_class") or {}
            per_class = " / ".join(_pct((by.get(c) or {}).get("median")) for c in CLASS_NAMES)
            lines.append(
                f"| {label} | {s['n_valid']} of {s['n_films']} | **{_pct(so['median'])}** / {_pct(so['mean'])} / "
                f"{_pct(so['p90'])} | {per_class} | {_pct(s['peak_outside_rate'])} | {_pct(s['uniform_share'])} | "
                f"{_f(s['seconds_per_film'], 2)} |"
            )
        lines.append("")
    else:
        lines += ["No explanation method was run.", ""]
    status = ", ".join(f"{k}: {v}" for k, v in sorted(lungs["status_counts"].items(), key=lambda kv: -kv[1]))
    lines += [
        "**Lung fields.** No lung segmentation model or mask set installs from a package registry here, so the "
        "lung fields are approximated (`pneumolens.audit.lungs`): two lung-shaped polygons in normalised film "
        "coordinates, refined on each film by its dark (aerated) pixels inside the body, convex hull per side; a "
        "side whose area is implausible is mirrored from the other or left as the prior. Its error, checked by eye "
        "on held-out films, is in `docs/audit/README.md`. Shares are therefore approximate: read differences "
        f"between methods and models, not the third digit. Masks cover {lungs['mean_area']:.0%} of the film on "
        f"average; how each film's mask was obtained: {status}.",
        "",
    ]
    if figures.get("lungs"):
        lines += [f"![lungs]({figures['lungs']})", ""]
    secs = m.get("seconds") or {}
    lines += [f"Time: {_f(secs.get('probes'), 0)} s of predictions for the probes, "
              f"{_f(secs.get('total'), 0)} s in all.",
              "", CREDIT, ""]
    path = Path(out) / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
