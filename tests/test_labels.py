"""`pneumolens evaluate --labels`: a user's own labelled films (a CSV or NORMAL/ PNEUMONIA/ folders),
patients from the CSV, the DICOM header or the file name, the same report as `evaluate --split`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_xray
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from pneumolens.cli import main
from pneumolens.errors import DatasetError
from pneumolens.evaluate import FIGURES
from pneumolens.io import dicom_patient_id
from pneumolens.labels import LabelledFile, parse_label, patient_ids, read_labels, read_labels_csv

OUTPUTS = ["metrics.json", "predictions.csv", "report.md", *FIGURES.values()]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMOLENS_CACHE", str(tmp_path / "cache"))


def write_dicom(path: Path, pixels: np.ndarray, **elements: object) -> Path:
    """An uncompressed 8-bit DICOM file (as tests/test_io.py makes them); ``elements`` set as attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.set_pixel_data(pixels, "MONOCHROME2", 8)
    for key, value in elements.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- reading the CSV ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, label",
    [("NORMAL", 0), ("normal", 0), (" Pneumonia ", 1), ("PNEUMONIA", 1), ("0", 0), ("1", 1), ("2", None),
     ("yes", None), ("", None), ("bacteria", None)],
)
def test_parse_label(text: str, label: int | None) -> None:
    assert parse_label(text) == label


