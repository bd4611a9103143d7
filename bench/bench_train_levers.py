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
  ``PneumoniaClassifier.setup`` does): deterministic mode no longer fills every new tensor with NaN.

It reports the median CPU time per step (CPU time, not wall time, so that other work on the
machine disturbs it less; page faults count).

    python bench/bench_train_levers.py [--batch-sizes 8,32] [--rounds 3] [--threads 1]
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

MODES = ("written", "pool-first", "keep-memory", "fast-dropout", "no-nan-fill")

CHILD = r"""
import json, sys, time
on = set(sys.argv[1].split(","))  # the levers turned on
from pneumolens.memory import keep_freed_memory
applied = keep_freed_memory() if "keep-memory" in on else None
import torch
from torch import nn
torch.use_deterministic_algorithms(True)
torch.utils.deterministic.fill_uninitialized_memory = "no-nan-fill" not in on
if "pool-first" not in on:
    from pneumolens.model import ConvBlock
    ConvBlock.forward = lambda self, x: self.drop(self.pool(self.relu(self.bn(self.conv(x)))))
if "fast-dropout" not in on:
    from pneumolens.dropout import Dropout
    Dropout.forward = nn.Dropout.forward
torch.set_num_threads(int(sys.argv[3]))
from pneumolens.config import load_config
from pneumolens.model import CnnLstm
b = int(sys.argv[2])
torch.manual_seed(0)
m = CnnLstm(load_config("seed").model).train().to(memory_format=torch.channels_last)
opt = torch.optim.Adam(m.parameters(), 1e-3)
x = torch.rand(b, 1, 128, 128).contiguous(memory_format=torch.channels_last)
y = (torch.arange(b) % 2).float()
def step():
    opt.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(m(x), y).backward()
    opt.step()
step(); step()
cpu = []
for _ in range(int(sys.argv[4])):
    t = time.process_time(); step(); cpu.append(time.process_time() - t)
print(json.dumps({"applied": applied, "cpu_s": cpu}))
"""


def run(mode: str, batch: int, threads: int, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PNEUMOLENS_MALLOC", None)
    levers = ",".join(MODES[1 : MODES.index(mode) + 1])
    out = subprocess.run([sys.executable, "-c", CHILD, levers, str(batch), str(threads), str(steps)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="8,32")
    ap.add_argument("--rounds", type=int, default=3, help="child processes per setting, alternating (default: 3)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per child (default: 5)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    load = os.getloadavg()
    rows, result = [], {"threads": args.threads, "load_start": load, "batches": {}}
    for b in (int(v) for v in args.batch_sizes.split(",")):
        cpu: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(args.rounds):
            for mode in cpu:
                r = run(mode, b, args.threads, args.steps)
                if r["applied"] is False:
                    print("keep_freed_memory() did not apply on this C library", file=sys.stderr)
                    return 1
                cpu[mode] += r["cpu_s"]
        med = {k: statistics.median(v) for k, v in cpu.items()}
        result["batches"][b] = {k: {"median_cpu_s": med[k], "all": v} for k, v in cpu.items()}
        base = med["written"]
        rows.append(f"| {b} | " + " | ".join(
            f"{1000 * med[k]:.0f} ({b / med[k]:.1f} img/CPU-s, x{base / med[k]:.2f})" for k in cpu) + " |")
    load_end = os.getloadavg()
    result["load_end"] = load_end
    print(f"Training step CPU time, {args.threads} thread(s), median of {args.rounds} x {args.steps} steps; "
          f"load average {load[0]:.2f} -> {load_end[0]:.2f}.\n")
    print("| batch | written order, glibc malloc, nn.Dropout: ms/step | + pool before ReLU | + keep freed memory "
          "| + fast dropout masks | + no NaN fill of new tensors |")
    print("|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
