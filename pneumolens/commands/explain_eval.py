"""``pneumolens explain-eval``: measure how faithful each explanation method is, on N images of a split.

Parses arguments and calls :func:`pneumolens.explain.evaluation.evaluate_explanations` and
:func:`pneumolens.explain.eval_report.write_eval_report`; nothing else. Its help and its first
line give the expected cost (:mod:`pneumolens.explain_cost`); finished images are kept in
``OUT/partial/`` (:mod:`pneumolens.explain.partial`), so the same command run again after an
interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DatasetError
from ._common import DATA_HELP, data_root

DEFAULT_METHODS = "gradcam,lime,kernelshap,shap,ig,occlusion"
#: NORMAL training films offered as insertion start images (those the model calls normal are used).
INSERTION_FILMS = 16


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..explain_cost import help_text, load_costs
    from .evaluate import SPLITS  # the torch-free copy

    p = subparsers.add_parser(
        "explain-eval",
        help="measure explanation faithfulness: deletion/insertion AUC, randomisation check, agreement, time",
        description=(
            "Explain N images of a split with each method and measure: deletion and insertion AUC (RISE) beside a "
            "random map, the model-parameter randomisation check (Adebayo et al. 2018), agreement between methods, "
            "and the median time per image. Writes metrics.json, report.md, faithfulness.png and examples.png. "
            "Each finished image is kept in OUT/partial/ as it completes: run the same command again after an "
            "interruption and it continues where it stopped. " + help_text(load_costs())
        ),
        epilog="Example: pneumolens explain-eval --split validation --n 50 --out runs/xai-eval "
               "(a quick look: --n 10 --sanity-n 0 --methods gradcam,shap,ig)",
    )
    p.add_argument("--checkpoint", "-c", default=None, help="model.pt or a run folder (default: the shipped model)")
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--split", choices=SPLITS, default="validation",
                   help="validation = the patient-level held-out part of train (default); val, test = official folders")
    p.add_argument("--n", type=int, default=50, help="images to evaluate, half per class where possible (default: 50)")
    p.add_argument("--methods", "-m", default=DEFAULT_METHODS,
                   help=f"comma-separated methods, NAME:KEY=VALUE for settings (default: {DEFAULT_METHODS})")
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed for image choice, methods and random maps (default: 0)")
    p.add_argument("--steps", type=int, default=50, help="points per deletion / insertion curve (default: 50)")
    p.add_argument("--substrate", choices=("black", "blur"), default="black",
                   help="what deleted pixels become: black (RISE, default) or the blurred image")
    p.add_argument("--sanity-n", type=int, default=8,
                   help="images for the randomisation check, which recomputes every map for each re-initialised stage "
                        "(see the cost above); 0 skips it (default: 8)")
    p.add_argument("--n-samples", type=int, default=None, help="samples for lime and kernelshap (default: 1000)")
    p.add_argument("--background-n", type=int, default=32,
                   help="SHAP background images sampled from train when the model stores none (default: 32; a model "
                        "with stored films uses those, as explain and the web service do)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and ONNX Runtime (default: torch's choice; 1 is best when the CPU is shared)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def pick_balanced(labels: list[int], n: int, seed: int) -> list[int]:
    """Indices of ``n`` records, half from each class where possible, seeded, in original order."""
    rng = np.random.default_rng(seed)
    by_class = {c: [i for i, y in enumerate(labels) if y == c] for c in (0, 1)}
    want = {0: n // 2, 1: n - n // 2}
    short = {c: max(0, want[c] - len(by_class[c])) for c in (0, 1)}
    want = {0: want[0] - short[0] + short[1], 1: want[1] - short[1] + short[0]}
    picked = []
    for c in (0, 1):
        k = min(want[c], len(by_class[c]))
        picked += list(rng.choice(by_class[c], size=k, replace=False)) if k else []
    return sorted(int(i) for i in picked)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def insertion_films(root: Path, provenance: dict, size: int, seed: int, exclude: np.ndarray | None) -> np.ndarray:
    """:data:`INSERTION_FILMS` NORMAL films of the model's training side (seeded), none of them in
    ``exclude`` (the SHAP background: a method must not be scored against its own references)."""
    from ..cache import load_images
    from ..evaluate import training_split

    normals = [r for r in training_split(root, provenance)[0] if r.label == 0]
    rng = np.random.default_rng([seed, 1])
    idx = rng.permutation(len(normals))[: 2 * INSERTION_FILMS]
    films = load_images([normals[i].path for i in idx], size, progress=False).images
    if exclude is not None and len(exclude) and len(films):
        same = (films[:, None] == np.asarray(exclude)[None]).reshape(len(films), len(exclude), -1).all(-1).any(1)
        films = films[~same]
    return films[:INSERTION_FILMS]


def run(args: argparse.Namespace) -> int:
    import torch

    from ..cache import load_images
    from ..checkpoint import SHIPPED, load_checkpoint
    from ..evaluate import split_records
    from ..explain_cost import first_line, load_costs
    from ..explain.eval_report import write_eval_report
    from ..explain.evaluation import evaluate_explanations
    from ..explain.partial import PartialResults
    from ..explain.runner import fast_forwards, resolve_background
    from ..explain.shap import build_background
    from .explain import check_layers, parse_methods

    for name in ("n", "steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.sanity_n < 0:
        raise ConfigError(f"--sanity-n must be 0 or more, got {args.sanity_n}")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)  # before the fast copies are built: ONNX Runtime takes the same count
    specs = parse_methods(args.methods, args.n_samples)
    print(first_line(load_costs(), [(s.name, s.params) for s in specs], args.n, args.sanity_n, args.steps),
          flush=True)
    ckpt = load_checkpoint(args.checkpoint)
    check_layers(ckpt.model, specs)
    root = data_root(args.data)
    records = split_records(root, args.split, ckpt.provenance)
    idx = pick_balanced([r.label for r in records], args.n, args.seed)
    loaded = load_images([records[i].path for i in idx], ckpt.input_size, progress=not args.no_progress)
    if loaded.images.shape[0] == 0:
        raise DatasetError(f"{root}: no readable image in split '{args.split}'")
    chosen = [records[idx[k]] for k in loaded.kept]
    prov = ckpt.provenance
    bg, bg_source = resolve_background(None, args.checkpoint, ckpt.input_size, stored=ckpt.shap_background)
    if isinstance(bg, str):  # the model stores no background: sample one from this dataset's training side
        bg = build_background(root, n=args.background_n, size=ckpt.input_size, seed=args.seed,
                              val_fraction=float(prov.get("val_fraction", 0.1)), split_seed=int(prov.get("split_seed", 0)))
        bg_source = f"{len(bg)} training images from {root}/train"
    if any(s.name == "shap" for s in specs):
        specs = [s if s.name != "shap" else type(s)(s.label, s.name, {"background": bg, **s.params}) for s in specs]
    starts = insertion_films(root, prov, ckpt.input_size, args.seed, bg)
    ckpt_file = Path(args.checkpoint) if args.checkpoint is not None else SHIPPED
    ckpt_file = ckpt_file / "model.pt" if ckpt_file.is_dir() else ckpt_file
    key = {
        "checkpoint": hashlib.sha256(ckpt_file.read_bytes()).hexdigest()[:16],
        "files": [str(r.path) for r in chosen],
        "images": _digest(loaded.images),
        "methods": [[s.label, {k: v for k, v in s.params.items() if k != "background"}] for s in specs],
        "background": _digest(bg),
        "insertion_films": _digest(starts),
        **{k: getattr(args, k) for k in ("seed", "steps", "substrate", "sanity_n")},
    }
    partial = PartialResults(args.out / "partial", key)
    if partial.images_done or partial.randomisation_done:
        print(f"continuing: {partial.images_done} of {len(chosen)} image(s) and {partial.randomisation_done} "
              f"randomisation step(s) already done in {args.out / 'partial'}", flush=True)
    maps: dict[str, np.ndarray] = {}
    names = [s.name for s in specs]
    forward, grad_forward = fast_forwards(ckpt.model, ["lime", *names])  # "lime": the curves always need it

    def make_forward(model):
        return fast_forwards(model, names)

    try:
        result = evaluate_explanations(
            ckpt.model, loaded.images, specs,
            labels=[r.label for r in chosen], names=[str(r.path) for r in chosen],
            seed=args.seed, steps=args.steps, temperature=ckpt.temperature, bias=ckpt.bias,
            forward=forward, grad_forward=grad_forward, make_forward=make_forward,
            sanity_n=args.sanity_n, progress=not args.no_progress, maps_out=maps, substrate=args.substrate,
            insertion_films=starts, threshold=ckpt.threshold, partial=partial,
        )
    except ValueError as exc:  # a setting a method refuses
        raise ConfigError(f"--methods: {exc}") from exc
    except KeyboardInterrupt:
        print(f"interrupted: {partial.images_done} of {len(chosen)} image(s) kept in {args.out / 'partial'}; "
              "run the same command to continue", file=sys.stderr, flush=True)
        raise
    context = {
        "checkpoint": str(args.checkpoint or "shipped model"),
        "data": f"{root} (split {args.split}, {len(chosen)} images: "
                f"{sum(r.label == 0 for r in chosen)} NORMAL, {sum(r.label == 1 for r in chosen)} PNEUMONIA)",
        "SHAP background": bg_source,
        "command": "pneumolens explain-eval " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if k in ("split", "n", "methods", "seed", "steps", "substrate", "sanity_n", "n_samples") and v is not None),
    }
    write_eval_report(result, args.out, context, images=loaded.images, maps=maps,
                      labels=[r.label for r in chosen], class_names=ckpt.class_names)
    print(f"wrote {args.out / 'report.md'}, metrics.json and figures")
    return 0
