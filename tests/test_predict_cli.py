"""`pneumolens predict`: files and folders in, a table / CSV / JSON out, bad files handled as asked."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumolens import checkpoint as checkpoint_mod
from pneumolens.checkpoint import load_checkpoint
from pneumolens.cli import main
from pneumolens.commands import predict as predict_cmd
from pneumolens.inference import to_input
from pneumolens.io import load_image


def expected_probabilities(ckpt_path: Path, files: list[Path]) -> dict[str, float]:
    """Probabilities computed without the Predictor: the model on load_image arrays, temperature, bias, sigmoid."""
    ckpt = load_checkpoint(ckpt_path)
    x = to_input(np.stack([load_image(f, ckpt.input_size) for f in files]))
    with torch.no_grad():
        p = torch.sigmoid(ckpt.model(x) / ckpt.temperature + ckpt.bias).numpy()
    return {str(f): float(v) for f, v in zip(files, p)}


@pytest.fixture
def images(synthetic_dataset, tmp_path) -> Path:
    """A folder with 8 images in two sub-folders (copied, so tests can add bad files)."""
    folder = tmp_path / "scans"
    shutil.copytree(synthetic_dataset / "val", folder)
    return folder


def all_images(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpeg"))


def stderr_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_folder_to_table(images, tiny_checkpoint_path, capsys):
    assert main(["predict", str(images), "--checkpoint", str(tiny_checkpoint_path)]) == 0
    out, err = capsys.readouterr()
    assert f"found 8 image files in {images}" in err
    expected = expected_probabilities(tiny_checkpoint_path, all_images(images))
    rows = [line.split() for line in out.splitlines() if line.startswith(str(images))]
    assert len(rows) == 8
    for file, prob, label in rows:
        assert float(prob) == pytest.approx(expected[file], abs=1e-4)
        assert label == ("PNEUMONIA" if expected[file] >= 0.5 else "NORMAL")
    assert "8 predicted, 0 skipped" in out
    assert "threshold 0.5000" in out


@pytest.mark.parametrize("batch_size", [3, 64])
def test_csv_output(images, tiny_checkpoint_path, tmp_path, capsys, batch_size):
    out_file = tmp_path / "out" / "preds.csv"  # parent folder created
    files = all_images(images)
    args = ["predict", *map(str, files), "-c", str(tiny_checkpoint_path), "--batch-size", str(batch_size)]
    assert main([*args, "--threshold", "0.5", "--out", str(out_file)]) == 0
    assert f"8 predicted, 0 skipped; wrote {out_file}" in capsys.readouterr().out
    with open(out_file, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "probability", "label", "threshold", "ood_score", "in_distribution", "error"]
    assert [r["file"] for r in rows] == [str(f) for f in files]
    expected = expected_probabilities(tiny_checkpoint_path, files)
    for r in rows:
        assert float(r["probability"]) == pytest.approx(expected[r["file"]], abs=1e-5)
        assert float(r["threshold"]) == 0.5
        assert r["label"] == ("PNEUMONIA" if float(r["probability"]) >= 0.5 else "NORMAL")


def test_threshold_changes_labels(images, tiny_checkpoint_path, tmp_path):
    for threshold, label in (("0", "PNEUMONIA"), ("1", "NORMAL")):
        out_file = tmp_path / f"t{threshold}.json"
        args = ["predict", str(images), "-c", str(tiny_checkpoint_path), "--threshold", threshold]
        assert main([*args, "--out", str(out_file)]) == 0
        doc = json.loads(out_file.read_text())
        assert doc["threshold"] == float(threshold)
        assert {p["label"] for p in doc["predictions"]} == {label}


def test_bad_file_without_skip_bad_is_an_error(images, tiny_checkpoint_path, tmp_path, capsys):
    bad = images / "NORMAL" / "broken.jpeg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out_file = tmp_path / "preds.csv"
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path), "--out", str(out_file)]) == 2
    line = stderr_error_line(capsys.readouterr().err)
    assert str(bad) in line and "--skip-bad" in line
    assert not out_file.exists()


def test_skip_bad_warns_and_predicts_the_rest(images, tiny_checkpoint_path, tmp_path, capsys):
    empty = images / "NORMAL" / "empty.png"
    empty.write_bytes(b"")
    text = images / "PNEUMONIA" / "notes.dcm"
    text.write_text("a text file")
    out_file = tmp_path / "preds.json"
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path), "--skip-bad", "--out", str(out_file)]) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 2
    assert any(str(empty) in w and "empty" in w for w in warnings) and any(str(text) in w for w in warnings)
    assert "found 10 image files" in err
    assert "8 predicted, 2 skipped" in out
    doc = json.loads(out_file.read_text())
    assert len(doc["predictions"]) == 8 and {s["file"] for s in doc["skipped"]} == {str(empty), str(text)}
    expected = expected_probabilities(tiny_checkpoint_path, all_images(images))
    for p in doc["predictions"]:
        assert p["probability"] == pytest.approx(expected[p["file"]], abs=1e-5)
        assert set(p) == {"file", "probability", "label", "threshold", "ood_score", "in_distribution"}
        assert p["ood_score"] is None and p["in_distribution"] is None  # the tiny checkpoint has no guard


def test_missing_file_named_on_the_command_line(images, tiny_checkpoint_path, capsys):
    missing = images / "nope.png"
    assert main(["predict", str(missing), str(images), "-c", str(tiny_checkpoint_path)]) == 2
    assert "does not exist" in stderr_error_line(capsys.readouterr().err)
    assert main(["predict", str(missing), str(images), "-c", str(tiny_checkpoint_path), "--skip-bad"]) == 0
    assert "8 predicted, 1 skipped" in capsys.readouterr().out


def test_all_bad_is_an_error_even_with_skip_bad(tmp_path, tiny_checkpoint_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("x")
    assert main(["predict", str(bad), "-c", str(tiny_checkpoint_path), "--skip-bad"]) == 2
    assert "none of the 1 files" in stderr_error_line(capsys.readouterr().err)


def test_folder_without_images(tmp_path, tiny_checkpoint_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no images here")
    assert main(["predict", str(tmp_path / "docs"), "-c", str(tiny_checkpoint_path)]) == 2
    err = capsys.readouterr().err
    assert "found 0 image files" in err
    line = stderr_error_line(err)
    assert "no image files" in line and str(tmp_path / "docs") in line


def test_many_files_get_a_summary(images, tiny_checkpoint_path, capsys, monkeypatch):
    monkeypatch.setattr(predict_cmd, "MAX_TABLE_ROWS", 3)
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path)]) == 0
    out = capsys.readouterr().out
    assert str(images) not in out and "--out" in out
    counts = out.split("):")[-1].splitlines()[0]
    assert sum(int(n) for n in counts.replace(",", " ").split() if n.isdigit()) == 8
    assert "8 predicted, 0 skipped" in out


def test_default_checkpoint_is_the_shipped_model(images, tiny_checkpoint_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint_mod, "SHIPPED", tmp_path / "weights" / "model.pt")
    assert main(["predict", str(images)]) == 2
    line = stderr_error_line(capsys.readouterr().err)
    assert "no model is shipped" in line and "--checkpoint" in line
    monkeypatch.setattr(checkpoint_mod, "SHIPPED", tiny_checkpoint_path)
    assert main(["predict", str(images)]) == 0
    assert "8 predicted" in capsys.readouterr().out


def test_corrupt_checkpoint(images, tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_text("not a checkpoint")
    assert main(["predict", str(images), "-c", str(bad)]) == 2
    assert str(bad) in stderr_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--out", "preds.txt"], ".csv or .json"),
        (["--threshold", "1.5"], "--threshold"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_invalid_options(images, tiny_checkpoint_path, capsys, extra, words):
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path), *extra]) == 2
    assert words in stderr_error_line(capsys.readouterr().err)


def test_dicom_and_png_in_folders_are_predicted(images, tiny_checkpoint_path, tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    from PIL import Image

    arr = np.asarray(Image.open(all_images(images)[0]))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.set_pixel_data(arr, "MONOCHROME2", 8)
    (images / "deep" / "er").mkdir(parents=True)
    ds.save_as(images / "deep" / "er" / "copy.DCM", enforce_file_format=True)
    Image.fromarray(arr).save(images / "deep" / "copy.png")
    out_file = tmp_path / "p.json"
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path), "--out", str(out_file)]) == 0
    probs = {Path(p["file"]).name: p["probability"] for p in json.loads(out_file.read_text())["predictions"]}
    assert len(probs) == 10
    original = probs[all_images(images)[0].name]
    assert probs["copy.DCM"] == pytest.approx(original, abs=1e-6)  # same pixels, same answer
    assert probs["copy.png"] == pytest.approx(original, abs=1e-6)


@pytest.mark.integration
def test_real_val_folder(real_data_root, tiny_checkpoint_path, tmp_path):
    out_file = tmp_path / "val.csv"
    assert main(["predict", str(real_data_root / "val"), "-c", str(tiny_checkpoint_path), "--out", str(out_file)]) == 0
    with open(out_file, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16 and all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)


# ----------------------------------------------------------------------------- issue 17


def test_a_symlink_loop_is_a_bad_file_not_a_crash(images, tiny_checkpoint_path, capsys):
    """Issue 17 item 3: ``selfref.jpeg -> selfref.jpeg`` raised RuntimeError even with --skip-bad."""
    loop = images / "NORMAL" / "selfref.jpeg"
    os.symlink("selfref.jpeg", loop)
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path)]) == 2
    line = stderr_error_line(capsys.readouterr().err)
    assert str(loop) in line and "symbolic links" in line and "--skip-bad" in line
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path), "--skip-bad"]) == 0
    out, err = capsys.readouterr()
    assert "8 predicted, 1 skipped" in out
    assert any(str(loop) in w for w in err.splitlines() if "warning:" in w)
    assert main(["predict", str(loop), str(images), "-c", str(tiny_checkpoint_path), "--skip-bad"]) == 0
    assert "8 predicted, 1 skipped" in capsys.readouterr().out


def test_out_that_is_a_folder_is_refused_before_any_work(images, tiny_checkpoint_path, tmp_path, capsys, monkeypatch):
    """Issue 17 item 4: ``--out EXISTING_DIR.csv`` was an IsADirectoryError after every prediction was computed."""
    from pneumolens import inference

    folder = tmp_path / "taken.csv"
    folder.mkdir()
    monkeypatch.setattr(inference, "Predictor", None)  # the model must not even be loaded
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path), "--out", str(folder)]) == 2
    line = stderr_error_line(capsys.readouterr().err)
    assert str(folder) in line and "is a folder" in line
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path), "--out", str(a_file / "p.csv")]) == 2
    line = stderr_error_line(capsys.readouterr().err)
    assert str(a_file) in line and "not a folder" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: permissions cannot be tested")
def test_out_in_an_unwritable_folder_is_refused_before_any_work(images, tiny_checkpoint_path, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["predict", str(images), "-c", str(tiny_checkpoint_path), "--out", str(locked / "p.csv")]) == 2
    finally:
        locked.chmod(0o700)
    assert "no permission" in stderr_error_line(capsys.readouterr().err)


def test_results_are_not_lost_when_writing_out_fails(images, tiny_checkpoint_path, tmp_path, capsys, monkeypatch):
    """A write that fails after the work (disk full, the folder removed meanwhile) prints the results instead."""
    from pneumolens import outputs

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs, "write_text_atomically", full_disk)
    out_file = tmp_path / "p.csv"
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path), "--out", str(out_file)]) == 2
    out, err = capsys.readouterr()
    line = stderr_error_line(err)
    assert str(out_file) in line and "No space left on device" in line and "stdout" in line
    rows = list(csv.DictReader(out.splitlines()))
    assert len(rows) == 8 and {r["file"] for r in rows} == {str(f) for f in all_images(images)}


def test_control_characters_in_file_names_never_reach_the_terminal(images, tiny_checkpoint_path, capsys):
    """Issue 17 item 7: a newline split an error line in two; an ESC sequence was sent raw."""
    shutil.copy(all_images(images)[0], images / "evil\x1b[2J\u202ename.jpeg")
    bad = images / "bad\nline.png"
    bad.write_text("not an image")
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path)]) == 2
    err = capsys.readouterr().err
    line = stderr_error_line(err)
    assert "bad\\nline.png" in line and "\x1b" not in err
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path), "--skip-bad"]) == 0
    out, err = capsys.readouterr()
    for text in (out, err):
        assert "\x1b" not in text and "\u202e" not in text and "bad\nline" not in text
    assert "evil\\x1b[2J\\u202ename.jpeg" in out and "bad\\nline.png" in err
    assert all(line.startswith("pneumolens predict:") for line in err.splitlines())


def test_an_unreadable_subfolder_is_a_counted_warning(images, tiny_checkpoint_path, capsys, monkeypatch):
    """Issue 17 item 8: os.walk skipped an unreadable subfolder without a word."""
    locked = images / "PNEUMONIA"
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # root reads anything: simulate the permission error
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path)]) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and str(locked) in warnings[0] and "Permission denied" in warnings[0]
    assert f"found 4 image files in {images} (1 folder could not be read)" in err
    assert "4 predicted, 0 skipped" in out


def test_symlinked_subfolders_are_followed_once(images, tiny_checkpoint_path, tmp_path, capsys):
    """Issue 17 item 8: a symlinked subfolder was neither followed nor mentioned; now it is followed,
    and a link back into the tree (a loop) is not followed again."""
    extra = tmp_path / "elsewhere"
    extra.mkdir()
    for f in all_images(images)[:2]:
        shutil.copy(f, extra / f"copy-{f.name}")
    os.symlink(extra, images / "linked")
    os.symlink("..", images / "NORMAL" / "up")  # a loop
    os.symlink(images / "NORMAL", images / "again")  # the same folder by another path
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path)]) == 0
    out, err = capsys.readouterr()
    assert f"found 10 image files in {images}" in err
    assert "10 predicted, 0 skipped" in out


def test_csv_lists_skipped_files_with_their_error(images, tiny_checkpoint_path, tmp_path):
    """Issue 17 item 13: the CSV left skipped files out (the JSON lists them)."""
    bad = images / "NORMAL" / "broken.png"
    bad.write_text("not an image")
    out_file = tmp_path / "p.csv"
    assert main(["predict", str(images), "-c", str(tiny_checkpoint_path), "--skip-bad", "--out", str(out_file)]) == 0
    with open(out_file, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "probability", "label", "threshold", "ood_score", "in_distribution", "error"]
    assert len(rows) == 9
    (skipped,) = [r for r in rows if r["error"]]
    assert skipped["file"] == str(bad) and skipped["probability"] == "" and skipped["label"] == ""
    assert "not a recognised image format" in skipped["error"]
    assert all(r["error"] == "" for r in rows if r["file"] != str(bad))


def test_a_three_class_checkpoint_says_what_is_wrong(images, tiny_checkpoint_path, tmp_path, capsys):
    """Issue 17 item 13: the error spoke of threshold and temperature."""
    payload = torch.load(tiny_checkpoint_path, weights_only=True)
    payload["class_names"] = ["NORMAL", "BACTERIA", "VIRUS"]
    three = tmp_path / "three.pt"
    torch.save(payload, three)
    assert main(["predict", str(images), "-c", str(three)]) == 2
    line = stderr_error_line(capsys.readouterr().err)
    assert "3 classes (NORMAL, BACTERIA, VIRUS)" in line and "2 (NORMAL, PNEUMONIA)" in line
    assert "threshold" not in line and "temperature" not in line


def test_a_pickle_checkpoint_error_never_advises_weights_only_false(images, tmp_path, capsys):
    """Issue 17 item 13: the message quoted torch's advice to re-run with weights_only=False."""
    import pickle

    evil = tmp_path / "evil.pt"
    torch.save({"format": "pneumolens-checkpoint", "obj": pickle.PickleError("x")}, evil)
    assert main(["predict", str(images), "-c", str(evil)]) == 2
    line = stderr_error_line(capsys.readouterr().err)
    assert str(evil) in line and "weights_only" not in line and "can still be loaded" not in line.lower()
