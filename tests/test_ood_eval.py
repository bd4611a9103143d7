"""ood-eval: the AUROC by hand, the sets it builds, the command end to end, and checkpoints carrying a guard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pneumolens.checkpoint import load_checkpoint, save_checkpoint
from pneumolens.cli import main
from pneumolens.errors import CheckpointError
from pneumolens.ood_eval import SET_DESCRIPTIONS, auroc, corrupted_sets, synthetic_sets


def test_auroc_by_hand():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    # outside 1.5 beats inside 1 but not 2: pairs won 1 of 2
    assert auroc(np.array([1.0, 2.0]), np.array([1.5])) == 0.5
    # a tie counts half: (1 + 0.5) / 2
    assert auroc(np.array([0.0, 1.0]), np.array([1.0])) == 0.75


def test_sets_have_the_model_input_shape_and_the_corruptions_do_what_they_say():
    sets = synthetic_sets(32)
    assert set(sets) == {"constant", "noise", "gradients"}
    for name, x in sets.items():
        assert x.dtype == np.uint8 and x.shape[1:] == (32, 32) and len(x) > 10, name
    assert {int(v) for v in sets["constant"][:, 0, 0]} >= {0, 255}
    film = np.tile(np.arange(64, dtype=np.uint8)[:, None] * 4, (1, 64))  # brighter towards the bottom
    c = corrupted_sets([film], 64)
    assert set(c) <= set(SET_DESCRIPTIONS)
    np.testing.assert_array_equal(c["inverted"][0], 255 - film)
    assert c["half_black"][0][32:].max() == 0 and c["half_black"][0][:32].max() > 0
    np.testing.assert_array_equal(c["rotated_90"][0], np.rot90(film))


@pytest.mark.slow
def test_ood_eval_fits_a_guard_writes_the_report_and_saves_it_into_the_checkpoint(
    tiny_checkpoint_path, synthetic_dataset_factory, tmp_path, capsys
):
    root = synthetic_dataset_factory(counts={"train": (40, 40), "val": (4, 4)}, shape=(64, 64))
    out, saved = tmp_path / "ood", tmp_path / "with-guard.pt"
    code = main(["ood-eval", "--checkpoint", str(tiny_checkpoint_path), "--data", str(root), "--out", str(out),
                 "--n", "5", "--fit-into", str(saved), "--no-progress"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["in_distribution"]["flagged"] <= 0.01
    assert metrics["guard"]["fitted_here"] is False  # fitted by the command and passed in
    assert {"constant", "noise", "inverted", "ct_mr_us"} <= set(metrics["sets"])
    assert metrics["sets"]["constant"]["auroc"] == 1.0  # flat images are the easiest case
    assert (out / "ood.png").stat().st_size > 10_000 and "| constant |" in (out / "report.md").read_text()
    ckpt = load_checkpoint(saved)
    assert ckpt.ood is not None and ckpt.ood.threshold == pytest.approx(metrics["threshold"])
    assert ckpt.info()["ood"]["threshold"] == pytest.approx(metrics["threshold"])


def _resaved(src, tmp_path, **changes):
    payload = torch.load(src, weights_only=True)
    payload.update(changes)
    path = tmp_path / "changed.pt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"threshold": float("nan")}, "threshold nan is not a probability"),
        ({"temperature": float("inf")}, "temperature inf is not a finite positive number"),
        ({"temperature": 0.0}, "temperature 0.0 is not a finite positive number"),
        ({"bias": float("nan")}, "calibration bias nan is not a finite number"),
    ],
)
def test_non_finite_threshold_or_temperature_is_refused(tiny_checkpoint_path, tmp_path, changes, message):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(_resaved(tiny_checkpoint_path, tmp_path, **changes))


def test_nan_weights_are_refused_at_load_with_the_tensor_named(tiny_checkpoint_path, tmp_path, capsys):
    payload = torch.load(tiny_checkpoint_path, weights_only=True)
    state = dict(payload["state_dict"])
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    path = _resaved(tiny_checkpoint_path, tmp_path, state_dict=state)
    with pytest.raises(CheckpointError, match=f"NaN or infinite values \\({name}"):
        load_checkpoint(path)
    assert main(["info", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or infinite" in err[0]


def test_a_checkpoint_round_trips_its_guard(tiny_checkpoint_path, tmp_path):
    from pneumolens.ood import OodGuard

    rng = np.random.default_rng(0)
    films = rng.integers(60, 200, (60, 32, 32)).astype(np.uint8)
    ckpt = load_checkpoint(tiny_checkpoint_path)
    ckpt.ood = OodGuard.fit(films[:40], films[40:])
    again = load_checkpoint(save_checkpoint(ckpt, tmp_path / "g.pt"))
    np.testing.assert_allclose(again.ood.score(films[:3]), ckpt.ood.score(films[:3]))
