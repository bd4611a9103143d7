"""Staged ONNX Runtime runs against whole-graph runs: the single-threaded inference path, A/B.

``OnnxRunner``'s single-threaded path (``predict_files``, and batches of 16+ images) runs the
conv stage ``FEATURES_CHUNK`` images per call, so its activations stay in the core's cache, and
the LSTM head on a whole chunk. This script alternates, round by round in one process, between

- ``whole``: the whole graph on ``ONNX_CHUNK`` images per call (the code before staging, kept
  below as :class:`WholeGraphRunner`);
- ``staged-N``: the current runner with ``FEATURES_CHUNK = N`` (default N = 1 and 2),

and measures, for each, ``Predictor.predict_files`` on dataset JPEG files (decoding included, the
path ``pneumolens predict`` takes; wall time, and the process's CPU time: the work per image,
which time stolen by other tenants of the VM's host does not inflate) and the runner on decoded
arrays at batch 64 (both cores).
Every round runs every setting once, so the VM's slow and fast minutes fall on all of them alike;
the report gives each setting's median and its per-round ratio to ``whole``.

    python bench/bench_onnx_stages.py [--rounds 8] [--files 512] [--chunks 1,2] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (  # noqa: E402 - the shared benchmark helpers
    DEFAULT_DATA,
    cpu_snapshot,
    jpeg_files,
    machine,
    other_cpu_share,
    reference_gflops,
)

from pneumolens import fast  # noqa: E402
from pneumolens.inference import Predictor  # noqa: E402
from pneumolens.memory import keep_freed_memory  # noqa: E402


class WholeGraphRunner(fast.OnnxRunner):
    """The runner before staging: each single-threaded run is one call of the whole graph."""

    def __init__(self, folded: fast.FoldedCnnLstm) -> None:
        super().__init__(folded)
        self._narrow = fast.onnx_session(folded, "all", 1)

    def _staged(self, arr: np.ndarray) -> np.ndarray:
        return self._run(self._narrow, arr)


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # as the command line does
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset root with train/ (default: %(default)s)")
    ap.add_argument("--checkpoint", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default: %(default)s)")
    ap.add_argument("--files", type=int, default=512, help="JPEG files per predict_files call (default: %(default)s)")
    ap.add_argument("--chunks", default="1,2", help="FEATURES_CHUNK values to compare (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    files = [str(p) for p in jpeg_files(args.data, args.files)]
    if not files:
        print(f"error: no JPEG files under {args.data / 'train'} (use --data)", file=sys.stderr)
        return 2
    chunks = [int(c) for c in args.chunks.split(",")]

    predictor = Predictor(args.checkpoint)
    folded = predictor.fast_model.eager
    runners: dict[str, tuple[fast.OnnxRunner, int]] = {"whole": (WholeGraphRunner(folded), fast.FEATURES_CHUNK)}
    for c in chunks:
        runners[f"staged-{c}"] = (fast.OnnxRunner(folded), c)
    decoded = torch.rand(64, 1, predictor.size, predictor.size, generator=torch.Generator().manual_seed(0))

    def use(name: str) -> fast.OnnxRunner:
        runner, chunk = runners[name]
        fast.FEATURES_CHUNK = chunk
        predictor._fast = fast.FastModel(runner, "onnx", "onnx", folded, 0.0)  # what predict_files will call
        return runner

    for name in runners:  # warm-up, and every setting gives the reference logits
        runner = use(name)
        diff = float((runner(decoded) - folded(decoded)).abs().max())
        if diff > fast.AGREEMENT_TOL:
            print(f"error: {name} differs from the eager model by {diff:.2e}", file=sys.stderr)
            return 1
        predictor.predict_files(files[:64], progress=False)

    gflops_start, snap = reference_gflops(), cpu_snapshot()
    keys = ("predict_files", "predict_files_cpu", "decoded_b64")
    rates: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in runners}
    for r in range(args.rounds):
        for name in runners:
            runner = use(name)
            t0, c0 = time.perf_counter(), time.process_time()
            preds, _ = predictor.predict_files(files, progress=False)
            rates[name]["predict_files"].append(len(preds) / (time.perf_counter() - t0))
            rates[name]["predict_files_cpu"].append(len(preds) / (time.process_time() - c0))
            t0 = time.perf_counter()
            for _ in range(4):
                runner(decoded)
            rates[name]["decoded_b64"].append(4 * len(decoded) / (time.perf_counter() - t0))
        line = " | ".join(f"{n} {v['predict_files'][-1]:.0f} / {v['decoded_b64'][-1]:.0f}" for n, v in rates.items())
        print(f"round {r + 1}/{args.rounds} (predict_files / decoded, images/s): {line}", file=sys.stderr, flush=True)
    other, gflops_end = other_cpu_share(snap, cpu_snapshot()), reference_gflops()

    result = {
        "machine": machine(),
        "reference_gflops": {"start": gflops_start, "end": gflops_end},
        "other_cpu_share": other,
        "files": len(files),
        "rounds": args.rounds,
        "rates": rates,
    }
    base, mach = rates["whole"], result["machine"]
    lines = [
        "# Staged ONNX Runtime runs vs whole-graph runs (`bench/bench_onnx_stages.py`)",
        "",
        f"{mach['cpu']}, {mach['cores']} cores, onnxruntime {mach['onnxruntime']}; "
        f"machine speed {gflops_start:.0f} → {gflops_end:.0f} GFLOP/s (1024x1024 matrix product); "
        f"other processes took {100 * (other or 0):.1f} % of the cores. {args.rounds} interleaved rounds; "
        f"`predict_files` on {len(files)} dataset JPEG files (decoding included; images per second of wall time, "
        "and per CPU-second of the process), decoded: the runner on 64 arrays. Ratios: each round's figure over "
        "`whole`'s in the same round.",
        "",
        "| setting | predict_files, images/s (median) | ratio to whole, per round "
        "| predict_files, images per CPU-second | ratio | decoded batch 64, images/s | ratio |",
        "|---|---:|---|---:|---|---:|---|",
    ]
    for name, v in rates.items():
        cells = []
        for key in keys:
            ratios = [a / b for a, b in zip(v[key], base[key])]
            cells += [f"{statistics.median(v[key]):.0f}", " ".join(f"{x:.2f}" for x in ratios)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "onnx-stages.md").write_text(text)
    (args.out / "onnx-stages.json").write_text(json.dumps(result, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
