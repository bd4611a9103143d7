"""``pneumolens explain`` and ``explain-eval`` end to end on synthetic images and a tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_explain_support import one_thread  # noqa: F401 (fixture)

from pneumolens.cli import main
from pneumolens.explain import explain
from pneumolens.inference import Predictor
from pneumolens.io import load_image

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = "gradcam,lime,kernelshap,shap,ig,occlusion:window=8:stride=4"


def _write_images(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    yy, xx = np.mgrid[0:40, 0:48]
    for i in range(n):
        img = 60 + 80 * yy / 40 + rng.normal(0, 10, (40, 48))
        if i % 2:
            img += 90 * np.exp(-((yy - 20) ** 2 + (xx - 24) ** 2) / 60)
        p = folder / f"film{i}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.mark.slow  # six methods on every image, LIME and KernelSHAP included
def test_explain_writes_panels_json_maps_and_gallery(
    tmp_path: Path, trained_tiny_checkpoint_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PNEUMOLENS_DATA", str(tmp_path / "no-dataset"))  # no background anywhere: blur fallback
    files = _write_images(tmp_path / "in")
    out = tmp_path / "out"
    rc = main(["explain", str(tmp_path / "in"), "-c", str(trained_tiny_checkpoint_path), "--methods", METHODS,
               "--n-samples", "30", "--save-maps", "--seed", "7", "--out", str(out), "--no-progress"])
    assert rc == 0
    predictor = Predictor(trained_tiny_checkpoint_path)
    labels = ["gradcam", "lime", "kernelshap", "shap", "ig", "occlusion:window=8:stride=4"]
    for f in files:
        panel = out / f"{f.stem}.png"
        with Image.open(panel) as im:
            im.verify()
        doc = json.loads((out / f"{f.stem}.json").read_text())
        expected = predictor.predict_files([f], progress=False)[0][0]
        assert doc["prediction"]["probability"] == pytest.approx(expected.probability, abs=1e-5)
        assert doc["prediction"]["label"] == expected.label and doc["prediction"]["threshold"] == 0.5
        assert list(doc["timings_s"]) == labels and all(t > 0 for t in doc["timings_s"].values())
        assert doc["methods"]["lime"]["params"]["n_samples"] == 30
        assert doc["methods"]["shap"]["params"]["background"].startswith("fallback")
        assert doc["methods"]["gradcam"]["params"]["layer"] == "features.block3.relu"
        for label in labels:
            amap = np.load(out / doc["methods"][label]["map"])
            assert amap.shape == (32, 32) and amap.dtype == np.float32
        # the saved map is the library's answer for the same image and seed
        again = explain(predictor.model, load_image(f, 32)[None], "lime", seed=7, n_samples=30).maps[0]
        np.testing.assert_allclose(np.load(out / f"{f.stem}.lime.npy"), again, rtol=1e-4, atol=1e-6)
    index = (out / "index.html").read_text()
    assert all(f'src="{f.stem}.png"' in index for f in files)


def test_explain_uses_training_background_when_given(tmp_path: Path, trained_tiny_checkpoint_path: Path,
                                                     synthetic_dataset: Path) -> None:
    files = _write_images(tmp_path / "in", 1)
    rc = main(["explain", str(files[0]), "-c", str(trained_tiny_checkpoint_path), "--methods", "shap",
               "--background-data", str(synthetic_dataset), "--background-n", "8", "--out", str(tmp_path / "o"),
               "--no-progress"])
    assert rc == 0
    params = json.loads((tmp_path / "o" / "film0.json").read_text())["methods"]["shap"]["params"]
    assert params["background"] == "8 training images"
    assert "patient-level training side" in params["background_source"]


def test_bad_file_stops_the_run_unless_skipped(tmp_path: Path, tiny_checkpoint_path: Path, capsys) -> None:
    _write_images(tmp_path / "in", 2)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    args = ["explain", str(tmp_path / "in"), "-c", str(tiny_checkpoint_path), "--methods", "gradcam", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.png" in err[0] and "--skip-bad" in err[0]
    assert not (tmp_path / "a" / "index.html").exists()
    assert main(args + ["--out", str(tmp_path / "b"), "--skip-bad"]) == 0
    assert "warning: skipped" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "b").glob("*.json")) == ["film0.json", "film1.json"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "gradcam,magic"], "unknown method 'magic'"),
        (["--methods", "gradcam:layer=features.nope"], "unknown layer 'features.nope'"),
        (["--methods", "ig:steps=3"], "unknown parameter 'steps'"),
        (["--n-samples", "1"], "--n-samples"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, tiny_checkpoint_path: Path, capsys, extra, message) -> None:
    files = _write_images(tmp_path / "in", 1)
    rc = main(["explain", str(files[0]), "-c", str(tiny_checkpoint_path), "--out", str(tmp_path / "o"),
               "--no-progress", *extra])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_missing_input_and_empty_folder(tmp_path: Path, tiny_checkpoint_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    base = ["-c", str(tiny_checkpoint_path), "--out", str(tmp_path / "o"), "--methods", "gradcam", "--no-progress"]
    assert main(["explain", str(tmp_path / "empty"), *base]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "nope.png"), *base]) == 2
    assert "nope.png" in capsys.readouterr().err


@pytest.mark.slow  # three methods, curves, the randomisation cascade and two figures
def test_explain_eval_writes_metrics_report_and_figures(tmp_path: Path, trained_tiny_checkpoint_path: Path,
                                                        synthetic_dataset: Path, capsys) -> None:
    out = tmp_path / "eval"
    args = ["explain-eval", "-c", str(trained_tiny_checkpoint_path), "--data", str(synthetic_dataset),
            "--split", "val", "--n", "4", "--methods", "gradcam,shap:n_samples=8,occlusion:window=8:stride=4",
            "--steps", "8", "--sanity-n", "1", "--background-n", "6", "--out", str(out), "--no-progress"]
    rc = main(args)
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 4
    assert [r["label"] for r in metrics["per_image"]].count(1) == 2  # balanced classes
    assert set(metrics["methods"]) == {"gradcam", "shap:n_samples=8", "occlusion:window=8:stride=4"}
    assert metrics["methods"]["shap:n_samples=8"]["params"]["background"] == "6 training images"
    assert metrics["randomisation"]["stages"][0] == "head.out"
    report = (out / "report.md").read_text()
    assert "| Grad-CAM |" in report and "random map" in report and "Cascading randomisation" in report
    for fig in ("faithfulness.png", "examples.png"):
        with Image.open(out / fig) as im:
            im.verify()
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("explain-eval: 4 image(s) x 3 method(s), randomisation test on 1 image(s)")
    assert len((out / "partial" / "images.jsonl").read_text().splitlines()) == 4
    # the same command again finds everything done, computes nothing and writes the same numbers
    assert main(args) == 0
    assert "continuing: 4 of 4 image(s)" in capsys.readouterr().out
    again = json.loads((out / "metrics.json").read_text())
    assert again["per_image"] == metrics["per_image"] and again["randomisation"] == metrics["randomisation"]


def test_explain_eval_help_states_the_cost(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["explain-eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Expected cost, roughly" in text and "per image" in text and "randomisation test (--sanity-n K)" in text
    assert "continues where it stopped" in text


def test_same_file_names_in_two_folders_do_not_overwrite_each_other(tmp_path: Path, tiny_checkpoint_path: Path) -> None:
    a = _write_images(tmp_path / "a", 1)[0]
    b = _write_images(tmp_path / "b", 1)[0]
    assert a.name == b.name
    assert main(["explain", str(a), str(b), "-c", str(tiny_checkpoint_path), "--methods", "gradcam",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    files = [json.loads(p.read_text())["file"] for p in sorted((tmp_path / "o").glob("*.json"))]
    assert sorted(files) == sorted([str(a), str(b)])


def _with_background(checkpoint: Path, folder: Path, n: int = 5) -> tuple[Path, np.ndarray]:
    """A copy of ``checkpoint`` storing ``n`` synthetic films as its SHAP background."""
    from pneumolens.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(checkpoint)
    rng = np.random.default_rng(3)
    ckpt.shap_background = rng.integers(0, 256, (n, ckpt.input_size, ckpt.input_size)).astype(np.uint8)
    return save_checkpoint(ckpt, folder / "model.pt"), ckpt.shap_background


def test_the_cli_and_the_service_explain_shap_against_the_models_stored_films(
    tmp_path: Path, trained_tiny_checkpoint_path: Path, synthetic_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One SHAP everywhere: no dataset is looked up on its own, the stored films are the background of both."""
    from pneumolens.service.app import _worker_extras
    from pneumolens.service.explaining import run_job, warm_up
    from pneumolens.service.settings import ServeSettings

    monkeypatch.setenv("PNEUMOLENS_DATA", str(synthetic_dataset))  # there, but not to be used
    ckpt_path, films = _with_background(trained_tiny_checkpoint_path, tmp_path / "model")
    f = _write_images(tmp_path / "in", 1)[0]
    out = tmp_path / "out"
    assert main(["explain", str(f), "-c", str(ckpt_path), "--methods", "shap", "--save-maps", "--out", str(out),
                 "--no-progress"]) == 0
    doc = json.loads((out / f"{f.stem}.json").read_text())
    assert doc["methods"]["shap"]["params"]["background"] == "5 training images"
    assert doc["methods"]["shap"]["params"]["background_source"] == "5 training films stored with the model"
    predictor = Predictor(ckpt_path)
    extras = _worker_extras(ServeSettings(checkpoint=ckpt_path), predictor.size, predictor.checkpoint.shap_background)
    assert np.array_equal(extras["background"], films)
    context = {"model": predictor.model, **extras}
    warm_up(context)
    image = load_image(f, predictor.size)
    (served,) = run_job(context, {"image": image, "methods": [("shap", {})], "raw": True, "seed": 0})
    assert served["params"]["background"] == "5 training images"
    np.testing.assert_allclose(np.asarray(served["map"], np.float32), np.load(out / f"{f.stem}.shap.npy"),
                               rtol=1e-5, atol=1e-7)


