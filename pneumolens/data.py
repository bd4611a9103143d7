"""Find the images of a Kaggle-layout dataset, know their patients, split by patient.

Layout: ``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/<file>``. Label 1 is PNEUMONIA.
File names carry the patient and the subtype (``person12_bacteria_45.jpeg``,
``IM-0115-0001.jpeg``, ``NORMAL2-IM-0381-0001.jpeg``); a name that matches no pattern is its
own patient, so it can never leak across a split.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import DatasetError
from .io import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
SPLITS = ("train", "val", "test")
DATASET_HINT = (
    "get the dataset from Kaggle (paultimothymooney/chest-xray-pneumonia) and pass its "
    "chest_xray folder with --data or $PNEUMOLENS_DATA"
)

_PNEUMONIA_RE = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_NORMAL_RE = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)


@dataclass(frozen=True)
class Record:
    """One image of the dataset: where it is, its label, patient and subtype."""

    path: Path
    label: int
    patient_id: str
    subtype: str
    split: str


def parse_name(filename: str, label: int) -> tuple[str, str]:
    """Return ``(patient_id, subtype)`` for a Kaggle file name.

    Subtype is ``normal``, ``bacteria``, ``virus``, or ``pneumonia`` when a PNEUMONIA file's
    name does not say which. An unrecognised name is its own patient (its stem).
    """
    stem = Path(filename).stem
    m = _PNEUMONIA_RE.match(stem)
    if m:
        return m.group(1).lower(), m.group(2).lower()
    m = _NORMAL_RE.match(stem)
    if m:
        return m.group(1).upper(), "normal"
    return stem, ("pneumonia" if label == 1 else "normal")


def resolve_data_root(data: str | Path | None, fallbacks: Sequence[str | Path] = ("chest_xray",)) -> Path:
    """Pick the data root: ``data``, else ``$PNEUMOLENS_DATA``, else the first folder of ``fallbacks`` that exists.

    An explicit folder (``data`` or the variable) that does not exist is an error, never a reason to
    look elsewhere. The command line passes its own ``fallbacks``
    (:func:`pneumolens.commands._common.data_fallbacks`).

    Args:
        data: the dataset root, or None to use the variable or the fallbacks.
        fallbacks: folders tried in order. Default: ``./chest_xray``.

    Raises:
        DatasetError: when the chosen folder does not exist, with where to get the dataset.
    """
    if data is not None:
        root = Path(data)
        if not root.is_dir():
            raise DatasetError(f"{root}: data folder does not exist; {DATASET_HINT}")
        return root
    env = os.environ.get("PNEUMOLENS_DATA")
    if env:
        root = Path(env)
        if not root.is_dir():
            raise DatasetError(f"{root} ($PNEUMOLENS_DATA): data folder does not exist; {DATASET_HINT}")
        return root
    for candidate in map(Path, fallbacks):
        if candidate.is_dir():
            return candidate
    looked = ", ".join(_shown(Path(c)) for c in fallbacks) or "no default folder"
    raise DatasetError(f"no dataset found (looked for {looked}); {DATASET_HINT}")


def _shown(path: Path) -> str:
    """A folder as a message names it: ``./chest_xray`` for a plain relative name."""
    return path.as_posix() if path.is_absolute() or path.parts[:1] == ("..",) else f"./{path.as_posix()}"


def find_split(root: str | Path, split: str) -> list[Record]:
    """List every file of ``ROOT/split/{NORMAL,PNEUMONIA}``, sorted, hidden files excluded.

    Files that are not images are listed too, so that decoding reports them by name instead
    of dropping them silently.

    Raises:
        DatasetError: the split folder or a class folder is missing, or a class folder is empty.
    """
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise DatasetError(
            f"{split_dir}: split folder '{split}' is missing (expected {root}/{split}/NORMAL and /PNEUMONIA)"
        )
    records: list[Record] = []
    for label, cls in enumerate(CLASS_NAMES):
        cls_dir = split_dir / cls
        if not cls_dir.is_dir():
            raise DatasetError(f"{cls_dir}: class folder '{cls}' is missing")
        files = sorted(p for p in cls_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DatasetError(f"{cls_dir}: class folder '{cls}' is empty")
        for path in files:
            patient, subtype = parse_name(path.name, label)
            records.append(Record(path, label, patient, subtype, split))
    return records


def patient_split(records: list[Record], fraction: float = 0.1, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Split records into (train, validation) by patient, stratified by class, deterministic.

    Patients of each class are shuffled with ``seed`` and moved to validation until it holds
    ``fraction`` of that class's images, so no patient has films on both sides and both classes
    keep their proportion. A patient is grouped by id alone (even with films in both classes;
    it then counts for its majority class), and each class keeps at least one patient in
    train. The same records and seed always give the same split.

    Raises:
        ValueError: ``fraction`` is not strictly between 0 and 1.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    by_patient, klass = _patients(records)
    rng = np.random.default_rng(seed)
    val_idx: set[int] = set()
    for label in (0, 1):
        patients = sorted(pid for pid in by_patient if klass[pid] == label)
        if not patients:
            continue
        target = fraction * sum(len(by_patient[pid]) for pid in patients)
        order = rng.permutation(len(patients))
        taken = 0
        for j in order[: len(patients) - 1]:  # the last patient of a class always stays in train
            if taken >= target:
                break
            idx = by_patient[patients[j]]
            val_idx.update(idx)
            taken += len(idx)
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val


def _patients(records: list[Record]) -> tuple[dict[str, list[int]], dict[str, int]]:
    """(record indices of each patient, each patient's class): its majority label, ties to PNEUMONIA."""
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_patient[r.patient_id].append(i)
    klass = {pid: int(2 * sum(records[i].label for i in idx) >= len(idx)) for pid, idx in by_patient.items()}
    return by_patient, klass


def patient_folds(records: list[Record], folds: int, seed: int = 0) -> list[int]:
    """The cross-validation fold (0 .. ``folds`` - 1) of each record: by patient, stratified by class.

    Patients of each class (grouped as in :func:`patient_split`) are shuffled with ``seed`` and
    dealt one at a time to the fold that holds the fewest images of that class so far (ties to
    the lowest fold), so every patient lies in exactly one fold, the folds' class counts differ
    by at most one patient's films, and the same records and seed always give the same folds.

    Raises:
        ValueError: ``folds`` is below 2.
        DatasetError: a class has fewer patients than folds (some fold would lack that class).
    """
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    by_patient, klass = _patients(records)
    rng = np.random.default_rng(seed)
    fold_of = [0] * len(records)
    for label in (0, 1):
        patients = sorted(pid for pid in by_patient if klass[pid] == label)
        if len(patients) < folds:
            raise DatasetError(
                f"cannot make {folds} folds: class {CLASS_NAMES[label]} has only {len(patients)} patients"
            )
        images = [0] * folds
        for j in rng.permutation(len(patients)):
            idx = by_patient[patients[j]]
            k = min(range(folds), key=lambda f: (images[f], f))
            images[k] += len(idx)
            for i in idx:
                fold_of[i] = k
    return fold_of


def fold_split(records: list[Record], folds: int, fold: int, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """(train, validation) for cross-validation fold ``fold`` of :func:`patient_folds`: that fold validates.

    Raises:
        ValueError: ``fold`` is not in [0, folds).
    """
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in [0, {folds - 1}], got {fold}")
    fold_of = patient_folds(records, folds, seed)
    train = [r for r, f in zip(records, fold_of) if f != fold]
    val = [r for r, f in zip(records, fold_of) if f == fold]
    return train, val


def find_images(
    inputs: Sequence[str | Path], on_warning: Callable[[Path, str], None] | None = None
) -> tuple[list[Path], dict[Path, int]]:
    """Expand files and folders into the files to predict, in the order given.

    A file named on the command line is kept whatever its suffix (and whether or not it
    exists, or is a symlink loop), so that decoding reports it by name instead of dropping it
    silently. A folder is walked recursively for ``.jpeg .jpg .png .dcm .dicom`` files (any
    case), hidden files and folders skipped, sorted. Symlinked subfolders are followed, each
    folder searched once however many links lead to it (so a link back up the tree is no
    loop). A file reached twice is listed once.

    Args:
        inputs: files and folders.
        on_warning: called as ``on_warning(folder_given, message)`` for each subfolder that
            could not be read (its files are missing from the result). Default: a logged warning.

    Returns:
        (files, images found per folder).
    """
    warn = on_warning or (lambda root, message: log.warning("%s", message))
    files: list[Path] = []
    found: dict[Path, int] = {}
    seen: set[Path] = set()

    def add(path: Path) -> None:
        try:
            key = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop: listed, so that reading it reports the loop
            key = path.absolute()
        if key not in seen:
            seen.add(key)
            files.append(path)

    for item in map(Path, inputs):
        if not item.is_dir():
            add(item)
            continue
        found[item] = 0
        for path in sorted(_walk_images(item, lambda message, root=item: warn(root, message))):
            found[item] += 1
            add(path)
    return files, found


def _walk_images(top: Path, warn: Callable[[str], None]) -> list[Path]:
    """Image files under ``top``, following symlinked folders; each real folder searched once."""
    images: list[Path] = []
    searched: set[tuple[int, int]] = set()

    def unreadable(exc: OSError) -> None:
        warn(f"{exc.filename or top}: folder could not be read ({exc.strerror or exc}); its images are left out")

    for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError as exc:
            unreadable(exc)
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in searched:  # reached again through a link: already searched
            log.debug("%s: already searched through another path", dirpath)
            dirnames[:] = []
            continue
        searched.add((st.st_dev, st.st_ino))
        # real folders before links to folders, so that a file is listed by its own path when it can be
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")),
                             key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d))
        images += [Path(dirpath) / f for f in filenames if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    return images


def manifest_hash(records: list[Record]) -> str:
    """A short hash of (file name, label) pairs: says which data a model was trained on."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: (r.split, r.path.name)):
        h.update(f"{r.split}/{r.label}/{r.path.name}\n".encode())
    return h.hexdigest()[:16]


def class_counts(records: list[Record]) -> tuple[int, int]:
    """(NORMAL, PNEUMONIA) image counts."""
    n1 = sum(r.label for r in records)
    return len(records) - n1, n1
