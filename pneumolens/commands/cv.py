"""``pneumolens cv``: patient-level K-fold cross-validation of a recipe on ROOT/train (or a table of several)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import DATA_HELP, data_root
from ._help import DefaultsHelpFormatter
from .train import PRESET_NAMES, add_scale_flags, add_select_epoch_flag, scale_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cv",
        help="cross-validate a recipe: K patient-level folds of ROOT/train, mean ± sd, out-of-fold predictions",
        description=(
            "Patient-level K-fold cross-validation on the Kaggle layout's train split (folds stratified by class). "
            "Fold k validates a model trained on the other folds, in OUT/fold-k (a full training run). Writes "
            "OUT/cv.json and OUT/cv.md (per fold and mean ± sd: ROC AUC, sensitivity and specificity at the "
            "threshold chosen on that fold's validation, the shortcut audit's marker flip rate), OUT/oof.csv "
            "(out-of-fold predictions) and one line per fold start and end (also in OUT/cv.log). Ctrl-C or "
            "SIGTERM saves the running fold; rerun with --resume to continue. With --table, no training: print "
            "one markdown table of the cv.json of several OUT folders."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--table", nargs="+", metavar="DIR", help="no training: one table of these cross-validations")
    p.add_argument("--table-out", help="with --table: also write the table to this file")
    p.add_argument("--plot", metavar="PNG",
                   help="with --table: also draw ROC AUC against marker flip rate, a point per fold, to this PNG")
    p.add_argument("--out", help="output folder (required unless --table)")
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument(
        "--preset", default="default", choices=PRESET_NAMES,
        help="recipe to cross-validate (see `pneumolens train --help`)",
    )
    p.add_argument("--config", help="YAML file of TrainConfig keys applied over the preset (one lever at a time)")
    p.add_argument("--folds", type=int, default=5, help="number of folds K")
    p.add_argument("--fold-ids", help="comma-separated folds to run now, e.g. 0,1,2 (default: all K)")
    p.add_argument("--name", help="the recipe's name in tables (default: OUT's folder name)")
    p.add_argument("--max-epochs", type=int, help="override the preset's epoch limit (short screens)")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size")
    p.add_argument("--input-size", type=int, help="square input side (multiple of 8)")
    p.add_argument("--seed", type=int, help="seed for weights, shuffling and augmentation")
    p.add_argument("--split-seed", type=int, help="seed of the fold assignment")
    add_select_epoch_flag(p)
    p.add_argument(
        "--trained-in", metavar="DIR",
        help="train nothing: take the folds that the cross-validation in DIR has finished (its recipe must differ "
        "from this one in --select-epoch, or the calibration, alone) and finalise them under this recipe's epoch "
        "rule; folds DIR has not finished are left for a later run (the epoch-rule lever in minutes, not hours)",
    )
    p.add_argument("--resume", action="store_true", help="keep finished folds, continue interrupted ones")
    add_scale_flags(p)  # each fold's training is spread over them
    p.add_argument("--skip-bad", action="store_true", help="warn about unreadable images and train on the rest")
    p.add_argument("--max-images", type=int, help="use whole patients up to about N images per class (quick runs)")
    p.add_argument("--limit-train-batches", type=float, help="Lightning's limit_train_batches (quick runs)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (fold lines and logs only)")
    p.add_argument("--no-accel", action="store_true", help="stock PyTorch layers only (as `train --no-accel`)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cv import cv_table, parse_fold_ids
    from ..errors import ConfigError

    if args.table:
        if args.out or args.trained_in:
            raise ConfigError("--table trains nothing: drop --out / --trained-in, or run the cross-validation first")
        if args.plot and not args.plot.lower().endswith(".png"):  # before printing anything
            raise ConfigError(f"{args.plot}: the figure is a PNG; give a file name ending in .png")
        table = cv_table(args.table)
        print(table, end="")
        if args.table_out:
            try:
                Path(args.table_out).write_text(table)
            except OSError as exc:
                raise ConfigError(f"{args.table_out}: cannot write the table ({exc.strerror or exc})") from None
        if args.plot:
            from ..cv_figure import plot_cv

            print(f"figure: {plot_cv(args.table, args.plot)}")
        return 0
    if args.table_out or args.plot:
        raise ConfigError("--table-out and --plot go with --table DIR [DIR ...] (they train nothing)")
    if not args.out:
        raise ConfigError("--out is required (the cross-validation's folder), unless --table is given")
    fold_ids = parse_fold_ids(args.fold_ids)
    from ..accel import keep_freed_memory

    keep_freed_memory()  # training only, before the first large tensor: see pneumolens/accel/memory.py
    import torch

    from ..config import load_config
    from ..cv import run_cv

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"max_epochs": args.max_epochs, "batch_size": args.batch_size, "seed": args.seed,
                 "split_seed": args.split_seed, "select_epoch": args.select_epoch,
                 "accelerate": False if args.no_accel else None}
    if args.input_size:
        overrides["model"] = {"input_size": args.input_size}
    config = load_config(args.preset, args.config, overrides)
    limit = args.limit_train_batches
    if limit is not None and limit >= 1:
        limit = int(limit)
    run_cv(
        config, data_root(args.data), args.out, folds=args.folds, fold_ids=fold_ids, resume=args.resume,
        preset=args.preset, label=args.name, skip_bad=args.skip_bad, max_images=args.max_images,
        limit_train_batches=limit, report=lambda line: print(line, flush=True), trained_in=args.trained_in,
        **scale_options(args),
        progress=not args.no_progress,
    )
    return 0
