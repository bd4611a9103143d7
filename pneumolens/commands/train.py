"""``pneumolens train``: train the CNN-LSTM and write ``OUT/model.pt``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..printable import printable
from ._common import DATA_HELP, data_root, integer_at_least
from ._help import DefaultsHelpFormatter

#: = sorted(pneumolens.config.PRESETS); listed here so that --help does not import torch.
PRESET_NAMES = ("base", "debug", "default", "robust", "seed")

#: ``--accelerator`` choices: Lightning's names.
ACCELERATORS = ("auto", "cpu", "gpu")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the CNN-LSTM on ROOT/train (patient-level validation split)",
        description=(
            "Train the CNN-LSTM on the Kaggle layout's train split. A patient-level, class-stratified "
            "validation split of train fits the calibration (config key calibrate: temperature, platt or none) "
            "and the decision threshold, and picks the epoch "
            "kept (with --select-epoch val_loss) and when to stop (in recipes with early stopping: seed); no "
            "other split is used for any choice. Writes OUT/model.pt (weights + "
            "config + threshold + provenance), per-epoch metrics (OUT/logs/metrics.csv, TensorBoard in OUT/tb), "
            "OUT/training_history.png and resumable checkpoints in OUT/checkpoints. Ctrl-C or SIGTERM saves a "
            "checkpoint; rerun with --resume to continue."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--preset", default="default", choices=PRESET_NAMES,
        help="recipe: 'default' = the shipped model's, chosen by cross-validation (30 epochs, letters and markers "
        "pasted into corners, half the films' surroundings taken from another film, last epoch kept); 'seed' = "
        "the original exactly (batch 8, ±72° rotation, flips, Adam, plateau LR, early stopping); 'base' = the "
        "project's recipe before the cross-validation (30 epochs, lowest-val-loss epoch); 'robust' = 'base' plus "
        "every augmentation against burnt-in markers and borders; 'debug' = the seed recipe at batch 16 for 2 "
        "epochs (tests; add --max-images for a run of seconds)",
    )
    p.add_argument("--config", help="YAML file of TrainConfig keys applied over the preset")
    p.add_argument("--max-epochs", type=int, help="override the preset's epoch limit")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size")
    p.add_argument("--lr", type=float, help="override the learning rate")
    p.add_argument("--input-size", type=int, help="square input side (multiple of 8)")
    p.add_argument("--seed", type=int, help="seed for weights, shuffling and augmentation (same seed, same numbers on CPU)")
    p.add_argument("--split-seed", type=int, help="seed of the patient-level validation split")
    p.add_argument("--val-fraction", type=float, help="fraction of train images (by patient) held out for validation")
    p.add_argument("--threshold-rule", help="youden | f1 | sensitivity:0.95 | fixed:0.5 ...")
    add_select_epoch_flag(p)
    p.add_argument("--no-augment", action="store_true", help="switch augmentation off")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints (interrupted or last)")
    p.add_argument(
        "--export-best", action="store_true",
        help="no training: write OUT/model.pt (calibrated, marked interim) from the epoch so far that "
        "--select-epoch keeps, of a run in OUT that is still going or was interrupted",
    )
    add_scale_flags(p)
    p.add_argument("--skip-bad", action="store_true", help="warn about unreadable images and train on the rest")
    p.add_argument("--max-images", type=int, help="use whole patients up to about N images per class (quick runs)")
    p.add_argument("--limit-train-batches", type=float, help="Lightning's limit_train_batches (quick runs)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is best when the CPU is shared)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument(
        "--no-accel", action="store_true",
        help="train the stock PyTorch layers only, without the CPU-training kernels of pneumolens.accel "
        "(they change speed, not results)",
    )
    p.set_defaults(func=run)


#: ``--select-epoch`` choices: = pneumolens.config.EPOCH_RULES (listed here so --help does not import torch).
EPOCH_RULES = ("val_loss", "last")


def add_select_epoch_flag(p: argparse.ArgumentParser) -> None:
    """``--select-epoch``: which epoch's weights the run keeps (``TrainConfig.select_epoch``)."""
    p.add_argument(
        "--select-epoch", choices=EPOCH_RULES,
        help="which epoch's weights to keep: 'val_loss' = the lowest validation loss, 'last' = the last epoch "
        "trained (the schedule's end, or where early stopping stopped) (default: the preset's)",
    )


