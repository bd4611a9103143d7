"""Find the images of a Kaggle-layout dataset, know their patients, split by patient.

Layout: ``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/<file>``. Label 1 is PNEUMONIA.
File names carry the patient and the subtype (``person12_bacteria_45.jpeg``,
``IM-0115-0001.jpeg``, ``NORMAL2-IM-0381-0001.jpeg``); a name that matches no pattern is its
own patient, so it can never leak across a split.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .io import IMAGE_SUFFIXES

CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
SPLITS = ("train", "val", "test")
DEFAULT_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray"
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


def resolve_data_root(data: str | Path | None) -> Path:
    """Pick the data root: ``data``, else ``$PNEUMOLENS_DATA``, else the shared copy, else ``./chest_xray``.

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
    for candidate in (DEFAULT_SHARED_DATA, Path.cwd().parent / "shared" / "data" / "chest_xray", Path("chest_xray")):
        if candidate.is_dir():
            return candidate
    raise DatasetError(f"no dataset found (looked for ../shared/data/chest_xray and ./chest_xray); {DATASET_HINT}")


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
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_patient[r.patient_id].append(i)
    klass = {pid: int(2 * sum(records[i].label for i in idx) >= len(idx)) for pid, idx in by_patient.items()}
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


def find_images(inputs: list[str | Path]) -> tuple[list[Path], dict[Path, int]]:
    """Expand files and folders into the files to predict, in the order given.

    A file named on the command line is kept whatever its suffix (and whether or not it
    exists), so that decoding reports it by name instead of dropping it silently. A folder is
    walked recursively for ``.jpeg .jpg .png .dcm .dicom`` files (any case), hidden files and
    folders skipped, sorted. A file reached twice is listed once.

    Returns:
        (files, images found per folder).
    """
    files: list[Path] = []
    found: dict[Path, int] = {}
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(path)

    for item in map(Path, inputs):
        if not item.is_dir():
            add(item)
            continue
        walked = []
        for dirpath, dirnames, filenames in os.walk(item):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            walked += [
                Path(dirpath) / f for f in filenames if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)
            ]
        found[item] = len(walked)
        for path in sorted(walked):
            add(path)
    return files, found


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
