"""The out-of-distribution guard on every prediction, and corrupt decodes refused as bad input (issue 16).

Bugs first: a JPEG cut short and closed with an end-of-image marker decoded to grey and was
predicted; a header claiming a huge size decoded to flat grey and was predicted; a (nearly)
constant decode was predicted; JSON could hold a bare NaN. Then behaviour: every Prediction
carries ``ood_score`` and ``in_distribution`` from the checkpoint's guard (None without one),
and the CLI, explain, evaluate and the service show them and the plain warning.
"""

from __future__ import annotations

import csv
import io as _io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumolens.cli import main
from pneumolens.commands.predict import render_predictions
from pneumolens.errors import InvalidImageError
from pneumolens.inference import Prediction, Predictor
from pneumolens.io import load_image, read_image
from pneumolens.ood import WARNING

# --------------------------------------------------------------------------- synthetic files


def film(h: int = 256, w: int = 224, seed: int = 0) -> np.ndarray:
    """A film-like uint8 image: bright sides, a darker middle, a vertical gradient and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 70 + 60 * yy / h + 50 * np.cos(np.pi * (xx / w - 0.5)) ** 2 + rng.normal(0, 15, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    buf = _io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **options)
    return buf.getvalue()


def cut_jpeg(data: bytes, keep: float) -> bytes:
    """The first ``keep`` share of a JPEG plus an end-of-image marker: decoders fill the rest with grey."""
    return data[: int(len(data) * keep)] + b"\xff\xd9"


def jpeg_claiming(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose baseline frame header (SOF0) claims ``width`` x ``height``."""
    out = bytearray(data)
    sof = out.find(b"\xff\xc0")
    assert sof > 0, "not a baseline JPEG"
    out[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    out[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(out)


def noise(size: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def one_line(exc: pytest.ExceptionInfo, name: str, *words: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and name in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


# --------------------------------------------------------------------------- bugs: corrupt decodes


@pytest.mark.parametrize("keep", [0.1, 0.3, 0.6, 0.9])
def test_a_jpeg_cut_short_and_closed_with_an_end_marker_is_refused(keep):
    data = cut_jpeg(encode(film(), quality=90), keep)
    for read in (lambda: read_image(data, name="cut.jpeg"), lambda: load_image(data, 64, name="cut.jpeg")):
        with pytest.raises(InvalidImageError) as e:
            read()
        one_line(e, "cut.jpeg", "truncated")


def test_a_colour_jpeg_cut_short_is_refused_too():
    rgb = np.dstack([film(seed=1), film(seed=2), film(seed=3)])
    with pytest.raises(InvalidImageError) as e:
        read_image(cut_jpeg(encode(rgb, quality=90), 0.3), name="colour.jpg")
    one_line(e, "colour.jpg", "truncated")


def test_the_whole_jpeg_and_a_draft_decode_of_it_are_accepted():
    data = encode(film(600, 520), quality=90)
    assert read_image(data, name="ok.jpeg").shape == (600, 520)
    assert load_image(data, 64, name="ok.jpeg").shape == (64, 64)  # decoded in draft mode (1/4)


def test_a_draft_decode_of_a_cut_jpeg_is_refused():
    data = cut_jpeg(encode(film(600, 520), quality=90), 0.5)
    with pytest.raises(InvalidImageError) as e:
        load_image(data, 64, name="big-cut.jpeg")
    one_line(e, "big-cut.jpeg", "truncated")


def test_a_jpeg_whose_header_claims_a_huge_image_is_refused():
    data = jpeg_claiming(encode(film(), quality=90), 3000, 20000)
    with pytest.raises(InvalidImageError) as e:
        load_image(data, 128, name="claims.jpeg")
    one_line(e, "claims.jpeg")


def test_a_png_cut_short_is_refused_with_or_without_its_end_chunk():
    data = encode(film(), "PNG")
    idat_end = data.rfind(b"IEND") - 4
    cut = data[: idat_end // 2]
    iend = b"\x00\x00\x00\x00IEND\xaeB`\x82"
    for bad in (cut, cut + iend):
        with pytest.raises(InvalidImageError) as e:
            load_image(bad, 64, name="cut.png")
        one_line(e, "cut.png")


@pytest.mark.parametrize("value", [0, 128, 255])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_constant_image_is_refused(fmt, value):
    data = encode(np.full((200, 180), value, np.uint8), fmt)
    with pytest.raises(InvalidImageError) as e:
        load_image(data, 64, name=f"flat.{fmt.lower()}")
    one_line(e, f"flat.{fmt.lower()}", "blank")


def test_a_nearly_constant_image_is_refused():
    rng = np.random.default_rng(0)
    faint = np.clip(np.rint(128 + rng.normal(0, 0.5, (200, 180))), 0, 255).astype(np.uint8)  # std about 0.5
    with pytest.raises(InvalidImageError) as e:
        load_image(encode(faint, "PNG"), 64, name="faint.png")
    one_line(e, "faint.png", "blank")


def test_an_image_almost_all_one_grey_level_is_refused():
    canvas = np.zeros((200, 200), np.uint8)
    canvas[:30, :30] = 255  # 2.25 % of the pixels; std 38 grey levels, but 97.75 % are 0
    with pytest.raises(InvalidImageError) as e:
        load_image(encode(canvas, "PNG"), 64, name="label.png")
    one_line(e, "label.png", "blank")


def test_a_low_contrast_film_is_accepted():
    rng = np.random.default_rng(0)
    yy = np.mgrid[0:200, 0:180][0]
    dim = np.clip(np.rint(100 + 20 * yy / 200 + rng.normal(0, 3, (200, 180))), 0, 255).astype(np.uint8)
    assert 5 < dim.std() < 8
    assert load_image(encode(dim, "PNG"), 64, name="dim.png").shape == (64, 64)


def test_fine_noise_that_shrinks_to_flat_grey_is_an_image_and_is_flagged(shipped):
    """The blank rule reads the decode: noise is not blank, though the model's input of it is nearly flat."""
    data = encode(noise(1800), "PNG")
    assert load_image(data, shipped.size, name="fine.png").std() < 4
    p = shipped.predict_bytes(data, "fine.png")
    assert p.in_distribution is False


def test_skip_bad_counts_a_cut_jpeg_and_without_it_exit_2(tmp_path, tiny_checkpoint_path, capsys):
    (tmp_path / "good.jpeg").write_bytes(encode(film(), quality=90))
    (tmp_path / "cut.jpeg").write_bytes(cut_jpeg(encode(film(seed=1), quality=90), 0.3))
    assert main(["predict", str(tmp_path), "-c", str(tiny_checkpoint_path)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "cut.jpeg" in errors[0] and "truncated" in errors[0]
    assert main(["predict", str(tmp_path), "-c", str(tiny_checkpoint_path), "--skip-bad"]) == 0
    out, err = capsys.readouterr()
    assert "1 predicted, 1 skipped" in out and "cut.jpeg" in err


def test_a_real_film_cut_short_is_refused(real_data_root, tmp_path, capsys):
    source = sorted((real_data_root / "train" / "NORMAL").glob("*.jpeg"))[0]
    data = source.read_bytes()
    (tmp_path / "cut.jpeg").write_bytes(cut_jpeg(data, 0.3))
    assert main(["predict", str(tmp_path / "cut.jpeg")]) == 2
    err = capsys.readouterr().err
    assert "cut.jpeg" in err and "truncated" in err and "Traceback" not in err


# --------------------------------------------------------------------------- bugs: no bare NaN in JSON


def test_a_nan_prediction_is_null_in_json():
    p = Prediction("x.png", float("nan"), "NORMAL", 0.5, ood_score=float("nan"), in_distribution=None)
    d = p.to_dict()
    assert d["probability"] is None and d["ood_score"] is None
    json.dumps(d, allow_nan=False)  # raises on a bare NaN
    text = render_predictions(".json", [p], [], {"threshold": float("nan")})
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert doc["threshold"] is None and doc["predictions"][0]["ood_score"] is None


# --------------------------------------------------------------------------- behaviour: the Python API


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    return Predictor()


def test_every_prediction_path_carries_the_guard_of_its_inputs(shipped, tmp_path):
    guard = shipped.checkpoint.ood
    assert guard is not None, "the shipped model carries a guard"
    files = [tmp_path / "film.png", tmp_path / "noise.png"]
    files[0].write_bytes(encode(film(), "PNG"))
    files[1].write_bytes(encode(noise(), "PNG"))
    inputs = np.stack([load_image(f, shipped.size) for f in files])
    scores, inside = guard.flags(inputs)
    assert not inside[1], "uniform noise is flagged"
    by_arrays = shipped.predict_arrays(inputs, ["a", "b"])
    by_files, bad = shipped.predict_files(files, progress=False)
    by_bytes = [shipped.predict_bytes(f.read_bytes(), f.name) for f in files]
    assert bad == []
    for preds in (by_arrays, by_files, by_bytes):
        assert [p.ood_score for p in preds] == pytest.approx(list(scores), abs=1e-9)
        assert [p.in_distribution for p in preds] == [bool(v) for v in inside]
        assert all(isinstance(p.ood_score, float) and isinstance(p.in_distribution, bool) for p in preds)
    # a flagged film keeps its probability and label
    plain = shipped.probabilities(inputs)
    assert [p.probability for p in by_arrays] == pytest.approx(list(plain), abs=1e-9)
    assert by_arrays[1].label == shipped.label_of(float(plain[1]))
    assert by_arrays[1].to_dict()["in_distribution"] is False


def test_the_guard_sees_each_image_of_a_batch_on_its_own(shipped):
    images = np.stack([noise(shipped.size, seed=s) for s in range(3)])
    together = shipped.predict_arrays(images)
    alone = [shipped.predict_arrays(images[i : i + 1])[0] for i in range(3)]
    assert [p.ood_score for p in together] == pytest.approx([p.ood_score for p in alone], abs=1e-9)


def test_an_old_checkpoint_without_a_guard_gives_none(tiny_checkpoint_path):
    predictor = Predictor(tiny_checkpoint_path)
    assert predictor.checkpoint.ood is None
    (p,) = predictor.predict_arrays(noise(32)[None], ["n"])
    assert p.ood_score is None and p.in_distribution is None
    assert p.to_dict()["ood_score"] is None and p.to_dict()["in_distribution"] is None


# --------------------------------------------------------------------------- behaviour: the CLI


def test_cli_predict_flags_noise_in_table_csv_and_json(tmp_path, capsys):
    (tmp_path / "noise.png").write_bytes(encode(noise(), "PNG"))
    assert main(["predict", str(tmp_path / "noise.png")]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(str(tmp_path / "noise.png")))
    assert WARNING in row
    assert "1 of 1 image flagged" in out.splitlines()[-1] and WARNING in out.splitlines()[-1]

    assert main(["predict", str(tmp_path / "noise.png"), "--out", str(tmp_path / "p.csv")]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 image flagged" in out and WARNING in out
    (row,) = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert list(row) == ["file", "probability", "label", "threshold", "ood_score", "in_distribution", "error"]
    assert row["in_distribution"] == "false" and float(row["ood_score"]) > 1.0

    assert main(["predict", str(tmp_path / "noise.png"), "--out", str(tmp_path / "p.json")]) == 0
    capsys.readouterr()
    doc = json.loads((tmp_path / "p.json").read_text())
    (pred,) = doc["predictions"]
    assert pred["in_distribution"] is False and pred["ood_score"] == pytest.approx(float(row["ood_score"]), abs=1e-4)
    assert doc["ood"]["flagged"] == 1 and doc["ood"]["warning"] == WARNING


def test_cli_predict_with_an_old_checkpoint_leaves_the_fields_empty(tmp_path, tiny_checkpoint_path, capsys):
    (tmp_path / "film.png").write_bytes(encode(film(), "PNG"))
    args = ["predict", str(tmp_path / "film.png"), "-c", str(tiny_checkpoint_path)]
    assert main([*args, "--out", str(tmp_path / "p.csv")]) == 0
    out, err = capsys.readouterr()
    assert "flagged" not in out and "no out-of-distribution guard" in err
    (row,) = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert row["ood_score"] == "" and row["in_distribution"] == ""
    assert main([*args, "--out", str(tmp_path / "p.json")]) == 0
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["predictions"][0]["ood_score"] is None and doc["predictions"][0]["in_distribution"] is None
    assert doc["ood"] is None


def test_cli_predict_on_real_films_flags_few(real_data_root, tmp_path, capsys):
    films = sorted((real_data_root / "val").rglob("*.jpeg"))
    assert main(["predict", *map(str, films), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert len(rows) == len(films) and sum(r["in_distribution"] == "false" for r in rows) <= 1


# --------------------------------------------------------------------------- behaviour: explain and evaluate


def test_explain_json_and_panel_carry_the_flag(tmp_path, shipped):
    from pneumolens.explain.runner import MethodSpec, explain_files

    (tmp_path / "noise.png").write_bytes(encode(noise(), "PNG"))
    records = explain_files([tmp_path / "noise.png"], shipped, [MethodSpec("gradcam", "gradcam")], tmp_path / "out",
                            progress=False)
    doc = json.loads((tmp_path / "out" / "noise.json").read_text())
    assert doc["prediction"]["in_distribution"] is False and doc["prediction"]["ood_score"] > 1.0
    assert records[0]["prediction"] == doc["prediction"]
    assert WARNING in (tmp_path / "out" / "index.html").read_text()


def test_panel_title_carries_the_warning_only_when_flagged():
    from pneumolens.explain.render import prediction_title

    def title(**kw) -> str:
        return " ".join(prediction_title("x.png", 0.9, "PNEUMONIA", 0.5, **kw).split())  # the warning is wrapped

    assert f"Warning: this image {WARNING}" in title(in_distribution=False)
    assert "Warning" not in title(in_distribution=True) and "Warning" not in title()
    lines = prediction_title("x.png", 0.9, "PNEUMONIA", 0.5, in_distribution=False).splitlines()
    assert lines[:2] == prediction_title("x.png", 0.9, "PNEUMONIA", 0.5).splitlines()
    assert max(len(line) for line in lines[2:]) <= 60


def test_evaluate_reports_the_flagged_share(tmp_path, shipped):
    from pneumolens.evaluate import evaluate_arrays

    images = np.stack([noise(shipped.size, seed=s) for s in range(4)])
    images[2:] = np.stack([load_image(encode(film(seed=s), "PNG"), shipped.size) for s in (2, 3)])
    scores, inside = shipped.checkpoint.ood.flags(images)
    m = evaluate_arrays(shipped, images, [0, 1, 0, 1], tmp_path, n_boot=0)
    flagged = int((~inside).sum())
    assert m["ood"]["flagged"] == flagged and m["ood"]["flagged_share"] == pytest.approx(flagged / 4)
    assert json.loads((tmp_path / "metrics.json").read_text())["ood"]["flagged"] == flagged
    rows = list(csv.DictReader((tmp_path / "predictions.csv").read_text().splitlines()))
    assert [r["in_distribution"] for r in rows] == ["true" if v else "false" for v in inside]
    assert [float(r["ood_score"]) for r in rows] == pytest.approx(list(scores), abs=1e-4)
    assert "out of distribution" in (tmp_path / "report.md").read_text()


def test_evaluate_without_a_guard_says_so(tmp_path, tiny_checkpoint_path):
    from pneumolens.evaluate import evaluate_arrays

    m = evaluate_arrays(Predictor(tiny_checkpoint_path), np.stack([noise(32, s) for s in range(4)]), [0, 1, 0, 1],
                        tmp_path, n_boot=0)
    assert m["ood"] is None
    rows = list(csv.DictReader((tmp_path / "predictions.csv").read_text().splitlines()))
    assert all(r["ood_score"] == "" and r["in_distribution"] == "" for r in rows)


# --------------------------------------------------------------------------- behaviour: the service


@pytest.fixture(scope="module")
def service():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pneumolens.service import ServeSettings, create_app

    app = create_app(ServeSettings(explain_prestart=False, allowed_hosts=["testserver"]))
    with TestClient(app) as client:
        yield client


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_service_predict_returns_the_fields_and_the_warning(service, shipped):
    files = [("file", ("noise.png", encode(noise(), "PNG"), "image/png")),
             ("file", ("film.png", encode(film(), "PNG"), "image/png"))]
    r = service.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    noisy, filmy = r.json()["results"]
    assert noisy["in_distribution"] is False and noisy["warning"] == WARNING
    expected = shipped.predict_bytes(encode(noise(), "PNG"), "noise.png")
    assert noisy["ood_score"] == pytest.approx(expected.ood_score, abs=1e-9)
    assert noisy["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert isinstance(filmy["in_distribution"], bool) and (filmy["warning"] is None) == filmy["in_distribution"]
    assert service.get("/v1/model").json()["ood"]["threshold"] == pytest.approx(shipped.checkpoint.ood.threshold)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_service_refuses_a_cut_jpeg_with_422(service):
    data = cut_jpeg(encode(film(), quality=90), 0.3)
    r = service.post("/v1/predict", files=[("file", ("cut.jpeg", data, "image/jpeg"))])
    assert r.status_code == 422 and r.json()["detail"].startswith("cut.jpeg:") and "truncated" in r.json()["detail"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_service_without_a_guard_returns_nulls(tiny_checkpoint_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pneumolens.service import ServeSettings, create_app

    app = create_app(ServeSettings(checkpoint=tiny_checkpoint_path, explain_prestart=False,
                                   allowed_hosts=["testserver"]))
    with TestClient(app) as client:
        r = client.post("/v1/predict", files=[("file", ("n.png", encode(noise(), "PNG"), "image/png"))])
        assert client.get("/v1/model").json()["ood"] is None
    (result,) = r.json()["results"]
    assert result["ood_score"] is None and result["in_distribution"] is None and result["warning"] is None


def test_the_page_has_a_visible_warning_for_flagged_films():
    static = Path(__file__).resolve().parents[1] / "pneumolens" / "service" / "static"
    page, script, style = ((static / n).read_text() for n in ("index.html", "app.js", "style.css"))
    assert 'id="ood-warning"' in page and WARNING in page
    assert "in_distribution === false" in script and '"ood-warning"' in script
    assert ".ood-warning" in style


def test_pillow_never_loads_truncated_images():
    """Pillow's LOAD_TRUNCATED_IMAGES would make a cut PNG or JPEG decode silently; nothing may turn it on."""
    from PIL import ImageFile

    import pneumolens.cli  # noqa: F401
    import pneumolens.evaluate  # noqa: F401
    import pneumolens.explain.runner  # noqa: F401
    import pneumolens.service  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
