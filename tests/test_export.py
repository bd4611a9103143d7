"""``pneumolens export`` (issue 18 item 3): one ONNX or TorchScript file returning calibrated probabilities.

The ONNX file is run by ONNX Runtime in a separate Python process that imports neither PneumoLens
nor torch, and must give ``predict``'s probabilities within 1e-5: on synthetic films here, and on
validation films of the real dataset (skipped when it is absent).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_xray
from PIL import Image

from pneumolens.cli import main
from pneumolens.onnx_export import onnx_available

#: torch 2.13 marks torch.jit.load deprecated; loading a TorchScript file is what its users do.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:DeprecationWarning")

needs_onnx = pytest.mark.skipif(
    not onnx_available(), reason="onnx / onnxruntime not installed (pip install pneumolens[fast])"
)

#: Largest difference accepted between the exported file's probabilities and ``predict``'s (the goal of issue 18).
TOL = 1e-5

#: Runs an ONNX file on an .npy batch with ONNX Runtime alone; prints what it imported of pneumolens and torch.
ORT_RUNNER = """\
import sys
import numpy as np
import onnxruntime as ort
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
(p,) = sess.run(None, {sess.get_inputs()[0].name: np.load(sys.argv[2])})
np.save(sys.argv[3], p)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("pneumolens", "torch")))
"""


def run_onnx_alone(model_path: Path, x: np.ndarray, folder: Path) -> np.ndarray:
    """``model_path`` on ``x`` in a fresh interpreter that imports only NumPy and ONNX Runtime."""
    np.save(folder / "x.npy", x)
    done = subprocess.run(
        [sys.executable, "-c", ORT_RUNNER, str(model_path), str(folder / "x.npy"), str(folder / "p.npy")],
        capture_output=True, text=True, cwd=folder, check=True,
    )
    assert done.stdout.strip() == "[]", done.stdout  # no pneumolens, no torch in the run path
    return np.load(folder / "p.npy")


def films(folder: Path, n: int, shape: tuple[int, int] = (60, 90)) -> list[Path]:
    """``n`` synthetic PNG films, both classes, under ``folder``."""
    rng = np.random.default_rng(5)
    paths = []
    for i in range(n):
        paths.append(folder / f"film{i}.png")
        Image.fromarray(synthetic_xray(i % 2, rng, shape)).save(paths[-1])
    return paths


def documented_input(paths: list[Path], size: int) -> np.ndarray:
    """The input the export documents: 8-bit grayscale resized to S x S, / 255, float32 (B, 1, S, S)."""
    from pneumolens.io import load_image

    return np.stack([load_image(p, size) for p in paths])[:, None].astype(np.float32) / np.float32(255)


@pytest.fixture(scope="module")
def hot_checkpoint(tiny_checkpoint_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with temperature 3, bias 0.6 and threshold 0.52 (a missing calibration would show)."""
    from pneumolens.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint_path)
    ckpt.temperature, ckpt.bias, ckpt.threshold = 3.0, 0.6, 0.52
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("hot") / "model.pt")


