"""Lightning DataModule: the patient-level split of ``train``, decoded once, served from memory.

All arrays of the split fit in memory as uint8 (5,216 x 128 x 128 ≈ 85 MB), so batches are
tensor slices, not per-image Python work. The training iterable is *resumable*: its state (epoch
and batches done) is saved in Lightning checkpoints, so an interrupted epoch continues where it
stopped instead of starting over.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from .cache import load_images
from .data import Record, class_counts, find_split, fold_split, manifest_hash, patient_split
from .errors import InvalidImageError

if TYPE_CHECKING:
    from .config import TrainConfig

log = logging.getLogger(__name__)


class ResumableBatches:
    """Shuffled mini-batches of in-memory tensors, with a state Lightning can save and restore.

    The order of epoch ``e`` is a permutation drawn from ``seed + e``, so it does not depend on
    how many times the run was interrupted. Under DDP each rank takes every ``world_size``-th
    index of the same permutation (padded by wrapping so all ranks take the same step count).
    With ``masks`` (one per image) each batch is ``(images, labels, masks)``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        masks: torch.Tensor | None = None,
    ) -> None:
        self.images, self.labels, self.masks = images, labels, masks
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._next_epoch = 0  # the epoch the next __iter__ serves
        self._pending: tuple[int, int] | None = None  # (epoch, batches done) restored from a checkpoint
        self._cur_epoch, self._consumed = 0, 0  # progress of the iteration under way

    def _indices(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(len(self.images), generator=g)
        per_rank = -(-len(perm) // self.world_size)
        if per_rank * self.world_size > len(perm):
            perm = torch.cat([perm, perm[: per_rank * self.world_size - len(perm)]])
        return perm[self.rank :: self.world_size]

    def __len__(self) -> int:
        per_rank = -(-len(self.images) // self.world_size)
        return -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        # The epoch advances when an iteration *starts*: Lightning stops fetching once it has the
        # epoch's len() batches, so the generator's end is not a reliable signal.
        if self._pending is not None:
            (epoch, start), self._pending = self._pending, None
        else:
            epoch, start = self._next_epoch, 0
        self._next_epoch = epoch + 1
        self._cur_epoch, self._consumed = epoch, start
        idx = self._indices(epoch)
        for b in range(start, len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            if self.masks is None:
                yield self.images[sel], self.labels[sel]
            else:
                yield self.images[sel], self.labels[sel], self.masks[sel]

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch``'s order next (called as Lightning starts an epoch).

        Lightning restores this loader's state only for a run resumed mid-epoch; one resumed at an
        epoch boundary (from ``last.ckpt``) would otherwise start again from epoch 0's order.
        A restored mid-epoch position in ``epoch`` itself is kept.
        """
        if self._pending is not None and self._pending[0] == epoch:
            return
        self._pending = None
        self._next_epoch = int(epoch)

    def mark_consumed(self) -> None:
        """Called after each finished training step (the fetcher reads one batch ahead)."""
        self._consumed += 1

    def state_dict(self) -> dict[str, int]:
        epoch, done = self._cur_epoch, self._consumed
        if done >= len(self):
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if epoch < self._next_epoch:
            return  # a state we are already past
        if done >= len(self):
            epoch, done = epoch + 1, 0
        self._pending = (epoch, done)
        self._next_epoch = epoch
        self._cur_epoch, self._consumed = epoch, done


class PneumoniaDataModule(L.LightningDataModule):
    """Train/validation data from ``ROOT/train``, split by patient (one split, or one cross-validation fold).

    Args:
        root: dataset root (Kaggle layout).
        input_size: side of the square input.
        batch_size: training batch size (validation uses 128).
        val_fraction, split_seed: the patient-level validation split.
        folds, fold: when ``folds`` >= 2, fold ``fold`` of the patient-level K-fold split
            (:func:`pneumolens.data.fold_split`, drawn with ``split_seed``) validates instead of
            the ``val_fraction`` split.
        seed: shuffling seed.
        skip_bad: warn about unreadable files and go on; otherwise the first one is an error.
        max_images: keep only the first patients up to this many images per class (tests, demos).
        cache_dir: where decoded arrays are kept (default ``~/.cache/pneumolens``).
        progress: progress bars while decoding and loading (``--no-progress`` turns them off).
        lung_masks: also find each training film's lung fields (:func:`pneumolens.audit.lungs.lung_mask`,
            once, at setup) and serve what the context swap keeps of it with its batches.
    """

    def __init__(
        self,
        root: str | Path,
        input_size: int = 128,
        batch_size: int = 8,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        seed: int = 0,
        skip_bad: bool = False,
        max_images: int | None = None,
        cache_dir: str | Path | None = None,
        folds: int = 0,
        fold: int = 0,
        progress: bool = True,
        lung_masks: bool = False,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.input_size, self.batch_size = input_size, batch_size
        self.val_fraction, self.split_seed, self.seed = val_fraction, split_seed, seed
        self.skip_bad, self.max_images, self.cache_dir = skip_bad, max_images, cache_dir
        self.folds, self.fold = folds, fold
        self.progress, self.lung_masks = progress, lung_masks
        self.train_records: list[Record] = []
        self.val_records: list[Record] = []
        self.bad: list[tuple[str, str]] = []
        self._train: ResumableBatches | None = None
        self._prepared = False

    @classmethod
    def from_config(cls, config: "TrainConfig", root: str | Path, **kwargs: object) -> "PneumoniaDataModule":
        """The data a training config asks for: input and batch size, its split or fold, its seed.

        ``kwargs`` are the other constructor arguments (``skip_bad``, ``max_images``, ``cache_dir``, ``progress``).
        """
        return cls(
            root, config.model.input_size, config.batch_size, config.val_fraction, config.split_seed, config.seed,
            folds=config.folds, fold=config.fold, lung_masks=config.augment.needs_lung_masks,
            **kwargs,  # type: ignore[arg-type]
        )

    # --- one-off work in one process: decode everything into the on-disk cache -----------------
    def prepare_data(self) -> None:
        if self._prepared:
            return  # fit() prepares before the Trainer does: hash and decode the files once
        self._prepared = True
        records = self.records()
        load_images([r.path for r in records], self.input_size, cache_dir=self.cache_dir, desc="decoding train",
                    progress=self.progress)

    def records(self) -> list[Record]:
        """Every record of ``ROOT/train`` this module splits (whole patients up to ``max_images`` per class)."""
        records = find_split(self.root, "train")
        if self.max_images:
            records = subset_by_patient(records, self.max_images)
        return records

    def _load(self, records: list[Record], desc: str) -> tuple[list[Record], torch.Tensor, torch.Tensor]:
        res = load_images([r.path for r in records], self.input_size, cache_dir=self.cache_dir, desc=desc,
                          progress=self.progress)
        if res.bad:
            if not self.skip_bad:
                raise InvalidImageError(f"{res.bad[0][1]} (use --skip-bad to leave bad files out)")
            for path, reason in res.bad:
                log.warning("skipping %s", reason)
            self.bad.extend(res.bad)
        kept = [records[i] for i in res.kept]
        labels = torch.tensor([r.label for r in kept], dtype=torch.float32)
        return kept, torch.from_numpy(res.images), labels

    # --- every process: the split and the tensors ---------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        train, val = self.split(self.records())
        self.train_records, x_tr, y_tr = self._load(train, "loading train")
        self.val_records, x_va, y_va = self._load(val, "loading validation")
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        masks = self._lung_masks(x_tr) if self.lung_masks else None
        self._train = ResumableBatches(x_tr, y_tr, self.batch_size, self.seed, rank, world, masks)
        self._val = TensorDataset(x_va, y_va)

    def _lung_masks(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 1, S, S): what the context swap keeps of each film, 0-255
        (:func:`pneumolens.augment.lung_keep_weights` of its approximate lung fields)."""
        from .audit.lungs import lung_mask
        from .augment import lung_keep_weights

        films = images.numpy()
        masks = np.zeros((len(films), 1, *films.shape[1:]), dtype=np.uint8)
        bar = tqdm(films, desc="finding lung fields", unit="img", disable=not self.progress, leave=False)
        for i, film in enumerate(bar):
            masks[i, 0] = lung_mask(film).mask
        keep = [lung_keep_weights(torch.from_numpy(masks[i : i + 256])) for i in range(0, len(masks), 256)]
        return (torch.cat(keep) * 255).round().to(torch.uint8) if keep else torch.from_numpy(masks)

    def split(self, records: list[Record]) -> tuple[list[Record], list[Record]]:
        """(train, validation) records: the cross-validation fold if ``folds`` is set, else the one split."""
        if self.folds:
            return fold_split(records, self.folds, self.fold, self.split_seed)
        return patient_split(records, self.val_fraction, self.split_seed)

    def train_dataloader(self) -> ResumableBatches:
        assert self._train is not None, "setup() must run first"
        return self._train

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._val, batch_size=128, shuffle=False)

    def images(self) -> tuple[np.ndarray, np.ndarray]:
        """The (training, validation) films as uint8 (N, S, S) arrays, after :meth:`setup`."""
        assert self._train is not None and self._val is not None, "setup() must run first"
        return self._train.images.numpy(), self._val.tensors[0].numpy()

    @property
    def counts(self) -> dict[str, tuple[int, int]]:
        return {"train": class_counts(self.train_records), "validation": class_counts(self.val_records)}

    @property
    def manifest(self) -> str:
        return manifest_hash(self.train_records + self.val_records)


def subset_by_patient(records: list[Record], max_per_class: int) -> list[Record]:
    """Whole patients, in sorted order, until each class has about ``max_per_class`` images."""
    out: list[Record] = []
    for label in (0, 1):
        by_patient: dict[str, list[Record]] = {}
        for r in records:
            if r.label == label:
                by_patient.setdefault(r.patient_id, []).append(r)
        n = 0
        for pid in sorted(by_patient):
            if n >= max_per_class:
                break
            out.extend(by_patient[pid])
            n += len(by_patient[pid])
    return out