def _devices(text: str) -> int | str:
    """``--devices``: a positive whole number, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    return integer_at_least(1, "devices")(text)


_nodes = integer_at_least(1, "machines")


def add_scale_flags(p: argparse.ArgumentParser) -> None:
    """``--accelerator --devices --num-nodes --strategy``: handed to Lightning's Trainer as they are.

    Under ``torchrun`` or SLURM, Lightning reads the ranks from the environment (its cluster
    environments); ``--devices`` is then the processes per machine and ``--num-nodes`` the machines.
    """
    p.add_argument("--accelerator", default="auto", choices=ACCELERATORS,
                   help="where to train: cpu, gpu, or auto (a GPU when there is one)")
    p.add_argument("--devices", type=_devices, default=1, metavar="N",
                   help="devices per machine (GPUs, or processes on CPU), or 'auto' (all of them); under "
                   "torchrun, its --nproc-per-node")
    p.add_argument("--num-nodes", type=_nodes, default=1, metavar="M",
                   help="machines taking part (torchrun's --nnodes, SLURM's --nodes)")
    p.add_argument("--strategy", default="auto",
                   help="Lightning strategy, e.g. ddp (auto: ddp when more than one device or machine)")


def scale_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Trainer keywords of :func:`add_scale_flags`, as ``fit`` takes them."""
    return {"accelerator": args.accelerator, "devices": args.devices, "num_nodes": args.num_nodes,
            "strategy": args.strategy}


def run(args: argparse.Namespace) -> int:
    from ..accel import keep_freed_memory

    keep_freed_memory()  # training only, before the first large tensor: see pneumolens/accel/memory.py
    import torch

    from ..training import export_best, fit  # heavy imports only when training
    from ..training.fit import check_same_run
    from ..training.resume import resume_point

    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = {
        "max_epochs": args.max_epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "split_seed": args.split_seed,
        "val_fraction": args.val_fraction,
        "threshold_rule": args.threshold_rule,
        "select_epoch": args.select_epoch,
        "accelerate": False if args.no_accel else None,
    }
    if args.input_size:
        overrides["model"] = {"input_size": args.input_size}
    if args.no_augment:
        overrides["augment"] = {"enabled": False}
    from ..config import load_config

    config = load_config(args.preset, args.config, overrides)
    root = data_root(args.data)
    limit = args.limit_train_batches
    if limit is not None and limit >= 1:
        limit = int(limit)
    if args.export_best:
        result = export_best(config, root, args.out, preset=args.preset, progress=not args.no_progress,
                             skip_bad=args.skip_bad, max_images=args.max_images)
    else:
        point = resume_point(args.out) if args.resume else None  # one line and exit 2 if unsafe
        if point is not None:
            check_same_run(config, Path(args.out), point.epoch)  # refused before it says it resumes
        if point is not None and int(os.environ.get("LOCAL_RANK", "0")) == 0:  # once, not per DDP process
            print(f"resuming from {printable(point.path)} (epoch {point.epoch}, step {point.global_step})", flush=True)
        result = fit(
            config, root, args.out, resume=args.resume, **scale_options(args), skip_bad=args.skip_bad,
            max_images=args.max_images,
            limit_train_batches=limit, progress=not args.no_progress, preset=args.preset,
        )
    m = result.metrics
    if m:
        kept = "the last epoch" if config.select_epoch == "last" else "the lowest-val-loss epoch"
        done = (f"exported {kept} so far ({result.epochs} epochs run)" if args.export_best
                else f"trained {result.epochs} epochs in {result.wall_s / 60:.1f} min")
        print(
            f"{done} -> {result.model_path}\n"
            f"validation (patient-level, n={m['n']}): AUC {m['roc_auc']:.4f}  accuracy {m['accuracy']:.4f}  "
            f"recall {m['recall']:.4f}  specificity {m['specificity']:.4f}  at threshold {m['threshold']:.3f}"
        )
        skipped = result.metrics.get("skipped_files") if isinstance(result.metrics, dict) else None
        if skipped:
            print(f"skipped {skipped} unreadable files (see the warnings above)")
    return 0
