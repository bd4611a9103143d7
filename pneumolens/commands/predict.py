"""``pneumolens predict FILES_OR_DIRS...``: probability and label for each image, as a table, CSV or JSON.

A thin shell over :class:`~pneumolens.inference.Predictor`: folders are expanded by
:func:`~pneumolens.data.find_images`, files are decoded and batched by ``predict_files``.
Results go to stdout (or ``--out``); warnings and progress go to stderr.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import outputs
from ..data import find_images
from ..devices import add_device_argument, resolve_device
from ..errors import ConfigError, DatasetError, InvalidImageError
from ..io import IMAGE_SUFFIXES
from ..jsonable import dumps
from ..printable import printable
from ..shards import parse_shard, take_shard

if TYPE_CHECKING:
    from ..inference import Prediction

#: Above this many predictions, stdout gets a summary instead of one row per file.
MAX_TABLE_ROWS = 50

OUT_SUFFIXES = (".csv", ".json")

SHARD_HELP = (
    "predict shard I of N only (I from 0 to N-1): every file whose position in the list of files sorted by path "
    "is I modulo N, the same on every machine, so that N array jobs cover each file once. Each shard's CSV "
    "starts with the same header line; join them with: awk 'FNR>1 || NR==1' preds-*.csv > preds.csv"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="predict PNEUMONIA / NORMAL for image files or folders",
        description=(
            "Predict the probability of pneumonia for each image (JPEG, PNG, DICOM). Folders are "
            "searched recursively for " + " ".join(IMAGE_SUFFIXES) + " files."
        ),
        epilog="Example: pneumolens predict scans/ extra.dcm --skip-bad --out preds.csv",
    )
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help="image files and/or folders")
    p.add_argument("--checkpoint", "-c", default=None, help="model.pt or a run folder (default: the shipped model)")
    p.add_argument("--skip-bad", action="store_true", help="warn about unreadable files and predict the others")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    p.add_argument("--out", type=Path, default=None, help="write all predictions to a .csv or .json file")
    p.add_argument("--shard", metavar="I/N", default=None, help=SHARD_HELP)
    add_device_argument(p)
    p.set_defaults(func=run)
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out is not None and args.out.suffix.lower() not in OUT_SUFFIXES:
        raise ConfigError(f"--out {args.out}: the file name must end in .csv or .json")
    args.shard = parse_shard(args.shard) if args.shard is not None else None


def _collect(inputs: list[str]) -> list[Path]:
    unreadable: dict[Path, int] = {}

    def warn(folder: Path, message: str) -> None:
        unreadable[folder] = unreadable.get(folder, 0) + 1
        print(f"pneumolens predict: warning: {printable(message)}", file=sys.stderr)

    files, found = find_images(inputs, on_warning=warn)
    for folder, n in found.items():
        bad = unreadable.get(folder, 0)
        note = f" ({bad} folder{'s' * (bad != 1)} could not be read)" if bad else ""
        print(f"pneumolens predict: found {n} image file{'s' * (n != 1)} in {printable(folder)}{note}", file=sys.stderr)
    if not files:
        raise DatasetError(f"no image files ({' '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, inputs))}")
    return files


def render_predictions(
    suffix: str, predictions: list[Prediction], skipped: list[tuple[str, str]], meta: dict[str, Any]
) -> str:
    """Predictions as CSV text (file, probability, label, threshold, ood_score, in_distribution,
    error: a skipped file has only its file, threshold and error; ood_score and in_distribution are
    empty without a guard) or JSON text (with the skipped files and metadata)."""
    if suffix.lower() == ".csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["file", "probability", "label", "threshold", "ood_score", "in_distribution", "error"])
        threshold = meta.get("threshold")
        for p in predictions:
            writer.writerow([p.file, _number(p.probability), p.label, _number(p.threshold), _number(p.ood_score),
                             _flag(p.in_distribution), ""])
        for file, reason in skipped:
            writer.writerow([file, "", "", _number(threshold), "", "", reason])
        return buf.getvalue()
    doc = {
        **meta,
        "predictions": [p.to_dict() for p in predictions],
        "skipped": [{"file": f, "reason": r} for f, r in skipped],
    }
    return dumps(doc, indent=2) + "\n"


def _number(value: float | None) -> str:
    """A CSV cell: six decimals, empty for None or a non-finite value."""
    return f"{value:.6f}" if value is not None and math.isfinite(value) else ""


def _flag(value: bool | None) -> str:
    """A CSV cell: ``true`` / ``false``, empty for None."""
    return "" if value is None else str(bool(value)).lower()


def flagged_summary(predictions: list[Prediction]) -> str | None:
    """``warning: 2 of 40 images flagged: ... <the warning>``, or None when nothing was flagged."""
    from ..ood import WARNING  # torch only when running

    flagged = sum(p.in_distribution is False for p in predictions)
    if not flagged:
        return None
    n = len(predictions)
    return (f"warning: {flagged} of {n} image{'s' * (n != 1)} flagged (in_distribution false): "
            f"{'it' if flagged == 1 else 'they'} {WARNING}; treat {'its' if flagged == 1 else 'their'} "
            "prediction as meaningless")


def ood_meta(predictor: Any, predictions: list[Prediction]) -> dict[str, Any] | None:
    """What the JSON output says about the guard: its threshold, how many were flagged, the warning."""
    from ..ood import WARNING

    if predictor.ood is None:
        return None
    return {"threshold": predictor.ood.threshold, "flagged": sum(p.in_distribution is False for p in predictions),
            "warning": WARNING}


def write_predictions(
    path: Path, predictions: list[Prediction], skipped: list[tuple[str, str]], meta: dict[str, Any]
) -> None:
    """Write :func:`render_predictions` to ``path`` (a temporary file renamed into place; folders created).

    Raises:
        ConfigError: the file could not be written; the predictions are then printed on stdout,
            so that the work is not lost.
    """
    text = render_predictions(path.suffix, predictions, skipped, meta)
    try:
        outputs.write_text_atomically(path, text)
    except OSError as exc:
        sys.stdout.write(text)
        sys.stdout.flush()
        raise ConfigError(
            f"--out {path}: cannot write the file ({exc.strerror or exc}); "
            "the predictions were written to stdout instead"
        ) from exc


def format_table(predictions: list[Prediction]) -> str:
    """One aligned row per image: file (control characters escaped), probability, label, and the
    out-of-distribution warning on a flagged image."""
    from ..ood import WARNING

    names = [printable(p.file) for p in predictions]
    width = max([len("file")] + [len(n) for n in names])
    lines = [f"{'file':<{width}}  probability  label"]
    lines += [
        f"{n:<{width}}  {p.probability:>11.4f}  {p.label:<9}"
        + (f"  warning: {WARNING}" if p.in_distribution is False else "")
        for n, p in zip(names, predictions)
    ]
    return "\n".join(line.rstrip() for line in lines)


def format_counts(predictions: list[Prediction], class_names: tuple[str, ...]) -> str:
    counts = {name: 0 for name in class_names}
    for p in predictions:
        counts[p.label] = counts.get(p.label, 0) + 1
    return ", ".join(f"{n} {name}" for name, n in counts.items())


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.out is not None:
        outputs.check_output_file(args.out)  # before any work: a bad --out must not waste the predictions
    device = resolve_device(args.device, "--device")  # before any work: `cuda` without a GPU is one line
    files = _collect(args.inputs)
    if args.shard is not None:
        n_all, files = len(files), take_shard(files, args.shard)
        print(f"pneumolens predict: shard {args.shard}: {len(files)} of {n_all} files", file=sys.stderr)
        if not files:  # more shards than files: nothing to do here, and that is no error
            if args.out is not None:
                write_predictions(args.out, [], [], {"checkpoint": str(args.checkpoint or "shipped"),
                                                     "shard": str(args.shard)})
                print(f"0 predicted, 0 skipped; wrote {printable(args.out)}")
            return 0
    from ..inference import Predictor  # torch only when running

    predictor = Predictor(args.checkpoint, threshold=args.threshold, batch_size=args.batch_size, device=device)
    try:
        predictions, skipped = predictor.predict_files(files, skip_bad=args.skip_bad)
    except InvalidImageError as exc:
        raise InvalidImageError(f"{exc}; pass --skip-bad to predict the other files") from exc
    for _, reason in skipped:
        print(f"pneumolens predict: warning: skipped {printable(reason)}", file=sys.stderr)
    if not predictions:
        raise InvalidImageError(f"none of the {len(files)} files could be read; nothing to predict")
    source = "--threshold" if args.threshold is not None else f"checkpoint, {predictor.checkpoint.threshold_rule}"
    summary = f"{len(predictions)} predicted, {len(skipped)} skipped"
    if predictor.ood is None:
        print("pneumolens predict: note: this checkpoint has no out-of-distribution guard; "
              "ood_score and in_distribution are left empty", file=sys.stderr)
    flagged = flagged_summary(predictions)
    if args.out is not None:
        meta = {"checkpoint": str(args.checkpoint or "shipped"), "threshold": predictor.threshold,
                "ood": ood_meta(predictor, predictions)}
        if args.shard is not None:
            meta["shard"] = str(args.shard)
        write_predictions(args.out, predictions, skipped, meta)
        print(f"threshold {predictor.threshold:.4f} ({source}): {format_counts(predictions, predictor.class_names)}")
        print(f"{summary}; wrote {printable(args.out)}")
        if flagged:
            print(flagged)
        return 0
    if len(predictions) <= MAX_TABLE_ROWS:
        print(format_table(predictions))
    else:
        print(f"(more than {MAX_TABLE_ROWS} files: pass --out preds.csv to get one row per file)")
    print(f"threshold {predictor.threshold:.4f} ({source}): {format_counts(predictions, predictor.class_names)}")
    print(summary)
    if flagged:
        print(flagged)
    return 0
