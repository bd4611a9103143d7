"""Every command whose --out is a folder checks it before any work (pneumolens.cli)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumolens.cli import main


@pytest.mark.parametrize("argv", [
    ["audit"], ["evaluate"], ["explain-eval"], ["cv", "--preset", "debug"], ["train", "--preset", "debug"], ["demo"],
    ["ood-eval"], ["explain", "film.png"],
])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Found by a hostile pass: these raised FileExistsError / NotADirectoryError tracebacks (exit 1)."""
    taken = tmp_path / "afile"
    taken.write_text("keep me")
    for out in (taken, taken / "sub"):
        assert main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(out) in err and "is not a folder" in err, err
    assert taken.read_text() == "keep me"