def test_a_checkpoint_without_stored_films_falls_back_to_blur_even_beside_a_dataset(
    tmp_path: Path, trained_tiny_checkpoint_path: Path, synthetic_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PNEUMOLENS_DATA", str(synthetic_dataset))
    _write_images(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert main(["explain", str(tmp_path / "in"), "-c", str(trained_tiny_checkpoint_path), "--methods", "shap",
                 "--out", str(out), "--no-progress"]) == 0
    doc = json.loads(next(out.glob("*.json")).read_text())
    assert doc["methods"]["shap"]["params"]["background"].startswith("fallback:blur")  # as the service does


def test_panels_carry_the_true_label_from_the_folder_layout(tmp_path: Path, tiny_checkpoint_path: Path) -> None:
    from pneumolens.explain.runner import label_from_layout

    assert label_from_layout("data/val/NORMAL/a.jpeg", ("NORMAL", "PNEUMONIA")) == "NORMAL"
    assert label_from_layout("data/pneumonia/a.jpeg", ("NORMAL", "PNEUMONIA")) == "PNEUMONIA"
    assert label_from_layout("scans/a.jpeg", ("NORMAL", "PNEUMONIA")) is None
    normal = _write_images(tmp_path / "NORMAL", 1)[0]
    other = _write_images(tmp_path / "scans", 1)[0]
    out = tmp_path / "out"
    assert main(["explain", str(normal), str(other), "-c", str(tiny_checkpoint_path), "--methods", "gradcam",
                 "--out", str(out), "--no-progress"]) == 0
    docs = {json.loads(p.read_text())["file"]: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert docs[str(normal)]["true_label"] == "NORMAL" and "true_label" not in docs[str(other)]
    assert "true label NORMAL" in (out / "index.html").read_text()


def test_panel_titles_hold_no_timings_and_the_film_keeps_its_aspect(
    tmp_path: Path, tiny_checkpoint_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pneumolens.explain import runner

    drawn = []
    monkeypatch.setattr(runner, "render_panel", lambda image, maps, path, **kw: drawn.append((image, kw)))
    f = _write_images(tmp_path / "in", 1)[0]  # 40 x 48 film; the model input is 32 x 32
    assert main(["explain", str(f), "-c", str(tiny_checkpoint_path), "--methods", "gradcam,occlusion:window=8:stride=4",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    (image, kw), = drawn
    assert image.shape == (40, 48)
    assert not kw.get("subtitles") and " s\n" not in kw["title"] and not kw["title"].endswith(" s")
    assert json.loads((tmp_path / "o" / "film0.json").read_text())["timings_s"]["gradcam"] > 0  # kept in the JSON


@pytest.mark.slow  # four runs of the command
def test_a_rerun_keeps_finished_images_and_redoes_changed_or_missing_ones(tmp_path: Path, tiny_checkpoint_path: Path) -> None:
    files = _write_images(tmp_path / "in", 3)
    out = tmp_path / "o"
    args = ["explain", str(tmp_path / "in"), "-c", str(tiny_checkpoint_path), "--methods", "gradcam,occlusion:window=8:stride=4",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    stamps = {f.stem: (out / f"{f.stem}.json").stat().st_mtime_ns for f in files}
    (out / f"{files[1].stem}.png").unlink()  # as if interrupted while drawing this one
    assert main(args) == 0
    again = {f.stem: (out / f"{f.stem}.json").stat().st_mtime_ns for f in files}
    assert again[files[0].stem] == stamps[files[0].stem] and again[files[2].stem] == stamps[files[2].stem]
    assert again[files[1].stem] != stamps[files[1].stem] and (out / f"{files[1].stem}.png").is_file()
    assert all(f'src="{f.stem}.png"' in (out / "index.html").read_text() for f in files)
    # another seed or method list, or --overwrite, redoes everything
    assert main(args + ["--seed", "3"]) == 0
    assert all((out / f"{f.stem}.json").stat().st_mtime_ns != again[f.stem] for f in files)
    seeded = {f.stem: (out / f"{f.stem}.json").stat().st_mtime_ns for f in files}
    assert main(args + ["--seed", "3", "--overwrite"]) == 0
    assert all((out / f"{f.stem}.json").stat().st_mtime_ns != seeded[f.stem] for f in files)


@pytest.mark.parametrize(
    "methods, message",
    [
        ("gradcam:layer=lstm1", "'lstm1' is not a convolutional layer"),
        ("gradcam:layer=lstm2", "'lstm2' is not a convolutional layer"),
        ("kernelshap:n_segments=0", "n_segments must be an integer from 2 to"),
        ("lime:n_segments=-3", "n_segments must be an integer from 2 to"),
        ("ig:sigma=-1", "sigma must be a number greater than 0"),
        ("shap:stdevs=-1", "stdevs must be a number from 0 to 1"),
        ("lime:n_samples=1000000000", "n_samples must be an integer from 2 to 50000"),
        ("ig:n_steps=100000000", "n_steps must be an integer from 1 to"),
        ("shap:n_samples=100000000", "n_samples must be an integer from 1 to"),
        ("occlusion:perturbations_per_eval=100000000", "perturbations_per_eval must be an integer from 1 to"),
        ("occlusion:window=33", "window must be an integer from 1 to 32"),
    ],
)
def test_hostile_method_settings_are_one_line_and_exit_2(tmp_path: Path, tiny_checkpoint_path: Path, capsys,
                                                          methods: str, message: str) -> None:
    """Issue 17 item 2: each of these crashed with a traceback (exit 1) or tried to allocate hundreds of GB."""
    files = _write_images(tmp_path / "in", 1)
    rc = main(["explain", str(files[0]), "-c", str(tiny_checkpoint_path), "--out", str(tmp_path / "o"),
               "--no-progress", "--methods", methods])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert message in err[0] and methods in err[0]
    assert not (tmp_path / "o").exists()  # refused before any work


def test_out_that_is_an_existing_file_is_refused_before_any_work(tmp_path: Path, tiny_checkpoint_path: Path,
                                                                  capsys, monkeypatch) -> None:
    """Issue 17 item 4: ``--out EXISTING_FILE`` was a FileExistsError traceback."""
    from pneumolens import inference

    files = _write_images(tmp_path / "in", 1)
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    monkeypatch.setattr(inference, "Predictor", None)  # the model must not even be loaded
    rc = main(["explain", str(files[0]), "-c", str(tiny_checkpoint_path), "--out", str(taken), "--no-progress",
               "--methods", "gradcam"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(taken) in err[0] and "not a folder" in err[0]
    assert taken.read_text() == "keep me"
    rc = main(["explain", str(files[0]), "-c", str(tiny_checkpoint_path), "--out", str(taken / "sub"),
               "--no-progress", "--methods", "gradcam"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(taken) in err[0] and "not a folder" in err[0]


def test_a_checkpoint_keeps_its_shap_background_and_refuses_a_malformed_one(
    tmp_path: Path, tiny_checkpoint_path: Path
) -> None:
    import torch

    from pneumolens.checkpoint import load_checkpoint
    from pneumolens.errors import CheckpointError

    path, films = _with_background(tiny_checkpoint_path, tmp_path / "ok", n=3)
    ckpt = load_checkpoint(path)
    assert ckpt.shap_background.dtype == np.uint8 and np.array_equal(ckpt.shap_background, films)
    assert ckpt.info()["shap_background"] == {"images": 3, "size": 32}
    assert load_checkpoint(tiny_checkpoint_path).shap_background is None  # older files have none: still load
    payload = torch.load(path, weights_only=True)
    payload["shap_background"] = torch.zeros(3, 16, 16, dtype=torch.uint8)  # not the model's input size
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt: shap_background must be uint8 \(K, 32, 32\)"):
        load_checkpoint(tmp_path / "bad.pt")


def test_the_shipped_model_carries_its_shap_background() -> None:
    from pneumolens.checkpoint import SHIPPED, load_checkpoint

    if not SHIPPED.is_file():
        pytest.skip("no shipped model in this install")
    bg = load_checkpoint().shap_background
    assert bg is not None and bg.dtype == np.uint8 and bg.shape[1:] == (128, 128) and 16 <= len(bg) <= 32
    assert bg.nbytes < 1 << 20


def test_explain_labels_csv_gives_the_true_label(tmp_path: Path, tiny_checkpoint_path: Path) -> None:
    a, b = _write_images(tmp_path / "scans", 2)
    (tmp_path / "scans" / "labels.csv").write_text("file,label\nfilm0.png,pneumonia\nfilm1.png,0\n")
    out = tmp_path / "out"
    assert main(["explain", str(a), str(b), "-c", str(tiny_checkpoint_path), "--methods", "gradcam",
                 "--labels", str(tmp_path / "scans" / "labels.csv"), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "film0.json").read_text())["true_label"] == "PNEUMONIA"
    assert json.loads((out / "film1.json").read_text())["true_label"] == "NORMAL"
