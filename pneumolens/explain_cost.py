"""What an ``explain-eval`` run will cost, from per-image timings measured on a real machine.

The seconds are data, not code: ``bench/bench_explain_eval_cost.py`` measures them (each
method on a few validation films, the deletion / insertion curves per map, a randomisation
stage's set-up) and writes :data:`COSTS_FILE` with the machine and how busy it was. This module
only reads that file and adds the parts up, so ``explain-eval --help`` and the run's first line
can say what to expect. Torch-free: ``--help`` must stay fast.

Cost model of a run with N images, M methods, ``--steps`` T and ``--sanity-n`` K over G stages:

* per image: the M methods' seconds + (M + 1) maps' curves (the random map's too), the curves
  scaling with T + 1 points;
* randomisation: K images x G stages x the methods' seconds, + G stage set-ups (re-initialised
  copy and its fast forwards);
* a method's seconds scale with its ``n_samples`` / ``n_steps`` against the measured settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

#: Beside the explanation modules; this module stays outside that package, whose import loads torch.
COSTS_FILE = Path(__file__).resolve().parent / "explain" / "explain_eval_costs.json"

#: Settings that a method's time grows in proportion to.
SCALING = ("n_samples", "n_steps")


def load_costs(path: str | Path = COSTS_FILE) -> dict[str, Any] | None:
    """The measured costs, or None when the file is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "methods_s" in data else None


def method_seconds(costs: Mapping[str, Any], name: str, params: Mapping[str, Any] | None = None) -> tuple[float, float] | None:
    """(low, high) seconds per image for a method with these settings; None if never measured."""
    measured = costs["methods_s"].get(name)
    if measured is None:
        return None
    lo, hi = float(measured[0]), float(measured[1])
    settings = costs.get("settings", {}).get(name, {})
    for key in SCALING:
        if params and key in params and key in settings and settings[key]:
            factor = float(params[key]) / float(settings[key])
            lo, hi = lo * factor, hi * factor
    return lo, hi


def estimate(
    costs: Mapping[str, Any],
    methods: Sequence[tuple[str, Mapping[str, Any]]],
    n: int,
    sanity_n: int,
    steps: int = 50,
) -> dict[str, tuple[float, float]]:
    """Seconds (low, high): ``per_image``, ``images`` (all N), ``randomisation`` and ``total``.

    Methods never measured count as 0 (the caller says which, see :func:`unmeasured`).
    """
    per_method = [method_seconds(costs, name, params) or (0.0, 0.0) for name, params in methods]
    explain_lo, explain_hi = sum(a for a, _ in per_method), sum(b for _, b in per_method)
    curve = costs["curves_per_map_s"]
    scale = (steps + 1) / (int(costs.get("steps", 50)) + 1)
    maps = len(methods) + 1
    per_image = (explain_lo + maps * curve[0] * scale, explain_hi + maps * curve[1] * scale)
    k = min(int(sanity_n), int(n))
    stages = int(costs.get("stages", 8))
    setup = costs.get("stage_setup_s", [0.0, 0.0])
    rnd = (k * stages * explain_lo + stages * setup[0], k * stages * explain_hi + stages * setup[1]) if k else (0.0, 0.0)
    images = (n * per_image[0], n * per_image[1])
    return {"per_image": per_image, "images": images, "randomisation": rnd,
            "total": (images[0] + rnd[0], images[1] + rnd[1])}


def unmeasured(costs: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """The methods of ``names`` the cost file has no timing for."""
    return [n for n in names if n not in costs["methods_s"]]


def duration(seconds: float) -> str:
    """``45 s``, ``7 min``, ``2.5 h``: rough on purpose."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def span(lo: float, hi: float) -> str:
    """A rough range: ``6–9 min`` (the larger unit for both ends)."""
    a, b = duration(lo), duration(hi)
    unit_a, unit_b = a.split()[-1], b.split()[-1]
    if unit_a == unit_b:
        return f"{a.split()[0]}–{b}" if a != b else b
    return f"{a}–{b}"


def _seconds(lo: float, hi: float) -> str:
    fmt = (lambda v: f"{v:.2f}") if hi < 1 else (lambda v: f"{v:.1f}")
    return f"{fmt(lo)}–{fmt(hi)} s"


def machine_note(costs: Mapping[str, Any]) -> str:
    """``measured on 2 AMD EPYC cores, 1 torch thread, load average 6.4 (busy) on 2026-11-28``."""
    return (f"measured by {costs.get('script', 'bench/bench_explain_eval_cost.py')} on {costs.get('machine', '?')}, "
            f"{costs.get('load', 'load unknown')}, {costs.get('date', '')}").rstrip(", ")


def help_text(costs: Mapping[str, Any] | None) -> str:
    """The cost paragraph of ``explain-eval --help``."""
    if costs is None:
        return "Expected cost: not measured in this install (run bench/bench_explain_eval_cost.py)."
    per = ", ".join(f"{name} {_seconds(*method_seconds(costs, name))}"  # type: ignore[misc]
                    for name in costs["methods_s"])
    curve = costs["curves_per_map_s"]
    stages = int(costs.get("stages", 8))
    setup = costs.get("stage_setup_s", [0.0, 0.0])
    return (f"Expected cost, roughly (seconds per image; {machine_note(costs)}): {per}; the deletion and "
            f"insertion curves {_seconds(*curve)} per method and image (at --steps {costs.get('steps', 50)}). "
            f"The randomisation test (--sanity-n K) recomputes every method's map on K images for each of "
            f"{stages} stages: K x {stages} x the methods' seconds, plus {_seconds(*setup)} per stage; at the "
            f"defaults it is most of the run. The first line of a run gives its own estimate.")


def first_line(
    costs: Mapping[str, Any] | None,
    methods: Sequence[tuple[str, Mapping[str, Any]]],
    n: int,
    sanity_n: int,
    steps: int,
) -> str:
    """What a run prints before it starts: its size and the expected time."""
    k = min(int(sanity_n), int(n))
    size = (f"{n} image(s) x {len(methods)} method(s)"
            + (f", randomisation test on {k} image(s)" if k else ", no randomisation test"))
    if costs is None:
        return f"explain-eval: {size}; expected time unknown (no measured costs in this install)"
    e = estimate(costs, methods, n, sanity_n, steps)
    parts = f"images {span(*e['images'])}" + (f", randomisation test {span(*e['randomisation'])}" if k else "")
    missing = unmeasured(costs, [name for name, _ in methods])
    note = f"; not counted (never measured): {', '.join(missing)}" if missing else ""
    return (f"explain-eval: {size}; expect roughly {span(*e['total'])} ({parts}; {machine_note(costs)}){note}")
