"""Whole-graph ONNX Runtime runs against staged ones, and against another version: the inference path, A/B.

``OnnxRunner``'s single-threaded path (``predict_files``, and batches of 16+ images) runs the
whole exported graph on ``ONNX_CHUNK`` images per call. The alternative measured here
(:class:`StagedRunner`) runs the exported conv stage N images per call, so that its activations
stay in the core's cache, and the exported LSTM head on the whole chunk. This script alternates,
round by round in one process, between

- ``whole``: the library's :class:`~pneumolens.onnx_runtime.OnnxRunner`;
- ``staged-N``: :class:`StagedRunner` with N images per conv-stage call (``--chunks``, default: none);
- ``before`` (with ``--before FILE``): the ``OnnxRunner`` and ``FastModel`` of another version of
  the inference module, e.g. ``git show e6978b6:pneumolens/fast.py > /tmp/fast_before.py`` (the
  last version with a hand-built graph and staged runs), loaded inside the ``pneumolens``
  package so that its relative imports resolve,

and measures, for each, ``Predictor.predict_files`` on dataset JPEG files (decoding included, the
path ``pneumolens predict`` takes; wall time, and the process's CPU time: the work per image,
which time stolen by other tenants of the VM's host does not inflate), the runner on decoded
arrays at batch 64 (both cores), and ``Predictor.predict_bytes`` on one file (decoding included:
one image's latency, the median of 20 calls).
Every round runs every setting once, each round starting from the next setting, so the VM's slow
and fast minutes, and a load that rises or falls during the run, fall on all of them alike; the
report gives each setting's median and its per-round ratio to ``whole``.

    python bench/bench_onnx_stages.py [--rounds 8] [--files 512] [--chunks 1,2] [--before FILE] [--name NAME]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

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

from pneumolens.backends import AGREEMENT_TOL, FastModel  # noqa: E402
from pneumolens.folding import FoldedCnnLstm  # noqa: E402
from pneumolens.inference import Predictor  # noqa: E402
from pneumolens.onnx_export import export_onnx  # noqa: E402
from pneumolens.onnx_runtime import OnnxRunner, onnx_session  # noqa: E402


class StagedRunner(OnnxRunner):
    """Each single-threaded run in two sessions: the conv stage ``features_chunk`` images per call, then the head."""

    def __init__(self, folded: FoldedCnnLstm, features_chunk: int) -> None:
        super().__init__(folded)
        self.features_chunk = features_chunk
        self._features = onnx_session(export_onnx(folded, "features"), 1)
        self._head = onnx_session(export_onnx(folded, "head"), 1)

    def _one_thread(self, arr: np.ndarray) -> np.ndarray:
        fmaps = [self._run(self._features, part) for part in self._split(arr, self.features_chunk)]
        return self._run(self._head, np.concatenate(fmaps))


def load_before(path: Path) -> ModuleType:
    """Another version of the inference module, imported as ``pneumolens._bench_before``."""
    spec = importlib.util.spec_from_file_location("pneumolens._bench_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset root with train/ (default: %(default)s)")
    ap.add_argument("--checkpoint", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default: %(default)s)")
    ap.add_argument("--files", type=int, default=512, help="JPEG files per predict_files call (default: %(default)s)")
    ap.add_argument("--chunks", default="", help="images per conv-stage call of staged runs to compare, e.g. 1,2")
    ap.add_argument("--before", type=Path, default=None, help="another version's fast.py to compare against")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--name", default="onnx-runs", help="report file name, without suffix (default: %(default)s)")
    args = ap.parse_args(argv)
    files = [str(p) for p in jpeg_files(args.data, args.files)]
    if not files:
        print(f"error: no JPEG files under {args.data / 'train'} (use --data)", file=sys.stderr)
        return 2
    chunks = [int(c) for c in args.chunks.split(",") if c]

    predictor = Predictor(args.checkpoint)
    model = predictor.model
    folded = FoldedCnnLstm(model)
    # name -> (what predict_files calls, the runner)
    settings: dict[str, tuple[Any, Any]] = {}
    whole = OnnxRunner(folded)
    settings["whole"] = (FastModel(whole, "onnx", "onnx", folded, 0.0), whole)
    for c in chunks:
        runner = StagedRunner(folded, c)
        settings[f"staged-{c}"] = (FastModel(runner, "onnx", "onnx", folded, 0.0), runner)
    if args.before:
        old = load_before(args.before)
        old_folded = old.FoldedCnnLstm(model)
        runner = old.OnnxRunner(old_folded)
        settings["before"] = (old.FastModel(runner, "onnx", "onnx", old_folded, 0.0), runner)
    decoded = torch.rand(64, 1, predictor.size, predictor.size, generator=torch.Generator().manual_seed(0))
    one_file = Path(files[0]).read_bytes()

    def use(name: str) -> Any:
        fast, runner = settings[name]
        predictor._fast = fast  # what predict_files and predict_bytes will call
        return runner

    for name in settings:  # warm-up, and every setting gives the reference logits
        runner = use(name)
        diff = float((runner(decoded) - folded(decoded)).abs().max())
        if diff > AGREEMENT_TOL:
            print(f"error: {name} differs from the eager model by {diff:.2e}", file=sys.stderr)
            return 1
        predictor.predict_files(files[:64], progress=False)

    gflops_start, snap = reference_gflops(), cpu_snapshot()
    keys = ("predict_files", "predict_files_cpu", "decoded_b64", "one_file_ms")
    rates: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in settings}
    names = list(settings)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # each setting leads a round in turn
            runner = use(name)
            t0, c0 = time.perf_counter(), time.process_time()
            preds, _ = predictor.predict_files(files, progress=False)
            rates[name]["predict_files"].append(len(preds) / (time.perf_counter() - t0))
            rates[name]["predict_files_cpu"].append(len(preds) / (time.process_time() - c0))
            t0 = time.perf_counter()
            for _ in range(4):
                runner(decoded)
            rates[name]["decoded_b64"].append(4 * len(decoded) / (time.perf_counter() - t0))
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                predictor.predict_bytes(one_file)
                times.append(time.perf_counter() - t0)
            rates[name]["one_file_ms"].append(1000 * statistics.median(times))
        line = " | ".join(
            f"{n} {v['predict_files'][-1]:.0f} / {v['decoded_b64'][-1]:.0f} / {v['one_file_ms'][-1]:.1f} ms"
            for n, v in rates.items()
        )
        print(f"round {r + 1}/{args.rounds} (predict_files / decoded, images/s; one file): {line}", file=sys.stderr)
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
        f"# Whole-graph ONNX Runtime runs vs other settings (`bench/bench_onnx_stages.py`, {args.name})",
        "",
        f"{mach['cpu']}, {mach['cores']} cores, onnxruntime {mach['onnxruntime']}; "
        f"machine speed {gflops_start:.0f} → {gflops_end:.0f} GFLOP/s (1024x1024 matrix product); "
        f"other processes took {100 * (other or 0):.1f} % of the cores. {args.rounds} interleaved rounds "
        "(each led by the next setting); "
        f"`predict_files` on {len(files)} dataset JPEG files (decoding included; images per second of wall time, "
        "and per CPU-second of the process), decoded: the runner on 64 arrays, one file: `predict_bytes` "
        "(decoding included, median of 20). Ratios: each round's figure over `whole`'s in the same round.",
        "",
        "| setting | predict_files, images/s (median) | ratio to whole, per round "
        "| predict_files, images per CPU-second | ratio | decoded batch 64, images/s | ratio "
        "| one file, ms | ratio |",
        "|---|---:|---|---:|---|---:|---|---:|---|",
    ]
    for name, v in rates.items():
        cells = []
        for key in keys:
            ratios = [a / b for a, b in zip(v[key], base[key])]
            median = f"{statistics.median(v[key]):.{1 if key == 'one_file_ms' else 0}f}"
            cells += [median, " ".join(f"{x:.2f}" for x in ratios)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
