"""Scale-out: `train` / `cv` hand --accelerator --devices --num-nodes to Lightning's Trainer, and
`predict` / `explain --shard I/N` split a file list so that array jobs cover every file once.

The two-process CPU DDP run is tests/test_train.py::test_cli_train_with_yaml_and_ddp_on_two_cpu_processes.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import lightning
import pytest
import yaml
from conftest import tiny_model_config

from pneumolens.cli import main
from pneumolens.errors import ConfigError
from pneumolens.shards import Shard, parse_shard, take_shard


# --- the shards themselves -------------------------------------------------------------------------
def test_shard_i_takes_every_nth_file_of_the_sorted_list() -> None:
    files = ["scans/b.jpeg", "scans/a.jpeg", "scans/d.jpeg", "scans/c.jpeg", "scans/e.jpeg"]
    assert take_shard(files, Shard(0, 2)) == ["scans/a.jpeg", "scans/c.jpeg", "scans/e.jpeg"]
    assert take_shard(files, Shard(1, 2)) == ["scans/b.jpeg", "scans/d.jpeg"]
    assert take_shard(files, Shard(0, 1)) == sorted(files)
    assert take_shard(files, None) == files  # no shard: the order given
    assert take_shard(files, Shard(6, 7)) == []  # more shards than files


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40])
def test_shards_cover_every_file_exactly_once_whatever_the_input_order(n: int) -> None:
    files = [Path(f"d{i % 3}/film-{i:03d}.png") for i in range(37)]
    shards = [take_shard(files, Shard(i, n)) for i in range(n)]
    assert sorted(f for s in shards for f in s) == sorted(files)
    assert sum(len(s) for s in shards) == len(files)
    assert [take_shard(list(reversed(files)), Shard(i, n)) for i in range(n)] == shards  # machine-independent
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced


def test_parse_shard() -> None:
    assert parse_shard("0/4") == Shard(0, 4)
    assert parse_shard(" 3 / 4 ") == Shard(3, 4)
    assert str(parse_shard("2/5")) == "2/5"


@pytest.mark.parametrize(
    "text, words",
    [("4/4", "from 0 to 3"), ("-1/4", "from 0 to 3"), ("1/0", "at least 1"), ("1", "expected I/N"),
     ("a/b", "expected I/N"), ("1/2/3", "expected I/N"), ("", "expected I/N")],
)
def test_bad_shards_are_one_line_naming_the_value(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_shard(text)
    message = str(exc.value)
    assert "\n" not in message and words in message and message.startswith("--shard")


# --- predict --shard ---------------------------------------------------------------------------------
@pytest.fixture
def scans(synthetic_dataset: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    shutil.copytree(synthetic_dataset / "val", folder)  # 8 films
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_shards_concatenate_to_the_whole_run(
    scans: Path, tiny_checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["predict", str(scans), "-c", str(tiny_checkpoint_path), "--threshold", "0.5"]
    assert main([*base, "--out", str(tmp_path / "all.csv")]) == 0
    for i in range(3):
        assert main([*base, "--shard", f"{i}/3", "--out", str(tmp_path / f"preds-{i}.csv")]) == 0
    err = capsys.readouterr().err
    assert "shard 0/3: 3 of 8 files" in err and "shard 2/3: 2 of 8 files" in err
    texts = [(tmp_path / f"preds-{i}.csv").read_text().splitlines() for i in range(3)]
    assert len({t[0] for t in texts}) == 1  # the same header: keep the first, drop the others
    joined = tmp_path / "joined.csv"
    joined.write_text("\n".join([texts[0][0]] + [line for t in texts for line in t[1:]]) + "\n")
    whole = {r["file"]: r for r in _rows(tmp_path / "all.csv")}
    parts = _rows(joined)
    assert sorted(r["file"] for r in parts) == sorted(whole)  # every file exactly once
    assert {r["file"]: r for r in parts} == whole  # and the same prediction
    everything = sorted(whole)
    assert [r["file"] for r in _rows(tmp_path / "preds-1.csv")] == everything[1::3]


def test_predict_shard_with_no_files_writes_an_empty_table(
    scans: Path, tiny_checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "preds-9.csv"
    assert main(["predict", str(scans), "-c", str(tiny_checkpoint_path), "--shard", "9/10", "--out", str(out)]) == 0
    assert "shard 9/10: 0 of 8 files" in capsys.readouterr().err
    assert out.read_text().splitlines() == ["file,probability,label,threshold,ood_score,in_distribution,error"]


@pytest.mark.parametrize("command", ["predict", "explain"])
def test_a_bad_shard_is_one_line_and_exit_2(command: str, scans: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, str(scans), "--shard", "3/3", "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"pneumolens {command}: error: --shard 3/3: I must be from 0 to 2 (shards are numbered from 0)"


@pytest.mark.slow  # real processes / whole pipelines: runs in `make test`, not in test-fast
def test_explain_shards_split_the_files(scans: Path, tiny_checkpoint_path: Path, tmp_path: Path) -> None:
    explained = []
    for i in range(2):
        out = tmp_path / f"expl-{i}"
        assert main(["explain", str(scans), "-c", str(tiny_checkpoint_path), "--methods", "gradcam",
                     "--shard", f"{i}/2", "--out", str(out), "--no-progress"]) == 0
        explained.append(sorted(json.loads(p.read_text())["file"] for p in out.glob("*.json")))
    everything = sorted(str(p) for p in scans.rglob("*.jpeg"))
    assert explained == [everything[0::2], everything[1::2]]


# --- train / cv hand the scale-out flags to the Trainer -------------------------------------------
class _Stop(Exception):
    """Raised by the fake Trainer once it has recorded its arguments."""


@pytest.fixture
def trainer_kwargs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """Keyword arguments of every ``lightning.Trainer(...)`` built; the construction then stops the run."""
    import pneumolens.accel

    seen: list[dict[str, Any]] = []

    def fake_trainer(**kwargs: Any) -> None:
        seen.append(kwargs)
        raise _Stop

    monkeypatch.setattr(lightning, "Trainer", fake_trainer)
    monkeypatch.setattr(pneumolens.accel, "keep_freed_memory", lambda: True)
    monkeypatch.setenv("PNEUMOLENS_CACHE", str(tmp_path / "cache"))
    return seen


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": tiny_model_config().to_dict(), "batch_size": 8, "max_epochs": 1}))
    return cfg


@pytest.mark.parametrize("command", ["train", "cv"])
def test_the_cli_hands_accelerator_devices_and_nodes_to_the_trainer(
    command: str, trainer_kwargs: list[dict[str, Any]], synthetic_dataset: Path, tiny_yaml: Path, tmp_path: Path
) -> None:
    args = [command, "--data", str(synthetic_dataset), "--out", str(tmp_path / "run"), "--preset", "debug",
            "--config", str(tiny_yaml), "--no-progress", "--accelerator", "gpu", "--devices", "4", "--num-nodes", "2",
            "--strategy", "ddp"]
    if command == "cv":
        args += ["--folds", "2", "--fold-ids", "0"]
    with pytest.raises(_Stop):
        main(args)
    (kw,) = trainer_kwargs
    assert (kw["accelerator"], kw["devices"], kw["num_nodes"], kw["strategy"]) == ("gpu", 4, 2, "ddp")


def test_the_defaults_are_one_device_on_one_machine(
    trainer_kwargs: list[dict[str, Any]], synthetic_dataset: Path, tiny_yaml: Path, tmp_path: Path
) -> None:
    with pytest.raises(_Stop):
        main(["train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "run"), "--config", str(tiny_yaml),
              "--no-progress"])
    (kw,) = trainer_kwargs
    assert (kw["accelerator"], kw["devices"], kw["num_nodes"], kw["strategy"]) == ("auto", 1, 1, "auto")


def test_devices_auto_is_handed_on_as_auto(
    trainer_kwargs: list[dict[str, Any]], synthetic_dataset: Path, tiny_yaml: Path, tmp_path: Path
) -> None:
    with pytest.raises(_Stop):
        main(["train", "--data", str(synthetic_dataset), "--out", str(tmp_path / "run"), "--config", str(tiny_yaml),
              "--no-progress", "--devices", "auto"])
    assert trainer_kwargs[0]["devices"] == "auto"


@pytest.mark.parametrize("command", ["train", "cv"])
@pytest.mark.parametrize(
    "flag, value, words",
    [("--devices", "0", "0 must be >= 1 (devices)"), ("--devices", "two", "not a whole number of devices"),
     ("--num-nodes", "0", "0 must be >= 1 (machines)"), ("--accelerator", "tpu", "invalid choice")],
)
def test_bad_scale_flags_exit_2_before_any_work(
    command: str, flag: str, value: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--out", str(tmp_path / "run"), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and words in err
