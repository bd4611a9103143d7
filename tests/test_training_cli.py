"""``pneumolens train`` as a shell over ``pneumolens.training``: flags, the resume line, malloc tuning.

``fit`` is replaced by a recorder here: what the command hands it is the subject, not training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pneumolens.cli import main
from pneumolens.training import FitResult


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Records of ``fit`` calls (their config and keywords) and of ``keep_freed_memory`` calls."""
    import pneumolens.accel
    import pneumolens.training

    seen: dict[str, list[Any]] = {"fit": [], "malloc": []}

    def fake_fit(config, data, out, **kw):  # noqa: ANN001, ANN003, ANN202
        seen["fit"].append((config, kw))
        return FitResult(Path(out) / "model.pt", {}, 0, 0.0)

    monkeypatch.setattr(pneumolens.training, "fit", fake_fit)
    monkeypatch.setattr(pneumolens.accel, "keep_freed_memory", lambda: seen["malloc"].append(True) or True)
    return seen


def test_no_accel_switches_the_accelerator_off(
    calls: dict[str, list[Any]], synthetic_dataset: Path, tmp_path: Path
) -> None:
    base = ["train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "run"), "--preset", "debug"]
    assert main(base) == 0
    assert main([*base, "--no-accel"]) == 0
    assert [config.accelerate for config, _ in calls["fit"]] == [True, False]
    assert calls["malloc"] == [True, True]  # the train command tunes malloc


def test_resume_says_where_it_continues_from(
    calls: dict[str, list[Any]], synthetic_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 3, "global_step": 120, "state_dict": {}}, run / "checkpoints" / "last.ckpt")
    # (the run's epoch 3 fits under --max-epochs 10: the command checks the recipe before it says it resumes)
    assert main(["train", "--data", str(synthetic_dataset), "--out", str(run), "--preset", "debug", "--resume",
                 "--max-epochs", "10"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"resuming from {run / 'checkpoints' / 'last.ckpt'} (epoch 3, step 120)"]
    assert calls["fit"][0][1]["resume"] is True


def test_resume_without_a_checkpoint_prints_no_resume_line(
    calls: dict[str, list[Any]], synthetic_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert "resuming" not in capsys.readouterr().out


def test_other_commands_keep_glibc_malloc_defaults(calls: dict[str, list[Any]], tmp_path: Path) -> None:
    """Keeping freed memory suits a training run; a server or a one-off prediction must give it back."""
    assert main(["predict", str(tmp_path / "missing.jpeg")]) == 2
    assert calls["malloc"] == []


def test_resume_with_another_recipe_is_refused_in_one_line(synthetic_dataset: Path, tmp_path: Path, capsys) -> None:
    """A run started under one recipe (say the former `default`) cannot be continued under another."""
    out = tmp_path / "run"
    base = ["train", "--preset", "debug", "--data", str(synthetic_dataset), "--out", str(out), "--no-progress",
            "--max-images", "40", "--threads", "1", "--max-epochs", "1"]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "--resume", "--batch-size", "8"]) == 2
    printed = capsys.readouterr()
    err = printed.err
    assert err.count("\n") == 1 and "started with another batch_size (16 then, 8 now)" in err
    assert "resuming from" not in printed.out  # refused before it claims to resume
    recipe = out.parent / "swap.yaml"
    recipe.write_text("augment: {swap: 0.5}\n")
    assert main([*base, "--resume", "--config", str(recipe)]) == 2
    assert "another augment.swap (0.0 then, 0.5 now)" in capsys.readouterr().err
    assert main([*base[:-2], "--max-epochs", "3", "--resume", "--select-epoch", "last"]) == 2
    assert "another select_epoch" in capsys.readouterr().err


def test_a_new_run_never_replaces_a_finished_one(synthetic_dataset: Path, tmp_path: Path, capsys) -> None:
    """Found by a hostile pass: training again into a finished run's --out overwrote its model.pt and
    checkpoints with only Lightning's warning. Now: one line, exit 2, the run untouched."""
    out = tmp_path / "run"
    base = ["train", "--preset", "debug", "--data", str(synthetic_dataset), "--out", str(out), "--no-progress",
            "--max-images", "40", "--threads", "1", "--max-epochs", "1"]
    assert main(base) == 0
    before = (out / "model.pt").read_bytes()
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a training run (model.pt and checkpoints)" in err and "--resume" in err
    assert (out / "model.pt").read_bytes() == before
