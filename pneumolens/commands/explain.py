"""``pneumolens explain FILES_OR_DIRS --out DIR``: panels, JSON and maps explaining each prediction.

Parses arguments and calls :func:`pneumolens.explain.runner.explain_files`; nothing else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError, DatasetError
from ..io import IMAGE_SUFFIXES

DEFAULT_METHODS = "gradcam,lime,shap"
#: = tuple(pneumolens.explain.core.METHODS), listed here so that --help does not import torch
#: (tests/test_explain_cli.py checks that the two agree).
METHOD_NAMES = ("gradcam", "lime", "kernelshap", "shap", "ig", "occlusion")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "explain",
        help="explain predictions with Grad-CAM, LIME, SHAP, IG, occlusion (panels, JSON, maps)",
        description=(
            "Explain the pneumonia prediction for each image (JPEG, PNG, DICOM; folders are searched "
            "recursively). Writes per image a panel PNG (the X-ray and one overlay per method), a JSON "
            "(prediction, parameters, timings) and optionally the raw maps, plus index.html. "
            f"Methods: {', '.join(METHOD_NAMES)}; settings per method as NAME:KEY=VALUE, e.g. "
            "ig:baseline=blur:n_steps=64 or gradcam:layer=features.block2.relu."
        ),
        epilog="Example: pneumolens explain scans/ --methods gradcam,lime,shap --background-data chest_xray --out expl/",
    )
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help="image files and/or folders")
    p.add_argument("--checkpoint", "-c", default=None, help="model.pt or a run folder (default: the shipped model)")
    p.add_argument("--methods", "-m", default=DEFAULT_METHODS, help=f"comma-separated methods (default: {DEFAULT_METHODS})")
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    p.add_argument("--save-maps", action="store_true", help="also save each map as <stem>.<method>.npy (float32)")
    p.add_argument("--seed", type=int, default=0, help="seed for the sampling methods (default: 0)")
    p.add_argument("--skip-bad", action="store_true", help="warn about unreadable files and explain the others")
    p.add_argument("--background-data", default=None, metavar="DIR",
                   help="dataset root whose training split gives SHAP's background (default: background.npy "
                        "beside the checkpoint, else a blurred copy of the image)")
    p.add_argument("--background-n", type=int, default=32, help="SHAP background images (default: 32)")
    p.add_argument("--n-samples", type=int, default=None,
                   help="perturbed samples for lime and kernelshap (default: 1000)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and ONNX Runtime (default: torch's choice; 1 is best when the CPU is shared)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo images already explained in --out (default: an earlier run's finished images are kept, "
                        "so an interrupted run continues where it stopped)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def parse_methods(text: str, n_samples: int | None = None) -> list:
    """``"gradcam,ig:baseline=blur"`` → MethodSpecs; unknown names or settings are a ConfigError."""
    from ..explain.core import parse_method_spec
    from ..explain.runner import MethodSpec

    specs, seen = [], set()
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        try:
            name, params = parse_method_spec(item)
        except ValueError as exc:
            raise ConfigError(f"--methods: {exc}") from exc
        if item in seen:
            raise ConfigError(f"--methods: {item!r} is listed twice")
        seen.add(item)
        if n_samples is not None and name in ("lime", "kernelshap"):
            params.setdefault("n_samples", n_samples)
        specs.append(MethodSpec(label=item, name=name, params=params))
    if not specs:
        raise ConfigError("--methods: no method given")
    return specs


def check_layers(model, specs: list) -> None:
    """Fail early, as a ConfigError, on a Grad-CAM layer the model does not have."""
    from ..explain.base import resolve_layer

    for spec in specs:
        if spec.name == "gradcam" and "layer" in spec.params:
            try:
                resolve_layer(model, str(spec.params["layer"]))
            except ValueError as exc:
                raise ConfigError(f"--methods {spec.label}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import find_images
    from ..explain.runner import explain_files, fast_forwards, resolve_background
    from ..inference import Predictor

    if args.n_samples is not None and args.n_samples < 2:
        raise ConfigError(f"--n-samples must be at least 2, got {args.n_samples}")
    if args.background_n < 1:
        raise ConfigError(f"--background-n must be at least 1, got {args.background_n}")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)  # before the fast copies are built: ONNX Runtime takes the same count
    specs = parse_methods(args.methods, args.n_samples)
    files, _ = find_images(args.inputs)
    if not files:
        raise DatasetError(f"no image files ({' '.join(IMAGE_SUFFIXES)}) found in {', '.join(args.inputs)}")
    predictor = Predictor(args.checkpoint)
    check_layers(predictor.model, specs)
    background, source = None, ""
    if any(s.name == "shap" for s in specs):
        background, source = resolve_background(args.background_data, args.checkpoint, predictor.size,
                                                n=args.background_n, seed=args.seed,
                                                provenance=predictor.checkpoint.provenance)
    forward, grad_forward = fast_forwards(predictor.model, [s.name for s in specs])

    def warn(reason: str) -> None:
        print(f"pneumolens explain: warning: skipped {reason}", file=sys.stderr)

    try:
        records = explain_files(files, predictor, specs, args.out, seed=args.seed, save_maps=args.save_maps,
                                skip_bad=args.skip_bad, background=background, background_source=source,
                                forward=forward, grad_forward=grad_forward, progress=not args.no_progress,
                                on_skip=warn, overwrite=args.overwrite)
    except ValueError as exc:  # a setting the method refuses (e.g. baseline=white, window larger than the image)
        raise ConfigError(f"--methods: {exc}") from exc
    print(f"explained {len(records)} image(s) with {', '.join(s.label for s in specs)}; "
          f"open {args.out / 'index.html'}")
    return 0
