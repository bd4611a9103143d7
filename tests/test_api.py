"""The three-line Python API (issue 18 item 1): ``pneumolens.load()``, ``model.predict``, ``model.explain``.

Most tests use the tiny random checkpoint of conftest (32x32 input, threshold 0.5); the README's
snippet and the issue's three lines run on the shipped model, on synthetic films (never dataset images).
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, synthetic_xray
from PIL import Image

from pneumolens.errors import ConfigError, InvalidImageError

FILM_SHAPE = (60, 90)  # (H, W): not square, so that a map on the film's grid is told from one on the input's


def film(seed: int = 0, label: int = 1, shape: tuple[int, int] = FILM_SHAPE) -> np.ndarray:
    return synthetic_xray(label, np.random.default_rng(seed), shape)


@pytest.fixture
def film_png(tmp_path: Path) -> Path:
    path = tmp_path / "film.png"
    Image.fromarray(film()).save(path)
    return path


@pytest.fixture(scope="module")
def model(tiny_checkpoint_path: Path):
    import pneumolens

    return pneumolens.load(tiny_checkpoint_path, device="cpu")


# --------------------------------------------------------------------------- the traps of issue 18


def test_load_image_returns_a_writable_array_that_torch_takes_without_warning(film_png: Path) -> None:
    """Issue 18: load_image returned a read-only view of a PIL image, and torch.from_numpy warned on it."""
    from pneumolens.io import load_image

    arr = load_image(film_png, 32)
    assert arr.shape == (32, 32) and arr.dtype == np.uint8
    assert arr.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.from_numpy(arr)
    square = film_png.with_name("square.png")
    Image.fromarray(film(shape=(32, 32))).save(square)  # already at the input size: no resize at all
    assert load_image(square, 32).flags.writeable


def test_calibrated_probability_applies_the_temperature_and_the_bias() -> None:
    """sigmoid(logit / T + b), hand-computed: logits 0, 2, -2 at T = 2 give sigmoid(0), sigmoid(1), sigmoid(-1);
    with b = 1, sigmoid(1), sigmoid(2), sigmoid(0)."""
    from pneumolens.calibrated import CalibratedProbability

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([0.0, 2.0, -2.0])

    p = CalibratedProbability(Fixed(), temperature=2.0, threshold=0.4)(torch.zeros(3, 1, 4, 4))
    np.testing.assert_allclose(p.numpy(), [0.5, 0.7310586, 0.2689414], atol=1e-7)
    p = CalibratedProbability(Fixed(), temperature=2.0, threshold=0.4, bias=1.0)(torch.zeros(3, 1, 4, 4))
    np.testing.assert_allclose(p.numpy(), [0.7310586, 0.8807971, 0.5], atol=1e-7)
    with pytest.raises(ValueError, match="temperature"):
        CalibratedProbability(Fixed(), temperature=0.0, threshold=0.5)


@pytest.fixture(scope="module")
def hot_checkpoint(tiny_checkpoint_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with temperature 3, bias -0.4 and threshold 0.52: raw sigmoid and calibrated
    probability differ."""
    from pneumolens.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint_path)
    ckpt.temperature, ckpt.bias, ckpt.threshold = 3.0, -0.4, 0.52
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("hot") / "model.pt")


def test_calling_the_model_gives_calibrated_probabilities_and_the_raw_network_is_named_as_such(hot_checkpoint):
    """Issue 18: sigmoid(predictor.model(x)) was the uncalibrated number; the model's own call must be calibrated."""
    import pneumolens

    model = pneumolens.load(hot_checkpoint, device="cpu")
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model.logit_module(x)
    p = model(x)
    assert p.shape == (4,) and p.dtype == torch.float32
    np.testing.assert_allclose(p.numpy(), torch.sigmoid(logits / 3.0 - 0.4).numpy(), atol=1e-7)
    assert not np.allclose(p.numpy(), torch.sigmoid(logits).numpy(), atol=1e-3)  # the trap: T matters
    assert not np.allclose(p.numpy(), torch.sigmoid(logits / 3.0).numpy(), atol=1e-3)  # and so does the bias
    u8 = (x[:, 0] * 255).round().to(torch.uint8).numpy()
    np.testing.assert_allclose(model(torch.from_numpy(u8[:, None] / np.float32(255))).numpy(),
                               model.predictor.probabilities(u8), atol=1e-6)
    assert model.threshold == pytest.approx(0.52) and (model.temperature, model.bias) == (3.0, -0.4)
    assert "bias -0.4000" in repr(model)
    assert isinstance(model.logit_module, pneumolens.CnnLstm)
    assert not hasattr(model, "model") and not hasattr(model, "net")  # no default name for the raw logits
    assert not p.requires_grad  # inference: no graph kept


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.rand(2, 32, 32), r"shape \(2, 32, 32\)"),
        (torch.zeros(2, 1, 32, 32, dtype=torch.uint8), "divide uint8 images by 255"),
        (torch.full((1, 1, 32, 32), 2.0), "in \\[0, 1\\], got 2 to 2"),
    ],
)
def test_calling_the_model_refuses_other_inputs(model, x, message) -> None:
    with pytest.raises(ValueError, match=message):
        model(x)


