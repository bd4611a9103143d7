"""Cross-validation: patient-level folds, the per-fold training and scoring, the summary, resume, the CLI."""

from __future__ import annotations

import csv
import json
import math
import signal
import statistics
import sys
from pathlib import Path

import pytest
from conftest import tiny_model_config
from lightning.pytorch.callbacks import Callback

from pneumolens.cli import main
from pneumolens.config import TrainConfig, load_config
from pneumolens.cv import cv_table, fold_marker_flip_rate, parse_fold_ids, run_cv, summarize
from pneumolens.data import Record, find_split, fold_split, patient_folds
from pneumolens.datamodule import PneumoniaDataModule
from pneumolens.errors import ConfigError, DatasetError


def _records(normal: int, pneumonia: int, films: tuple[int, int] = (1, 2)) -> list[Record]:
    """``normal`` NORMAL patients of films[0] films each, ``pneumonia`` PNEUMONIA patients of films[1]."""
    out = []
    for label, (n, per) in enumerate(((normal, films[0]), (pneumonia, films[1]))):
        for p in range(n):
            pid = f"{'n' if label == 0 else 'p'}{p}"
            out += [Record(Path(f"{pid}_{f}.jpeg"), label, pid, "x", "train") for f in range(per)]
    return out


# --- the fold assignment -------------------------------------------------------------------------
def test_folds_keep_patients_whole_and_balance_each_class() -> None:
    """6 NORMAL patients of 1 film, 9 PNEUMONIA of 2, K=3: each fold 2 NORMAL films and 6 PNEUMONIA films."""
    records = _records(6, 9)
    fold_of = patient_folds(records, 3, seed=4)
    assert sorted(set(fold_of)) == [0, 1, 2]
    by_patient: dict[str, set[int]] = {}
    for r, f in zip(records, fold_of):
        by_patient.setdefault(r.patient_id, set()).add(f)
    assert all(len(s) == 1 for s in by_patient.values())  # every patient in exactly one fold
    for k in range(3):
        labels = [r.label for r, f in zip(records, fold_of) if f == k]
        assert (labels.count(0), labels.count(1)) == (2, 6)


def test_folds_are_deterministic_by_seed_and_differ_across_seeds() -> None:
    records = _records(20, 30)
    assert patient_folds(records, 5, seed=1) == patient_folds(records, 5, seed=1)
    assert patient_folds(records, 5, seed=1) != patient_folds(records, 5, seed=2)


def test_fold_split_validates_on_exactly_one_fold() -> None:
    records = _records(6, 9)
    fold_of = patient_folds(records, 3, seed=0)
    seen = []
    for k in range(3):
        train, val = fold_split(records, 3, k, seed=0)
        assert val == [r for r, f in zip(records, fold_of) if f == k]
        assert set(train) | set(val) == set(records) and not set(train) & set(val)
        seen += val
    assert sorted(seen, key=str) == sorted(records, key=str)  # every record validated once


def test_too_few_patients_or_folds_are_clear_errors() -> None:
    with pytest.raises(DatasetError, match="NORMAL has only 2 patients"):
        patient_folds(_records(2, 9), 3)
    with pytest.raises(ValueError, match="at least 2 folds"):
        patient_folds(_records(6, 9), 1)
    with pytest.raises(ValueError, match="fold must be in"):
        fold_split(_records(6, 9), 3, 3)


def test_config_checks_folds_and_fold() -> None:
    assert (TrainConfig().folds, TrainConfig().fold) == (0, 0)
    TrainConfig(folds=5, fold=4)
    with pytest.raises(ConfigError, match="folds"):
        TrainConfig(folds=1)
    with pytest.raises(ConfigError, match="fold must be in"):
        TrainConfig(folds=3, fold=3)
    with pytest.raises(ConfigError, match="fold must be in"):
        TrainConfig(fold=1)  # a fold without folds


