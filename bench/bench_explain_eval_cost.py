"""What ``pneumolens explain-eval`` costs per image: the figures its ``--help`` and first line quote.

Usage::

    python bench/bench_explain_eval_cost.py                  # shipped model, 3 validation films, 1 thread
    python bench/bench_explain_eval_cost.py --images 5 --threads 2 --out /tmp/costs.json

Measures, on real validation films (needs the dataset), with explain-eval's own settings and
fast forwards:

* each method's seconds per image (every film explained on its own, after one warm-up call);
* the deletion / reverse-deletion / insertion curves of one map at ``--steps 50``;
* one randomisation stage's set-up (re-initialised copy and its fast forwards).

Writes ``pneumolens/explain/explain_eval_costs.json`` (read by :mod:`pneumolens.explain_cost`):
for each, the lowest and highest time seen, widened by ``--margin`` either side, since a rough
range is what a user can plan with; plus the machine, the thread count and the load average
before and after (on a shared machine the figures are only as good as that load). A markdown
summary goes to ``bench/results/explain-eval-cost.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pneumolens.cache import load_images
from pneumolens.checkpoint import load_checkpoint
from pneumolens.commands._common import data_root
from pneumolens.commands.explain_eval import DEFAULT_METHODS, pick_balanced
from pneumolens.evaluate import split_records
from pneumolens.explain import explain
from pneumolens.explain.base import as_batch
from pneumolens.explain.faithfulness import available_stages, deletion_insertion, random_map, randomised_copy
from pneumolens.explain.runner import fast_forwards
from pneumolens.explain.settings import SETTINGS
from pneumolens.explain_cost import COSTS_FILE

STEPS = 50


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def load() -> float:
    return os.getloadavg()[0]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--images", type=int, default=3, help="validation films (default: 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    ap.add_argument("--margin", type=float, default=0.25, help="widen the range by this fraction (default: 0.25)")
    ap.add_argument("--out", type=Path, default=COSTS_FILE)
    ap.add_argument("--md", type=Path, default=ROOT / "bench" / "results" / "explain-eval-cost.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load()
    ckpt = load_checkpoint(args.checkpoint)
    root = data_root(args.data)
    records = split_records(root, "validation", ckpt.provenance)
    idx = pick_balanced([r.label for r in records], args.images, 0)
    images = load_images([records[i].path for i in idx], ckpt.input_size, progress=False).images
    names = DEFAULT_METHODS.split(",")
    forward, grad_forward = fast_forwards(ckpt.model, ["lime", *names])
    params = {n: ({"background": ckpt.shap_background} if n == "shap" and ckpt.shap_background is not None else {})
              for n in names}
    methods_s: dict[str, list[float]] = {}
    for name in names:

        def run(i: int, name: str = name) -> None:
            explain(ckpt.model, images[i : i + 1], name, forward=forward, grad_forward=grad_forward, **params[name])

        run(0)  # warm-up
        methods_s[name] = [timed(lambda i=i, run=run: run(i)) for i in range(len(images))]
        print(f"{name}: {', '.join(f'{t:.2f}' for t in methods_s[name])} s", flush=True)
    x = as_batch(images)
    maps = [random_map(ckpt.input_size, s) for s in range(len(names) + 1)]
    curves = [timed(lambda i=i: deletion_insertion(forward, x[i : i + 1], maps, STEPS, ckpt.temperature, 0, bias=ckpt.bias))
              / len(maps) for i in range(len(images))]
    print(f"curves per map: {', '.join(f'{t:.2f}' for t in curves)} s", flush=True)
    stages = available_stages(ckpt.model)
    setup, done = [], []
    for k, stage in enumerate(stages[:2]):
        done += list(stage)
        setup.append(timed(lambda done=tuple(done), k=k: fast_forwards(randomised_copy(ckpt.model, done, 1 + k),
                                                                         names)))
    print(f"stage set-up: {', '.join(f'{t:.2f}' for t in setup)} s", flush=True)
    load_after = load()

    def rng(values: list[float]) -> list[float]:
        return [round(min(values) * (1 - args.margin), 3), round(max(values) * (1 + args.margin), 3)]

    cores = os.cpu_count()
    doc = {
        "script": "bench/bench_explain_eval_cost.py",
        "date": dt.date.today().isoformat(),
        "machine": f"{cores} x {cpu_name()}, {args.threads} torch thread(s)",
        "load": f"load average {load_before:.1f} before, {load_after:.1f} after on {cores} cores"
                + (" (busy)" if max(load_before, load_after) > (cores or 1) else ""),
        "images": len(images),
        "margin": args.margin,
        "steps": STEPS,
        "stages": len(stages),
        "settings": {n: {k: spec.default for k, spec in SETTINGS.get(n, {}).items() if k in ("n_samples", "n_steps")}
                     for n in names},
        "methods_s": {n: rng(v) for n, v in methods_s.items()},
        "curves_per_map_s": rng(curves),
        "stage_setup_s": rng(setup),
        "raw_s": {"methods": methods_s, "curves_per_map": curves, "stage_setup": setup},
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    command = f"python bench/bench_explain_eval_cost.py --images {args.images} --threads {args.threads}"
    lines = [f"# explain-eval cost ({doc['date']})", "", f"`{command}`: {doc['machine']}; {doc['load']}.", "",
             f"| part | seconds per image, each film (raw) | range quoted (±{args.margin:.0%}) |", "|---|---|---|"]
    for n, v in methods_s.items():
        lines.append(f"| {n} | {', '.join(f'{t:.2f}' for t in v)} | {doc['methods_s'][n][0]}–{doc['methods_s'][n][1]} |")
    lines.append(f"| curves, per map ({STEPS} steps) | {', '.join(f'{t:.2f}' for t in curves)} | "
                 f"{doc['curves_per_map_s'][0]}–{doc['curves_per_map_s'][1]} |")
    lines.append(f"| randomisation stage set-up | {', '.join(f'{t:.2f}' for t in setup)} | "
                 f"{doc['stage_setup_s'][0]}–{doc['stage_setup_s'][1]} |")
    args.md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out} and {args.md}")


if __name__ == "__main__":
    main()
