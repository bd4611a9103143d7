"""The REST API through FastAPI's TestClient, with the tiny random checkpoint from conftest.

Explanations here run in-process through a stand-in pool that calls the real job function
(the worker processes themselves are tested in ``test_service_workers.py``).
"""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from pneumolens.inference import Predictor  # noqa: E402
from pneumolens.model import count_parameters  # noqa: E402
from pneumolens.service import ServeSettings, create_app  # noqa: E402
from pneumolens.service.dependencies import get_explain_pool, get_predictor  # noqa: E402
from pneumolens.service.uploads import safe_name  # noqa: E402
from pneumolens.service.workers import ExplainBusy, ExplainTimeout  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LIMIT = 4_000_000


# ----------------------------------------------------------------------------- synthetic files


def film(h: int = 60, w: int = 52, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy = np.mgrid[0:h, 0:w][0]
    return np.clip(60 + 100 * yy / h + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def dicom_bytes(arr: np.ndarray, frames: int = 1) -> bytes:
    """A 12-bit MONOCHROME2 DICOM (``frames`` > 1 makes a multi-frame one, which is unsupported)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.tile(arr.astype(np.uint16) * 16, (frames, 1)).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` (a decompression-bomb shape)."""
    data = bytearray(encode(film()))
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


# ----------------------------------------------------------------------------- fixtures


class InlinePool:
    """Stands in for ExplainPool: runs the real job in this process, or raises a given error."""

    def __init__(self, model, error: Exception | None = None) -> None:
        from pneumolens.service.explaining import warm_up

        self.context = {"model": model}
        warm_up(self.context)  # the worker's own start-up: fast forwards for every method
        self.error = error
        self.calls = 0

    def run(self, payload: dict):
        from pneumolens.service.explaining import run_job

        self.calls += 1
        if self.error is not None:
            raise self.error
        return run_job(self.context, payload)

    def status(self) -> dict:
        return {"workers": 1, "busy": 0}


@pytest.fixture(scope="module")
def app(tiny_checkpoint_path: Path):
    settings = ServeSettings(
        checkpoint=tiny_checkpoint_path,
        max_upload_bytes=LIMIT,
        explain_prestart=False,
        max_files=5,
        allowed_hosts=["testserver"],  # the Host header TestClient sends
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture
def inline_pool(app, client):
    pool = InlinePool(app.state.predictor.model)
    app.dependency_overrides[get_explain_pool] = lambda: pool
    yield pool
    app.dependency_overrides.pop(get_explain_pool, None)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint_path: Path) -> Predictor:
    return Predictor(tiny_checkpoint_path)


def upload(name: str, data: bytes, kind: str = "application/octet-stream"):
    return ("file", (name, data, kind))


# ----------------------------------------------------------------------------- health, model card, page


def test_healthz_reports_loaded_model_and_workers(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model_loaded"] is True
    assert body["explanations"]["workers"] == 1 and body["explanations"]["busy"] == 0
    assert "gradcam" in body["explanations"]["methods"]


def test_model_card_matches_the_checkpoint(client, reference):
    card = client.get("/v1/model").json()
    assert card["architecture"] == "cnn_lstm"
    assert card["parameters"] == count_parameters(reference.model)
    assert card["threshold"] == pytest.approx(reference.threshold)
    assert card["config"]["input_size"] == reference.size
    assert card["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert "not a medical device" in card["notice"]


def test_threshold_override_is_what_the_card_and_labels_use(tiny_checkpoint_path):
    app = create_app(
        ServeSettings(
            checkpoint=tiny_checkpoint_path, threshold=0.0, explain_prestart=False, allowed_hosts=["testserver"]
        )
    )
    with TestClient(app) as c:
        assert c.get("/v1/model").json()["threshold"] == 0.0
        result = c.post("/v1/predict", files=[upload("a.png", encode(film()))]).json()["results"][0]
    assert result["threshold"] == 0.0 and result["label"] == "PNEUMONIA"


def test_page_and_its_assets_are_served_by_the_app(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Research use only" in page.text and "not a medical device" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text.replace("http://www.w3.org", "") and "https://" not in page.text
    for asset in ("/static/app.js", "/static/style.css", "/static/favicon.svg"):
        assert client.get(asset).status_code == 200, asset
    for escape in ("/static/%2e%2e/settings.py", "/static/..%2fapp.py", "/static/%2e%2e%2f__init__.py"):
        assert client.get(escape).status_code == 404, escape  # StaticFiles stays inside its folder


def test_openapi_lists_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    assert {"/healthz", "/v1/model", "/v1/predict", "/v1/explain", "/v1/explain/methods"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


# ----------------------------------------------------------------------------- predict


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "DICOM"])
def test_predict_agrees_with_the_library(client, reference, fmt):
    arr = film(seed=3)
    data = dicom_bytes(arr) if fmt == "DICOM" else encode(arr, fmt)
    name = f"scan.{'dcm' if fmt == 'DICOM' else fmt.lower()}"
    r = client.post("/v1/predict", files=[upload(name, data)])
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    expected = reference.predict_bytes(data, name)
    assert result["file"] == name
    assert result["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert result["label"] == expected.label
    assert result["threshold"] == pytest.approx(reference.threshold)


def test_predict_several_files_keeps_order_and_reports_bad_ones(client, reference):
    files = [encode(film(seed=s)) for s in range(3)]
    r = client.post(
        "/v1/predict",
        files=[
            upload("a.png", files[0]),
            upload("notes.txt", b"not an image at all"),
            upload("b.png", files[1]),
            upload("c.png", files[2]),
        ],
    )
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["file"] for x in results] == ["a.png", "notes.txt", "b.png", "c.png"]
    assert results[1]["probability"] is None and "notes.txt" in results[1]["error"]
    probs = reference.probabilities(np.stack([reference_input(reference, f) for f in files]))
    assert [results[i]["probability"] for i in (0, 2, 3)] == pytest.approx(list(probs), abs=1e-6)


def reference_input(reference: Predictor, data: bytes) -> np.ndarray:
    from pneumolens.io import load_image

    return load_image(data, reference.size)


def test_predict_uses_an_overridden_predictor(app, client):
    class Fixed:
        size, threshold = 32, 0.9

        def predict_arrays(self, images, names):
            from pneumolens.inference import Prediction

            return [Prediction(n, 0.95, "PNEUMONIA", 0.9) for n in names]

    app.dependency_overrides[get_predictor] = Fixed
    try:
        result = client.post("/v1/predict", files=[upload("x.png", encode(film()))]).json()["results"][0]
    finally:
        app.dependency_overrides.pop(get_predictor)
    assert result == {"file": "x.png", "probability": 0.95, "label": "PNEUMONIA", "threshold": 0.9,
                      "ood_score": None, "in_distribution": None, "warning": None, "error": None}


@pytest.mark.parametrize(
    "name, data, status, words",
    [
        ("notes.txt", b"hello, this is text", 422, "not a recognised image format"),
        ("empty.png", b"", 422, "empty"),
        ("half.png", encode(film(200, 200))[:700], 422, "truncated"),
        ("bomb.png", png_claiming(9000, 9000), 422, "exceeds the limit"),
        ("tiny.png", encode(film(4, 4)), 422, "too small"),
        ("cine.dcm", dicom_bytes(film(), frames=2), 415, "multi-frame"),
    ],
)
def test_a_single_bad_upload_is_an_error_naming_the_file(client, name, data, status, words):
    r = client.post("/v1/predict", files=[upload(name, data)])
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail.startswith(name + ":") and words in detail


def test_missing_file_field_is_a_validation_error(client):
    r = client.post("/v1/predict", data={"other": "x"})
    assert r.status_code == 422


def test_too_many_files_is_refused(client):
    data = encode(film())
    r = client.post("/v1/predict", files=[upload(f"{i}.png", data) for i in range(6)])
    assert r.status_code == 400 and "files" in r.json()["detail"].lower()


def test_upload_names_are_labels_not_paths():
    assert safe_name("../../etc/passwd", 0) == "passwd"
    assert safe_name("C:\\Users\\x\\scan.png", 0) == "scan.png"
    assert safe_name("bad\x00\x1bname.png", 0) == "badname.png"
    assert safe_name("", 2) == "upload-3" and safe_name(None, 0) == "upload-1"
    assert len(safe_name("a" * 500 + ".png", 0)) <= 120


def test_path_like_upload_name_is_reduced_to_its_base_name(client):
    r = client.post("/v1/predict", files=[upload("../../secret/scan.png", encode(film()))])
    assert r.json()["results"][0]["file"] == "scan.png"


# ----------------------------------------------------------------------------- size limit, no disk


def test_body_over_the_limit_is_413_from_content_length(client):
    r = client.post("/v1/predict", files=[upload("big.png", b"\0" * (LIMIT + 10))])
    assert r.status_code == 413
    assert f"{LIMIT:,}" in r.json()["detail"]


def test_body_over_the_limit_is_413_when_counted_while_reading(client):
    boundary = "xyz"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'.encode()

    def chunks():  # no Content-Length: the body arrives in pieces and must be counted
        yield head
        for _ in range(LIMIT // 100_000 + 2):
            yield b"\1" * 100_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post(
        "/v1/predict", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 413
    assert "upload limit" in r.json()["detail"]


def test_uploads_never_touch_disk(client, reference, monkeypatch):
    """A 3 MB upload (Starlette would spool anything over 1 MB to a temporary file) stays in memory."""

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was written to a temporary file")

    for fn in ("TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, fn, no_disk)
    rng = np.random.default_rng(0)
    data = encode(rng.integers(0, 256, (1800, 1800), dtype=np.uint8))
    assert 2_000_000 < len(data) < LIMIT
    r = client.post("/v1/predict", files=[upload("large.png", data)])
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["probability"] == pytest.approx(
        reference.predict_bytes(data, "x").probability, abs=1e-6
    )


# ----------------------------------------------------------------------------- explain


def test_explain_returns_prediction_overlays_and_timings(client, reference, inline_pool):
    data = encode(film(seed=5))
    r = client.post("/v1/explain", files=[upload("e.png", data)], data={"methods": "gradcam, occlusion", "raw": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = reference.predict_bytes(data, "e.png")
    assert body["prediction"]["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert [e["method"] for e in body["explanations"]] == ["gradcam", "occlusion"]
    import base64

    for e in body["explanations"]:
        png = base64.b64decode(e["overlay_png"])
        assert png.startswith(b"\x89PNG")
        assert e["elapsed_s"] > 0 and e["render_s"] > 0
        raw = np.asarray(e["map"])
        assert raw.shape == (reference.size, reference.size) and np.isfinite(raw).all()
        assert e["scale"] == pytest.approx(np.abs(raw).max(), rel=1e-4, abs=1e-9)
    assert body["explanations"][0]["signed"] is False and body["explanations"][1]["signed"] is True
    seen = Image.open(io.BytesIO(base64.b64decode(body["input_png"])))
    assert seen.size == (reference.size, reference.size)


def test_explain_maps_equal_the_library_on_the_plain_model(client, reference, inline_pool):
    """The worker's fast forwards change the cost, not the maps (ig uses the gradient copy)."""
    from pneumolens.explain import explain

    data = encode(film(seed=6))
    assert inline_pool.context["grad_forward"] is not None and inline_pool.context["forward"] is not None
    r = client.post("/v1/explain", files=[upload("e.png", data)], data={"methods": "ig, occlusion", "raw": "true"})
    assert r.status_code == 200, r.text
    image = reference_input(reference, data)
    for e in r.json()["explanations"]:
        plain = explain(reference.model, image[None], e["method"], seed=0).maps[0]
        np.testing.assert_allclose(np.asarray(e["map"]), plain, rtol=1e-3, atol=1e-5 * np.abs(plain).max())


def test_explain_overlays_are_drawn_on_the_film_in_its_own_aspect_ratio(client, inline_pool):
    import base64

    sizes = {}
    for name, (h, w) in {"wide": (40, 96), "tall": (96, 40)}.items():
        r = client.post("/v1/explain", files=[upload(f"{name}.png", encode(film(h, w, seed=3)))])
        assert r.status_code == 200, r.text
        sizes[name] = Image.open(io.BytesIO(base64.b64decode(r.json()["explanations"][0]["overlay_png"]))).size
    assert sizes["wide"][0] == sizes["tall"][0] and sizes["tall"][1] > 1.5 * sizes["wide"][1]


def test_explain_defaults_to_gradcam_without_raw_maps(client, inline_pool):
    body = client.post("/v1/explain", files=[upload("e.png", encode(film()))]).json()
    assert [e["method"] for e in body["explanations"]] == ["gradcam"]
    assert body["explanations"][0]["map"] is None


@pytest.mark.parametrize(
    "methods, words",
    [
        ("gradcam,telepathy", "unknown method 'telepathy'"),
        ("lime:bogus=1", "unknown parameter 'bogus'"),
        ("lime:n_samples", "key=value"),
    ],
)
def test_explain_rejects_bad_methods_before_any_work(client, inline_pool, methods, words):
    r = client.post("/v1/explain", files=[upload("e.png", encode(film()))], data={"methods": methods})
    assert r.status_code == 422 and words in r.json()["detail"]
    assert inline_pool.calls == 0


def test_explain_bad_image_is_refused_before_any_work(client, inline_pool):
    r = client.post("/v1/explain", files=[upload("e.png", b"GIF89a garbage")])
    assert r.status_code == 422 and r.json()["detail"].startswith("e.png:")
    assert inline_pool.calls == 0


@pytest.mark.parametrize(
    "error, status",
    [(ExplainBusy("all 1 explanation worker is busy; retry later"), 503), (ExplainTimeout("too slow"), 504)],
)
def test_explain_limits_map_to_503_and_504(app, client, error, status):
    app.dependency_overrides[get_explain_pool] = lambda: InlinePool(None, error)
    try:
        r = client.post("/v1/explain", files=[upload("e.png", encode(film()))])
    finally:
        app.dependency_overrides.pop(get_explain_pool)
    assert r.status_code == status
    assert r.json()["detail"] == str(error)
    if status == 503:
        assert int(r.headers["retry-after"]) > 0


def test_explain_without_an_explanation_library_is_503(app, client):
    app.dependency_overrides[get_explain_pool] = lambda: None
    try:
        r = client.post("/v1/explain", files=[upload("e.png", encode(film()))])
    finally:
        app.dependency_overrides.pop(get_explain_pool)
    assert r.status_code == 503 and "not available" in r.json()["detail"]


def test_methods_endpoint_lists_the_library_methods(client):
    from pneumolens.explain import METHODS

    body = client.get("/v1/explain/methods").json()
    assert body["methods"] == list(METHODS) and body["default"] == ["gradcam"]


# ----------------------------------------------------------------------------- issue 17: hostile requests


@pytest.mark.parametrize(
    "methods, words",
    [
        ("gradcam:layer=lstm1", "'lstm1' is not a convolutional layer"),
        ("gradcam:layer=lstm2", "'lstm2' is not a convolutional layer"),
        ("kernelshap:n_segments=0", "n_segments must be an integer from 2 to"),
        ("lime:n_segments=-3", "n_segments must be an integer from 2 to"),
        ("ig:sigma=-1", "sigma must be a number greater than 0"),
        ("shap:stdevs=-1", "stdevs must be a number from 0 to 1"),
        ("lime:n_samples=1000000000", "n_samples must be an integer from 2 to 5000 (the service limit)"),
        ("lime:n_samples=20000", "n_samples must be an integer from 2 to 5000 (the service limit)"),
        ("ig:n_steps=100000000", "n_steps must be an integer from 1 to 512"),
        ("shap:n_samples=100000000", "n_samples must be an integer from 1 to 64"),
        ("occlusion:perturbations_per_eval=100000000", "perturbations_per_eval must be an integer from 1 to 256"),
        ("occlusion:window=33", "window must be an integer from 1 to 32"),
    ],
)
def test_hostile_method_settings_are_422_before_any_work(client, inline_pool, methods, words):
    """Issue 17 item 2: these were 500s (AssertionError, ZeroDivisionError, a 352 GB allocation)."""
    r = client.post("/v1/explain", files=[upload("e.png", encode(film()))], data={"methods": methods})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert words in detail and detail.startswith("methods: ") and "\n" not in detail
    assert inline_pool.calls == 0


def test_a_request_whose_files_are_all_bad_names_every_file(client):
    """Issue 17 item 10: the 422 named only the first file's error."""
    r = client.post(
        "/v1/predict",
        files=[upload("notes.txt", b"plain text"), upload("empty.png", b""), upload("tiny.png", encode(film(4, 4)))],
    )
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "none of the 3 files could be read" in detail
    for words in ("notes.txt: not a recognised image format", "empty.png: file is empty", "tiny.png: image is 4x4"):
        assert words in detail, detail
    assert "\n" not in detail


@pytest.mark.parametrize(
    "name, data",
    [("notes.dcm", b"hello, this is text\n" * 3), ("noise.dcm", np.random.default_rng(0).bytes(3000))],
)
def test_a_dcm_file_that_is_not_dicom_is_422_not_a_dicom_file(client, name, data):
    """Issue 17 item 6: these got 415 "DICOM file has no pixel data"."""
    r = client.post("/v1/predict", files=[upload(name, data)])
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(f"{name}: not a DICOM file")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "localhost.evil.example"])
def test_an_unexpected_host_header_is_400(client, host):
    """Issue 17 item 12: DNS rebinding sends the attacker's name as Host; it was answered."""
    r = client.get("/healthz", headers={"host": host})
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert f"Host header '{host}'" in detail and "--allowed-host" in detail
    r = client.post("/v1/predict", files=[upload("a.png", encode(film()))], headers={"host": host})
    assert r.status_code == 400


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "[::1]", "LOCALHOST"])
def test_loopback_hosts_are_always_allowed(client, host):
    assert client.get("/healthz", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost:9999", "https://testserver"])
def test_a_cross_origin_post_is_403(client, origin):
    """Issue 17 item 12: any web page could post to the local service (a form needs no preflight)."""
    r = client.post("/v1/predict", files=[upload("a.png", encode(film()))], headers={"origin": origin})
    assert r.status_code == 403
    detail = r.json()["detail"]
    assert f"origin '{origin}'" in detail and "--cors-origin" in detail
    assert "access-control-allow-origin" not in r.headers


def test_the_page_posting_to_its_own_origin_is_accepted(client):
    """What the browser sends from the served page (same origin), and what curl sends (no Origin)."""
    for headers in ({"origin": "http://testserver"}, {}):
        r = client.post("/v1/predict", files=[upload("a.png", encode(film()))], headers=headers)
        assert r.status_code == 200, (headers, r.text)
    page = client.get("/static/app.js").text
    assert "http://" not in page and "https://" not in page  # the page only calls its own origin


def test_cors_origin_named_at_startup_is_allowed_with_cors_headers(tiny_checkpoint_path):
    app = create_app(
        ServeSettings(
            checkpoint=tiny_checkpoint_path,
            explain_prestart=False,
            allowed_hosts=["testserver"],
            cors_origins=["https://viewer.example"],
        )
    )
    with TestClient(app) as c:
        files = [upload("a.png", encode(film()))]
        ok = c.post("/v1/predict", files=files, headers={"origin": "https://viewer.example"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://viewer.example"
        pre = c.options(
            "/v1/predict",
            headers={"origin": "https://viewer.example", "access-control-request-method": "POST"},
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://viewer.example"
        other = c.post("/v1/predict", files=files, headers={"origin": "https://other.example"})
        assert other.status_code == 403


def test_allowed_hosts_and_cors_origins_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("PNEUMOLENS_ALLOWED_HOSTS", "xray.lan, 10.0.0.5")
    monkeypatch.setenv("PNEUMOLENS_CORS_ORIGINS", "https://viewer.example")
    settings = ServeSettings()
    assert settings.allowed_hosts == ["xray.lan", "10.0.0.5"]
    assert settings.cors_origins == ["https://viewer.example"]


@pytest.mark.parametrize("origin", ["viewer.example", "https://viewer.example/path", "*", "ftp://x.example"])
def test_a_malformed_cors_origin_is_refused(origin):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="origin"):
        ServeSettings(cors_origins=[origin])


def test_a_small_16bit_png_that_decodes_huge_is_422_naming_the_budget(client):
    """Issue 17 item 9: a 124 KB 16-bit 7999x7999 PNG cost ~730 MB of server memory per request."""
    from pneumolens.io import MAX_DECODED_BYTES

    buf = io.BytesIO()
    Image.fromarray(np.zeros((7999, 7999), np.uint16)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 200_000
    r = client.post("/v1/predict", files=[upload("deep.png", buf.getvalue())])
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith("deep.png: 7999x7999 16-bit") and f"{MAX_DECODED_BYTES:,}" in detail


def test_the_service_caps_concurrent_large_decodes_while_it_runs(tiny_checkpoint_path):
    from pneumolens import io as pio

    app = create_app(
        ServeSettings(
            checkpoint=tiny_checkpoint_path, explain_prestart=False, allowed_hosts=["testserver"],
            max_concurrent_large_decodes=3,
        )
    )
    before = pio._large_decodes_limit
    with TestClient(app):
        assert pio._large_decodes_limit == 3
    assert pio._large_decodes_limit == before


def test_undecodable_compressed_dicom_upload_is_415_and_logs_no_traceback(client, caplog):
    """Issue 17 item 5: the service log got pydicom's tracebacks."""
    import logging

    from pydicom.data import get_testdata_file

    path = get_testdata_file("JPEG-lossy.dcm")
    if path is None:
        pytest.skip("pydicom test file JPEG-lossy.dcm is not available offline")
    with caplog.at_level(logging.DEBUG):
        r = client.post("/v1/predict", files=[upload("lossy.dcm", Path(path).read_bytes())])
    assert r.status_code == 415
    assert "JPEG Extended" in r.json()["detail"] and "pip install pylibjpeg" in r.json()["detail"]
    assert [rec for rec in caplog.records if rec.exc_info or rec.exc_text] == []