def test_datamodule_validates_on_the_configs_fold(synthetic_dataset: Path) -> None:
    cfg = TrainConfig(model=tiny_model_config(), folds=3, fold=1, split_seed=2)
    dm = PneumoniaDataModule.from_config(cfg, synthetic_dataset)
    dm.setup("fit")
    train, val = fold_split(find_split(synthetic_dataset, "train"), 3, 1, seed=2)
    assert dm.val_records == val and dm.train_records == train
    plain = PneumoniaDataModule.from_config(TrainConfig(model=tiny_model_config()), synthetic_dataset)
    plain.setup("fit")
    assert len(plain.val_records) < len(val)  # the 10 % split, not a third


# --- the summary, from hand-made folds -------------------------------------------------------------
def _fake_fold(out: Path, k: int, auc: float, sens: float, spec: float, flip: float | None, oof: list[tuple]) -> None:
    folder = out / f"fold-{k}"
    folder.mkdir(parents=True)
    fold = {"fold": k, "n_val": len(oof), "n_pos": sum(y for _, y, _ in oof), "n_neg": sum(1 - y for _, y, _ in oof),
            "roc_auc": auc, "sensitivity": sens, "specificity": spec, "accuracy": 0.5, "threshold": 0.5,
            "marker_flip_rate": flip, "epochs_run": 1, "wall_s": 60.0}
    (folder / "fold.json").write_text(json.dumps(fold))
    with (folder / "oof.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "patient", "label", "fold", "probability"])
        for name, y, p in oof:
            w.writerow([name, name, y, k, p])


def _fake_cv(out: Path, flips: tuple) -> Path:
    out.mkdir(parents=True)
    cfg = TrainConfig(folds=3).to_dict()
    (out / "cv_config.json").write_text(json.dumps({"folds": 3, "preset": "x", "label": out.name, "config": cfg}))
    _fake_fold(out, 0, 0.9, 0.8, 0.6, flips[0], [("a", 0, 0.1), ("b", 1, 0.7)])
    _fake_fold(out, 1, 0.8, 0.9, 0.7, flips[1], [("c", 0, 0.2), ("d", 1, 0.6)])
    _fake_fold(out, 2, 0.7, 1.0, 0.8, flips[2], [("e", 0, 0.65), ("f", 1, 0.9)])
    return out


def test_summary_gives_mean_and_sample_sd_and_pools_the_oof(tmp_path: Path) -> None:
    s = summarize(_fake_cv(tmp_path / "lever", (0.01, 0.02, 0.03)))
    assert s["done"] == [0, 1, 2]
    auc = s["mean_sd"]["roc_auc"]
    assert auc["mean"] == pytest.approx(0.8) and auc["sd"] == pytest.approx(0.1)  # stdev of .9 .8 .7
    assert s["mean_sd"]["marker_flip_rate"]["mean"] == pytest.approx(0.02)
    po = s["pooled_oof"]
    # pooled: negatives .1 .2 .65, positives .6 .7 .9 -> 8 of 9 pairs ranked right
    assert po["n"] == 6 and po["roc_auc"] == pytest.approx(8 / 9)
    # Youden: between .2 and .6 (all positives, 2 of 3 negatives) -> J = 2/3, threshold 0.4
    assert po["threshold"] == pytest.approx(0.4)
    assert po["sensitivity"] == 1.0 and po["specificity"] == pytest.approx(2 / 3)
    rows = list(csv.DictReader((tmp_path / "lever" / "oof.csv").open()))
    assert [r["file"] for r in rows] == list("abcdef") and [r["fold"] for r in rows] == list("001122")
    md = (tmp_path / "lever" / "cv.md").read_text()
    assert "| mean ± sd | | 0.800 ± 0.100 |" in md


def test_missing_flip_rates_read_na_and_the_table_has_one_row_per_folder(tmp_path: Path) -> None:
    a = _fake_cv(tmp_path / "seed-recipe", (None, None, None))
    b = _fake_cv(tmp_path / "robust-recipe", (0.01, 0.02, 0.03))
    summarize(a), summarize(b)
    table = cv_table([a, b]).splitlines()
    assert len(table) == 4 and table[2].startswith("| seed-recipe | 3/3 |") and table[3].startswith("| robust-recipe")
    assert "| n/a |" in table[2] and "0.020 ± 0.010" in table[3]
    with pytest.raises(ConfigError, match="no cross-validation summary"):
        cv_table([tmp_path / "nothing"])


def test_the_flip_rate_hook_reads_na_without_the_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    monkeypatch.setitem(sys.modules, "pneumolens.audit", None)  # import now raises ImportError
    films, labels = np.zeros((2, 8, 8), np.uint8), np.array([0, 1])
    assert fold_marker_flip_rate(lambda x: np.zeros(len(x)), films, labels, 0.5) is None


def test_fold_ids_parse() -> None:
    assert parse_fold_ids("0,2, 4") == [0, 2, 4] and parse_fold_ids(None) is None
    with pytest.raises(ConfigError, match="fold-ids"):
        parse_fold_ids("0-2")


# --- end to end on synthetic films -----------------------------------------------------------------
def _cfg(**over) -> TrainConfig:
    """The debug recipe on the tiny model (32 px), one epoch."""
    return load_config("debug", overrides={"model": tiny_model_config().to_dict(), "max_epochs": 1, **over})


class _InterruptAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ANN001
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_cv_end_to_end_resume_and_recipe_guard(synthetic_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    lines: list[str] = []
    kw = dict(folds=3, preset="debug", progress=False, report=lines.append)
    # fold 0 interrupted mid-epoch (Ctrl-C): a checkpoint, no fold.json
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            run_cv(_cfg(batch_size=8), synthetic_dataset, out, fold_ids=[0], extra_callbacks=[_InterruptAt(2)], **kw)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert (out / "fold-0" / "checkpoints" / "interrupted.ckpt").exists()
    assert not (out / "fold-0" / "fold.json").exists()
    with pytest.raises(ConfigError, match="--resume"):
        run_cv(_cfg(batch_size=8), synthetic_dataset, out, **kw)
    summary = run_cv(_cfg(batch_size=8), synthetic_dataset, out, resume=True, **kw)
    assert any(line.startswith("fold 0/3: resuming") for line in lines)
    assert sum(line.startswith("fold ") and ": done in " in line for line in lines) == 3

    # every training film predicted once, by the fold that held it out
    records = find_split(synthetic_dataset, "train")
    fold_of = dict(zip((r.path.name for r in records), patient_folds(records, 3, seed=0)))
    rows = list(csv.DictReader((out / "oof.csv").open()))
    assert sorted(r["file"] for r in rows) == sorted(fold_of)
    assert all(int(r["fold"]) == fold_of[r["file"]] for r in rows)
    # each fold's figures are its own run's validation figures (same threshold rule as training)
    for f in summary["per_fold"]:
        val = json.loads((out / f"fold-{f['fold']}" / "train_summary.json").read_text())["validation"]
        assert f["roc_auc"] == pytest.approx(val["roc_auc"]) and f["threshold"] == pytest.approx(val["threshold"])
        assert (f["sensitivity"], f["specificity"]) == pytest.approx((val["recall"], val["specificity"]))
        assert f["marker_flip_rate"] is None or 0.0 <= f["marker_flip_rate"] <= 1.0
    aucs = [f["roc_auc"] for f in summary["per_fold"]]
    assert summary["mean_sd"]["roc_auc"]["mean"] == pytest.approx(statistics.mean(aucs))
    assert summary["mean_sd"]["roc_auc"]["sd"] == pytest.approx(statistics.stdev(aucs))

    # a second --resume keeps every finished fold; another recipe in the same folder is refused
    before = (out / "fold-1" / "fold.json").stat().st_mtime_ns
    run_cv(_cfg(batch_size=8), synthetic_dataset, out, resume=True, **kw)
    assert (out / "fold-1" / "fold.json").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="another config \\(batch_size\\)"):
        run_cv(_cfg(batch_size=16), synthetic_dataset, out, resume=True, **kw)


def test_cli_cv_mistakes_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["cv", "--preset", "debug"]) == 2
    assert "--out is required" in capsys.readouterr().err
    assert main(["cv", "--out", str(tmp_path / "x"), "--fold-ids", "a"]) == 2
    assert "--fold-ids" in capsys.readouterr().err
    assert main(["cv", "--table", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no cross-validation summary" in err


def test_cli_cv_table_prints_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    summarize(_fake_cv(tmp_path / "a", (None, None, None)))
    assert main(["cv", "--table", str(tmp_path / "a"), "--table-out", str(tmp_path / "t.md")]) == 0
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "t.md").read_text() and "| a | 3/3 |" in printed


def test_evaluating_a_fold_model_on_validation_uses_its_fold(synthetic_dataset: Path) -> None:
    from pneumolens.evaluate import split_records

    prov = {"val_fraction": 0.1, "split_seed": 2, "train_config": TrainConfig(folds=3, fold=1, split_seed=2).to_dict()}
    expected = fold_split(find_split(synthetic_dataset, "train"), 3, 1, seed=2)[1]
    assert split_records(synthetic_dataset, "validation", prov) == expected


def test_trained_in_refinalises_finished_folds_under_another_epoch_rule(
    synthetic_dataset: Path, synthetic_dataset_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import pneumolens.training as training
    from pneumolens.checkpoint import load_checkpoint

    src, dst = tmp_path / "loss", tmp_path / "last"
    kw = dict(folds=2, preset="debug", progress=False)
    run_cv(_cfg(batch_size=8, max_epochs=2), synthetic_dataset, src, fold_ids=[0], **kw)

    def no_training(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("--trained-in must not train (an early-stopped fold would train on)")

    monkeypatch.setattr(training, "fit", no_training)
    lines: list[str] = []
    summary = run_cv(_cfg(batch_size=8, max_epochs=2, select_epoch="last"), synthetic_dataset, dst,
                     trained_in=src, report=lines.append, **kw)
    # fold 0 reused: no second training, its last epoch (1 of 0..1) kept; fold 1 never trained in src
    assert any("fold 0/2: training taken from" in line for line in lines)
    assert any(line.startswith("fold 1/2: not finished in") for line in lines)
    assert summary["done"] == [0] and not (dst / "fold-1").exists()
    fold = json.loads((dst / "fold-0" / "fold.json").read_text())
    assert fold["best_epoch"] == 1 and fold["epochs_run"] == 2
    last = torch.load(src / "fold-0" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    kept = load_checkpoint(dst / "fold-0" / "model.pt").model.state_dict()
    assert all(torch.equal(kept[k], last[f"model.{k}"]) for k in kept)
    # the lever is select_epoch alone: any other difference from the source recipe is refused,
    # before the output folder is made
    with pytest.raises(ConfigError, match="batch_size"):
        run_cv(_cfg(batch_size=16, max_epochs=2, select_epoch="last"), synthetic_dataset, tmp_path / "x",
               trained_in=src, **kw)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="the output folder itself"):
        run_cv(_cfg(batch_size=8, max_epochs=2), synthetic_dataset, src, trained_in=src, resume=True, **kw)
    # other films than the source was trained on: refused before a model is written
    other = synthetic_dataset_factory(counts={"train": (26, 24), "val": (4, 4)})
    with pytest.raises(ConfigError, match="not the ones the run"):
        run_cv(_cfg(batch_size=8, max_epochs=2, select_epoch="last"), other, tmp_path / "y", trained_in=src,
               fold_ids=[0], **kw)
    assert not (tmp_path / "y" / "fold-0" / "model.pt").exists()


def test_a_cross_validation_recorded_before_select_epoch_existed_continues(tmp_path: Path) -> None:
    from pneumolens.cv import _check_same_recipe

    record = {"folds": 3, "config": _cfg().to_dict(), "max_images": None, "limit_train_batches": None}
    old = {**record, "config": {k: v for k, v in record["config"].items() if k != "select_epoch"}}
    (tmp_path / "cv_config.json").write_text(json.dumps(old))
    _check_same_recipe(tmp_path, record)  # the missing key reads as its default, val_loss
    with pytest.raises(ConfigError, match="select_epoch"):
        _check_same_recipe(tmp_path, {**record, "config": {**record["config"], "select_epoch": "last"}})
    for broken in ("[]", json.dumps({**old, "config": {**old["config"], "model": 5}})):
        (tmp_path / "cv_config.json").write_text(broken)
        with pytest.raises(ConfigError, match="cv_config.json"):
            _check_same_recipe(tmp_path, record)


def _with_recipe(path: Path, out: Path, config: TrainConfig) -> Path:
    """A copy of the checkpoint at ``path`` whose provenance records ``config`` as its recipe."""
    from pneumolens.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(path)
    ckpt.provenance = {**ckpt.provenance, "train_config": config.to_dict()}
    ckpt.metrics = {"validation": {"accuracy": 0.5, "threshold": ckpt.threshold}}
    return save_checkpoint(ckpt, out)


def test_a_shipped_model_takes_its_threshold_from_the_pooled_out_of_fold_predictions(
    tmp_path: Path, tiny_checkpoint_path: Path
) -> None:
    import torch

    from pneumolens.checkpoint import load_checkpoint
    from pneumolens.cv import apply_oof_threshold

    summary = summarize(_fake_cv(tmp_path / "cv", (None, None, None)))
    trained = _with_recipe(tiny_checkpoint_path, tmp_path / "trained.pt", TrainConfig())  # the cv's recipe, folds=0
    before = load_checkpoint(trained)
    chosen = apply_oof_threshold(trained, tmp_path / "cv", tmp_path / "model.pt")
    after = load_checkpoint(tmp_path / "model.pt")
    assert after.threshold == chosen["threshold"] == pytest.approx(summary["pooled_oof"]["threshold"])
    assert chosen["n"] == 6 and chosen["folds"] == [0, 1, 2]
    assert after.threshold_rule == "youden on out-of-fold predictions (n=6)"
    record = after.provenance["threshold_from"]
    assert record["run_threshold"] == before.threshold and record["cv_dir"] == str(tmp_path / "cv")
    assert after.temperature == before.temperature
    assert all(torch.equal(a, b) for a, b in zip(after.model.state_dict().values(), before.model.state_dict().values()))
    # the run's validation figures hold at its own threshold: kept aside, never shown as this model's
    assert "validation" not in after.metrics
    assert after.metrics["validation_at_run_threshold"] == before.metrics["validation"]
    with pytest.raises(ConfigError, match="no cross-validation summary"):
        apply_oof_threshold(trained, tmp_path / "nothing", tmp_path / "x.pt")
    # another recipe's threshold, an unfinished cross-validation, a model without a recipe: refused
    other = _with_recipe(tiny_checkpoint_path, tmp_path / "other.pt", TrainConfig(batch_size=32))
    with pytest.raises(ConfigError, match="another batch_size"):
        apply_oof_threshold(other, tmp_path / "cv", tmp_path / "x.pt")
    with pytest.raises(ConfigError, match="no training recipe"):
        apply_oof_threshold(tiny_checkpoint_path, tmp_path / "cv", tmp_path / "x.pt")
    (tmp_path / "cv" / "fold-2" / "fold.json").unlink()
    summarize(tmp_path / "cv")
    with pytest.raises(ConfigError, match="2 of 3 folds finished"):
        apply_oof_threshold(trained, tmp_path / "cv", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_a_platt_model_takes_its_threshold_from_out_of_fold_predictions_calibrated_its_way(
    tmp_path: Path, tiny_checkpoint_path: Path
) -> None:
    """A cross-validation run with temperature scaling, a model finished with Platt scaling: each fold's
    predictions are Platt-calibrated on its own rows (as its run would have done) before pooling.

    Hand-computed: fold 0 has raw logits -1 (2 of 4 positive) and +1 (4 of 5), so Platt gives
    p = 0.5 and 0.8; fold 1 has -1 (1 of 4) and +1 (3 of 4): p = 0.25 and 0.75. Pooled, Youden's J
    is highest (0.7 + 5/7 - 1) at p >= 0.75: threshold 0.625, midway between 0.5 and 0.75. The
    temperature-calibrated probabilities as run (fold 0 at T = 2, fold 1 at T = 1) give 0.5.
    """
    from pneumolens.checkpoint import load_checkpoint
    from pneumolens.cv import apply_oof_threshold, oof_threshold

    out = tmp_path / "cv"
    out.mkdir()
    cfg = TrainConfig(folds=2).to_dict()
    (out / "cv_config.json").write_text(json.dumps({"folds": 2, "preset": "x", "label": "t", "config": cfg}))

    def sig(z: float) -> float:
        return 1 / (1 + math.exp(-z))

    legacy = [(f"a{i}", y, round(sig(-1 / 2), 6)) for i, y in enumerate([1, 1, 0, 0])]  # no logits kept, T = 2
    legacy += [(f"b{i}", y, round(sig(1 / 2), 6)) for i, y in enumerate([1, 1, 1, 1, 0])]
    _fake_fold(out, 0, 0.7, 0.5, 0.5, None, legacy)
    fold0 = json.loads((out / "fold-0" / "fold.json").read_text())
    (out / "fold-0" / "fold.json").write_text(json.dumps({**fold0, "temperature": 2.0}))
    folder = out / "fold-1"
    folder.mkdir()
    (folder / "fold.json").write_text(json.dumps({**fold0, "fold": 1, "temperature": 1.0, "bias": 0.0,
                                                  "calibrate": "temperature"}))
    with (folder / "oof.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "patient", "label", "fold", "probability", "logit"])
        for i, y in enumerate([1, 0, 0, 0, 1, 1, 1, 0]):
            z = -1.0 if i < 4 else 1.0
            w.writerow([f"c{i}", f"c{i}", y, 1, f"{sig(z):.6f}", z])
    summary = summarize(out)
    assert summary["pooled_oof"]["threshold"] == pytest.approx(0.5, abs=1e-6)
    assert summary["pooled_oof"]["calibrate"] == "temperature"
    chosen = oof_threshold(out, calibrate="platt")
    assert chosen["threshold"] == pytest.approx(0.625, abs=1e-4) and chosen["calibrate"] == "platt"
    assert chosen["sensitivity"] == pytest.approx(0.7) and chosen["specificity"] == pytest.approx(5 / 7)
    assert oof_threshold(out, calibrate="temperature")["threshold"] == pytest.approx(0.5, abs=1e-6)
    # the shipped model's recipe differs in calibrate alone: accepted, and thresholded its way
    trained = _with_recipe(tiny_checkpoint_path, tmp_path / "trained.pt", TrainConfig(calibrate="platt"))
    apply_oof_threshold(trained, out, tmp_path / "model.pt")
    after = load_checkpoint(tmp_path / "model.pt")
    assert after.threshold == pytest.approx(0.625, abs=1e-4)
    assert after.provenance["threshold_from"]["calibrate"] == "platt"


def test_a_fold_records_the_calibration_its_model_was_finalised_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoint_path: Path
) -> None:
    """A fold trained (and finalised) under temperature scaling, scored by a run now asking for Platt:
    its fold.json must say temperature, or pooling would skip recalibrating it."""
    import numpy as np

    import pneumolens.cv as cv
    from pneumolens.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint_path)
    ckpt.provenance = {"train_config": {"calibrate": True}}
    logits = np.array([-2.0, -1.0, 1.0, 2.0])
    recs = [Record(Path(f"f{i}.jpeg"), i // 2, f"p{i}", "normal", "train") for i in range(4)]

    def fake(*_args, **_kw):
        return recs, np.zeros((4, 8, 8), np.uint8), np.array([0, 0, 1, 1]), logits, ckpt.probability, ckpt

    monkeypatch.setattr(cv, "_oof_predictions", fake)
    monkeypatch.setattr(cv, "fold_marker_flip_rate", lambda *a, **k: None)
    (tmp_path / "fold-0").mkdir()
    result = cv.score_fold(TrainConfig(folds=2, calibrate="platt"), tmp_path, tmp_path, 0)
    assert result["calibrate"] == "temperature"
    rows = list(csv.DictReader((tmp_path / "fold-0" / "oof.csv").open()))
    assert [float(r["logit"]) for r in rows] == [-2.0, -1.0, 1.0, 2.0]


def test_a_cross_validation_continues_under_another_calibration(tmp_path: Path) -> None:
    """calibrate finishes a trained model: a recipe differing there alone continues the same folds."""
    from pneumolens.cv import _check_same_recipe

    record = {"folds": 3, "config": _cfg().to_dict(), "max_images": None, "limit_train_batches": None}
    (tmp_path / "cv_config.json").write_text(json.dumps({**record, "config": {**record["config"], "calibrate": True}}))
    _check_same_recipe(tmp_path, {**record, "config": {**record["config"], "calibrate": "platt"}})
    with pytest.raises(ConfigError, match="batch_size"):
        _check_same_recipe(tmp_path, {**record, "config": {**record["config"], "batch_size": 3}})


def test_the_trade_off_figure_has_a_point_per_fold_and_a_mean_per_recipe(tmp_path: Path, capsys) -> None:
    from pneumolens.cv_figure import cv_figure

    a = _fake_cv(tmp_path / "a", (0.01, 0.02, 0.03))
    b = _fake_cv(tmp_path / "b", (None, None, None))
    for d in (a, b):
        summarize(d)
    fig = cv_figure([a, b])
    ax = fig.axes[0]
    folds = [line for line in ax.get_lines() if line.get_label() == "a (3/3 folds)"]
    assert len(folds) == 1 and list(folds[0].get_xdata()) == [0.01, 0.02, 0.03]
    assert list(folds[0].get_ydata()) == [0.9, 0.8, 0.7]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]  # below the axes: never over a point
    assert "b (3/3 folds) (no flip rate)" in labels
    assert main(["cv", "--table", str(a), "--plot", str(tmp_path / "cv.png")]) == 0
    assert (tmp_path / "cv.png").stat().st_size > 1000 and "figure:" in capsys.readouterr().out
    # mistakes: one line, exit 2, nothing trained or written
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv, says in (
        (["cv", "--out", str(tmp_path / "o"), "--plot", str(tmp_path / "p.png")], "go with --table"),
        (["cv", "--table", str(a), "--plot", str(tmp_path / "fig")], "ending in .png"),
        (["cv", "--table", str(a), "--plot", str(blocker / "p.png")], "cannot write the figure"),
        (["cv", "--table", str(a), "--table-out", str(blocker / "t.md")], "cannot write the table"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, (argv, err)
    assert not (tmp_path / "o").exists()
    (b / "cv.json").write_text(json.dumps({"label": "b"}))
    assert main(["cv", "--table", str(b)]) == 2
    assert "not a cross-validation summary (missing folds" in capsys.readouterr().err


DOCS_CV = Path(__file__).resolve().parents[1] / "docs" / "cv"


@pytest.mark.parametrize(("run", "lever", "epochs"), [
    ("s5-default-20", "no-swap.yaml", 20), ("s5-default-30", "no-swap.yaml", 30), ("s5-erase-30", "erase.yaml", 30),
    ("s5-crop-20", "crop.yaml", 20), ("s5-swap-20", "swap.yaml", 20), ("s5-swap-30", "swap.yaml", 30),
])
def test_the_documented_lever_files_repeat_the_recorded_recipes(
    tmp_path: Path, run: str, lever: str, epochs: int
) -> None:
    """docs/cv's commands (`--preset default --config docs/cv/levers/LEVER --max-epochs E`) still describe
    the recipe each recorded cross-validation ran, after `default` gained the context swap: `--resume`
    would accept them. The plain preset is refused where the run had no swap."""
    from dataclasses import replace

    from pneumolens.cv import _check_same_recipe

    saved = json.loads((DOCS_CV / "runs" / run / "cv_config.json").read_text())
    (tmp_path / "cv_config.json").write_text(json.dumps(saved))

    def record(config: TrainConfig) -> dict:
        return {**saved, "config": replace(config, folds=5, fold=0).to_dict()}

    _check_same_recipe(tmp_path, record(load_config("default", DOCS_CV / "levers" / lever, {"max_epochs": epochs})))
    if lever != "swap.yaml":
        with pytest.raises(ConfigError, match="another config"):
            _check_same_recipe(tmp_path, record(load_config("default", None, {"max_epochs": epochs})))
