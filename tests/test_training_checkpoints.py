"""A run folder's Lightning checkpoints are read without unpickling code: --resume, --export-best, the reader.

A file under ``RUN/checkpoints`` may come from anywhere (a shared drive, a downloaded run), so it is
loaded with ``torch.load(weights_only=True)`` or refused with one line; never unpickled in full.
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` makes every ``torch.load`` that does not say
``weights_only`` itself unpickle in full (Lightning's own load of ``ckpt_path`` among them), so the
tests set it: a load that relies on torch's default would run the payload.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_model_config


class _Payload:
    """Unpickling this writes ``marker``: what a malicious checkpoint would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _plant(run: Path, name: str, marker: Path) -> Path:
    """A pickle at ``run/checkpoints/name`` that looks like a Lightning checkpoint and runs code when unpickled."""
    path = run / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "global_step": 1, "state_dict": {}, "callbacks": _Payload(marker)}, path)
    return path


def _train_cli(data: Path, run: Path, *extra: str) -> list[str]:
    cfg = run.parent / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": tiny_model_config().to_dict(), "batch_size": 8, "max_epochs": 1}))
    return ["train", "--data", str(data), "--out", str(run), "--preset", "debug", "--config", str(cfg),
            "--no-progress", *extra]


def _one_error_line(err: str, path: Path) -> str:
    lines = [line for line in err.splitlines() if line.startswith("pneumolens train: error:")]
    assert len(lines) == 1, err
    assert str(path) in lines[0] and "Traceback" not in err
    assert "weights_only" not in err and "\x1b" not in err  # never torch's advice to unpickle in full
    return lines[0]


@pytest.fixture
def unsafe_torch_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


@pytest.mark.parametrize("flag", ["--export-best", "--resume"])
def test_a_pickle_in_the_run_folder_is_refused_not_run(
    flag: str, synthetic_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], unsafe_torch_default: None
) -> None:
    from pneumolens.cli import main

    run, marker = tmp_path / "run", tmp_path / "marker"
    planted = _plant(run, "last.ckpt", marker)
    code = main(_train_cli(synthetic_dataset, run, flag))
    assert not marker.exists()
    assert code == 2
    line = _one_error_line(capsys.readouterr().err, planted)
    assert "refus" in line
    assert not (run / "model.pt").exists()


def test_export_best_refuses_a_pickle_as_the_best_checkpoint(
    synthetic_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], unsafe_torch_default: None
) -> None:
    """The run's own record (last.ckpt, plain) points at best.ckpt, which is the pickle."""
    from pneumolens.cli import main

    run, marker = tmp_path / "run", tmp_path / "marker"
    planted = _plant(run, "best.ckpt", marker)
    key = "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0}"
    torch.save({"epoch": 0, "global_step": 5, "state_dict": {}, "callbacks": {key: {"best_model_path": str(planted)}}},
               run / "checkpoints" / "last.ckpt")
    code = main(_train_cli(synthetic_dataset, run, "--export-best"))
    assert not marker.exists()
    assert code == 2
    _one_error_line(capsys.readouterr().err, planted)


def test_the_reader_names_the_file_and_the_reason(tmp_path: Path) -> None:
    from pneumolens.errors import CheckpointError
    from pneumolens.training.resume import load_run_checkpoint

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.ckpt: not a readable training checkpoint") as info:
        load_run_checkpoint(garbage)
    assert "\n" not in str(info.value)
    listing = tmp_path / "list.ckpt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(CheckpointError, match="list.ckpt: not a Lightning checkpoint"):
        load_run_checkpoint(listing)
    evil, marker = _plant(tmp_path, "evil.ckpt", tmp_path / "marker"), tmp_path / "marker"
    with pytest.raises(CheckpointError) as info:
        load_run_checkpoint(evil)
    message = str(info.value)
    assert not marker.exists() and "exec" in message and "weights_only" not in message and "\n" not in message
    fine = tmp_path / "fine.ckpt"
    torch.save({"epoch": 3, "global_step": 12, "state_dict": {"w": torch.ones(2)}}, fine)
    assert load_run_checkpoint(fine)["epoch"] == 3
