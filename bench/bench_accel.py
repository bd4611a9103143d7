"""Interleaved A/B of the CPU-training accelerator (``pneumolens.accel``) on the whole training step.

One training step = forward, the focal loss, backward and the fused Adam step of a channels-last
:class:`~pneumolens.model.CnnLstm` on random 128x128 images, set up as ``pneumolens train`` sets
it up (deterministic algorithms on, no NaN fill of new tensors, glibc malloc tuned by
:func:`pneumolens.accel.keep_freed_memory`). Settings:

- ``stock``: the model as defined, stock ``torch.nn`` layers only;
- each swap of :data:`pneumolens.accel.swaps.SWAPS` alone (``--alone`` to time fewer);
- ``kept``: the swaps :func:`pneumolens.accel.accelerate_cpu_training` applies (``--kept`` to try
  another set), unless that is one swap already timed alone.

Every setting has its own copy of one seeded model and its own optimiser, all in ONE process, and
the settings take turns round by round (order reversed every other round); after each switch one
untimed step, then ``--steps`` timed ones. The machine is shared, so each round also records how
many cores other processes kept busy meanwhile (from ``/proc/stat``), and rounds in which they
took more than ``--quiet`` cores are left out of the figures when at least three quiet rounds
remain (``--wait-quiet S`` waits up to S seconds for a quiet moment before each round).
Reported per batch size: median wall time per step and images/s of each setting, the median and
range over rounds of ``stock time / setting time`` measured within the same round, the fastest
step of each setting, and the median CPU time per step (all threads). A swap is worth keeping at
x1.10 or more at batch 32.

    python bench/bench_accel.py [--batch-sizes 32,8] [--rounds 30] [--steps 1] [--threads 2]
                                [--quiet 0.25] [--wait-quiet S] [--alone dropout,...] [--kept dropout,...]
                                [--out bench/results/accel-ab.md] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pneumolens.accel import keep_freed_memory  # noqa: E402  (before the first large tensor)

MALLOC = keep_freed_memory()

import torch  # noqa: E402

from pneumolens.accel.swaps import KEPT, SWAPS, apply_swaps  # noqa: E402
from pneumolens.losses import focal_loss  # noqa: E402
from pneumolens.model import CnnLstm, ModelConfig  # noqa: E402


def machine() -> str:
    """CPU model, cores and PyTorch build, in one line."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    build = f"MKL {torch.backends.mkl.is_available()}, oneDNN {torch.backends.mkldnn.is_available()}"
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({build})")


class OtherLoad:
    """Cores kept busy by other processes between :meth:`start` and :meth:`stop` (Linux; else None)."""

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        t = os.times()
        return (user + nice + system + irq + softirq + steal) / hz, t.user + t.system, time.perf_counter()

    def start(self) -> None:
        self._t0 = self._sample()

    def stop(self) -> float | None:
        t1 = self._sample()
        if self._t0 is None or t1 is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self._t0, t1))
        return max(0.0, busy - own) / wall if wall > 0 else None


def wait_for_quiet(quiet: float, limit_s: float) -> float:
    """Wait (up to ``limit_s``) for a half-second in which other processes keep at most ``quiet`` cores busy."""
    probe, end = OtherLoad(), time.perf_counter() + limit_s
    while True:
        probe.start()
        time.sleep(0.5)
        other = probe.stop()
        if other is None or other <= quiet or time.perf_counter() >= end:
            return limit_s - max(0.0, end - time.perf_counter())


class Setting:
    """One model copy with its swaps and optimiser, stepping on a fixed batch."""

    def __init__(self, name: str, base: CnnLstm, swaps: tuple[str, ...], x: torch.Tensor, y: torch.Tensor) -> None:
        self.name, self.x, self.y = name, x, y
        self.model = copy.deepcopy(base).train()
        self.swapped = apply_swaps(self.model, swaps)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)
        self.wall: list[float] = []  # per round: median wall seconds per step
        self.cpu: list[float] = []  # per round: median CPU seconds per step (all threads of the process)

    def step(self) -> None:
        self.opt.zero_grad()
        focal_loss(self.model(self.x), self.y, 2.0, 0.5).backward()
        self.opt.step()


