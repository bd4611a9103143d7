"""evaluate_arrays / evaluate_split / `pneumolens evaluate` end to end with a tiny random model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumolens.checkpoint import Checkpoint, save_checkpoint
from pneumolens.cli import main
from pneumolens.data import find_split, patient_split
from pneumolens.errors import DatasetError, InvalidImageError
from pneumolens.evaluate import FIGURES, evaluate_arrays, evaluate_split, split_records
from pneumolens.inference import Predictor
from pneumolens.metrics import CI_METRICS
from pneumolens.model import CnnLstm, ModelConfig

TINY = ModelConfig(input_size=32, channels=(4, 8), conv_dropout=(0, 0), lstm_units=(8, 4), dense_units=(8,))
OUTPUTS = ["metrics.json", "predictions.csv", "report.md", *FIGURES.values()]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMOLENS_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny_ckpt(tmp_path) -> Path:
    torch.manual_seed(0)
    ckpt = Checkpoint(model=CnnLstm(TINY).eval(), config=TINY, threshold=0.5, temperature=2.0,
                      provenance={"val_fraction": 0.3, "split_seed": 5})
    return save_checkpoint(ckpt, tmp_path / "ckpt" / "model.pt")


def _synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 256, (n, 32, 32), dtype=np.uint8)
    images[labels == 1, 8:24, 8:24] = 255  # something for the model to see
    return images, labels


def test_evaluate_arrays_end_to_end(tmp_path, tiny_ckpt):
    images, labels = _synthetic(24)
    predictor = Predictor(tiny_ckpt)
    patients = [f"p{i // 2}" for i in range(24)]  # pairs of images share a patient...
    labels = np.array([int(i // 2 % 2) for i in range(24)])  # ...and its label
    subtypes = ["virus" if lab else "normal" for lab in labels]
    m = evaluate_arrays(
        predictor, images, labels, tmp_path / "out", patient_ids=patients, subtypes=subtypes, n_boot=200
    )
    out = tmp_path / "out"
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
    assert saved["threshold_source"] == "checkpoint" and saved["threshold"] == 0.5
    assert set(saved["ci"]) == set(CI_METRICS) and saved["bootstrap"]["unit"] == "patient"
    assert saved["subtype_recall"]["virus"]["n"] == 12
    assert saved["patient_level"]["n"] == 12
    rows = list(csv.DictReader((out / "predictions.csv").read_text().splitlines()))
    assert len(rows) == 24 and rows[2]["patient_id"] == "p1"
    probs = np.array([float(r["probability"]) for r in rows])
    np.testing.assert_allclose(probs, predictor.probabilities(images), atol=1e-6)  # temperature applied
    predicted_pos = sum(r["predicted"] == "PNEUMONIA" for r in rows)
    assert predicted_pos == saved["confusion"]["tp"] + saved["confusion"]["fp"]


def test_threshold_override_is_used_and_recorded(tmp_path, tiny_ckpt):
    images, labels = _synthetic(20)
    predictor = Predictor(tiny_ckpt)
    probs = predictor.probabilities(images)
    t = float(np.median(probs))
    m = evaluate_arrays(predictor, images, labels, tmp_path, threshold=t, n_boot=0)
    assert m["threshold_source"] == "override" and m["threshold"] == t and m["ci"] == {}
    c = m["confusion"]
    assert c["tp"] + c["fp"] == int((probs >= t).sum())
    assert "bootstrap" not in m


def test_evaluate_arrays_rejects_mismatched_lengths(tmp_path, tiny_ckpt):
    images, labels = _synthetic(6)
    with pytest.raises(ValueError, match="patient_ids"):
        evaluate_arrays(Predictor(tiny_ckpt), images, labels, tmp_path, patient_ids=["a"], n_boot=0)


# --------------------------------------------------------------------------- a tiny Kaggle-layout dataset


def _write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    arr = np.clip(rng.normal(value, 30, (40, 48)), 0, 255).astype(np.uint8)
    Image.fromarray(arr, mode="L").save(path)


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "chest_xray"
    for split, n in (("train", 10), ("val", 3)):
        base = 100 if split == "val" else 0
        for i in range(n):
            _write_png(root / split / "NORMAL" / f"IM-{base + i:04d}-0001.png", 60 + i)
            _write_png(root / split / "PNEUMONIA" / f"person{base + i}_bacteria_{i}.png", 140 + i)
            _write_png(root / split / "PNEUMONIA" / f"person{base + i + 50}_virus_{i}.png", 180 + i)
    return root


def test_validation_split_is_recreated_from_provenance(dataset, tiny_ckpt):
    from pneumolens.checkpoint import load_checkpoint

    prov = load_checkpoint(tiny_ckpt).provenance
    got = split_records(dataset, "validation", prov)
    expected = patient_split(find_split(dataset, "train"), 0.3, 5)[1]
    assert [r.path for r in got] == [r.path for r in expected]
    assert [r.path for r in split_records(dataset, "validation", {})] == [
        r.path for r in patient_split(find_split(dataset, "train"), 0.1, 0)[1]
    ]


def test_evaluate_split_writes_everything(dataset, tiny_ckpt, tmp_path):
    m = evaluate_split(tiny_ckpt, data=dataset, split="val", out=tmp_path / "ev", n_boot=100, progress=False)
    assert m["n"] == 9 and m["split"] == "val" and m["skipped"] == 0
    assert m["checkpoint"] == str(tiny_ckpt)
    assert set(m["subtype_recall"]) == {"bacteria", "normal", "virus"}
    for name in OUTPUTS:
        assert (tmp_path / "ev" / name).exists(), name


def test_bad_file_fails_by_name_or_is_skipped_and_counted(dataset, tiny_ckpt, tmp_path):
    bad = dataset / "val" / "NORMAL" / "IM-9999-0001.jpeg"
    bad.write_bytes(b"not an image")
    with pytest.raises(InvalidImageError, match="IM-9999-0001.jpeg"):
        evaluate_split(tiny_ckpt, data=dataset, split="val", out=tmp_path / "a", n_boot=0, progress=False)
    m = evaluate_split(
        tiny_ckpt, data=dataset, split="val", out=tmp_path / "b", n_boot=0, skip_bad=True, progress=False
    )
    assert m["skipped"] == 1 and m["n"] == 9 and m["skipped_files"] == [str(bad)]


def test_missing_split_is_a_dataset_error(dataset, tiny_ckpt, tmp_path):
    with pytest.raises(DatasetError, match="test"):
        evaluate_split(tiny_ckpt, data=dataset, split="test", out=tmp_path / "t", progress=False)


def test_cli_evaluate_prints_summary_and_fails_cleanly(dataset, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["evaluate", "--checkpoint", str(tiny_ckpt), "--data", str(dataset), "--split", "validation",
                 "--out", str(out), "--bootstrap", "50", "--threshold", "0.4"])
    text = capsys.readouterr().out
    assert code == 0
    assert "threshold 0.4000 (override)" in text and "roc_auc" in text and str(out / "report.md") in text
    assert json.loads((out / "metrics.json").read_text())["threshold"] == 0.4
    args = ["evaluate", "--checkpoint", str(tiny_ckpt), "--data", str(dataset), "--split", "test", "--out", str(out)]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "split folder 'test' is missing" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["evaluate", "--out", str(out), "--threshold", "1.5"])


# --------------------------------------------------------------------------- real data


@pytest.mark.integration
def test_evaluate_official_val_folder(tiny_ckpt, tmp_path, real_data_root):
    if not (real_data_root / "val").is_dir():
        pytest.skip(f"official val folder not found at {real_data_root / 'val'}")
    m = evaluate_split(
        tiny_ckpt, data=real_data_root, split="val", out=tmp_path / "val", n_boot=200, progress=False
    )
    assert (m["n"], m["n_pos"], m["n_neg"]) == (16, 8, 8)
    assert m["subtype_recall"]["bacteria"]["n"] == 8 and m["subtype_recall"]["normal"]["n"] == 8
    assert m["ci"]["accuracy"][0] <= m["accuracy"] <= m["ci"]["accuracy"][1]
    rows = list(csv.DictReader((tmp_path / "val" / "predictions.csv").read_text().splitlines()))
    assert len(rows) == 16 and all(Path(r["file"]).exists() for r in rows)
