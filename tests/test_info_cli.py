"""`pneumolens info`: a checkpoint's metadata as text or JSON; one-line errors for bad files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pneumolens import checkpoint as checkpoint_mod
from pneumolens.checkpoint import load_checkpoint
from pneumolens.cli import main
from pneumolens.model import count_parameters


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], err
    return lines[0]


def test_json(tiny_checkpoint_path, capsys):
    assert main(["info", "--checkpoint", str(tiny_checkpoint_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    ckpt = load_checkpoint(tiny_checkpoint_path)
    assert info["parameters"] == count_parameters(ckpt.model) > 0
    assert info["checkpoint"] == str(tiny_checkpoint_path)
    assert info["config"]["input_size"] == 32 and info["config"]["channels"] == [4, 8, 8]
    assert info["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert info["threshold"] == 0.5 and info["threshold_rule"] == "fixed"
    assert info["preprocessing"]["size"] == 32


def test_text(tiny_checkpoint_path, capsys):
    assert main(["info", "-c", str(tiny_checkpoint_path)]) == 0
    out = capsys.readouterr().out
    n = count_parameters(load_checkpoint(tiny_checkpoint_path).model)
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines() if len(line.split()) > 1}
    assert lines["parameters"] == f"{n:,}"
    assert lines["threshold"] == "0.5"
    assert lines["class_names"] == "NORMAL, PNEUMONIA"
    assert "config:" in out and "  input_size" in out and "provenance:" in out


def test_run_folder_is_accepted(tiny_checkpoint_path, tmp_path, capsys):
    shutil.copy(tiny_checkpoint_path, tmp_path / "model.pt")
    assert main(["info", "-c", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] > 0


def test_text_file(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_text("hello, I am not a checkpoint\n")
    assert main(["info", "-c", str(bad)]) == 2
    line = error_line(capsys.readouterr().err)
    assert str(bad) in line and "not a readable PneumoLens checkpoint" in line


def test_foreign_torch_file(tmp_path, capsys):
    bad = tmp_path / "other.pt"
    torch.save({"weights": torch.randn(3, 3), "epoch": 4}, bad)
    assert main(["info", "-c", str(bad)]) == 2
    line = error_line(capsys.readouterr().err)
    assert str(bad) in line and "not a PneumoLens checkpoint" in line


def test_truncated_checkpoint(tiny_checkpoint_path, tmp_path, capsys):
    data = tiny_checkpoint_path.read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[: len(data) // 2])
    assert main(["info", "-c", str(bad)]) == 2
    assert str(bad) in error_line(capsys.readouterr().err)


def test_mismatched_weights(tiny_checkpoint_path, tmp_path, capsys):
    payload = torch.load(tiny_checkpoint_path, weights_only=True)
    payload["config"]["channels"] = [4, 8, 16]
    bad = tmp_path / "mismatch.pt"
    torch.save(payload, bad)
    assert main(["info", "-c", str(bad)]) == 2
    assert "do not match" in error_line(capsys.readouterr().err)


def test_missing_file(tmp_path, capsys):
    assert main(["info", "-c", str(tmp_path / "nope.pt")]) == 2
    assert "does not exist" in error_line(capsys.readouterr().err)


def test_default_is_the_shipped_model(tiny_checkpoint_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint_mod, "SHIPPED", tmp_path / "weights" / "model.pt")
    assert main(["info"]) == 2
    assert "no model is shipped" in error_line(capsys.readouterr().err)
    monkeypatch.setattr(checkpoint_mod, "SHIPPED", tiny_checkpoint_path)
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["checkpoint"].endswith("(shipped)") and info["parameters"] > 0


@pytest.mark.parametrize("flag", ["--json", None])
def test_output_is_only_the_info(tiny_checkpoint_path, capsys, flag):
    args = ["info", "-c", str(tiny_checkpoint_path)] + ([flag] if flag else [])
    assert main(args) == 0
    assert capsys.readouterr().err == ""
