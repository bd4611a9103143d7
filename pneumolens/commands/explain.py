"""``pneumolens explain FILES_OR_DIRS --out DIR``: panels, JSON and maps explaining each prediction.

Parses arguments and calls :func:`pneumolens.explain.runner.explain_files`; nothing else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..devices import add_device_argument, resolve_device
from ..errors import ConfigError, DatasetError, SettingError
from ..io import IMAGE_SUFFIXES
from ..printable import printable
from ..shards import parse_shard, take_shard

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
            "ig:baseline=blur:n_steps=64 or gradcam:layer=features.block2.relu. Grad-CAM reads the last "
            "convolutional block's ReLU output (features.block3.relu) unless told otherwise, chosen on the "
            "shipped model by how faithful its maps measured (docs/figures/gradcam-layers)."
        ),
        epilog="Example: pneumolens explain scans/ --methods gradcam,lime,shap --out expl/",
    )
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help="image files and/or folders")
    p.add_argument("--checkpoint", "-c", default=None, help="model.pt or a run folder (default: the shipped model)")
    p.add_argument("--methods", "-m", default=DEFAULT_METHODS, help=f"comma-separated methods (default: {DEFAULT_METHODS})")
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    p.add_argument("--save-maps", action="store_true", help="also save each map as <stem>.<method>.npy (float32)")
    p.add_argument("--seed", type=int, default=0, help="seed for the sampling methods (default: 0)")
    p.add_argument("--skip-bad", action="store_true", help="warn about unreadable files and explain the others")
    p.add_argument("--background-data", default=None, metavar="DIR",
                   help="dataset root whose training split gives SHAP's background instead of the model's own "
                        "(default: the training films stored with the model, the ones the web service uses too; a "
                        "model without them: background.npy beside it, else a blurred copy of the image)")
    p.add_argument("--background-n", type=int, default=32,
                   help="SHAP background images sampled with --background-data (default: 32)")
    p.add_argument("--n-samples", type=int, default=None,
                   help="perturbed samples for lime and kernelshap (default: 1000)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and ONNX Runtime (default: torch's choice; 1 is best when the CPU is shared)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo images already explained in --out (default: an earlier run's finished images are kept, "
                        "so an interrupted run continues where it stopped)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--labels", metavar="CSV_OR_DIR", type=Path, default=None,
                   help="true labels to show in each panel's title, as evaluate --labels reads them (a CSV with "
                        "columns file,label, or a folder of NORMAL/ and PNEUMONIA/); without it, a film in a folder "
                        "named NORMAL or PNEUMONIA takes that label")
    p.add_argument("--shard", metavar="I/N", default=None,
                   help="explain shard I of N only (I from 0 to N-1): every file whose position in the list of "
                        "files sorted by path is I modulo N, the same on every machine, so that N array jobs cover "
                        "each file once; give each shard its own --out (e.g. expl/shard-I)")
    add_device_argument(p)
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
        except SettingError as exc:  # named by the whole item: "--methods lime:n_samples=0: n_samples must be ..."
            raise ConfigError(f"--methods {item}: {_without_method(exc, item)}") from exc
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


def _without_method(exc: Exception, item: str) -> str:
    """A setting error's message without its leading ``method: `` (the caller names the whole item)."""
    text = str(exc)
    head = item.split(":", 1)[0].strip().lower() + ": "
    return text[len(head):] if text.lower().startswith(head) else text


def check_settings(model, size: int, specs: list) -> None:
    """Fail early, as a ConfigError, on a setting the model rules out: a Grad-CAM layer that is not
    one of its convolutional layers, an occlusion window larger than its input."""
    from ..explain.settings import validate_settings

    for spec in specs:
        try:
            validate_settings(spec.name, spec.params, model=model, size=size)
        except SettingError as exc:
            raise ConfigError(f"--methods {spec.label}: {_without_method(exc, spec.label)}") from exc


def check_layers(model, specs: list) -> None:
    """:func:`check_settings` at the model's own input size (what ``explain-eval`` calls)."""
    from ..explain.base import input_size

    check_settings(model, input_size(model), specs)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import find_images
    from ..explain.runner import explain_files, fast_forwards, resolve_background
    from ..explain.settings import SETTINGS
    from ..inference import Predictor

    most = int(SETTINGS["lime"]["n_samples"].hi)  # type: ignore[arg-type]
    if args.n_samples is not None and not 2 <= args.n_samples <= most:
        raise ConfigError(f"--n-samples must be from 2 to {most}, got {args.n_samples}")
    if args.background_n < 1:
        raise ConfigError(f"--background-n must be at least 1, got {args.background_n}")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)  # before the fast copies are built: ONNX Runtime takes the same count
    specs = parse_methods(args.methods, args.n_samples)
    shard = parse_shard(args.shard) if args.shard is not None else None
    device = resolve_device(args.device, "--device")

    def folder_warning(folder: Path, message: str) -> None:
        print(f"pneumolens explain: warning: {printable(message)}", file=sys.stderr)

    files, _ = find_images(args.inputs, on_warning=folder_warning)
    if not files:
        raise DatasetError(f"no image files ({' '.join(IMAGE_SUFFIXES)}) found in {', '.join(args.inputs)}")
    if shard is not None:
        n_all, files = len(files), take_shard(files, shard)
        print(f"pneumolens explain: shard {shard}: {len(files)} of {n_all} files", file=sys.stderr)
        if not files:  # more shards than files: nothing to do here, and that is no error
            return 0
    predictor = Predictor(args.checkpoint, device=device)
    check_settings(predictor.model, predictor.size, specs)
    background, source = None, ""
    if any(s.name == "shap" for s in specs):
        background, source = resolve_background(args.background_data, args.checkpoint, predictor.size,
                                                n=args.background_n, seed=args.seed,
                                                provenance=predictor.checkpoint.provenance,
                                                stored=predictor.checkpoint.shap_background)
    forward, grad_forward = fast_forwards(predictor.model, [s.name for s in specs])
    true_labels = None
    if args.labels is not None:
        from ..labels import read_labels

        names = predictor.checkpoint.class_names
        true_labels = {str(f.path.resolve()): names[f.label] for f in read_labels(args.labels)}

    def warn(reason: str) -> None:
        print(f"pneumolens explain: warning: skipped {printable(reason)}", file=sys.stderr)

    try:
        records = explain_files(files, predictor, specs, args.out, seed=args.seed, save_maps=args.save_maps,
                                skip_bad=args.skip_bad, background=background, background_source=source,
                                forward=forward, grad_forward=grad_forward, progress=not args.no_progress,
                                on_skip=warn, overwrite=args.overwrite, true_labels=true_labels)
    except ValueError as exc:  # a setting the method refuses (e.g. baseline=white, window larger than the image)
        raise ConfigError(f"--methods: {exc}") from exc
    print(f"explained {len(records)} image(s) with {', '.join(s.label for s in specs)}; "
          f"open {printable(args.out / 'index.html')}")
    flagged = sum(r["prediction"].get("in_distribution") is False for r in records)
    if flagged:
        from ..ood import WARNING

        print(f"warning: {flagged} of {len(records)} image(s) flagged (in_distribution false, marked on the panel): "
              f"{WARNING}")
    return 0
