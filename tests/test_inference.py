"""Predictor: temperature and threshold from the checkpoint, files good and bad, batching, fast path."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_folding import randomize_bn

from pneumolens.checkpoint import Checkpoint, save_checkpoint
from pneumolens.errors import ConfigError, InvalidImageError
from pneumolens.backends import FastModel
from pneumolens.inference import Predictor, to_input
from pneumolens.io import load_image, resize_square
from pneumolens.model import CnnLstm, ModelConfig

TINY = ModelConfig(
    input_size=32, channels=(4, 8, 8), conv_dropout=(0.0, 0.0, 0.0), lstm_units=(8, 6), dense_units=(8, 5)
)


def film(seed: int, shape: tuple[int, int] = (40, 48)) -> np.ndarray:
    """A uint8 image whose brightness and texture vary with the seed (so do the model's outputs)."""
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 1, shape[0])[:, None]
    img = 255 * (rng.uniform(0.1, 0.6) + rng.uniform(-0.4, 0.4) * yy) + rng.normal(0, 25, shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def arrays(n: int, seed: int = 0) -> np.ndarray:
    return np.stack([resize_square(film(seed + i), 32) for i in range(n)]) if n else np.zeros((0, 32, 32), np.uint8)


@pytest.fixture(scope="module")
def ckpt() -> Checkpoint:
    torch.manual_seed(0)
    model = randomize_bn(CnnLstm(TINY), seed=0, x=to_input(arrays(16, seed=50)))
    return Checkpoint(model=model, config=TINY, threshold=0.5, temperature=2.5, bias=0.3)


def with_threshold(ckpt: Checkpoint, threshold: float) -> Checkpoint:
    c = copy.copy(ckpt)
    c.threshold = threshold
    return c


def plain_logits(model: CnnLstm, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(to_input(images)).numpy()


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """Seven JPEG films (bad ones are added per test)."""
    paths = []
    for i in range(7):
        p = tmp_path / f"film{i}.jpeg"
        Image.fromarray(film(100 + i)).save(p, quality=95)
        paths.append(p)
    return paths


def test_probabilities_apply_the_checkpoint_temperature_and_bias(ckpt):
    images = arrays(10)
    z = plain_logits(ckpt.model, images)
    assert z.std() > 1e-2  # outputs vary: the comparison means something
    for fast in (False, True):
        p = Predictor(ckpt, fast=fast).probabilities(images)
        assert p.dtype == np.float64 and p.shape == (10,)
        np.testing.assert_allclose(p, 1 / (1 + np.exp(-(z / 2.5 + 0.3))), atol=1e-5)
        assert not np.allclose(p, 1 / (1 + np.exp(-z)), atol=1e-3)  # temperature 1 would be wrong
        assert not np.allclose(p, 1 / (1 + np.exp(-z / 2.5)), atol=1e-3)  # and so would bias 0


def test_labels_use_the_checkpoint_threshold_and_an_override(ckpt):
    images = arrays(12)
    probs = Predictor(ckpt).probabilities(images)
    t = float(np.median(probs))
    predictor = Predictor(with_threshold(ckpt, t))
    assert predictor.threshold == t
    labels = [p.label for p in predictor.predict_arrays(images)]
    assert labels == ["PNEUMONIA" if p >= t else "NORMAL" for p in probs]
    assert 0 < labels.count("PNEUMONIA") < 12
    assert all(p.threshold == t for p in predictor.predict_arrays(images))
    override = Predictor(with_threshold(ckpt, t), threshold=1.0)
    assert override.threshold == 1.0 and override.label_of(0.999) == "NORMAL" and override.label_of(1.0) == "PNEUMONIA"


def test_predict_arrays_keeps_names_and_order(ckpt):
    images = arrays(5)
    preds = Predictor(ckpt).predict_arrays(images, ["a", "b", "c", "d", "e"])
    assert [p.file for p in preds] == ["a", "b", "c", "d", "e"]
    probs = Predictor(ckpt).probabilities(images)
    assert [p.probability for p in preds] == pytest.approx(list(probs))
    assert preds[0].to_dict() == {
        "file": "a",
        "probability": preds[0].probability,
        "label": preds[0].label,
        "threshold": 0.5,
        "ood_score": None,  # this checkpoint has no out-of-distribution guard
        "in_distribution": None,
    }
    with pytest.raises(ValueError, match="3 names for 5 images"):
        Predictor(ckpt).predict_arrays(images, ["a", "b", "c"])


@pytest.mark.parametrize("fast", [False, True])
def test_batch_results_equal_single_image_results(ckpt, fast):
    images = arrays(11)
    predictor = Predictor(ckpt, batch_size=4, fast=fast)
    batched = predictor.probabilities(images)
    single = np.array([predictor.probabilities(img)[0] for img in images])  # (S, S) arrays, one at a time
    np.testing.assert_allclose(batched, single, atol=1e-6)
    np.testing.assert_allclose(Predictor(ckpt, batch_size=64, fast=fast).probabilities(images), batched, atol=1e-6)


def test_fast_path_matches_plain_model_and_leaves_it_untouched(ckpt):
    images = arrays(9)
    fast = Predictor(ckpt)
    plain = Predictor(ckpt, fast=False)
    np.testing.assert_allclose(fast.logits(images), plain_logits(ckpt.model, images), atol=1e-4)
    assert fast.fast_model is not None and plain.fast_model is None
    # explainers need the original modules and gradients through them
    assert isinstance(fast.model, CnnLstm) and isinstance(fast.model.features.block3.bn, torch.nn.BatchNorm2d)
    x = to_input(images[:2]).requires_grad_(True)
    fast.model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_reset_fast_rebuilds_from_changed_weights(ckpt):
    predictor = Predictor(Checkpoint(model=copy.deepcopy(ckpt.model), config=TINY))
    images = arrays(3)
    before = predictor.logits(images)
    with torch.no_grad():
        predictor.model.head.out.bias += 1.0
    predictor.reset_fast()
    np.testing.assert_allclose(predictor.logits(images), before + 1.0, atol=1e-4)


@pytest.fixture(params=[1, 3], ids=["decode-ahead", "3-workers"])
def workers(request, monkeypatch) -> int:
    """predict_files' two schedules: one thread decoding ahead, or workers that decode and predict."""
    monkeypatch.setattr(FastModel, "workers", property(lambda self: request.param))
    return request.param


def test_predict_files_matches_predict_arrays(ckpt, files, workers):
    predictor = Predictor(ckpt, batch_size=3)
    preds, bad = predictor.predict_files(files, progress=False)
    assert bad == [] and [p.file for p in preds] == [str(f) for f in files]
    expected = predictor.predict_arrays(np.stack([load_image(f, 32) for f in files]))
    assert [p.probability for p in preds] == pytest.approx([p.probability for p in expected], abs=1e-9)
    bytes_pred = predictor.predict_bytes(files[4].read_bytes(), name="upload.jpeg")
    assert bytes_pred.file == "upload.jpeg" and bytes_pred.probability == pytest.approx(preds[4].probability, abs=1e-9)


def _add_bad_files(tmp_path: Path, files: list[Path]) -> tuple[list[Path], list[Path]]:
    empty = tmp_path / "empty.jpeg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    missing = tmp_path / "missing.jpeg"
    mixed = [files[0], empty, *files[1:4], text, *files[4:], missing]
    return mixed, [empty, text, missing]


def test_predict_files_skip_bad_keeps_good_files_and_reports_each_bad_one(ckpt, files, tmp_path, workers):
    mixed, bad_files = _add_bad_files(tmp_path, files)
    predictor = Predictor(ckpt, batch_size=3)  # bad files land in several batches
    preds, bad = predictor.predict_files(mixed, skip_bad=True, progress=False)
    assert [p.file for p in preds] == [str(f) for f in files]
    assert [b[0] for b in bad] == [str(f) for f in bad_files]
    assert "empty" in bad[0][1] and str(bad_files[0]) in bad[0][1]
    assert "not a recognised image" in bad[1][1]
    good_only, _ = predictor.predict_files(files, progress=False)
    assert [p.probability for p in preds] == pytest.approx([p.probability for p in good_only], abs=1e-9)


def test_predict_files_without_skip_bad_raises_on_the_first_bad_file(ckpt, files, tmp_path, workers):
    mixed, bad_files = _add_bad_files(tmp_path, files)
    with pytest.raises(InvalidImageError, match="empty.jpeg: file is empty"):
        Predictor(ckpt, batch_size=3).predict_files(mixed, progress=False)
    with pytest.raises(InvalidImageError, match="missing.jpeg"):
        Predictor(ckpt, batch_size=3).predict_files([*files, bad_files[2]], progress=False)


def test_predict_files_with_no_files(ckpt):
    assert Predictor(ckpt).predict_files([], progress=False) == ([], [])
    assert Predictor(ckpt).logits(np.zeros((0, 32, 32), np.uint8)).shape == (0,)


def test_bad_arguments_are_clear_errors(ckpt):
    with pytest.raises(ConfigError, match="threshold must be between 0 and 1"):
        Predictor(ckpt, threshold=1.5)
    with pytest.raises(ConfigError, match="batch_size"):
        Predictor(ckpt, batch_size=0)
    with pytest.raises(ConfigError, match="fast must be"):
        Predictor(ckpt, fast="tensorrt")
    with pytest.raises(ValueError, match=r"\(N, 32, 32\)"):
        Predictor(ckpt).probabilities(np.zeros((2, 64, 64), np.uint8))


def test_checkpoint_file_round_trip_keeps_calibration_and_threshold(ckpt, tmp_path):
    path = save_checkpoint(with_threshold(ckpt, 0.3), tmp_path / "model.pt")
    predictor = Predictor(path)
    assert predictor.threshold == 0.3 and (predictor.checkpoint.temperature, predictor.checkpoint.bias) == (2.5, 0.3)
    images = arrays(4)
    np.testing.assert_allclose(predictor.probabilities(images), Predictor(ckpt).probabilities(images), atol=1e-6)


def test_a_checkpoint_written_before_platt_scaling_loads_with_no_bias(ckpt, tmp_path):
    path = save_checkpoint(ckpt, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    del payload["bias"]
    torch.save(payload, path)
    predictor = Predictor(path)
    assert predictor.checkpoint.bias == 0.0
    images = arrays(4)
    z = plain_logits(ckpt.model, images)
    np.testing.assert_allclose(predictor.probabilities(images), 1 / (1 + np.exp(-z / 2.5)), atol=1e-5)


def test_to_input_gives_pytorchs_values_for_arrays_and_tensors():
    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    expected = torch.as_tensor(x)[:, None].float().div_(255.0)
    for given in (x, torch.as_tensor(x)):
        got = to_input(given)
        assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert torch.equal(to_input(x[0]), expected[:1])
    assert torch.equal(to_input(expected), expected)  # float input passes through
