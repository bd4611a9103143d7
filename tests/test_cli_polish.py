"""Issue 18's CLI polish: quiet `-v`, `--no-progress` that means it, no Lightning chatter, a
summary after `predict --out`, and no help or docstring pointing at a model file nothing makes."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from conftest import tiny_model_config

from pneumolens.cli import NOISY_LOGGERS, configure_logging, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put back the levels and handlers that :func:`configure_logging` changes."""
    names = ["", "pneumolens", *NOISY_LOGGERS]
    saved = {n: logging.getLogger(n).level for n in names}
    handlers = list(logging.getLogger().handlers)
    yield
    for n, level in saved.items():
        logging.getLogger(n).setLevel(level)
    logging.getLogger().handlers[:] = handlers


@pytest.mark.usefixtures("restore_logging")
def test_verbose_logs_our_debug_messages_but_not_the_libraries() -> None:
    """`-v` printed every matplotlib font look-up ("findfont: score(...)") and PIL's chunk reads."""
    configure_logging(verbose=True)
    assert logging.getLogger("pneumolens.evaluate").isEnabledFor(logging.DEBUG)
    for name in ("matplotlib.font_manager", "PIL.PngImagePlugin", "urllib3.connectionpool"):
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.INFO), name
        assert logger.isEnabledFor(logging.WARNING), name  # their warnings still show
    assert not logging.getLogger("some.other.library").isEnabledFor(logging.DEBUG)


@pytest.mark.usefixtures("restore_logging")
def test_without_verbose_our_info_shows_and_debug_does_not() -> None:
    configure_logging(verbose=False)
    assert logging.getLogger("pneumolens.x").isEnabledFor(logging.INFO)
    assert not logging.getLogger("pneumolens.x").isEnabledFor(logging.DEBUG)


@pytest.mark.slow  # real processes / whole pipelines: runs in `make test`, not in test-fast
def test_verbose_run_prints_no_font_lookups(tiny_checkpoint_path: Path, synthetic_dataset: Path, tmp_path: Path) -> None:
    """End to end, in a fresh process (figures are drawn, so matplotlib looks fonts up)."""
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "pneumolens.cli", "-v", "evaluate", "--data", str(synthetic_dataset), "--split",
           "val", "--checkpoint", str(tiny_checkpoint_path), "--out", str(out), "--bootstrap", "0"]
    env = {**os.environ, "PNEUMOLENS_CACHE": str(tmp_path / "cache"), "MPLCONFIGDIR": str(tmp_path / "mpl"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "roc.png").exists()
    assert "findfont" not in proc.stderr and "STREAM" not in proc.stderr, proc.stderr[-2000:]


# --- training: --no-progress and Lightning's warnings ----------------------------------------------
def test_train_no_progress_prints_no_bars_and_no_lightning_warnings(
    synthetic_dataset_factory: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The cache loader's "decoding train" / "loading train" bars ignored --no-progress, and
    Lightning warned about pytree internals and the logging interval of a short epoch."""
    import pneumolens.accel

    monkeypatch.setattr(pneumolens.accel, "keep_freed_memory", lambda: True)
    monkeypatch.setenv("PNEUMOLENS_CACHE", str(tmp_path / "cache"))
    root = synthetic_dataset_factory(counts={"train": (30, 30)})  # >= 50 files: the loader's bars would show
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": tiny_model_config().to_dict(), "batch_size": 8, "max_epochs": 1}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--preset", "debug",
                     "--config", str(cfg), "--no-progress", "--threads", "1", "--accelerator", "cpu"])
    assert code == 0
    err = capsys.readouterr().err
    for bar in ("decoding train", "loading train", "loading validation", "Epoch 0"):
        assert bar not in err, err
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "LeafSpec" in m or "logging interval" in m], messages


def test_training_warnings_are_silenced_only_while_training() -> None:
    """The filter is the training path's, not the library user's."""
    from pneumolens.training.trainer import quiet_training_warnings

    message = "The number of training batches (5) is smaller than the logging interval Trainer(log_every_n_steps=50)."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_training_warnings():
            warnings.warn(message, UserWarning)
        warnings.warn(message, UserWarning)
    assert len(caught) == 1


# --- predict --out -------------------------------------------------------------------------------
def test_predict_out_prints_counts_per_class_and_skipped(
    synthetic_dataset: Path, tiny_checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scans = tmp_path / "scans"
    shutil.copytree(synthetic_dataset / "val", scans)
    (scans / "broken.jpeg").write_bytes(b"not an image")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(scans), "-c", str(tiny_checkpoint_path), "--threshold", "0.5", "--skip-bad",
                 "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    labels = [r[2] for r in rows if r[2]]
    n_pos, n_neg = labels.count("PNEUMONIA"), labels.count("NORMAL")
    assert n_pos + n_neg == 8
    assert f"{n_neg} NORMAL, {n_pos} PNEUMONIA" in stdout
    assert f"8 predicted, 1 skipped; wrote {out}" in stdout


# --- no pointer to runs/demo/model.pt ------------------------------------------------------------
def test_no_help_or_docstring_names_a_model_file_make_demo_never_writes(capsys: pytest.CaptureFixture[str]) -> None:
    """`make demo` evaluates the shipped model and writes no model.pt; serve's help and
    Predictor's docstring told users to load runs/demo/model.pt."""
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "runs/demo/model.pt" not in capsys.readouterr().out
    hits = [str(p.relative_to(REPO)) for p in (REPO / "pneumolens").rglob("*.py")
            if re.search(r"runs/demo/model\.pt", p.read_text())]
    assert hits == []


@pytest.mark.parametrize("argv", [["train", "--preset", "nope", "--out", "x"], ["cv", "--select-epoch", "3"], ["train"], []])
def test_argument_mistakes_are_one_line_and_exit_2(argv, capsys) -> None:
    from pneumolens.cli import build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "error:" in err and "--help" in err, err
