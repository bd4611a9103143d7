"""Store a GradientSHAP background (prototype training films at the model's input size) inside a checkpoint.

    python scripts/add_shap_background.py pneumolens/weights/model.pt [--data DIR] [--n 32] [--seed 0]

Reads every film of the training side of the checkpoint's own patient-level split of
``DIR/train`` (never a validation or test film), summarises them as ``--n`` prototypes — the
k-means centroids, each the mean of many films, so no patient's film is stored — and re-saves the
checkpoint with them under ``shap_background`` (uint8 (K, S, S): 32 at 128 x 128 are 0.5 MB),
everything else unchanged (checked after writing). The CLI (``pneumolens explain``), the web
service, the Python API and ``explain-eval`` then all explain SHAP against these prototypes.
Derived from Kermany et al. 2018 (CC BY 4.0): credit the dataset wherever the checkpoint is shared.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from pneumolens.checkpoint import load_checkpoint, save_checkpoint
from pneumolens.commands._common import data_root
from pneumolens.explain.shap import build_background, prototype_background


def _same(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def add_background(checkpoint: Path, data: str | None, n: int = 32, seed: int = 0) -> int:
    """Re-save ``checkpoint`` with ``n`` training films as its SHAP background; returns the bytes added."""
    before = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt = load_checkpoint(checkpoint)
    prov = ckpt.provenance
    films = build_background(
        data_root(data), n=10**9, size=ckpt.input_size, seed=seed,  # every training-side film
        val_fraction=float(prov.get("val_fraction", 0.1)), split_seed=int(prov.get("split_seed", 0)),
    )
    ckpt.shap_background, counts = prototype_background(films, k=n, seed=seed)
    print(f"{len(films)} training films -> {n} prototypes of {counts.min()} to {counts.max()} films each")
    size_before = checkpoint.stat().st_size
    save_checkpoint(ckpt, checkpoint)
    after = torch.load(checkpoint, map_location="cpu", weights_only=True)
    changed = sorted(k for k in set(before) | set(after)
                     if k != "shap_background" and not _same(before.get(k), after.get(k)))
    if changed:
        raise SystemExit(f"{checkpoint}: re-saving changed {', '.join(changed)}; restore it from git")
    return checkpoint.stat().st_size - size_before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", default=None, help="dataset root (default: as the CLI finds it)")
    ap.add_argument("--n", type=int, default=32, help="films (default: 32)")
    ap.add_argument("--seed", type=int, default=0, help="which films (default: 0)")
    args = ap.parse_args()
    added = add_background(args.checkpoint, args.data, args.n, args.seed)
    print(f"{args.checkpoint}: stored {args.n} prototype films as its SHAP background (+{added / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
