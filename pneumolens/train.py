"""Training: the LightningModule (loss, metrics, optimiser) and ``fit`` (the Trainer's wiring).

The science lives in :class:`PneumoniaClassifier`; devices, checkpoints, early stopping,
progress bars and logs are the Trainer's. ``fit`` then picks the best epoch, calibrates a
temperature and a decision threshold on the patient-level validation split, and writes one
self-describing ``model.pt``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryPrecision, BinaryRecall

from .augment import Augment
from .checkpoint import Checkpoint, base_provenance, default_preprocessing, save_checkpoint
from .config import TrainConfig
from .datamodule import PneumoniaDataModule, ResumableBatches
from .losses import class_weights, focal_loss
from .model import CnnLstm

log = logging.getLogger(__name__)


def _metrics(prefix: str) -> MetricCollection:
    return MetricCollection(
        {"acc": BinaryAccuracy(), "precision": BinaryPrecision(), "recall": BinaryRecall(), "auc": BinaryAUROC()},
        prefix=prefix,
    )


#: Checkpoint key of the training epoch's accumulated metric and loss states (see
#: :meth:`PneumoniaClassifier.on_save_checkpoint`); checkpoints written before it existed lack it.
TRAIN_EPOCH_STATE_KEY = "pneumolens_train_epoch_state"

MetricStateValue = torch.Tensor | list[torch.Tensor]


def metric_state(metric: Metric) -> dict[str, Any]:
    """A detached CPU copy of what ``metric`` has accumulated: its states and its update count.

    torchmetrics keeps metric states out of ``state_dict`` (they are not persistent by default), so
    a checkpoint would otherwise lose them. List states (BinaryAUROC's concatenated predictions and
    targets) are copied element by element.
    """
    states: dict[str, MetricStateValue] = {}
    for name, value in metric.metric_state.items():
        if isinstance(value, torch.Tensor):
            states[name] = value.detach().cpu().clone()
        else:
            states[name] = [v.detach().cpu().clone() for v in value]
    return {"states": states, "update_count": metric.update_count}


def load_metric_state(metric: Metric, saved: dict[str, Any]) -> None:
    """Put a :func:`metric_state` copy back into ``metric``, on the metric's current device."""
    device = metric.device
    for name, value in saved["states"].items():
        restored = value.to(device) if isinstance(value, torch.Tensor) else [v.to(device) for v in value]
        setattr(metric, name, restored)
    # torchmetrics' own compute groups copy these private fields the same way; the count keeps
    # compute() from warning that it ran before update(), and the cache must not outlive the states.
    metric._update_count = int(saved["update_count"])
    metric._computed = None


