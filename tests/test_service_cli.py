"""``pneumolens serve``: options and environment become settings; a bad checkpoint is one line, exit 2.

uvicorn.run is replaced by a recorder: these tests check the wiring, not a running server
(``test_service_browser.py`` runs a real one).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import uvicorn  # noqa: E402

from pneumolens.cli import main  # noqa: E402
from pneumolens.commands import serve as serve_cmd  # noqa: E402

REAL_ADDRESS_CHECK = serve_cmd.check_listen_address

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def served(monkeypatch) -> dict:
    calls: dict = {}

    def fake_run(app, host, port, **kwargs):
        calls.update(app=app, host=host, port=port)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(serve_cmd, "check_listen_address", lambda host, port: None)  # port 8000 may be taken here
    for var in ("PNEUMOLENS_HOST", "PNEUMOLENS_PORT", "PNEUMOLENS_MAX_UPLOAD_BYTES", "PNEUMOLENS_CHECKPOINT"):
        monkeypatch.delenv(var, raising=False)
    return calls


def test_serve_defaults_to_loopback_and_loads_the_checkpoint(served, tiny_checkpoint_path: Path):
    assert main(["serve", "--checkpoint", str(tiny_checkpoint_path)]) == 0
    assert served["host"] == "127.0.0.1" and served["port"] == 8000
    app = served["app"]
    assert app.state.settings.checkpoint == tiny_checkpoint_path
    assert app.state.preloaded is not None and app.state.preloaded.size == 32
    assert app.state.settings.max_upload_bytes == 20_000_000


def test_options_override_the_environment(served, tiny_checkpoint_path: Path, monkeypatch):
    monkeypatch.setenv("PNEUMOLENS_PORT", "9001")
    monkeypatch.setenv("PNEUMOLENS_MAX_UPLOAD_BYTES", "1234567")
    argv = [
        "serve",
        "-c",
        str(tiny_checkpoint_path),
        "--max-upload-mb",
        "5",
        "--explain-workers",
        "2",
        "--threshold",
        "0.3",
    ]
    assert main(argv) == 0
    settings = served["app"].state.settings
    assert served["port"] == 9001  # from the environment
    assert settings.max_upload_bytes == 5_000_000  # the option wins over the environment
    assert settings.max_concurrent_explanations == 2
    assert served["app"].state.preloaded.threshold == 0.3


def test_missing_checkpoint_is_one_line_and_exit_2(served, tmp_path: Path, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.pt" in err and "does not exist" in err
    assert served == {}


@pytest.mark.parametrize("argv, words", [(["--port", "70000"], "port"), (["--threshold", "1.5"], "threshold")])
def test_invalid_values_name_the_option(served, tiny_checkpoint_path: Path, capsys, argv, words):
    assert main(["serve", "-c", str(tiny_checkpoint_path), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert served == {}


def test_listening_beyond_loopback_warns(served, tiny_checkpoint_path: Path, caplog):
    assert main(["serve", "-c", str(tiny_checkpoint_path), "--host", "0.0.0.0"]) == 0
    assert served["host"] == "0.0.0.0"
    assert any("no authentication" in r.getMessage() for r in caplog.records)


def test_help_names_every_environment_variable(capsys):
    from pneumolens.service.settings import ServeSettings

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    missing = [
        f for f in ServeSettings.model_fields if f != "explain_prestart" and f"PNEUMOLENS_{f.upper()}" not in text
    ]
    assert missing == []


def test_a_port_in_use_is_one_line_and_exit_2(served, tiny_checkpoint_path: Path, capsys, monkeypatch):
    """Issue 17 item 11: uvicorn printed 7 log lines and exited 3."""
    import socket

    monkeypatch.setattr(serve_cmd, "check_listen_address", REAL_ADDRESS_CHECK)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "-c", str(tiny_checkpoint_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"127.0.0.1:{port}" in err[0] and "already in use" in err[0] and "--port" in err[0]
    assert served == {}


def test_an_address_that_is_not_this_machines_is_one_line_and_exit_2(served, tiny_checkpoint_path: Path, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr(serve_cmd, "check_listen_address", REAL_ADDRESS_CHECK)
    assert main(["serve", "-c", str(tiny_checkpoint_path), "--host", "203.0.113.7", "--port", "8123"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "203.0.113.7:8123" in err[0] and "--host" in err[0]
    assert served == {}


def test_allowed_hosts_and_cors_origins_options(served, tiny_checkpoint_path: Path):
    argv = ["serve", "-c", str(tiny_checkpoint_path), "--allowed-host", "xray.lan", "--allowed-host", "10.0.0.5",
            "--cors-origin", "https://viewer.example"]
    assert main(argv) == 0
    settings = served["app"].state.settings
    assert settings.allowed_hosts == ["xray.lan", "10.0.0.5"]
    assert settings.cors_origins == ["https://viewer.example"]


def test_a_malformed_cors_origin_option_is_one_line(served, tiny_checkpoint_path: Path, capsys):
    assert main(["serve", "-c", str(tiny_checkpoint_path), "--cors-origin", "viewer.example/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cors_origins" in err[0] and "viewer.example/x" in err[0]
    assert served == {}
