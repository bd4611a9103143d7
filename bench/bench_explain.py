"""Per-image cost of each explanation method on the full 128x128 CnnLstm, beside the original's.

Usage::

    python bench/bench_explain.py                       # all methods, 3 images each, random weights
    python bench/bench_explain.py --methods gradcam,shap --repeats 5 --checkpoint runs/x/model.pt
    python bench/bench_explain.py --json bench/results/explain.json

Prints a markdown table: median seconds per image (each image explained on its own, after one
warm-up call), the original's figure from ``reference/seed_baseline.md`` (2 AMD EPYC cores,
TensorFlow 2.21 float32), the goal from issue 4, and the ratio. Costs do not depend on the
weights, so random weights are the default. Images come from the dataset when it is present
(``--data``), else synthetic films. The machine's load average is printed before and after:
on a shared machine, rerun when it is high and quote medians. The CPU-seconds column (this
process, all threads) is less sensitive to other processes than wall time; with
``--threads 1`` it is close to the single-core cost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pneumolens.explain import explain  # noqa: E402
from pneumolens.explain.runner import fast_forwards  # noqa: E402
from pneumolens.model import CnnLstm, ModelConfig  # noqa: E402

#: method -> (label, settings, original's seconds per image or None, goal seconds or None)
CASES = {
    "gradcam": ("Grad-CAM", {}, 0.48, 0.05),
    "shap": ("GradientSHAP (expected gradients, 32 draws)", {}, 5.5, 0.5),
    "lime": ("LIME, 1000 samples", {"n_samples": 1000}, 19.5, 3.0),
    "kernelshap": ("KernelSHAP, 1000 samples", {"n_samples": 1000}, None, 3.0),
    "ig": ("Integrated Gradients, 32 steps, blurred baseline", {}, None, None),
    "occlusion": ("Occlusion, 16 px window, stride 8", {}, None, None),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_avg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def bench_images(n: int, data: str | None, size: int = 128) -> np.ndarray:
    """``n`` images: real films when the dataset is there, else synthetic ones (costs are the same)."""
    try:
        from pneumolens.cache import load_images
        from pneumolens.commands._common import data_root
        from pneumolens.data import find_split

        records = find_split(data_root(data), "train")
        step = max(1, len(records) // n)
        res = load_images([r.path for r in records[::step][:n]], size, progress=False)
        if res.images.shape[0] == n:
            return res.images
    except Exception:  # no dataset here: synthetic films cost the same
        pass
    rng = np.random.default_rng(0)
    yy = np.mgrid[0:size, 0:size][0] / size
    return np.stack([np.clip(60 + 120 * yy + rng.normal(0, 20, (size, size)), 0, 255) for _ in range(n)]).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(CASES), help="comma-separated (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="images timed per method (default: 3)")
    p.add_argument("--checkpoint", default=None, help="time this checkpoint's model (default: random weights)")
    p.add_argument("--data", default=None, help="dataset root for real films (default: the shared copy if present)")
    p.add_argument("--plain", action="store_true",
                   help="explain with the model itself (no folded / ONNX copies): the unaccelerated reference")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in CASES]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(CASES)}")
    if args.checkpoint:
        from pneumolens.checkpoint import load_checkpoint

        model = load_checkpoint(args.checkpoint).model
    else:
        torch.manual_seed(0)
        model = CnnLstm(ModelConfig()).eval()
    images = bench_images(args.repeats + 1, args.data)
    load_before = load_avg()
    t0 = time.perf_counter()
    forward, grad_forward = (None, None) if args.plain else fast_forwards(model, methods)
    backend = "the model itself" if args.plain else (
        f"perturbations: {getattr(forward, 'backend', 'model')}; input gradients: "
        f"{'BatchNorm-folded channels-last copy' if grad_forward is not None else 'model'}")
    setup_s = time.perf_counter() - t0
    rows = []
    for m in methods:
        label, params, original, goal = CASES[m]
        kw = dict(forward=forward, grad_forward=grad_forward, **params)
        explain(model, images[:1], m, **kw)  # warm-up: imports, first-call allocations
        times, cpu = [], []
        for i in range(1, args.repeats + 1):
            c0 = time.process_time()
            times.append(explain(model, images[i : i + 1], m, seed=i, **kw).elapsed_s)
            cpu.append(time.process_time() - c0)
        med, med_cpu = statistics.median(times), statistics.median(cpu)
        rows.append({"method": m, "label": label, "median_s": med, "times_s": times, "cpu_s": med_cpu,
                     "original_s": original, "goal_s": goal})
        print(f"  {m}: {med:.3f} s wall, {med_cpu:.3f} s CPU (runs: {', '.join(f'{t:.3f}' for t in times)})",
              file=sys.stderr, flush=True)
    print(f"\nMachine: {cpu_name()}, {os.cpu_count()} CPUs visible, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {backend} (setup {setup_s:.1f} s, once per process); "
          f"load average before {load_before}, after {load_avg()}.\n")
    print("| method | PneumoLens s/image (median wall) | CPU s/image (all threads) | original s/image | goal | vs original |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        orig = f"{r['original_s']:.2f}" if r["original_s"] else "–"
        goal = f"≤ {r['goal_s']:.2f}" if r["goal_s"] else "–"
        ratio = f"{r['original_s'] / r['median_s']:.1f}x faster" if r["original_s"] else "–"
        ok = "" if not r["goal_s"] else (" ✓" if r["median_s"] <= r["goal_s"] else " ✗")
        print(f"| {r['label']} | {r['median_s']:.3f}{ok} | {r['cpu_s']:.3f} | {orig} | {goal} | {ratio} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu_name(), "threads": torch.get_num_threads(), "backend": backend,
                                         "load_before": load_before, "load_after": load_avg(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