class PneumoniaClassifier(L.LightningModule):
    """Focal-loss training of a :class:`CnnLstm`, with the original's class weights.

    Args:
        config: the training recipe (model, augmentation, optimiser, schedule, loss).
        class_weight: (NORMAL, PNEUMONIA) loss weights; ``None`` = unweighted.
    """

    def __init__(self, config: TrainConfig, class_weight: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config.to_dict(), "class_weight": class_weight})
        self.config = config
        self.model = CnnLstm(config.model).to(memory_format=torch.channels_last)
        self.augment = Augment(config.augment)
        self.register_buffer("class_weight", torch.tensor(class_weight or (1.0, 1.0), dtype=torch.float32))
        self.train_metrics = _metrics("train_")
        # The epoch's train loss, weighted by batch size. A metric of our own rather than Lightning's
        # on_epoch aggregation, whose running sum is not in the checkpoint (a resumed epoch's mean
        # would cover only the batches after the resume); "disable" keeps a NaN loss visible.
        self.train_loss_mean = MeanMetric(nan_strategy="disable")
        self.val_metrics = _metrics("val_")
        # Batches trained on but not yet stepped: (probabilities, labels, loss, size); see optimizer_step.
        self._unstepped: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []
        # The epoch whose partial train states on_load_checkpoint restored, until that epoch starts.
        self._restored_epoch: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """PNEUMONIA logits for float images (B, 1, S, S) in [0, 1]."""
        return self.model(x)

    @staticmethod
    def to_float(images: torch.Tensor) -> torch.Tensor:
        return images.unsqueeze(1).float().div_(255.0) if images.dtype == torch.uint8 else images

    def setup(self, stage: str) -> None:
        # The Trainer's deterministic=True also makes PyTorch fill every new tensor with NaN, a
        # guard against kernels that read memory they never wrote: one more pass over every
        # activation and gradient, ~6 % of a CPU step at batch 32 (an interleaved A/B, 53.5 ->
        # 57.0 img/s). The kernels here write what they read; the seeded-run tests still hold.
        self._fill_uninitialized = torch.utils.deterministic.fill_uninitialized_memory
        torch.utils.deterministic.fill_uninitialized_memory = False

    def teardown(self, stage: str) -> None:
        torch.utils.deterministic.fill_uninitialized_memory = getattr(self, "_fill_uninitialized", True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Augmentation and dropout draw from a stream keyed by (seed, step, rank), so a run resumed
        # from any checkpoint continues with exactly the randomness it would have had.
        torch.manual_seed(self.config.seed * 1_000_003 + self.global_step * 131 + self.global_rank)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, y = batch
        # 1. augment in the training path only
        x = self.augment(self.to_float(images)).contiguous(memory_format=torch.channels_last)
        # 2. forward and the class-weighted focal loss
        logits = self.model(x)
        w = self.class_weight[y.long()]
        c = self.config
        loss = focal_loss(logits, y, c.focal_gamma, c.focal_alpha, sample_weight=w, label_smoothing=c.label_smoothing)
        # 3. epoch metrics and loss: recorded once the optimiser has stepped on this batch
        self._unstepped.append((torch.sigmoid(logits.detach()), y.long(), loss.detach(), len(y)))
        return loss

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """Step, then add the stepped batches to the epoch's train metrics and loss.

        Updating here rather than in ``training_step`` keeps the metric states in step with the
        weights: a Ctrl-C during the forward or backward pass (where a step spends its time)
        leaves neither with that batch, and the resumed run trains on it again. Counting it in
        the metrics already would count it twice in the resumed epoch.
        """
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        for probs, y, loss, n in self._unstepped:
            self.train_metrics.update(probs, y)
            self.train_loss_mean.update(loss, weight=n)
        self._unstepped.clear()

    def on_train_epoch_start(self) -> None:
        # Lightning (2.6) does not call this hook for an epoch resumed mid-way, nor when it resumes
        # at an epoch's end straight into on_train_epoch_end: there the restored states are used as
        # they are. An epoch that starts here after a restore is a new one, and states restored from
        # an epoch's end (last.ckpt is written at validation end, before on_train_epoch_end resets
        # them) must not leak into it. The epoch check keeps them should Lightning call this hook
        # for the resumed epoch itself.
        if self._restored_epoch != self.current_epoch:
            self.train_metrics.reset()
            self.train_loss_mean.reset()
        self._restored_epoch = None

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute(), sync_dist=True)
        # compute() already averages over the ranks; sync_dist only keeps Lightning's DDP advice quiet.
        self.log("train_loss", self.train_loss_mean.compute(), prog_bar=True, sync_dist=True)
        self.train_metrics.reset()
        self.train_loss_mean.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the training epoch's accumulated metric and loss states beside the weights.

        A run interrupted mid-epoch resumes with the epoch's batches so far already counted, so the
        epoch's logged train metrics equal an uninterrupted run's. The states are this rank's; under
        DDP they are not restored (see :meth:`on_load_checkpoint`).
        """
        checkpoint[TRAIN_EPOCH_STATE_KEY] = {
            "epoch": self.current_epoch,
            "world_size": self.trainer.world_size,
            "metrics": {
                name: metric_state(m) for name, m in self.train_metrics.items(keep_base=True, copy_state=False)
            },
            "loss": metric_state(self.train_loss_mean),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore what :meth:`on_save_checkpoint` saved, where it can be restored exactly.

        Tolerates checkpoints written before the states were saved (the resumed epoch's train
        metrics then cover only the batches after the resume, as they always did), states from a
        torchmetrics version with other state names, and DDP runs: each rank accumulated its own
        shard of the epoch but only rank 0's states were written, so none is restored there.
        """
        saved = checkpoint.get(TRAIN_EPOCH_STATE_KEY)
        if saved is None:
            log.info("checkpoint without train metric states: the resumed epoch's train metrics are partial")
            return
        world_size = self.trainer.world_size if self._trainer is not None else 1
        if saved["world_size"] != 1 or world_size != 1:
            log.info("train metric states are per rank: not restored in a multi-process run")
            return
        metrics = dict(self.train_metrics.items(keep_base=True, copy_state=False))
        pairs = [(metrics.get(name), state) for name, state in saved["metrics"].items()]
        pairs.append((self.train_loss_mean, saved["loss"]))
        if set(saved["metrics"]) != set(metrics) or any(
            m is None or set(state["states"]) != set(m.metric_state) for m, state in pairs
        ):
            log.warning("checkpoint's train metric states do not match these metrics: not restored")
            return
        for m, state in pairs:
            assert m is not None
            load_metric_state(m, state)
        self._restored_epoch = int(saved["epoch"])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, y = batch
        logits = self.model(self.to_float(images).contiguous(memory_format=torch.channels_last))
        c = self.config
        loss = focal_loss(logits, y, c.focal_gamma, c.focal_alpha)  # unweighted, as Keras reports val loss
        self.val_metrics.update(torch.sigmoid(logits), y.long())
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.log_dict(values, sync_dist=True)
        self.log("val_auc_pb", values["val_auc"], prog_bar=True, logger=False, sync_dist=True)
        self.val_metrics.reset()

    def configure_optimizers(self) -> Any:
        c = self.config
        opt_cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
        params = list(self.parameters())
        # The fused kernel updates all parameters at once instead of looping over them: Adam's step
        # 16 -> 3 ms on 2 CPU cores (2.7 M parameters), +2 % images/s at batch 8 and 32 in an
        # interleaved A/B. Same update rule; a run resumed from an older checkpoint keeps the
        # loop (the optimiser's saved settings win).
        fused = True if all(p.device.type in ("cpu", "cuda") for p in params) else None
        opt = opt_cls(params, lr=c.lr, eps=c.adam_eps, weight_decay=c.weight_decay, fused=fused)
        if c.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=c.plateau_factor, patience=c.plateau_patience, min_lr=c.min_lr
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss", "interval": "epoch"}}
        steps = max(1, self.trainer.estimated_stepping_batches)
        per_epoch = max(1, steps // max(1, c.max_epochs))
        warm = c.warmup_epochs * per_epoch

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, steps - warm)
            return max(c.min_lr / c.lr, 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ResumeCallback(Callback):
    """Keeps the resumable loader on Lightning's epoch and step, and saves ``interrupted.ckpt`` on Ctrl-C / SIGTERM.

    Interrupted during validation, it saves nothing: ``--resume`` then starts from the newest
    earlier checkpoint, so every epoch is validated exactly once.
    """

    def __init__(self, out: Path) -> None:
        self.out = out

    @staticmethod
    def _loader(trainer: L.Trainer) -> ResumableBatches | None:
        loader = trainer.train_dataloader
        return loader if isinstance(loader, ResumableBatches) else None

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if (loader := self._loader(trainer)) is not None:
            loader.set_epoch(trainer.current_epoch)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if (loader := self._loader(trainer)) is not None:
            loader.mark_consumed()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SystemExit)) or trainer.world_size != 1:
            return
        if trainer.validating or trainer.sanity_checking:
            # Lightning resumes a checkpoint written during validation past that validation: the
            # epoch would never be validated, logged or considered for best.ckpt. Continue from the
            # state before it instead (the epoch's training is redone, with the same results).
            before = resume_path(self.out)
            log.warning("interrupted during validation: --resume continues from %s (the epoch's training "
                        "is redone, to the same result)", before or "the start")
            return
        path = self.out / "checkpoints" / "interrupted.ckpt"
        trainer.save_checkpoint(path)
        log.warning("interrupted: saved %s; continue with --resume", path)


