"""``pneumolens serve``: the web page and REST API (FastAPI under uvicorn), on this machine by default.

Options override ``PNEUMOLENS_*`` environment variables (see
:class:`~pneumolens.service.settings.ServeSettings`). The checkpoint is loaded before the
server starts, so a bad ``--checkpoint`` is one line and exit code 2, not a traceback.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from ..devices import add_device_argument, resolve_device
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..service.settings import ServeSettings

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve the web page and REST API (prediction and explanations)",
        description=(
            "Serve a page to upload a chest X-ray and see the prediction and its explanations, and the "
            "REST API behind it (/v1/predict, /v1/explain, /v1/model, /healthz; OpenAPI at /docs). "
            "Research use only: not a medical device. There is no authentication: keep the default "
            "127.0.0.1 unless a proxy in front of it controls access."
        ),
        epilog=(
            "Every setting can also come from the environment: PNEUMOLENS_HOST, PNEUMOLENS_PORT, "
            "PNEUMOLENS_CHECKPOINT, PNEUMOLENS_THRESHOLD, PNEUMOLENS_MAX_UPLOAD_BYTES, PNEUMOLENS_MAX_FILES, "
            "PNEUMOLENS_PREDICT_THREADS, PNEUMOLENS_BATCH_PREDICTIONS (true: concurrent requests share forward "
            "passes), PNEUMOLENS_MAX_CONCURRENT_EXPLANATIONS, PNEUMOLENS_EXPLAIN_TIME_LIMIT_S, "
            "PNEUMOLENS_EXPLAIN_THREADS, PNEUMOLENS_RETRY_AFTER_S, PNEUMOLENS_MAX_CONCURRENT_LARGE_DECODES "
            "(uploads decoded to more than 16 MB at once), PNEUMOLENS_ALLOWED_HOSTS and PNEUMOLENS_CORS_ORIGINS "
            "(comma-separated); options win. "
            "Examples: pneumolens serve --port 8000 (the shipped model); pneumolens serve --checkpoint "
            "runs/train/model.pt (a model of your own, written by `pneumolens train --out runs/train`)"
        ),
    )
    p.add_argument("--host", default=None, help="interface to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: 8000)")
    p.add_argument(
        "--checkpoint", "-c", type=Path, default=None, help="model.pt or a run folder (default: the shipped model)"
    )
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the checkpoint's)")
    p.add_argument("--max-upload-mb", type=float, default=None, help="largest request body in MB (default: 20)")
    p.add_argument(
        "--explain-workers", type=int, default=None, help="explanations computed at once, one process each (default: 1)"
    )
    p.add_argument(
        "--explain-time-limit", type=float, default=None, help="seconds per explanation request (default: 120)"
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="NAME",
        help="a host name the service may be reached by, besides localhost, 127.0.0.1, [::1] and --host "
        "(repeatable; requests naming another Host get 400)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="a web origin (https://viewer.example) whose pages may call the API (repeatable; "
        "cross-origin POSTs from any other page get 403)",
    )
    add_device_argument(p)
    p.set_defaults(func=run)
    return p


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """Environment settings with the command-line options laid over them (imported lazily: the
    CLI's other commands should not pay for importing FastAPI).

    Raises:
        ConfigError: an invalid value, named by its option.
    """
    from pydantic import ValidationError

    from ..service.settings import ServeSettings

    given = {
        "host": args.host,
        "port": args.port,
        "checkpoint": args.checkpoint,
        "threshold": args.threshold,
        "max_upload_bytes": None if args.max_upload_mb is None else int(args.max_upload_mb * 1_000_000),
        "max_concurrent_explanations": args.explain_workers,
        "explain_time_limit_s": args.explain_time_limit,
        "allowed_hosts": args.allowed_host,
        "cors_origins": args.cors_origin,
    }
    try:
        return ServeSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise ConfigError(
            f"serve: invalid {field} ({err['msg']}); check the option or PNEUMOLENS_{field.upper()}"
        ) from None


def check_listen_address(host: str, port: int) -> None:
    """Bind ``host:port`` the way uvicorn will, then let it go: a port in use or an address that is
    not this machine's is one line now, not uvicorn's log and exit code 3 later.

    Raises:
        ConfigError: the address cannot be listened on, with the reason and the option to change.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no obstacle
            sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = "the address is already in use (another server?); pick another --port"
        elif exc.errno == errno.EADDRNOTAVAIL:
            reason = "not an address of this machine; check --host"
        elif exc.errno == errno.EACCES:
            reason = "permission denied (ports below 1024 need privileges); pick another --port"
        elif isinstance(exc, socket.gaierror):
            reason = f"unknown host name ({exc.strerror}); check --host"
        else:
            reason = f"{exc.strerror or exc}; check --host and --port"
        raise ConfigError(f"cannot listen on {where}: {reason}") from None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..inference import Predictor
    from ..service import create_app

    settings = settings_from_args(args)
    device = resolve_device(args.device, "--device")
    check_listen_address(settings.host, settings.port)
    # CheckpointError → exit 2
    predictor = Predictor(settings.checkpoint, threshold=settings.threshold, device=device)
    if not _is_loopback(settings.host):
        log.warning(
            "listening on %s: the service has no authentication; anyone who can reach it can use it "
            "(requests must name this machine in Host: add its names with --allowed-host)",
            settings.host,
        )
    log.info("PneumoLens at http://%s:%d/ (research use only: not a medical device)", settings.host, settings.port)
    uvicorn.run(create_app(settings, predictor=predictor), host=settings.host, port=settings.port, log_level="info")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
