"""Does ``torch.compile`` speed up a training step here? Eager vs compiled, same Lightning steps.

Usage::

    python bench/bench_train_compile.py [--batch-size 32] [--steps 30] [--repeats 2]

Runs real Lightning training steps of the seed recipe (``bench_core.bench_training``) on
synthetic 128x128 films: eager, then with the ``CnnLstm`` compiled by inductor inside the
LightningModule (``configure_model``), then eager again (the machine's drift shows in the
difference between the two eager runs). Compilation time is excluded from images/s and printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import bench_training  # noqa: E402
from bench_explain import bench_images  # noqa: E402

from pneumolens.accel import keep_freed_memory  # noqa: E402
from pneumolens.training.module import PneumoniaClassifier  # noqa: E402


def _compile_model(self: PneumoniaClassifier) -> None:
    if not hasattr(self.model, "_orig_mod"):
        self.model = torch.compile(self.model)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per run (default: 30)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per variant, median reported (default: 2)")
    args = ap.parse_args(argv)
    keep_freed_memory()
    films = torch.from_numpy(bench_images(256, data=None)).float().div_(255)[:, None]

    def run(label: str) -> None:
        t = time.perf_counter()
        r = bench_training(films, args.batch_size, args.steps, warmup=6, repeats=args.repeats)
        print(f"| {label} | {r['images_per_s']:.1f} | {', '.join(f'{v:.1f}' for v in r['runs'])} | "
              f"{time.perf_counter() - t:.0f} |", flush=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}\n")
    print("| variant | images/s (median) | runs | wall s incl. set-up and compilation |")
    print("|---|---:|---|---:|")
    run("eager")
    PneumoniaClassifier.configure_model = _compile_model  # Lightning calls it before fitting
    try:
        run("torch.compile of the CnnLstm")
    finally:
        del PneumoniaClassifier.configure_model
    run("eager again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