def resume_path(out: Path) -> Path | None:
    """The newest of ``interrupted.ckpt`` and ``last.ckpt`` under ``out/checkpoints``."""
    cands = [p for p in (out / "checkpoints" / "interrupted.ckpt", out / "checkpoints" / "last.ckpt") if p.exists()]
    return max(cands, key=lambda p: p.stat().st_mtime) if cands else None


def best_checkpoint(out: Path) -> Path | None:
    """The lowest-val-loss checkpoint of the run in ``out``, as its own latest state records it.

    Falls back to ``out/checkpoints/best.ckpt``; None before the first validation.
    """
    latest = resume_path(out)
    if latest is not None:
        try:
            states = torch.load(latest, map_location="cpu", weights_only=False).get("callbacks", {})
        except Exception:  # noqa: BLE001 - an unreadable state only loses the hint
            states = {}
        for key, state in states.items():
            if key.startswith("ModelCheckpoint") and "'monitor': 'val_loss'" in key:
                path = Path(state.get("best_model_path") or "")
                if path.is_file():
                    return path
    fallback = out / "checkpoints" / "best.ckpt"
    return fallback if fallback.is_file() else None


@dataclass
class FitResult:
    model_path: Path
    metrics: dict[str, Any]
    epochs: int
    wall_s: float


