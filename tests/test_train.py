"""Training: resumable batches, a full fit on synthetic data, determinism, resume, DDP, real data."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_model_config
from lightning.pytorch.callbacks import Callback
from sklearn.metrics import roc_auc_score

from pneumolens.checkpoint import load_checkpoint
from pneumolens.config import TrainConfig
from pneumolens.datamodule import ResumableBatches, subset_by_patient
from pneumolens.data import find_split
from pneumolens.training import fit


def _tiny_config(**kw) -> TrainConfig:
    base = dict(model=tiny_model_config(), batch_size=8, max_epochs=2, early_stopping_patience=0, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the resumable training iterable -------------------------------------------------------------
def test_resumable_batches_cover_every_image_once_per_epoch() -> None:
    x, y = torch.arange(10).view(10, 1, 1), torch.zeros(10)
    it = ResumableBatches(x, y, batch_size=4, seed=0)
    assert len(it) == 3
    first = torch.cat([b[0].flatten() for b in it])
    second = torch.cat([b[0].flatten() for b in it])
    assert sorted(first.tolist()) == list(range(10)) == sorted(second.tolist())
    assert first.tolist() != second.tolist()  # a new order each epoch


def test_resumable_batches_continue_mid_epoch_exactly() -> None:
    x, y = torch.arange(20).view(20, 1, 1), torch.zeros(20)
    ref = ResumableBatches(x, y, batch_size=3, seed=5)
    full = [b[0].flatten().tolist() for b in ref]
    run = ResumableBatches(x, y, batch_size=3, seed=5)
    it = iter(run)
    done = []
    for _ in range(4):
        done.append(next(it)[0].flatten().tolist())
        run.mark_consumed()
    next(it)  # the fetcher read one batch ahead, but it was never trained on
    state = run.state_dict()
    assert state["batches_done"] == 4
    resumed = ResumableBatches(x, y, batch_size=3, seed=5)
    resumed.load_state_dict(state)
    assert done + [b[0].flatten().tolist() for b in resumed] == full


def test_resumable_batches_follow_the_epoch_lightning_starts() -> None:
    """Resumed at an epoch boundary, Lightning restores no loader state: set_epoch gives the epoch's own order."""
    x, y = torch.arange(20).view(20, 1, 1), torch.zeros(20)
    ref = ResumableBatches(x, y, batch_size=3, seed=5)
    epochs = [[b[0].flatten().tolist() for b in ref] for _ in range(3)]
    assert epochs[0] != epochs[2]
    fresh = ResumableBatches(x, y, batch_size=3, seed=5)
    fresh.set_epoch(2)
    assert [b[0].flatten().tolist() for b in fresh] == epochs[2]
    mid = ResumableBatches(x, y, batch_size=3, seed=5)
    mid.load_state_dict({"epoch": 2, "batches_done": 4, "seed": 5})
    mid.set_epoch(2)  # a restored position inside the epoch being started is kept
    assert [b[0].flatten().tolist() for b in mid] == epochs[2][4:]


