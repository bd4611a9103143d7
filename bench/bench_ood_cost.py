"""What the out-of-distribution guard adds to ``predict``: ``predict_files`` with and without it.

Interleaved A/B in one process on the same files (the shipped model, files of the training
split, no decoded-array cache): each round runs both settings, in alternating order, and the
report gives per-round wall and CPU time per image, the per-round ratios and their medians,
the guard's own cost on the decoded inputs, and the machine's load before and after.

    .venv/bin/python bench/bench_ood_cost.py [--data DIR] [--files 512] [--rounds 6] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pneumolens.cache import load_images  # noqa: E402
from pneumolens.inference import Predictor  # noqa: E402


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "chest_xray")
    ap.add_argument("--files", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    files = sorted((args.data / "train").rglob("*.jpeg"))
    if len(files) < args.files:
        sys.exit(f"need {args.files} films under {args.data}/train, found {len(files)}")
    rng = np.random.default_rng(0)
    files = [files[i] for i in sorted(rng.choice(len(files), args.files, replace=False))]
    predictor = Predictor()
    guard = predictor.ood
    if guard is None:
        sys.exit("the shipped model has no out-of-distribution guard")
    load_before = os.getloadavg()

    def run(with_guard: bool) -> None:
        predictor.ood = guard if with_guard else None
        preds, bad = predictor.predict_files(files, progress=False)
        assert not bad and len(preds) == len(files)
        assert (preds[0].in_distribution is not None) == with_guard

    run(True), run(False)  # warm-up: the fast model, the thread pool, the page cache
    rounds = []
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        times = {flag: timed(lambda flag=flag: run(flag)) for flag in order}
        n = len(files)
        rounds.append({
            "order": ["guard" if f else "no guard" for f in order],
            "guard_wall_ms": 1e3 * times[True][0] / n, "plain_wall_ms": 1e3 * times[False][0] / n,
            "guard_cpu_ms": 1e3 * times[True][1] / n, "plain_cpu_ms": 1e3 * times[False][1] / n,
            "loadavg_1min": os.getloadavg()[0],
        })
        rr = rounds[-1]
        rr["wall_ratio"] = rr["guard_wall_ms"] / rr["plain_wall_ms"]
        rr["cpu_ratio"] = rr["guard_cpu_ms"] / rr["plain_cpu_ms"]
        print(f"round {r + 1}: wall {rr['plain_wall_ms']:.2f} -> {rr['guard_wall_ms']:.2f} ms/img "
              f"(x{rr['wall_ratio']:.3f}), CPU {rr['plain_cpu_ms']:.2f} -> {rr['guard_cpu_ms']:.2f} ms/img "
              f"(x{rr['cpu_ratio']:.3f}), load {rr['loadavg_1min']:.2f}", flush=True)
    predictor.ood = guard
    inputs = load_images([str(f) for f in files], predictor.size, use_cache=False, workers=1, progress=False).images
    guard.flags(inputs[:32])
    own = []
    for _ in range(5):
        own.append(timed(lambda: [guard.flags(inputs[i : i + 32]) for i in range(0, len(inputs), 32)]))
    own_wall = 1e3 * float(np.median([w for w, _ in own])) / len(inputs)
    own_cpu = 1e3 * float(np.median([c for _, c in own])) / len(inputs)
    med = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0] if k not in ("order",)}
    result = {
        "files": len(files), "rounds": rounds, "median": med,
        "guard_alone_ms_per_image": {"wall": own_wall, "cpu": own_cpu, "batch": 32},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "input_size": predictor.size, "backend": predictor.backend,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ood-cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"], indent=2))
    print(f"guard alone: {own_wall:.3f} ms/img wall, {own_cpu:.3f} ms/img CPU (batches of 32)")


if __name__ == "__main__":
    main()
