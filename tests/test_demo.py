"""The demo (make demo's main job) end to end on a synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pneumolens.cli import main


@pytest.mark.slow  # the whole pipeline: two evaluations and three explanation methods
def test_demo_evaluates_and_explains(synthetic_dataset: Path, trained_tiny_checkpoint_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--data", str(synthetic_dataset), "--out", str(out), "--checkpoint",
                 str(trained_tiny_checkpoint_path), "--no-progress"])
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["splits"]) == {"validation", "val"}
    assert s["splits"]["val"]["n"] == 8
    for split in ("validation", "val"):
        assert (out / split / "metrics.json").exists() and (out / split / "roc.png").exists()
    assert len(s["explanations"]["files"]) == 2
    assert (out / "explanations" / "index.html").exists()
    md = (out / "summary.md").read_text()
    assert "not a medical device" in md and "official val" in md


def test_demo_without_data_exits_2_with_where_to_get_it(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["demo", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "paultimothymooney/chest-xray-pneumonia" in capsys.readouterr().err