def test_resumable_batches_shard_across_ranks() -> None:
    x, y = torch.arange(11).view(11, 1, 1), torch.zeros(11)
    ranks = [ResumableBatches(x, y, batch_size=2, seed=0, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    seen = [set(torch.cat([b[0].flatten() for b in r]).tolist()) for r in ranks]
    assert seen[0] | seen[1] == set(range(11))


def test_a_platt_recipe_ships_the_temperature_and_bias_fitted_on_its_validation_logits(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    from pneumolens.datamodule import PneumoniaDataModule
    from pneumolens.metrics import fit_platt
    from pneumolens.training.finalize import _val_logits

    cfg = _tiny_config(calibrate="platt")
    ck = load_checkpoint(fit(cfg, synthetic_dataset, tmp_path / "run", progress=False).model_path)
    dm = PneumoniaDataModule.from_config(cfg, synthetic_dataset)
    dm.setup("validate")
    logits, y = _val_logits(ck.model, dm)
    assert (ck.temperature, ck.bias) == pytest.approx(fit_platt(logits, y), rel=1e-4, abs=1e-6)
    assert ck.bias != 0.0 and ck.provenance["train_config"]["calibrate"] == "platt"
    val = ck.metrics["validation"]
    prob = ck.probability(logits)
    assert val["roc_auc"] == pytest.approx(roc_auc_score(y, prob))
    assert val["threshold"] == ck.threshold and val["n"] == len(y)


def test_a_finished_run_resumed_under_another_calibration_is_refinalised_with_it(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    """calibrate only finishes a run: --resume accepts it, trains nothing more, and recalibrates."""
    cfg = _tiny_config(max_epochs=1)
    before = load_checkpoint(fit(cfg, synthetic_dataset, tmp_path / "run", progress=False).model_path)
    after = load_checkpoint(fit(replace(cfg, calibrate="platt"), synthetic_dataset, tmp_path / "run", resume=True,
                                progress=False).model_path)
    assert before.bias == 0.0 and after.bias != 0.0
    assert _states_equal(before.model.state_dict(), after.model.state_dict())
    assert after.provenance["train_config"]["calibrate"] == "platt"


def test_a_context_swap_recipe_trains_with_its_lung_masks(synthetic_dataset: Path, tmp_path: Path) -> None:
    """The swap needs each film's lung mask in its batch: the whole run, data module to model.pt."""
    res = fit(_tiny_config(max_epochs=1, augment={"swap": 0.5}), synthetic_dataset, tmp_path / "run", progress=False)
    ck = load_checkpoint(res.model_path)
    assert ck.provenance["train_config"]["augment"]["swap"] == 0.5 and res.epochs == 1


def test_subset_by_patient_keeps_whole_patients(synthetic_dataset: Path) -> None:
    recs = find_split(synthetic_dataset, "train")
    sub = subset_by_patient(recs, 5)
    kept = {r.patient_id for r in sub}
    assert all(r in sub for r in recs if r.patient_id in kept)
    assert 10 <= len(sub) < len(recs)


# --- fitting on synthetic data ---------------------------------------------------------------------
def test_fit_writes_a_complete_checkpoint(
    synthetic_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The fast smoke test of a whole run: two epochs of the tiny model, accelerated on the CPU."""
    with caplog.at_level("INFO", logger="pneumolens.training.module"):
        res = fit(_tiny_config(), synthetic_dataset, tmp_path / "run", progress=False, preset="test")
    assert "CPU training accelerator: " in caplog.text
    ck = load_checkpoint(res.model_path)
    assert 0.0 < ck.threshold < 1.0 and ck.threshold_rule == "youden" and ck.temperature > 0
    prov = ck.provenance
    assert prov["recipe"] == "test" and prov["val_fraction"] == 0.1 and prov["epochs_run"] == 2
    assert len(prov["data_manifest"]) == 16 and prov["train_config"]["seed"] == 1
    val = ck.metrics["validation"]
    assert {"roc_auc", "accuracy", "ci", "confusion"} <= set(val)
    assert (tmp_path / "run" / "logs" / "metrics.csv").exists()
    assert (tmp_path / "run" / "training_history.png").stat().st_size > 1000
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()
    # the out-of-distribution guard, fitted on the run's training films, flags at most 1 % of validation
    assert ck.ood is not None and ck.ood.input_size == 32 and ck.ood.flagged_share <= 0.01


@pytest.mark.slow
def test_accelerated_and_stock_training_reach_the_same_model(synthetic_dataset: Path, tmp_path: Path) -> None:
    """The accelerator changes speed, not results: one epoch each way from the same seed, the same
    weights and logits within float tolerance (dropout off: the fast masks are other draws)."""
    from conftest import _synthetic_batch

    model = replace(tiny_model_config(), lstm_dropout=0.0, dense_dropout=0.0)
    fast = fit(_tiny_config(model=model, max_epochs=1), synthetic_dataset, tmp_path / "fast", progress=False)
    stock = fit(_tiny_config(model=model, max_epochs=1, accelerate=False), synthetic_dataset, tmp_path / "stock",
                progress=False)
    a, b = (load_checkpoint(r.model_path).model for r in (fast, stock))
    # Biases just before a BatchNorm get no gradient but rounding noise, which Adam scales to full
    # steps; BatchNorm cancels them in training, so only the weights and the function are compared.
    wa, wb = a.state_dict(), b.state_dict()
    for k in (k for k in wa if k.endswith(".weight") or "lstm" in k):
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=5e-5, msg=k)
    x, _ = _synthetic_batch(16, model.input_size, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_same_seed_gives_the_same_weights(synthetic_dataset: Path, tmp_path: Path) -> None:
    a = fit(_tiny_config(max_epochs=1), synthetic_dataset, tmp_path / "a", progress=False)
    b = fit(_tiny_config(max_epochs=1), synthetic_dataset, tmp_path / "b", progress=False)
    c = fit(_tiny_config(max_epochs=1, seed=2), synthetic_dataset, tmp_path / "c", progress=False)
    sa, sb, sc = (load_checkpoint(r.model_path).model.state_dict() for r in (a, b, c))
    assert _states_equal(sa, sb)
    assert not _states_equal(sa, sc)


class _InterruptAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ANN001
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


class _InterruptInValidation(Callback):
    """Ctrl-C in the middle of epoch ``epoch``'s validation (not the sanity check)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_batch_end(self, trainer, *args) -> None:  # noqa: ANN001
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


TRAIN_METRICS = ("train_loss", "train_acc", "train_precision", "train_recall", "train_auc")


def _train_history(run: Path) -> dict[int, dict[str, float]]:
    """Each epoch's logged train metrics, from the run's merged ``logs/metrics.csv``."""
    import csv

    rows = csv.DictReader((run / "logs" / "metrics.csv").open())
    return {int(r["epoch"]): {k: float(r[k]) for k in TRAIN_METRICS} for r in rows if r.get("train_loss")}


@pytest.fixture(scope="module")
def interrupted_runs(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two epochs of the tiny recipe (5 steps each), run three ways; the run folders by name.

    ``ref``: uninterrupted. ``run``: Ctrl-C after step 3 (mid-epoch 0), then ``--resume``.
    ``legacy``: the interrupted run as it stood before the resume, its checkpoint stripped of the
    train-epoch states like one written before they were saved (not resumed here).
    """
    import shutil

    from pneumolens.training.resume import TRAIN_EPOCH_STATE_KEY

    tmp = tmp_path_factory.mktemp("interrupted")
    cfg = _tiny_config(max_epochs=2)
    fit(cfg, synthetic_dataset, tmp / "ref", progress=False)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown exits after on_exception
            fit(cfg, synthetic_dataset, tmp / "run", progress=False, extra_callbacks=[_InterruptAt(3)])
    finally:
        signal.signal(signal.SIGINT, handler)
    shutil.copytree(tmp / "run", tmp / "legacy")
    legacy_ckpt = tmp / "legacy" / "checkpoints" / "interrupted.ckpt"
    saved = torch.load(legacy_ckpt, weights_only=True)
    saved.pop(TRAIN_EPOCH_STATE_KEY, None)
    torch.save(saved, legacy_ckpt)
    assert (tmp / "run" / "checkpoints" / "interrupted.ckpt").exists()
    assert not (tmp / "run" / "model.pt").exists()
    fit(cfg, synthetic_dataset, tmp / "run", resume=True, progress=False)
    return {"ref": tmp / "ref", "run": tmp / "run", "legacy": tmp / "legacy"}


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(interrupted_runs: dict[str, Path]) -> None:
    """Ctrl-C mid-epoch leaves a checkpoint; --resume ends with exactly the uninterrupted result."""
    ref, run = interrupted_runs["ref"], interrupted_runs["run"]
    # Compare the *last* weights (model.pt holds the best epoch, which may be an early one).
    a = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 2 * 5  # every epoch ran all its batches
    assert _states_equal(a["state_dict"], b["state_dict"])
    # The history keeps both segments: each epoch has its validation row.
    import csv

    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    assert sorted({r["epoch"] for r in rows if r.get("val_loss")}) == ["0", "1"]
    assert sorted({r["epoch"] for r in rows if r.get("train_loss")}) == ["0", "1"]


@pytest.mark.slow
def test_interrupted_epoch_logs_the_uninterrupted_train_metrics(interrupted_runs: dict[str, Path]) -> None:
    """The interrupted epoch's train loss, accuracy, precision, recall and AUC cover all its batches.

    They were computed from the batches after the resume alone (torchmetrics states and
    Lightning's epoch-mean of the loss are not in a checkpoint by default): a spike in the history.
    """
    from pneumolens.training.resume import TRAIN_EPOCH_STATE_KEY

    saved = torch.load(interrupted_runs["run"] / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert saved["global_step"] == 3 and TRAIN_EPOCH_STATE_KEY in saved
    ref, run = _train_history(interrupted_runs["ref"]), _train_history(interrupted_runs["run"])
    assert sorted(ref) == sorted(run) == [0, 1]
    mismatched = {  # epoch 0 was interrupted; epoch 1 must not carry anything over from it
        (epoch, name): (run[epoch][name], ref[epoch][name])
        for epoch in (0, 1)
        for name in TRAIN_METRICS
        if run[epoch][name] != pytest.approx(ref[epoch][name], rel=1e-6, abs=1e-9)
    }
    assert not mismatched


class _SlowSteps(Callback):
    """Sleeps ``seconds`` after each of the first ``steps`` training steps."""

    def __init__(self, steps: int, seconds: float) -> None:
        self.steps, self.seconds = steps, seconds

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step <= self.steps:
            time.sleep(self.seconds)


@pytest.mark.slow
def test_a_resumed_runs_wall_time_counts_every_segment(synthetic_dataset: Path, tmp_path: Path) -> None:
    """The provenance's wall_s is the time of all the run's segments, not of the last one alone (which
    alone is shorter than the first segment's sleeps here).

    Cross-validation tables report it per fold; a fold resumed after 6 of 20 epochs showed the
    minutes of its last 14.
    """
    cfg = _tiny_config(max_epochs=2)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # at least 3 x 1 s in the first segment, then Ctrl-C
            fit(cfg, synthetic_dataset, tmp_path, progress=False, extra_callbacks=[_SlowSteps(3, 1.0), _InterruptAt(3)])
    finally:
        signal.signal(signal.SIGINT, handler)
    saved = torch.load(tmp_path / "checkpoints" / "interrupted.ckpt", weights_only=True)
    first = next(v["trained_s"] for k, v in saved["callbacks"].items() if k.startswith("ResumeCallback"))
    assert first >= 3.0
    t0 = time.time()
    fit(cfg, synthetic_dataset, tmp_path, resume=True, progress=False)
    second = time.time() - t0
    wall = load_checkpoint(tmp_path / "model.pt").provenance["wall_s"]
    # Counted up to the provenance's writing, before finalisation ends: not all of ``second``.
    assert first < wall <= first + second + 0.1


@pytest.mark.slow
def test_checkpoint_without_train_metric_states_still_resumes(
    synthetic_dataset: Path, interrupted_runs: dict[str, Path]
) -> None:
    """A checkpoint written before the train-epoch states were saved (the shipped runs' kind) resumes
    to the same weights; only the interrupted epoch's train metrics are partial, the next epoch's exact."""
    from pneumolens.training.resume import TRAIN_EPOCH_STATE_KEY

    ref, legacy = interrupted_runs["ref"], interrupted_runs["legacy"]
    old = torch.load(legacy / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert TRAIN_EPOCH_STATE_KEY not in old and old["global_step"] == 3
    fit(_tiny_config(max_epochs=2), synthetic_dataset, legacy, resume=True, progress=False)
    a = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(legacy / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 2 * 5
    assert _states_equal(a["state_dict"], b["state_dict"])
    history, ref_history = _train_history(legacy), _train_history(ref)
    assert sorted(history) == [0, 1]
    assert all(0.0 <= history[0][k] <= 1.0 for k in TRAIN_METRICS if k != "train_loss")
    for name in TRAIN_METRICS:
        assert history[1][name] == pytest.approx(ref_history[1][name], rel=1e-6, abs=1e-9), name


@pytest.mark.slow
def test_interrupted_validation_is_redone_on_resume(
    synthetic_dataset: Path, interrupted_runs: dict[str, Path], tmp_path: Path
) -> None:
    """Ctrl-C during epoch 1's validation: --resume redoes that epoch from its start and validates it,
    ending with the uninterrupted run's weights, validation losses and best checkpoint."""
    import csv

    ref = interrupted_runs["ref"]
    cfg, run = _tiny_config(max_epochs=2), tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            fit(cfg, synthetic_dataset, run, progress=False, extra_callbacks=[_InterruptInValidation(1)])
    finally:
        signal.signal(signal.SIGINT, handler)
    assert not (run / "checkpoints" / "interrupted.ckpt").exists()  # nothing saved mid-validation
    fit(cfg, synthetic_dataset, run, resume=True, progress=False)
    a = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 2 * 5 and _states_equal(a["state_dict"], b["state_dict"])

    def val_losses(folder: Path) -> dict[int, float]:
        rows = csv.DictReader((folder / "logs" / "metrics.csv").open())
        return {int(r["epoch"]): float(r["val_loss"]) for r in rows if r.get("val_loss")}

    assert sorted(val_losses(run)) == [0, 1]
    assert val_losses(run) == pytest.approx(val_losses(ref), rel=1e-6)
    best = lambda folder: torch.load(folder / "checkpoints" / "best.ckpt", weights_only=True)["epoch"]  # noqa: E731
    assert best(run) == best(ref)


@pytest.mark.slow
def test_cli_train_with_yaml_and_ddp_on_two_cpu_processes(synthetic_dataset: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": tiny_model_config().to_dict(), "batch_size": 8, "max_epochs": 1}))
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "pneumolens.cli", "train", "--data", str(synthetic_dataset), "--out", str(out),
        "--preset", "debug", "--config", str(cfg), "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu",
        "--no-progress", "--threads", "1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = load_checkpoint(out / "model.pt")
    assert ck.provenance["epochs_run"] == 1
    assert "validation (patient-level" in proc.stdout


def test_cli_train_without_data_says_where_to_get_it(tmp_path: Path) -> None:
    from pneumolens.cli import main

    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2


@pytest.mark.integration
@pytest.mark.slow
def test_real_data_subset_trains_and_evaluates(real_data_root: Path, tmp_path: Path) -> None:
    """Two epochs of the full-size network on a small patient-level subset of the real train split."""
    from pneumolens.evaluate import evaluate_split

    cfg = TrainConfig(batch_size=16, max_epochs=2, early_stopping_patience=0)
    res = fit(cfg, real_data_root, tmp_path / "real", max_images=40, progress=False)
    ck = load_checkpoint(res.model_path)
    assert ck.provenance["train_counts"][0] > 0 and ck.provenance["validation_counts"][1] > 0
    m = evaluate_split(res.model_path, real_data_root, "val", tmp_path / "eval", n_boot=100, progress=False)
    assert m["n"] == 16 and 0.0 <= m["accuracy"] <= 1.0
    assert (tmp_path / "eval" / "metrics.json").exists() and (tmp_path / "eval" / "report.md").exists()


@pytest.mark.slow  # real processes / whole pipelines: runs in `make test`, not in test-fast
def test_export_best_writes_an_interim_model_from_a_run_in_progress(synthetic_dataset: Path, tmp_path: Path) -> None:
    from pneumolens.errors import CheckpointError
    from pneumolens.training import export_best

    cfg = _tiny_config(max_epochs=1)
    with pytest.raises(CheckpointError, match="no finished epoch yet"):
        export_best(cfg, synthetic_dataset, tmp_path / "run")
    fit(cfg, synthetic_dataset, tmp_path / "run", progress=False)
    (tmp_path / "run" / "model.pt").unlink()
    res = export_best(cfg, synthetic_dataset, tmp_path / "run", preset="x")
    ck = load_checkpoint(res.model_path)
    assert ck.provenance["interim"] is True and ck.provenance["epochs_run"] == 1 and ck.provenance["best_epoch"] == 0


def test_best_checkpoint_follows_the_runs_own_record(tmp_path: Path) -> None:
    from pneumolens.training.resume import best_checkpoint

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    assert best_checkpoint(tmp_path) is None
    key = "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0}"
    recorded = ckpts / "best-v1.ckpt"  # what a resumed run wrote beside an older best.ckpt
    torch.save({"state_dict": {}, "callbacks": {key: {"best_model_path": str(recorded)}}}, ckpts / "last.ckpt")
    (ckpts / "best.ckpt").write_bytes(b"older")
    assert best_checkpoint(tmp_path) == ckpts / "best.ckpt"  # the recorded file is gone: the plain name
    recorded.write_bytes(b"newer")
    assert best_checkpoint(tmp_path) == recorded


def test_a_run_that_keeps_its_last_epoch_ships_last_ckpts_weights(synthetic_dataset: Path, tmp_path: Path) -> None:
    """select_epoch="last": the model is the schedule's end, whatever the validation loss did."""
    cfg = _tiny_config(max_epochs=2, select_epoch="last")
    res = fit(cfg, synthetic_dataset, tmp_path / "run", progress=False, preset="test")
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    kept = load_checkpoint(res.model_path)
    assert kept.provenance["best_epoch"] == last["epoch"] == 1
    assert all(torch.equal(v, last["state_dict"][f"model.{k}"]) for k, v in kept.model.state_dict().items())