# --------------------------------------------------------------------------- predict


def test_predict_a_path_gives_the_command_lines_prediction(model, film_png: Path) -> None:
    r = model.predict(film_png)
    preds, bad = model.predictor.predict_files([film_png], progress=False)
    assert bad == [] and r == preds[0]  # the same dataclass values: file, probability, label, threshold, ood
    assert r.file == str(film_png)
    assert r.label == ("PNEUMONIA" if r.probability >= 0.5 else "NORMAL") and r.threshold == 0.5


def test_predict_accepts_arrays_tensors_pil_images_and_bytes_and_they_agree(model, film_png: Path) -> None:
    """A lossless PNG of an array, the array, its float version, a tensor and the PIL image: one number."""
    arr = film()
    ref = model.predict(film_png).probability
    results = {
        "uint8": model.predict(arr),
        "float": model.predict(arr / 255.0),
        "tensor": model.predict(torch.from_numpy(arr)),
        "pil": model.predict(Image.fromarray(arr)),
        "rgb": model.predict(np.repeat(arr[..., None], 3, axis=2)),  # grey RGB: luma = the grey level
        "bytes": model.predict(film_png.read_bytes()),
    }
    for kind, r in results.items():
        assert r.probability == ref, kind
    assert results["uint8"].file == "<array>" and results["bytes"].file == "<bytes>"
    assert model.predict(arr, name="mine").file == "mine"
    assert arr.flags.writeable and np.array_equal(arr, film())  # the caller's array is left as it was


@pytest.mark.parametrize(
    "bad, reason",
    [
        (film() / 255.0 * 2, r"<array>: float pixels must lie in \[0, 1\]"),
        (film().astype(np.int32), "<array>: pixels of type int32 are not supported"),
        (np.full(FILM_SHAPE, 128, np.uint8), "<array>: image is blank"),
        (np.zeros((4, 60), np.uint8), "<array>: image is 60x4 pixels, too small"),
        (np.zeros((2, 3, 30, 30), np.uint8), r"expected one grayscale image \(H, W\)"),
    ],
)
def test_predict_refuses_a_bad_array_in_one_line_naming_it(model, bad, reason) -> None:
    with pytest.raises(InvalidImageError, match=reason) as exc:
        model.predict(bad)
    assert "\n" not in str(exc.value)


def test_predict_refuses_what_is_not_a_film(model) -> None:
    with pytest.raises(TypeError, match="cannot read a dict"):
        model.predict({"file": "x.png"})


def test_predict_a_list_gives_a_list_in_input_order(model, tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"f{i}.png")
        Image.fromarray(film(seed=i, label=i % 2)).save(paths[-1])
    singles = [model.predict(p) for p in paths]
    assert model.predict(paths) == singles  # files: through predict_files, same numbers
    assert [r.file for r in model.predict([str(p) for p in paths])] == [str(p) for p in paths]
    mixed = model.predict([film(seed=0, label=0), paths[1], Image.fromarray(film(seed=2, label=0))])
    assert [r.file for r in mixed] == ["<array>[0]", str(paths[1]), "<image>[2]"]
    assert [r.probability for r in mixed] == [s.probability for s in singles[:3]]
    assert model.predict([]) == [] and model.predict([]).skipped == []