def merge_history(logs: Path) -> Path:
    """Join ``logs/part*/metrics.csv`` (one per run segment) into ``logs/metrics.csv``.

    A resumed segment restarts its epoch's rows, so for each (epoch, step) the latest segment wins.
    """
    import csv

    parts = sorted(logs.glob("part*/metrics.csv"), key=lambda p: int(p.parent.name[4:] or 0))
    rows: dict[tuple[str, str], dict[str, str]] = {}
    columns: list[str] = []
    for part in parts:
        with part.open(newline="") as fh:
            reader = csv.DictReader(fh)
            columns += [c for c in reader.fieldnames or [] if c not in columns]
            for row in reader:
                key = (row.get("epoch") or "", row.get("step") or "")
                rows[key] = {**rows.get(key, {}), **{k: v for k, v in row.items() if v not in ("", None)}}
    merged = logs / "metrics.csv"
    with merged.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for key in sorted(rows, key=lambda k: (int(k[1] or 0), k[0] == "", k[0])):
            writer.writerow(rows[key])
    return merged


@torch.inference_mode()
def _val_logits(model: CnnLstm, dm: PneumoniaDataModule) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    out, ys = [], []
    for images, y in dm.val_dataloader():
        out.append(model(PneumoniaClassifier.to_float(images)))
        ys.append(y)
    return torch.cat(out).numpy().astype(np.float64), torch.cat(ys).numpy().astype(int)


def _recipe_class_weight(config: TrainConfig, dm: PneumoniaDataModule) -> tuple[float, float] | None:
    """The loss's class weights from the training split's counts, if the recipe uses them."""
    return class_weights(*dm.counts["train"]) if config.class_weighting else None