def run_batch(batch: int, rounds: int, steps: int, alone: tuple[str, ...], kept: tuple[str, ...], quiet: float,
              wait_s: float) -> dict:
    torch.manual_seed(0)
    base = CnnLstm(ModelConfig()).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 1, 128, 128).contiguous(memory_format=torch.channels_last)
    y = (torch.arange(batch) % 2).float()
    plan = {"stock": ()} | {name: (name,) for name in alone}
    if kept not in plan.values():  # one swap kept: its own row is the kept setting
        plan["kept"] = kept
    settings = [Setting(name, base, swaps, x, y) for name, swaps in plan.items()]
    for s in settings:  # first steps allocate and tune: untimed
        s.step()
        s.step()
    load, other = OtherLoad(), []
    for r in range(rounds):
        if wait_s > 0:
            wait_for_quiet(quiet, wait_s)
        load.start()
        for s in settings if r % 2 == 0 else settings[::-1]:
            s.step()  # after the switch: untimed
            times, cpu = [], []
            for _ in range(steps):
                t, c = time.perf_counter(), time.process_time()
                s.step()
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            s.wall.append(statistics.median(times))
            s.cpu.append(statistics.median(cpu))
        other.append(load.stop())
        print(f"batch {batch} round {r + 1}/{rounds}: " + ", ".join(
            f"{s.name} {1000 * s.wall[-1]:.0f} ms" for s in settings) + f"; other load {other[-1]}", file=sys.stderr)
    # Rounds in which other processes took more than `quiet` cores are left out, if enough remain.
    used = [i for i, v in enumerate(other) if v is not None and v <= quiet]
    quiet_rounds = len(used) >= 3
    if not quiet_rounds:
        used = list(range(rounds))
    result = {}
    for s in settings:
        wall, cpu = [s.wall[i] for i in used], [s.cpu[i] for i in used]
        ratios = [settings[0].wall[i] / s.wall[i] for i in used]
        cpu_ratios = [settings[0].cpu[i] / s.cpu[i] for i in used]
        med = statistics.median(wall)
        result[s.name] = {"swaps": list(plan[s.name]), "modules": s.swapped, "median_s": med,
                          "images_per_s": batch / med, "best_s": min(s.wall), "ratio_median": statistics.median(ratios),
                          "ratio_min": min(ratios), "ratio_max": max(ratios), "median_cpu_s": statistics.median(cpu),
                          "cpu_ratio_median": statistics.median(cpu_ratios), "wall_s": s.wall, "cpu_s": s.cpu}
    best_stock = result["stock"]["best_s"]
    for v in result.values():
        v["best_ratio"] = best_stock / v["best_s"]
    return {"settings": result, "other_load": other, "rounds_used": used, "quiet_rounds": quiet_rounds}


def table(batch: int, r: dict, steps: int, rounds: int, quiet: float) -> list[str]:
    loads = [v for v in r["other_load"] if v is not None]
    used = r["rounds_used"]
    load = (f"other processes kept {statistics.median(loads):.2f} cores busy (median over rounds; "
            f"range {min(loads):.2f}-{max(loads):.2f})") if loads else "other-process load unknown"
    which = (f"the {len(used)} rounds in which other processes took at most {quiet:.2f} cores" if r["quiet_rounds"]
             else f"all rounds (fewer than 3 had other processes at {quiet:.2f} cores or less)")
    lines = [f"### Batch {batch}", "",
             f"{rounds} rounds x {steps} timed step(s) per setting; {load}. Figures from {which}; "
             "'best' is the fastest step of all rounds.", "",
             "| setting | swaps | ms/step (median) | images/s | x stock, per-round median | per-round range "
             "| best ms/step (x stock) | CPU ms/step (x stock) | keep? (at batch 32) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, s in r["settings"].items():
        decides = batch == 32 and name not in ("stock", "kept")  # the rule: x1.10 on the whole step at batch 32
        verdict = ("yes" if s["ratio_median"] >= 1.10 else "no") if decides else ""
        lines.append(f"| {name} | {', '.join(s['swaps']) or '-'} | {1000 * s['median_s']:.0f} "
                     f"| {s['images_per_s']:.1f} | x{s['ratio_median']:.2f} "
                     f"| x{s['ratio_min']:.2f}-x{s['ratio_max']:.2f} "
                     f"| {1000 * s['best_s']:.0f} (x{s['best_ratio']:.2f}) "
                     f"| {1000 * s['median_cpu_s']:.0f} (x{s['cpu_ratio_median']:.2f}) | {verdict} |")
    return lines + [""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="32,8")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps", type=int, default=1, help="timed steps per setting and round (default: 1)")
    ap.add_argument("--quiet", type=float, default=0.25,
                    help="leave out rounds in which other processes kept more cores busy (default: 0.25)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each round, wait up to S seconds for other processes to go quiet (default: 0)")
    ap.add_argument("--alone", default=",".join(SWAPS), help="the swaps to time one by one (default: all of SWAPS)")
    ap.add_argument("--kept", default=",".join(KEPT), help="the swaps of the 'kept' setting (default: KEPT)")
    ap.add_argument("--out", type=Path, help="write the Markdown report here")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # as the Trainer's deterministic=True
    torch.utils.deterministic.fill_uninitialized_memory = False  # as the training module's setup
    kept = tuple(k for k in args.kept.split(",") if k)
    alone = tuple(k for k in args.alone.split(",") if k)
    load0 = os.getloadavg()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    results = {b: run_batch(b, args.rounds, args.steps, alone, kept, args.quiet, args.wait_quiet) for b in batches}
    load1 = os.getloadavg()
    lines = ["# CPU-training accelerator: interleaved A/B on the whole training step", "",
             f"`python bench/bench_accel.py --batch-sizes {args.batch_sizes} --rounds {args.rounds} "
             f"--steps {args.steps} --threads {args.threads} --quiet {args.quiet} --wait-quiet {args.wait_quiet} "
             f"--alone {','.join(alone)} "
             f"--kept {','.join(kept)}`", "",
             f"Machine: {machine()}. {args.threads} torch threads; malloc tuning "
             f"{'on' if MALLOC else 'NOT applied'}; load average {load0[0]:.2f} at start, {load1[0]:.2f} at end.", "",
             "Step: forward + focal loss + backward + fused Adam, channels-last, 128x128, deterministic "
             "algorithms, no NaN fill. `kept` = " + (", ".join(kept) or "none") + ".", ""]
    for b, r in results.items():
        lines += table(b, r, args.steps, args.rounds, args.quiet)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "threads": args.threads, "kept": kept,
                                         "load_average": [load0, load1], "batches": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