def test_a_bad_file_in_a_list_raises_naming_it_or_is_recorded_with_skip_bad(model, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(film()).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(InvalidImageError, match=re.escape(str(bad))):
        model.predict([good, bad])
    out = model.predict([good, bad], skip_bad=True)
    assert [r.file for r in out] == [str(good)]
    assert len(out.skipped) == 1 and out.skipped[0][0] == str(bad) and "not a recognised image" in out.skipped[0][1]
    mixed = model.predict([film(), np.zeros((30, 30), np.uint8)], skip_bad=True)  # arrays: recorded by name
    assert [r.file for r in mixed] == ["<array>[0]"] and mixed.skipped[0][0] == "<array>[1]"


def test_predict_from_a_dicom_file(model, tmp_path: Path) -> None:
    from test_io import dicom_bytes, make_dicom

    path = tmp_path / "film.dcm"
    path.write_bytes(dicom_bytes(make_dicom(film())))
    assert model.predict(path).probability == model.predict(film()).probability


# --------------------------------------------------------------------------- explain


def test_map_on_film_resamples_bilinearly_with_centres_aligned() -> None:
    """A 4x4 map whose left half is 1, onto 2x8: sample x at (x + 0.5) / 2 - 0.5, clamped (hand-computed)."""
    from pneumolens.films import map_on_film

    amap = np.zeros((4, 4), np.float32)
    amap[:, :2] = 1.0
    out = map_on_film(amap, (2, 8))
    assert out.shape == (2, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out, [[1, 1, 1, 0.75, 0.25, 0, 0, 0]] * 2, atol=1e-6)
    assert np.array_equal(map_on_film(amap, (4, 4)), amap)


def test_explain_gives_a_map_on_the_films_own_grid(model, film_png: Path) -> None:
    from pneumolens.explain import explain
    from pneumolens.films import map_on_film
    from pneumolens.io import load_image

    e = model.explain(film_png, method="gradcam")
    assert e.map.shape == FILM_SHAPE and e.map.dtype == np.float32
    assert e.film.shape == FILM_SHAPE and np.array_equal(e.film, film())
    assert e.input_map.shape == (32, 32)
    direct = explain(model.logit_module, load_image(film_png, 32)[None], "gradcam").maps[0]
    np.testing.assert_allclose(e.input_map, direct, atol=1e-6)
    np.testing.assert_allclose(e.map, map_on_film(direct, FILM_SHAPE), atol=1e-6)
    assert e.prediction == model.predict(film_png)
    assert e.method == "gradcam" and e.signed is False and e.params["method"] == "gradcam"
    assert model.explain(film(), method="gradcam").map.shape == FILM_SHAPE  # an array's grid: its own shape


def test_explain_a_list_and_the_sampling_methods(model, tmp_path: Path) -> None:
    films = [film(seed=1), film(seed=2, shape=(50, 40))]
    out = model.explain(films, method="occlusion", window=8, stride=8)
    assert [e.map.shape for e in out] == [FILM_SHAPE, (50, 40)] and out.skipped == []
    assert [e.file for e in out] == ["<array>[0]", "<array>[1]"] and all(e.signed for e in out)
    lime = model.explain(films[0], method="lime", n_samples=20, n_segments=8, seed=3)
    again = model.explain(films[0], method="lime", n_samples=20, n_segments=8, seed=3)
    assert np.array_equal(lime.map, again.map)  # seeded


def test_explain_shap_uses_the_background_stored_beside_the_checkpoint(tiny_checkpoint_path, tmp_path) -> None:
    import shutil

    import pneumolens
    from pneumolens.explain import save_background

    model_pt = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint_path, model_pt)
    blurred = pneumolens.load(model_pt, device="cpu").explain(film(), method="shap", n_samples=4)
    assert blurred.params["background_source"] == "fallback: blurred film"
    save_background(np.stack([film(seed=s, shape=(32, 32)) for s in range(4)]), tmp_path / "background.npy")
    stored = pneumolens.load(model_pt, device="cpu").explain(film(), method="shap", n_samples=4)
    assert stored.params["background_source"] == str(tmp_path / "background.npy")
    assert stored.params["background"] == "4 training images"


def test_explain_shap_prefers_the_films_stored_in_the_checkpoint(tiny_checkpoint_path, tmp_path) -> None:
    """One SHAP everywhere: the API explains against the same stored films as the CLI and the service."""
    import pneumolens
    from pneumolens.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint_path)
    ckpt.shap_background = np.stack([film(seed=s, shape=(32, 32)) for s in range(3)])
    path = save_checkpoint(ckpt, tmp_path / "model.pt")
    e = pneumolens.load(path, device="cpu").explain(film(), method="shap", n_samples=4)
    assert e.params["background_source"] == "3 training films stored with the model"
    assert e.params["background"] == "3 training images"


