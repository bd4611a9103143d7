"""Checkpoint provenance: which commit trained a model, also from a tree unpacked by git archive."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_tree_unpacked_from_git_archive_knows_its_commit(tmp_path: Path) -> None:
    """Runs started from ``git archive HEAD | tar -x`` (no .git) recorded no commit in their provenance."""
    from pneumolens.checkpoint import archived_commit

    f = tmp_path / "COMMIT"
    f.write_text("$Format:%H$\n")  # a checkout: the placeholder git archive replaces
    assert archived_commit(f) is None and archived_commit(tmp_path / "missing") is None
    f.write_text("4cb8426" + "0" * 33 + "\n")
    assert archived_commit(f) == "4cb8426" + "0" * 33
    f.write_text("not a commit\n")
    assert archived_commit(f) is None


def test_git_archive_substitutes_the_commit_into_the_commit_file(tmp_path: Path) -> None:
    import subprocess
    import tarfile

    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    tar = tmp_path / "a.tar"
    subprocess.run(["git", "archive", "-o", str(tar), "HEAD", "pneumolens/COMMIT"], cwd=repo, check=True)
    with tarfile.open(tar) as t:
        text = t.extractfile("pneumolens/COMMIT").read().decode().strip()
    assert text == head.stdout.strip()