def fit(
    config: TrainConfig,
    data: str | Path,
    out: str | Path,
    resume: bool = False,
    devices: int | str = 1,
    accelerator: str = "auto",
    strategy: str = "auto",
    skip_bad: bool = False,
    max_images: int | None = None,
    limit_train_batches: int | float | None = None,
    progress: bool = True,
    preset: str | None = None,
    extra_callbacks: list[Callback] | None = None,
) -> FitResult:
    """Train, pick the best epoch by val loss, calibrate on validation, write ``out/model.pt``."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    L.seed_everything(config.seed, workers=True, verbose=False)
    dm = PneumoniaDataModule(
        data, config.model.input_size, config.batch_size, config.val_fraction, config.split_seed, config.seed,
        skip_bad=skip_bad, max_images=max_images,
    )
    dm.prepare_data()
    dm.setup("fit")
    weights = _recipe_class_weight(config, dm)
    module = PneumoniaClassifier(config, weights)
    # One best.ckpt, overwritten in place: with Lightning's version counter a resumed run whose
    # recorded path is spelled differently (a symlinked run folder) wrote best-v1.ckpt beside it.
    best_cb = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="best", monitor="val_loss", mode="min", save_top_k=1,
        enable_version_counter=False,
    )
    # Every epoch's end, whatever the val loss did: what --resume continues from.
    last_cb = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    callbacks: list[Callback] = [best_cb, last_cb, LearningRateMonitor("epoch"), ResumeCallback(out)]
    callbacks.extend(extra_callbacks or [])
    if progress:  # tqdm, not rich: readable in a log file too, with ETA
        callbacks.append(TQDMProgressBar(refresh_rate=1 if sys.stderr.isatty() else 25))
    if config.early_stopping_patience > 0:
        callbacks.append(EarlyStopping("val_loss", patience=config.early_stopping_patience, mode="min"))
    # Each resumed segment logs to its own part; merge_history joins them (Lightning's CSV logger
    # would otherwise delete the earlier epochs' rows on resume).
    part = len(list((out / "logs").glob("part*"))) if resume else 0
    trainer = L.Trainer(
        max_epochs=config.max_epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        callbacks=callbacks,
        logger=[CSVLogger(out / "logs", name="", version=f"part{part}"), TensorBoardLogger(out, name="tb", version="")],
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=True,
        log_every_n_steps=50,
        num_sanity_val_steps=0,
        limit_train_batches=limit_train_batches,
    )
    ckpt = resume_path(out) if resume else None
    if not ckpt:  # a fresh run: record how it was started, forget the logs of any earlier run here
        (out / "command.txt").write_text(" ".join(sys.argv) + "\n")
        for old_part in (out / "logs").glob("part*/metrics.csv"):
            old_part.unlink()
    if resume and ckpt is None:
        log.warning("--resume: no checkpoint under %s/checkpoints, starting from scratch", out)
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None)
    if not trainer.is_global_zero:
        return FitResult(out / "model.pt", {}, trainer.current_epoch, time.time() - t0)

    best = best_cb.best_model_path or last_cb.best_model_path
    return finalize(config, dm, out, best, epochs_run=trainer.current_epoch, t0=t0, preset=preset)


def finalize(
    config: TrainConfig,
    dm: PneumoniaDataModule,
    out: Path,
    best: str | Path | None,
    epochs_run: int,
    t0: float,
    preset: str | None = None,
    interim: bool = False,
) -> FitResult:
    """Load the best epoch's weights (EarlyStopping's "restore best"), fit the temperature and the
    threshold on the validation split, and write ``out/model.pt`` with its provenance."""
    from . import metrics as M  # the evaluation module: threshold rules, temperature, CIs

    weights = _recipe_class_weight(config, dm)
    module = PneumoniaClassifier(config, weights)
    best_epoch = None
    if best:
        saved = torch.load(best, map_location="cpu", weights_only=False)
        module.load_state_dict(saved["state_dict"])
        best_epoch = int(saved.get("epoch", -1))
    model = module.model.cpu().eval().to(memory_format=torch.contiguous_format)
    logits, y = _val_logits(model, dm)
    two_classes = len(set(y.tolist())) == 2
    temperature = M.fit_temperature(logits, y) if config.calibrate and two_classes else 1.0
    prob = 1.0 / (1.0 + np.exp(-logits / temperature))
    threshold = M.choose_threshold(y, prob, config.threshold_rule) if two_classes else 0.5
    groups = [r.patient_id for r in dm.val_records]
    val_metrics = M.binary_metrics(y, prob, threshold)
    val_metrics["ci"] = M.bootstrap_ci(y, prob, threshold, groups=groups, n_boot=1000, seed=0)
    started = out / "command.txt"
    provenance = base_provenance(
        training_command=started.read_text().strip() if started.exists() else None,
        recipe=preset or "custom",
        train_config=config.to_dict(),
        val_fraction=config.val_fraction,
        split_seed=config.split_seed,
        data_manifest=dm.manifest,
        train_counts=list(dm.counts["train"]),
        validation_counts=list(dm.counts["validation"]),
        class_weight=list(weights) if weights else None,
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        interim=interim,
        skipped_files=len(dm.bad),
        wall_s=round(time.time() - t0, 1),
    )
    result = Checkpoint(
        model=model,
        config=config.model,
        threshold=float(threshold),
        threshold_rule=config.threshold_rule,
        temperature=float(temperature),
        preprocessing=default_preprocessing(config.model.input_size),
        provenance=provenance,
        metrics={"validation": val_metrics},
    )
    path = save_checkpoint(result, out / "model.pt")
    summary = {"validation": val_metrics, "provenance": provenance}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    history = merge_history(out / "logs")
    if history.exists():
        try:
            from .report import plot_history

            plot_history(history, out / "training_history.png")
        except Exception as exc:  # noqa: BLE001 - a figure must never sink a finished run
            log.warning("could not draw the training history: %s", exc)
    return FitResult(path, {**val_metrics, "skipped_files": len(dm.bad)}, epochs_run, time.time() - t0)


def export_best(config: TrainConfig, data: str | Path, out: str | Path, preset: str | None = None) -> FitResult:
    """Write ``out/model.pt`` from the best checkpoint so far of a run that is still going or
    was interrupted (provenance marks it ``interim``); no training."""
    out = Path(out)
    best = best_checkpoint(out)
    if best is None:
        from .errors import CheckpointError

        raise CheckpointError(f"{out / 'checkpoints'}: no best checkpoint yet (the run has not finished an epoch)")
    last = resume_path(out)
    epochs_run = int(torch.load(last, map_location="cpu", weights_only=False).get("epoch", -1)) + 1 if last else -1
    dm = PneumoniaDataModule(data, config.model.input_size, config.batch_size, config.val_fraction, config.split_seed, config.seed)
    dm.setup("fit")
    return finalize(config, dm, out, best, epochs_run=epochs_run, t0=time.time(), preset=preset, interim=True)
