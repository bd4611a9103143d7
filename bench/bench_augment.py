"""Cost of the training augmentation per batch, for each preset and for each shortcut breaker alone.

Times :class:`pneumolens.augment.Augment` on a random float batch (B, 1, S, S), alternating the
settings round by round so that drift of the machine's speed hits them alike, and prints the
median milliseconds per batch as a markdown table (``--out`` also writes it to a file).

    python bench/bench_augment.py --batch 32 --size 128 --rounds 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from pneumolens.audit.lungs import prior_lungs
from pneumolens.augment import Augment, AugmentConfig, lung_keep_weights
from pneumolens.config import PRESETS, load_config

#: One shortcut breaker at a time, on top of no augmentation at all.
ALONE = {
    "crop only": {"crop": 0.5},
    "erase only": {"erase": 0.5},
    "marker only": {"marker": 0.5},
    "gamma only": {"gamma": 0.4},
    "noise only": {"noise": 0.03},
    "swap only": {"swap": 0.5},
}


def settings() -> dict[str, Augment]:
    out = {f"preset {name}": Augment(load_config(name).augment) for name in sorted(PRESETS)}
    off = {"hflip": 0.0, "degrees": 0.0, "zoom": 0.0, "translate": 0.0}
    out.update({name: Augment(AugmentConfig(**off, **knobs)) for name, knobs in ALONE.items()})
    out["preset default without the swap (docs/cv/levers/no-swap.yaml)"] = Augment(
        load_config("default", Path(__file__).resolve().parents[1] / "docs" / "cv" / "levers" / "no-swap.yaml").augment
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.rand(args.batch, 1, args.size, args.size, generator=torch.Generator().manual_seed(0))
    prior = torch.from_numpy(prior_lungs((args.size, args.size)))[None, None]
    masks = (lung_keep_weights(prior) * 255).round().to(torch.uint8).expand(args.batch, 1, -1, -1)  # as served
    augs = settings()
    times: dict[str, list[float]] = {name: [] for name in augs}
    for r in range(args.rounds + 2):
        for name, aug in augs.items():
            torch.manual_seed(r)
            t0 = time.perf_counter()
            aug(x, masks=masks if aug.config.needs_lung_masks else None)
            if r >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - t0)
    lines = [
        f"Augmentation cost per batch (batch {args.batch}, {args.size}x{args.size}, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds)",
        "",
        "| setting | ms per batch |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {1e3 * statistics.median(t):.2f} |" for name, t in times.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