@needs_onnx
def test_onnx_file_in_onnx_runtime_alone_equals_predict(hot_checkpoint: Path, tmp_path: Path, capsys) -> None:
    import pneumolens

    out = tmp_path / "model.onnx"
    assert main(["export", "--format", "onnx", "-c", str(hot_checkpoint), "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith(f"wrote {out} (ONNX)")
    assert "'image' -> 'probability' float32 (B, 1, 32, 32) in [0, 1] -> float32 (B,) calibrated P(PNEUMONIA)" in line
    assert line.endswith("PNEUMONIA when p >= 0.52")
    paths = films(tmp_path, 7)
    model = pneumolens.load(hot_checkpoint, device="cpu")
    expected = np.array([r.probability for r in model.predict(paths)])
    assert expected.std() > 1e-3  # the outputs vary with the film: a meaningful comparison
    x = documented_input(paths, 32)
    for batch in (x[:1], x):  # a dynamic batch axis
        got = run_onnx_alone(out, batch, tmp_path)
        assert got.shape == (len(batch),) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected[: len(batch)], atol=TOL, rtol=0)
    with torch.no_grad():  # and not the raw sigmoid, nor the temperature alone: the whole calibration is inside
        z = model.logit_module(torch.from_numpy(x))
    for partial in (torch.sigmoid(z), torch.sigmoid(z / 3.0)):
        assert np.abs(partial.numpy() - expected).max() > 100 * TOL


@needs_onnx
def test_onnx_file_carries_its_specification_and_threshold(hot_checkpoint: Path, tmp_path: Path) -> None:
    import onnx

    from pneumolens.export import export_model, read_metadata

    result = export_model(hot_checkpoint, "onnx", tmp_path / "m.onnx")
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["probability"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 32, 32]
    meta = read_metadata(result.path)
    assert float(meta["threshold"]) == 0.52 and (float(meta["temperature"]), float(meta["bias"])) == (3.0, 0.6)
    assert json.loads(meta["class_names"]) == ["NORMAL", "PNEUMONIA"]
    assert meta["input"].startswith("float32 (B, 1, 32, 32) in [0, 1]") and "divided by 255" in meta["input"]
    assert "float32 (B, 1, 32, 32) in [0, 1]" in proto.doc_string and "threshold 0.52" in proto.doc_string


def test_torchscript_file_loads_with_torch_alone_and_equals_predict(hot_checkpoint: Path, tmp_path: Path, capsys):
    import pneumolens
    from pneumolens.export import read_metadata

    out = tmp_path / "model.ts"
    assert main(["export", "--format", "torchscript", "-c", str(hot_checkpoint), "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out} (TorchScript)") and line.endswith("PNEUMONIA when p >= 0.52")
    paths = films(tmp_path, 5)
    expected = np.array([r.probability for r in pneumolens.load(hot_checkpoint, device="cpu").predict(paths)])
    module = torch.jit.load(str(out))
    x = torch.from_numpy(documented_input(paths, 32))
    with torch.no_grad():
        for batch in (x[:1], x):
            np.testing.assert_allclose(module(batch).numpy(), expected[: len(batch)], atol=TOL, rtol=0)
    assert float(module.threshold) == pytest.approx(0.52) and float(module.temperature) == 3.0
    assert float(module.bias) == pytest.approx(0.6)
    assert float(read_metadata(out)["threshold"]) == 0.52


def test_model_export_picks_the_format_from_the_suffix(hot_checkpoint: Path, tmp_path: Path) -> None:
    import pneumolens

    model = pneumolens.load(hot_checkpoint, device="cpu", threshold=0.6)
    result = model.export(tmp_path / "m.pt")
    assert result.format == "torchscript" and result.threshold == 0.6  # the model's own threshold
    assert float(torch.jit.load(str(result.path)).threshold) == pytest.approx(0.6)


def test_export_refuses_bad_options_in_one_line(hot_checkpoint: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "taken.onnx"
    folder.mkdir()
    assert main(["export", "--format", "onnx", "-c", str(hot_checkpoint), "--out", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("pneumolens export: error: --out") and "is a folder" in err
    assert main(["export", "--format", "onnx", "-c", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err.startswith("pneumolens export: error: ")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(SystemExit) as exc:
        main(["export", "--format", "tflite", "--out", str(tmp_path / "m.tflite")])
    assert exc.value.code == 2


def test_export_help_documents_the_input_and_output(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "float32 (B, 1, S, S) in [0, 1]" in text and "divided by 255" in text
    assert "calibrated P(PNEUMONIA) = sigmoid(logit / temperature + bias)" in text and "threshold" in text


@pytest.mark.slow  # real processes / whole pipelines: runs in `make test`, not in test-fast
@pytest.mark.integration
@needs_onnx
def test_exports_of_the_shipped_model_equal_predict_on_validation_films(real_data_root: Path, tmp_path: Path):
    """The goal of issue 18: `pneumolens export --format onnx` output equals `predict` within 1e-5."""
    import pneumolens
    from pneumolens.evaluate import split_records

    model = pneumolens.load(device="cpu")
    records = split_records(real_data_root, "validation", model.checkpoint.provenance)
    paths = [Path(r.path) for r in records[::max(1, len(records) // 48)][:48]]  # both classes, spread out
    predictions, bad = model.predictor.predict_files(paths, progress=False)  # what `pneumolens predict` runs
    assert bad == [] and len(predictions) == len(paths)
    expected = np.array([p.probability for p in predictions])
    x = documented_input(paths, model.input_size)
    assert main(["export", "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    np.testing.assert_allclose(run_onnx_alone(tmp_path / "m.onnx", x, tmp_path), expected, atol=TOL, rtol=0)
    assert main(["export", "--format", "torchscript", "--out", str(tmp_path / "m.ts")]) == 0
    with torch.no_grad():
        got = torch.jit.load(str(tmp_path / "m.ts"))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible (torch.cuda.is_available() is False)")
def test_torchscript_file_and_the_api_on_cuda_equal_the_cpu(hot_checkpoint: Path, tmp_path: Path) -> None:
    """Scripted, not traced: the file runs on a GPU too; and ``load(device="cuda")`` gives the CPU's numbers."""
    import pneumolens

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # CPU-exact float32
    paths = films(tmp_path, 6)
    cpu = pneumolens.load(hot_checkpoint, device="cpu")
    gpu = pneumolens.load(hot_checkpoint, device="cuda")
    expected = np.array([r.probability for r in cpu.predict(paths)])
    np.testing.assert_allclose([r.probability for r in gpu.predict(paths)], expected, atol=TOL, rtol=0)
    x = torch.from_numpy(documented_input(paths, 32))
    assert gpu(x).device.type == "cpu"  # comes back where the input was
    np.testing.assert_allclose(gpu(x.cuda()).cpu().numpy(), expected, atol=TOL, rtol=0)
    module = torch.jit.load(str(cpu.export(tmp_path / "m.ts").path), map_location="cuda")
    with torch.no_grad():
        np.testing.assert_allclose(module(x.cuda()).cpu().numpy(), expected, atol=TOL, rtol=0)
    e = gpu.explain(paths[0], method="gradcam")
    np.testing.assert_allclose(e.map, cpu.explain(paths[0], method="gradcam").map, atol=1e-4)
