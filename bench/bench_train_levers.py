"""What each training-speed lever does to a training step, cumulatively.

Runs the same plain training step (CnnLstm in channels-last, BCE loss, backward, Adam; random
inputs; PyTorch's deterministic algorithms on, as the Trainer's ``deterministic=True`` sets them)
in fresh child processes, alternating between these settings, each adding one lever:

- ``written``: the conv blocks in their written order (ReLU, then max-pool), glibc's malloc
  defaults and ``nn.Dropout`` — the code before these levers;
- ``pool-first``: max-pool before ReLU in training mode (what ``ConvBlock`` does; same values
  and gradients, tested in ``tests/test_model.py``);
- ``keep-memory``: plus :func:`pneumolens.memory.keep_freed_memory` (what the CLI does);
- ``fast-dropout``: plus :class:`pneumolens.dropout.Dropout`'s masks (four per random word)
  instead of ``nn.Dropout``'s one ``bernoulli`` draw per element;
- ``no-nan-fill``: plus ``torch.utils.deterministic.fill_uninitialized_memory = False`` (what
  ``PneumoniaClassifier.setup`` does): deterministic mode no longer fills every new tensor with NaN;
- ``blocked-conv-grad``: plus :class:`pneumolens.conv.Conv2d`'s weight gradients (one GEMM per
  block of image rows) instead of oneDNN's backward-weights kernel;
- ``unrolled-lstm``: plus :class:`pneumolens.lstm.LSTM`'s training pass for the first LSTM (input
  projections in one GEMM, the recurrence step by step) instead of oneDNN's LSTM layer;
- ``folded-first-block``: plus the first block's convolution and BatchNorm as one convolution
  (:mod:`pneumolens.convbn`);
- ``bias-in-product``: plus the convolutions' bias gradients as one more column of the
  weight-gradient product, which is now ``im2col^T @ dY`` (:func:`pneumolens.conv.grads`),
  instead of ``dY^T @ im2col`` and a separate sum over ``dY`` (the previous code, kept below).

By default each setting runs in its own child processes, and the median CPU time per step is
reported (CPU time, not wall time, so that other work on the machine disturbs it less; page
faults count). This VM's speed drifts by a third within minutes, and a process's memory layout
moves small figures by several per cent, so ``--interleaved`` runs every setting but the malloc
one (which a process cannot undo) in one process, switching setting at every step (one untimed
step after each switch), and reports the median wall and CPU time per step on all threads:
the settings then share the machine's slow and fast minutes alike.

    python bench/bench_train_levers.py [--batch-sizes 8,32] [--rounds 3] [--threads 1]
    python bench/bench_train_levers.py --interleaved [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MODES = (
    "written", "pool-first", "keep-memory", "fast-dropout", "no-nan-fill", "blocked-conv-grad", "unrolled-lstm",
    "folded-first-block", "bias-in-product",
)
HEADERS = {
    "written": "written order, glibc malloc, nn.Dropout",
    "pool-first": "+ pool before ReLU",
    "keep-memory": "+ keep freed memory",
    "fast-dropout": "+ fast dropout masks",
    "no-nan-fill": "+ no NaN fill of new tensors",
    "blocked-conv-grad": "+ blocked conv weight gradients",
    "unrolled-lstm": "+ unrolled first LSTM",
    "folded-first-block": "+ first conv and BatchNorm folded",
    "bias-in-product": "+ bias gradient in the weight-gradient product",
}

CHILD = r"""
import json, sys, time
variants = json.loads(sys.argv[1])  # the levers on in each setting; several settings alternate step by step
b, threads, steps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
keep = {"keep-memory" in on for on in variants}
assert len(keep) == 1, "glibc's malloc settings cannot be undone within a process"
from pneumolens.memory import keep_freed_memory
applied = keep_freed_memory() if keep.pop() else None
import torch
from torch import nn
from pneumolens.dropout import Dropout
from pneumolens.conv import Conv2d
from pneumolens.lstm import LSTM
from pneumolens import conv, convbn
from pneumolens.model import ConvBlock
pool_first, fast_dropout, blocked = ConvBlock.forward, Dropout.forward, Conv2d._blocked_backward
unrolled, folds, in_product = LSTM._unrolled, convbn.applies, conv.grads
def separate_bias(grad_out, x, bias):  # the weight gradient as dY^T @ im2col, the bias as its own sum
    n, c_in, h, w = x.shape
    c_out = grad_out.shape[1]
    if c_in == 1:
        return in_product(grad_out, x, bias)
    g = grad_out.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    xp = x.new_zeros(n, h + 2, w + 2, c_in)
    xp[:, 1:-1, 1:-1] = x.permute(0, 2, 3, 1)
    sn, sh, sw = xp.stride()[:3]
    rows = max(1, min(h, conv.BLOCK_POSITIONS // w))
    dw = grad_out.new_zeros(c_out, 9 * c_in)
    for i in range(n):
        for y0 in range(0, h, rows):
            r = min(rows, h - y0)
            cols = xp.as_strided((r, w, 3, 3, c_in), (sh, sw, sh, sw, 1), i * sn + y0 * sh).reshape(r * w, 9 * c_in)
            dw.addmm_(g[i, y0:y0 + r].reshape(r * w, c_out).t(), cols)
    return dw.view(c_out, 3, 3, c_in).permute(0, 3, 1, 2), grad_out.sum((0, 2, 3)) if bias else None
def written(self, x):
    return self.drop(self.pool(self.relu(self.bn(self.conv(x)))))
def use(on):
    ConvBlock.forward = pool_first if "pool-first" in on else written
    Dropout.forward = fast_dropout if "fast-dropout" in on else nn.Dropout.forward
    torch.utils.deterministic.fill_uninitialized_memory = "no-nan-fill" not in on
    Conv2d._blocked_backward = blocked if "blocked-conv-grad" in on else (lambda self, x: False)
    LSTM._unrolled = unrolled if "unrolled-lstm" in on else (lambda self, x, hx: False)
    convbn.applies = folds if "folded-first-block" in on else (lambda *a: False)
    conv.grads = in_product if "bias-in-product" in on else separate_bias
torch.use_deterministic_algorithms(True)  # as the Trainer's deterministic=True
torch.set_num_threads(threads)
from pneumolens.config import load_config
from pneumolens.model import CnnLstm
torch.manual_seed(0)
m = CnnLstm(load_config("seed").model).train().to(memory_format=torch.channels_last)
opt = torch.optim.Adam(m.parameters(), 1e-3)
x = torch.rand(b, 1, 128, 128).contiguous(memory_format=torch.channels_last)
y = (torch.arange(b) % 2).float()
def step():
    opt.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(m(x), y).backward()
    opt.step()
use(variants[0]); step(); step()
cpu, wall = [[] for _ in variants], [[] for _ in variants]
for i in range(steps):
    order = list(range(len(variants)))
    for k in (order if i % 2 == 0 else order[::-1]):
        if len(variants) > 1:
            use(variants[k]); step()
        t, w = time.process_time(), time.perf_counter()
        step()
        cpu[k].append(time.process_time() - t); wall[k].append(time.perf_counter() - w)
print(json.dumps({"applied": applied, "cpu_s": cpu, "wall_s": wall}))
"""


def levers_on(mode: str) -> list[str]:
    """The levers a cumulative setting has on (``written``: none)."""
    return list(MODES[1 : MODES.index(mode) + 1])


def run(variants: list[list[str]], batch: int, threads: int, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PNEUMOLENS_MALLOC", None)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(variants), str(batch), str(threads), str(steps)],
                         capture_output=True, text=True, env=env, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r["applied"] is False:
        raise SystemExit("keep_freed_memory() did not apply on this C library")
    return r


def separate(batches: list[int], rounds: int, steps: int, threads: int) -> tuple[list[str], dict]:
    """Each setting in its own processes, ``rounds`` times alternating: median CPU time per step."""
    rows, result = [], {}
    for b in batches:
        cpu: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(rounds):
            for mode in MODES:
                cpu[mode] += run([levers_on(mode)], b, threads, steps)["cpu_s"][0]
        med = {k: statistics.median(v) for k, v in cpu.items()}
        result[b] = {k: {"median_cpu_s": med[k], "all": v} for k, v in cpu.items()}
        rows.append(f"| {b} | " + " | ".join(
            f"{1000 * med[k]:.0f} ({b / med[k]:.1f} img/CPU-s, x{med['written'] / med[k]:.2f})" for k in MODES) + " |")
    header = ["| batch | " + " | ".join(f"{HEADERS[m]}{': ms/step' if m == 'written' else ''}" for m in MODES) + " |",
              "|---:|" + "---:|" * len(MODES)]
    return header + rows, result


def interleaved(batches: list[int], steps: int, threads: int) -> tuple[list[str], dict]:
    """The settings after ``keep-memory`` (all with it) alternating step by step in one process."""
    modes = [m for m in MODES if m != "keep-memory"]
    variants = [sorted({"keep-memory", *levers_on(m)}) for m in modes]
    rows, result = [], {}
    for b in batches:
        r = run(variants, b, threads, steps)
        wall = [statistics.median(v) for v in r["wall_s"]]
        cpu = [statistics.median(v) for v in r["cpu_s"]]
        result[b] = {m: {"median_wall_s": w, "median_cpu_s": c, "wall_s": ws, "cpu_s": cs}
                     for m, w, c, ws, cs in zip(modes, wall, cpu, r["wall_s"], r["cpu_s"])}
        rows.append(f"| {b} | " + " | ".join(
            f"{1000 * w:.0f} ms, {b / w:.1f} img/s (x{wall[0] / w:.2f}; CPU {1000 * c:.0f} ms)"
            for w, c in zip(wall, cpu)) + " |")
    header = ["| batch | " + " | ".join(
        ("keep freed memory; written order, nn.Dropout: wall per step" if m == "written" else HEADERS[m]) for m in modes)
        + " |", "|---:|" + "---:|" * len(modes)]
    return header + rows, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="8,32")
    ap.add_argument("--rounds", type=int, default=3, help="child processes per setting, alternating (default: 3)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per child and setting (default: 5; 20 with --interleaved)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: 1; all cores with --interleaved)")
    ap.add_argument("--interleaved", action="store_true", help="alternate the settings step by step in one process")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    batches = [int(v) for v in args.batch_sizes.split(",")]
    threads = args.threads or (os.cpu_count() or 1 if args.interleaved else 1)
    steps = args.steps or (20 if args.interleaved else 5)
    load = os.getloadavg()
    if args.interleaved:
        lines, per_batch = interleaved(batches, steps, threads)
        what = f"median of {steps} steps per setting, alternating step by step in one process"
    else:
        lines, per_batch = separate(batches, args.rounds, steps, threads)
        what = f"CPU time, median of {args.rounds} x {steps} steps, one process per setting and round"
    load_end = os.getloadavg()
    print(f"Training step, {threads} thread(s), {what}; load average {load[0]:.2f} -> {load_end[0]:.2f}.\n")
    print("\n".join(lines))
    if args.json:
        result = {"threads": threads, "interleaved": args.interleaved, "steps": steps, "load_start": load,
                  "load_end": load_end, "batches": per_batch}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
