"""Issue 17: a hostile replay through the real command line, in a subprocess (real logging, real stderr).

The per-item tests live beside the code they test (test_io, test_predict_cli, test_explain_cli,
test_service_api, test_service_cli, test_explain_settings); this file checks what only a real
process shows: no traceback and no raw control character ever reaches the terminal, and every
line on stderr is one of the command's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PYDICOM_FILES = ("JPEG-lossy.dcm", "JPGExtended.dcm", "GDCMJ2K_TextGBR.dcm", "JPEG2000-embedded-sequence-delimiter.dcm")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pneumolens.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
        errors="backslashreplace", env={**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"},
    )


def pydicom_files() -> list[Path]:
    from pydicom.data import get_testdata_file

    found = []
    for name in PYDICOM_FILES:
        try:
            path = get_testdata_file(name)
        except Exception:
            path = None
        if path is not None:
            found.append(Path(path))
    if not found:
        pytest.skip("none of pydicom's compressed test files is available offline")
    return found


#: A small image with content (a blank one is refused as bad input).
FILM = (np.add.outer(np.arange(40), np.arange(48)) * 2 + 30).astype(np.uint8)


@pytest.mark.slow  # real processes / whole pipelines: runs in `make test`, not in test-fast
def test_hostile_folder_replay_is_only_one_line_messages(tmp_path: Path, tiny_checkpoint_path: Path):
    """Undecodable DICOMs (item 5), a symlink loop (3), control characters in names (7), a non-DICOM .dcm (6)."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    for f in pydicom_files():
        shutil.copy(f, folder / f.name)
    os.symlink("selfref.jpeg", folder / "selfref.jpeg")
    (folder / "notes.dcm").write_text("not a DICOM file at all\n")
    (folder / "bad\nline\x1b[31m.png").write_text("not an image")
    Image.fromarray(FILM).save(folder / "ok\x1b]0;title\x07.png")
    run = cli("predict", str(folder), "-c", str(tiny_checkpoint_path), "--skip-bad")
    assert run.returncode == 0, run.stderr
    for stream in (run.stdout, run.stderr):
        assert "Traceback" not in stream and "\x1b" not in stream and "\x07" not in stream
    lines = run.stderr.splitlines()
    assert lines and all(line.startswith("pneumolens predict: ") for line in lines), run.stderr
    n_bad = len(pydicom_files()) + 3
    assert len([line for line in lines if "warning: skipped" in line]) == n_bad
    assert f"1 predicted, {n_bad} skipped" in run.stdout
    assert "pip install pylibjpeg" in run.stderr and "symbolic links" in run.stderr and "not a DICOM file" in run.stderr
    again = cli("predict", str(folder), "-c", str(tiny_checkpoint_path))
    assert again.returncode == 2 and "Traceback" not in again.stderr
    errors = [line for line in again.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--skip-bad" in errors[0]


@pytest.mark.slow  # real processes / whole pipelines: runs in `make test`, not in test-fast
def test_hostile_explain_settings_replay_is_one_line_and_exit_2(tmp_path: Path, tiny_checkpoint_path: Path):
    image = tmp_path / "film.png"
    Image.fromarray(FILM).save(image)
    run = cli("explain", str(image), "-c", str(tiny_checkpoint_path), "--out", str(tmp_path / "o"), "--no-progress",
              "--methods", "gradcam:layer=lstm1")
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].startswith("pneumolens explain: error: --methods gradcam:layer=lstm1: ")
    assert "not a convolutional layer" in lines[0]


def test_printable_escapes_every_kind_of_control_character():
    from pneumolens.printable import printable

    assert printable("plain name.png") == "plain name.png"
    assert printable("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert printable("x\x1b[31my\x07") == "x\\x1b[31my\\x07"
    assert printable("\x9b2J") == "\\x9b2J"  # the one-byte CSI of C1
    assert printable("abc\u202eexe.png") == "abc\\u202eexe.png"  # right-to-left override
    assert printable(os.fsdecode(b"raw\xff.png")) == "raw\\xff.png"  # a byte that is not UTF-8
    assert printable("é, ü, 日本") == "é, ü, 日本"