def test_explain_refuses_an_unknown_method_or_setting(model) -> None:
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        model.explain(film(), method="magic")
    with pytest.raises(ValueError, match="n_samples"):
        model.explain(film(), method="lime", n_samples=0)


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
def test_cuda_without_a_gpu_is_one_clear_error(tiny_checkpoint_path) -> None:
    import pneumolens
    from pneumolens.devices import resolve_device

    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^device cuda: .*torch.cuda.is_available\(\) is False\); use cpu or auto$"):
        pneumolens.load(tiny_checkpoint_path, device="cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
@pytest.mark.parametrize("command", ["predict", "explain", "evaluate", "serve"])
def test_device_cuda_without_a_gpu_is_exit_code_2_and_one_line(command, tiny_checkpoint_path, tmp_path, capsys):
    from pneumolens.cli import main

    argv = {
        "predict": ["predict", str(tmp_path / "none.png")],
        "explain": ["explain", str(tmp_path / "none.png"), "--out", str(tmp_path / "expl")],
        "evaluate": ["evaluate", "--out", str(tmp_path / "eval")],
        "serve": ["serve"],
    }[command]
    assert main([*argv, "-c" if command != "evaluate" else "--checkpoint", str(tiny_checkpoint_path),
                 "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pneumolens {command}: error: --device cuda: ")
    assert not (tmp_path / "expl").exists() and not (tmp_path / "eval").exists()


# --------------------------------------------------------------------------- import cost, the README


@pytest.mark.slow  # real processes / whole pipelines: runs in `make test`, not in test-fast
def test_import_pneumolens_stays_cheap_and_exports_the_api() -> None:
    code = ("import sys, pneumolens; print('torch' in sys.modules); "
            "from pneumolens import load, Model, Prediction, Explanation, Results; print(load.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "pneumolens.api"]


def python_block(readme: str) -> str:
    """The first ```python block of the README's '## Python' section."""
    section = readme.split("\n## Python", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README.md: no ```python block in the '## Python' section"
    return match.group(1)


FILE_NAME = re.compile(r"""(["'])([^"'\s]+\.(?:jpeg|jpg|png|dcm))\1""")


def synthetic_file(name: str, folder: Path) -> Path:
    """A synthetic film saved under ``folder`` in the format ``name``'s suffix says."""
    path = folder / Path(name).name
    arr = film(seed=7, shape=(120, 150))
    if path.suffix == ".dcm":
        from test_io import dicom_bytes, make_dicom

        path.write_bytes(dicom_bytes(make_dicom(arr)))
    else:
        Image.fromarray(arr).save(path)
    return path


def test_the_readme_python_snippet_runs_as_written(tmp_path: Path, capsys) -> None:
    """Issue 18: the README's Python section, run as written, with its film names pointing at synthetic films."""
    code = python_block((REPO / "README.md").read_text(encoding="utf-8"))
    names = {m.group(2) for m in FILE_NAME.finditer(code) if "/model" not in m.group(2)}
    assert names, "the README snippet names no film file"
    for name in sorted(names, key=len, reverse=True):
        code = code.replace(f'"{name}"', repr(str(synthetic_file(name, tmp_path))))
        code = code.replace(f"'{name}'", repr(str(synthetic_file(name, tmp_path))))
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102 - our own README


def test_the_three_lines_of_the_issue(tmp_path: Path) -> None:
    """The issue's lines, verbatim but for the films' paths, on the shipped model."""
    import pneumolens

    dcm, jpeg = synthetic_file("film.dcm", tmp_path), synthetic_file("film.jpeg", tmp_path)
    model = pneumolens.load()
    r = model.predict(str(dcm))
    assert 0.0 <= r.probability <= 1.0 and r.label in ("NORMAL", "PNEUMONIA")
    assert r.label == ("PNEUMONIA" if r.probability >= model.threshold else "NORMAL")
    e = model.explain(str(jpeg), method="gradcam")
    assert e.map.shape == (120, 150) and e.map.dtype == np.float32 and math.isfinite(float(e.map.sum()))
    assert isinstance(model.predict([str(dcm), str(jpeg)]), list)