def test_csv_rows_with_relative_and_absolute_paths_any_case_and_a_bom(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "x.png"
    csv_path = tmp_path / "study" / "labels.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(
        "\ufeffLabel, File ,Patient_ID,notes\n"  # a spreadsheet's BOM, any case, spaces, an extra column
        "pneumonia,films/a.jpeg,P1,cough\n"
        "\n"  # blank lines are skipped
        f"0,{elsewhere},,\n"
        "NORMAL,b.dcm,  ,\n",
        encoding="utf-8",
    )
    assert read_labels_csv(csv_path) == [
        LabelledFile(csv_path.parent / "films" / "a.jpeg", 1, "P1", "films/a.jpeg"),
        LabelledFile(elsewhere, 0, None, str(elsewhere)),
        LabelledFile(csv_path.parent / "b.dcm", 0, None, "b.dcm"),
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ("file,label\na.jpeg,NORMAL\nb.jpeg,maybe\n", "labels.csv, line 3: label 'maybe' is not NORMAL, PNEUMONIA, 0 or 1"),
        ("file,label\na.jpeg,\n", "labels.csv, line 2: label '(empty)' is not NORMAL, PNEUMONIA, 0 or 1"),
        ("file,label\n,1\n", "labels.csv, line 2: the file name is empty"),
        ("file,label\na.jpeg,1\nb.jpeg,0\n./a.jpeg,1\n", "labels.csv, line 4: ./a.jpeg is listed twice (first on line 2)"),
        ("file,label\na,b.jpeg,1\n", "labels.csv, line 2: 3 fields but the header has 2 columns"),
        ("path,label\na.jpeg,1\n", "labels.csv: the header line has no 'file' column (found 'path', 'label')"),
        ("file;label\na.jpeg;1\n", "labels.csv: the header line has no 'file' column (found 'file;label')"),
        ("file,label,FILE\na.jpeg,1,b\n", "labels.csv: the header line names the column 'file' twice"),
        ("", "labels.csv: the labels file is empty"),
        ("file,label\n\n", "labels.csv: no films listed below the header line"),
    ],
)
def test_a_bad_csv_is_one_line_naming_the_line_and_the_reason(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(DatasetError) as exc:
        read_labels(path)
    text = str(exc.value)
    assert "\n" not in text
    assert text.startswith(str(tmp_path / message.split(":")[0].split(",")[0])), text
    assert message.split(" ", 1)[1] in text, text


def test_a_csv_that_is_not_utf8_or_missing(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(b"file,label\n\xff\xfe.jpeg,1\n")
    with pytest.raises(DatasetError, match=r"labels.csv: not UTF-8 text \(byte 0xff at offset 11\)"):
        read_labels(path)
    with pytest.raises(DatasetError, match=r"nope.csv: labels file does not exist"):
        read_labels(tmp_path / "nope.csv")


def test_a_folder_of_class_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for rel, label in (("normal/b.png", 0), ("normal/sub/a.png", 0), ("PNEUMONIA/c.jpeg", 1)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_xray(label, rng)).save(tmp_path / rel)
    (tmp_path / "PNEUMONIA" / "notes.txt").write_text("not an image")
    items = read_labels(tmp_path)
    assert [(i.name, i.label) for i in items] == [("normal/b.png", 0), ("normal/sub/a.png", 0), ("PNEUMONIA/c.jpeg", 1)]
    with pytest.raises(DatasetError, match="no NORMAL or PNEUMONIA sub-folder"):
        read_labels(tmp_path / "normal")


# --- patients ----------------------------------------------------------------------------------------
def test_patient_ids_come_from_the_column_then_dicom_then_the_file_name() -> None:
    items = [
        LabelledFile(Path("/d/x.dcm"), 1, "P9", "x.dcm"),  # the column wins over the header
        LabelledFile(Path("/d/y.dcm"), 1, None, "y.dcm"),  # DICOM PatientID
        LabelledFile(Path("/d/person3_virus_7.jpeg"), 1, None, "person3_virus_7.jpeg"),  # Kaggle name
        LabelledFile(Path("/d/a/0001.png"), 0, None, "a/0001.png"),  # unknown: the film alone...
        LabelledFile(Path("/d/b/0001.png"), 0, None, "b/0001.png"),  # ...never joined by its stem
    ]
    headers = {Path("/d/x.dcm"): "HDR-X", Path("/d/y.dcm"): "HDR-Y"}
    ids, sources = patient_ids(items, dicom_id=headers.get)
    assert ids == ["P9", "HDR-Y", "person3", "a/0001.png", "b/0001.png"]
    assert sources == {"column": 1, "dicom": 1, "file name": 3}


def test_dicom_patient_id_reads_the_header_without_the_pixels(tmp_path: Path) -> None:
    film = synthetic_xray(0, np.random.default_rng(0))
    assert dicom_patient_id(write_dicom(tmp_path / "a.dcm", film, PatientID=" P-17 ")) == "P-17"
    assert dicom_patient_id(write_dicom(tmp_path / "noid.dcm", film)) is None
    assert dicom_patient_id(write_dicom(tmp_path / "empty.dcm", film, PatientID="")) is None
    named_otherwise = write_dicom(tmp_path / "scan.img", film, PatientID="P-18")  # found by its DICM marker
    assert dicom_patient_id(named_otherwise) == "P-18"
    # pixel data cut short: the header is still read (the pixels are never decoded here)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes((tmp_path / "a.dcm").read_bytes()[:-500])
    assert dicom_patient_id(cut) == "P-17"
    Image.fromarray(film).save(tmp_path / "film.jpeg")
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 10)
    for path in ("film.jpeg", "junk.dcm", "missing.dcm", "."):
        assert dicom_patient_id(tmp_path / path) is None


# --- pneumolens evaluate --labels ----------------------------------------------------------------------
def _stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _predictions(folder: Path) -> list[dict[str, str]]:
    with (folder / "predictions.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


SAME = ("n", "n_pos", "n_neg", "accuracy", "recall", "specificity", "roc_auc", "confusion", "ci", "patient_level")


@pytest.mark.slow  # real processes / whole pipelines: runs in `make test`, not in test-fast
def test_a_csv_of_the_val_films_gives_the_same_report_as_the_val_split(
    synthetic_dataset: Path, tiny_checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same films, labels and (file-name) patients: the same numbers and intervals, figure for figure."""
    films = tmp_path / "films"
    shutil.copytree(synthetic_dataset / "val", films)
    rows = [(p.relative_to(films).as_posix(), p.parent.name) for cls in ("NORMAL", "PNEUMONIA")
            for p in sorted((films / cls).iterdir())]
    (films / "labels.csv").write_text("file,label\n" + "".join(f"{f},{lab.lower()}\n" for f, lab in rows))
    ckpt = ["--checkpoint", str(tiny_checkpoint_path), "--bootstrap", "200"]
    assert main(["evaluate", "--data", str(synthetic_dataset), "--split", "val", "--out", str(tmp_path / "split"),
                 *ckpt]) == 0
    assert main(["evaluate", "--labels", str(films / "labels.csv"), "--out", str(tmp_path / "csv"), *ckpt]) == 0
    assert main(["evaluate", "--labels", str(films), "--out", str(tmp_path / "folder"), *ckpt]) == 0
    out = capsys.readouterr().out
    assert f"{films / 'labels.csv'}: 8 images (4 PNEUMONIA, 4 NORMAL), threshold 0.5000 (checkpoint)" in out
    split = _metrics(tmp_path / "split")
    for run in ("csv", "folder"):
        mine = _metrics(tmp_path / run)
        assert {k: mine[k] for k in SAME} == {k: split[k] for k in SAME}, run
        assert mine["bootstrap"]["unit"] == "patient" and mine["split"] == "labels"
        assert mine["patient_id_source"] == {"column": 0, "dicom": 0, "file name": 8}
        for name in OUTPUTS:
            assert (tmp_path / run / name).stat().st_size > 0, (run, name)
        assert [r["probability"] for r in _predictions(tmp_path / run)] == [
            r["probability"] for r in _predictions(tmp_path / "split")]
    report = (tmp_path / "csv" / "report.md").read_text()
    assert "8 from file names" in report


def test_dicom_patient_ids_group_the_films(tiny_checkpoint_path: Path, tmp_path: Path) -> None:
    """Six DICOM films of three patients, names that say nothing: the header's PatientID groups them;
    a patient_id in the CSV wins over it."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "dicoms"
    rows = []
    for i, (patient, label) in enumerate([("A", 0), ("A", 0), ("B", 1), ("B", 1), ("C", 1), ("C", 1)]):
        write_dicom(folder / f"img{i}.dcm", synthetic_xray(label, rng), PatientID=f"PAT-{patient}")
        rows.append(f"img{i}.dcm,{label}," + ("OVERRIDE" if i == 5 else ""))
    (folder / "labels.csv").write_text("file,label,patient_id\n" + "\n".join(rows) + "\n")
    out = tmp_path / "eval"
    assert main(["evaluate", "--labels", str(folder / "labels.csv"), "--out", str(out), "--checkpoint",
                 str(tiny_checkpoint_path), "--bootstrap", "50"]) == 0
    assert [r["patient_id"] for r in _predictions(out)] == ["PAT-A", "PAT-A", "PAT-B", "PAT-B", "PAT-C", "OVERRIDE"]
    m = _metrics(out)
    assert m["patient_id_source"] == {"column": 1, "dicom": 5, "file name": 0}
    assert m["patient_level"]["n"] == 4 and m["n"] == 6


def test_folder_evaluation_uses_the_dicom_patient_id(tiny_checkpoint_path: Path, tmp_path: Path) -> None:
    """A Kaggle-layout split (`--split`) of DICOM films: the PatientID, not the file name, is the patient."""
    rng = np.random.default_rng(4)
    root = tmp_path / "chest_xray"
    for i in range(4):
        label = i % 2
        cls = ("NORMAL", "PNEUMONIA")[label]
        write_dicom(root / "val" / cls / f"film{i}.dcm", synthetic_xray(label, rng), PatientID=f"ID{label}")
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(root), "--split", "val", "--out", str(out), "--checkpoint",
                 str(tiny_checkpoint_path), "--bootstrap", "0"]) == 0
    assert [r["patient_id"] for r in _predictions(out)] == ["ID0", "ID0", "ID1", "ID1"]
    assert _metrics(out)["patient_level"]["n"] == 2


def test_missing_files_are_named_and_skip_bad_counts_them(
    synthetic_dataset: Path, tiny_checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    films = tmp_path / "films"
    shutil.copytree(synthetic_dataset / "val", films)
    listed = [p.relative_to(films).as_posix() for p in sorted(films.rglob("*.jpeg"))]
    (films / "labels.csv").write_text(
        "file,label\n" + "".join(f"{f},{f.split('/')[0]}\n" for f in listed) + "gone.jpeg,NORMAL\n")
    args = ["evaluate", "--labels", str(films / "labels.csv"), "--out", str(tmp_path / "e"), "--checkpoint",
            str(tiny_checkpoint_path), "--bootstrap", "0"]
    assert main(args) == 2
    (line,) = _stderr_lines(capsys)
    assert line == (f"pneumolens evaluate: error: {films / 'gone.jpeg'}: file does not exist; "
                    "pass --skip-bad to evaluate the rest")
    assert main([*args, "--skip-bad"]) == 0
    assert "8 images (4 PNEUMONIA, 4 NORMAL, 1 skipped)" in capsys.readouterr().out
    m = _metrics(tmp_path / "e")
    assert m["skipped"] == 1 and m["skipped_files"] == [str(films / "gone.jpeg")]


@pytest.mark.parametrize(
    "extra, expected",
    [(["--split", "val"], "--split and --labels exclude each other"),
     (["--data", "somewhere"], "--data and --labels exclude each other")],
)
def test_labels_with_a_split_or_data_is_refused(
    extra: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "labels.csv").write_text("file,label\na.jpeg,1\n")
    assert main(["evaluate", "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "e"), *extra]) == 2
    (line,) = _stderr_lines(capsys)
    assert expected in line


def test_a_bad_row_in_the_cli_is_one_line_and_exit_2(
    tiny_checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("file,label\na.jpeg,PNEUMONIA\nb.jpeg,viral\n")
    assert main(["evaluate", "--labels", str(path), "--out", str(tmp_path / "e"), "--checkpoint",
                 str(tiny_checkpoint_path)]) == 2
    assert _stderr_lines(capsys) == [
        f"pneumolens evaluate: error: {path}, line 3: label 'viral' is not NORMAL, PNEUMONIA, 0 or 1"]
    assert not (tmp_path / "e").exists()  # refused before any work
