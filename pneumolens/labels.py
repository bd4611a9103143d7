"""Read a user's own labelled films: a CSV of ``file,label[,patient_id]``, or a folder of class folders.

CSV: a header line naming the columns ``file`` and ``label`` (and optionally ``patient_id``; any
case, any order, other columns ignored). Relative file names are read from the CSV's folder.
Labels are ``NORMAL`` / ``PNEUMONIA`` or ``0`` / ``1``, in any case. A bad row is one
:class:`~pneumolens.errors.DatasetError` naming the CSV's line and the reason. Files are not
opened here: decoding reports a missing or unreadable one by name.

Folder: ``DIR/NORMAL`` and ``DIR/PNEUMONIA`` (either may be missing, not both), searched
recursively for image files.

Patient of each film (:func:`patient_ids`): the CSV's ``patient_id``, else the DICOM file's
PatientID, else its Kaggle-style file name (``person12_bacteria_45.jpeg``), else the film alone.
It decides how the bootstrap resamples (by patient) and the patient-level metrics.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .data import CLASS_NAMES, find_images, parse_name
from .errors import DatasetError
from .io import dicom_patient_id

#: Accepted label spellings (compared lower-cased, stripped) → class index.
LABEL_VALUES = {"normal": 0, "0": 0, "pneumonia": 1, "1": 1}

#: Columns a labels CSV must have, and the optional one.
REQUIRED_COLUMNS = ("file", "label")
PATIENT_COLUMN = "patient_id"

#: Where each film's patient id came from, as :func:`patient_ids` counts them, and in words.
SOURCE_WORDS = {"column": "the patient_id column", "dicom": "DICOM PatientID", "file name": "file names"}
SOURCES = tuple(SOURCE_WORDS)


@dataclass(frozen=True)
class LabelledFile:
    """One film to evaluate: where it is, its class (0 NORMAL, 1 PNEUMONIA), its patient if given."""

    path: Path
    label: int
    patient_id: str | None
    name: str  # the file as the CSV or folder names it (relative), for patient ids from names


def parse_label(text: str) -> int | None:
    """``NORMAL`` / ``PNEUMONIA`` / ``0`` / ``1`` (any case, spaces around) → 0 or 1; None otherwise."""
    return LABEL_VALUES.get(text.strip().lower())


def read_labels(source: str | Path) -> list[LabelledFile]:
    """The films of a labels CSV (:func:`read_labels_csv`) or of a class-folder tree (:func:`read_labels_folder`)."""
    source = Path(source)
    return read_labels_folder(source) if source.is_dir() else read_labels_csv(source)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is no column name
    except FileNotFoundError:
        raise DatasetError(f"{path}: labels file does not exist") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                           "save the labels as a UTF-8 CSV") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the labels file ({exc.strerror or exc})") from None


def _columns(path: Path, header: Sequence[str]) -> dict[str, int]:
    """Column name (lower-cased, stripped) → position; a required column missing is an error."""
    names = [h.strip().lower() for h in header]
    found = ", ".join(repr(h.strip()) for h in header) or "nothing"
    for column in REQUIRED_COLUMNS:
        if column not in names:
            raise DatasetError(f"{path}: the header line has no '{column}' column (found {found}); "
                               "expected file,label and optionally patient_id")
    doubled = sorted({n for n in names if n and names.count(n) > 1})
    if doubled:
        raise DatasetError(f"{path}: the header line names the column '{doubled[0]}' twice")
    return {n: i for i, n in enumerate(names)}


def read_labels_csv(path: str | Path) -> list[LabelledFile]:
    """Every row of a labels CSV, in order; relative file names joined to the CSV's folder.

    Raises:
        DatasetError: one line naming the CSV (and the line, for a bad row) and the reason: a
            missing file or column, a label that is not NORMAL / PNEUMONIA / 0 / 1, an empty file
            name, a row with more fields than the header, a file listed twice, no rows at all.
    """
    path = Path(path)
    reader = csv.reader(_read_text(path).splitlines(keepends=True))
    try:
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{path}: the labels file is empty; expected a header line file,label[,patient_id]")
        cols = _columns(path, header)
        base = path.parent
        items: list[LabelledFile] = []
        first_line: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # blank line
            where = f"{path}, line {line}"
            if len(row) > len(header):
                raise DatasetError(f"{where}: {len(row)} fields but the header has {len(header)} columns "
                                   "(quote a file name that holds a comma)")
            cell = {name: (row[i].strip() if i < len(row) else "") for name, i in cols.items()}
            if not cell["file"]:
                raise DatasetError(f"{where}: the file name is empty")
            label = parse_label(cell["label"])
            if label is None:
                shown = cell["label"] or "(empty)"
                raise DatasetError(f"{where}: label {shown!r} is not NORMAL, PNEUMONIA, 0 or 1")
            file = Path(cell["file"])
            full = file if file.is_absolute() else base / file
            key = os.path.normpath(full)
            if key in first_line:
                raise DatasetError(f"{where}: {cell['file']} is listed twice (first on line {first_line[key]})")
            first_line[key] = line
            items.append(LabelledFile(full, label, cell.get(PATIENT_COLUMN) or None, cell["file"]))
    except csv.Error as exc:
        raise DatasetError(f"{path}, line {reader.line_num}: not valid CSV ({exc})") from None
    if not items:
        raise DatasetError(f"{path}: no films listed below the header line")
    return items


def read_labels_folder(root: str | Path) -> list[LabelledFile]:
    """Every image file under ``root/NORMAL`` and ``root/PNEUMONIA`` (folder names in any case), sorted.

    Raises:
        DatasetError: neither class folder exists, or they hold no image files.
    """
    root = Path(root)
    sub = {p.name.upper(): p for p in sorted(root.iterdir()) if p.is_dir()} if root.is_dir() else {}
    folders = [(label, sub[name]) for label, name in enumerate(CLASS_NAMES) if name in sub]
    if not folders:
        raise DatasetError(f"{root}: no NORMAL or PNEUMONIA sub-folder; put each class's films in its own "
                           "folder, or pass a CSV of file,label[,patient_id]")
    items: list[LabelledFile] = []
    for label, folder in folders:
        files, _ = find_images([folder])
        items += [LabelledFile(f, label, None, f.relative_to(root).as_posix()) for f in files]
    if not items:
        raise DatasetError(f"{root}: its NORMAL and PNEUMONIA folders hold no image files")
    return items


def patient_ids(
    items: Sequence[LabelledFile], dicom_id: Callable[[Path], str | None] = dicom_patient_id
) -> tuple[list[str], dict[str, int]]:
    """Each film's patient and how many ids came from each source (:data:`SOURCES`).

    The given ``patient_id``, else the DICOM PatientID (``dicom_id``, read from the header only),
    else the patient a Kaggle-style file name encodes, else the film's own name: a film of
    unknown patient stands alone, never joined to another by a shared file stem.
    """
    ids: list[str] = []
    sources: Counter[str] = Counter()
    for item in items:
        if item.patient_id:
            ids.append(item.patient_id)
            sources["column"] += 1
            continue
        pid = dicom_id(item.path)
        if pid:
            ids.append(pid)
            sources["dicom"] += 1
            continue
        named, _ = parse_name(Path(item.name).name, item.label)
        ids.append(item.name if named == Path(item.name).stem else named)
        sources["file name"] += 1
    return ids, {s: sources[s] for s in SOURCES}
