"""The LightningModule: what one training or validation step computes (loss, metrics, optimiser).

Devices, checkpoint files, early stopping, progress bars and logs are the Trainer's
(:mod:`pneumolens.training.trainer`); saving and restoring the epoch's metric states for a
resumed run is :mod:`pneumolens.training.resume`'s.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import lightning as L
import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryPrecision, BinaryRecall

from ..augment import Augment
from ..config import TrainConfig
from ..losses import class_weights, focal_loss
from ..model import CnnLstm
from .resume import TRAIN_EPOCH_STATE_KEY, load_metric_state, metric_state

log = logging.getLogger(__name__)


def _metrics(prefix: str) -> MetricCollection:
    return MetricCollection(
        {"acc": BinaryAccuracy(), "precision": BinaryPrecision(), "recall": BinaryRecall(), "auc": BinaryAUROC()},
        prefix=prefix,
    )


def recipe_class_weight(config: TrainConfig, train_counts: tuple[int, int]) -> tuple[float, float] | None:
    """The loss's (NORMAL, PNEUMONIA) weights from the training split's counts, if the recipe uses them."""
    return class_weights(*train_counts) if config.class_weighting else None


class PneumoniaClassifier(L.LightningModule):
    """Focal-loss training of a :class:`CnnLstm`, with the original's class weights.

    Args:
        config: the training recipe (model, augmentation, optimiser, schedule, loss); its
            ``accelerate`` switches the CPU-training kernels of :mod:`pneumolens.accel` on or off.
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
        #: The accelerator's swaps applied to ``model`` (see :meth:`setup`); empty on the stock path.
        self.accelerated: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """PNEUMONIA logits for float images (B, 1, S, S) in [0, 1]."""
        return self.model(x)

    @staticmethod
    def to_float(images: torch.Tensor) -> torch.Tensor:
        """uint8 batches (B, S, S) from the data module as float (B, 1, S, S) in [0, 1]; float input unchanged."""
        return images.unsqueeze(1).float().div_(255.0) if images.dtype == torch.uint8 else images

    def setup(self, stage: str) -> None:
        # The Trainer's deterministic=True also makes PyTorch fill every new tensor with NaN, a
        # guard against kernels that read memory they never wrote: one more pass over every
        # activation and gradient (its cost: docs/performance.md, "No NaN fill"). The kernels here
        # write what they read; the seeded-run tests still hold.
        self._fill_uninitialized = torch.utils.deterministic.fill_uninitialized_memory
        torch.utils.deterministic.fill_uninitialized_memory = False
        if stage == "fit" and self.config.accelerate and self.trainer.strategy.root_device.type == "cpu":
            self._accelerate()

    def _accelerate(self) -> None:
        """Swap the CPU-training kernels into the model, before the optimiser sees its parameters.

        Lightning calls ``setup`` before it moves the model to its device, builds the optimiser
        and restores a checkpoint; the swaps keep the parameters and their names, so a checkpoint
        of a stock run resumes accelerated and the other way round.
        """
        from ..accel import accelerate_cpu_training  # the fenced accelerator, imported only to train

        self.accelerated = list(accelerate_cpu_training(self.model))
        log.info("CPU training accelerator: %s", ", ".join(self.accelerated) or "no swap applies to this model")

    def teardown(self, stage: str) -> None:
        torch.utils.deterministic.fill_uninitialized_memory = getattr(self, "_fill_uninitialized", True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Augmentation and dropout draw from a stream keyed by (seed, step, rank), so a run resumed
        # from any checkpoint continues with exactly the randomness it would have had.
        torch.manual_seed(self.config.seed * 1_000_003 + self.global_step * 131 + self.global_rank)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        images, y, *masks = batch  # lung masks come along when the augmentation needs them
        # 1. augment in the training path only
        x = self.augment(self.to_float(images), masks=masks[0] if masks else None)
        x = x.contiguous(memory_format=torch.channels_last)
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
        # The fused kernel updates all parameters at once instead of looping over them (its gain:
        # docs/performance.md). Same update rule; a run
        # resumed from an older checkpoint keeps the loop (the optimiser's saved settings win).
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
