"""Settings of the web service, read from ``PNEUMOLENS_*`` environment variables or given in code.

One typed object decides every limit the service enforces, so an operator can see and change
them in one place (``PNEUMOLENS_MAX_UPLOAD_BYTES=50000000 pneumolens serve``) and tests can
build an app with tiny limits without touching the environment.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: What ``cors_origins`` accepts: a scheme and a host (and port), nothing after it.
_ORIGIN = re.compile(r"^https?://[^/\s?#@]+$", re.IGNORECASE)


class ServeSettings(BaseSettings):
    """What ``pneumolens serve`` and :func:`~pneumolens.service.create_app` run with.

    Every field can be set with an environment variable named ``PNEUMOLENS_`` + the field name
    in capitals (``PNEUMOLENS_CHECKPOINT``, ``PNEUMOLENS_PORT``...); values given in code win.

    Attributes:
        checkpoint: the model file or run folder to serve. Default: ``None``, the shipped model.
        threshold: override the checkpoint's decision threshold. Default: the checkpoint's.
        host: interface to listen on. Default: ``127.0.0.1`` (this machine only; the service has
            no authentication).
        port: TCP port. Default: 8000.
        max_upload_bytes: largest request body accepted (all files of a request together,
            multipart framing included); larger requests get 413. Default: 20 MB.
        max_files: most files in one ``/v1/predict`` request. Default: 64.
        predict_threads: CPU threads of each prediction in the web process (torch and ONNX
            Runtime intra-op threads). Requests run concurrently, so one thread each avoids
            oversubscribing the cores (see ``bench/bench_service.py``). ``None``: torch's default.
            Default: 1.
        batch_predictions: predict the images of concurrent ``/v1/predict`` requests together,
            one model call at a time (:mod:`pneumolens.service.batching`). Default: true.
        max_concurrent_explanations: explanations computed at the same time, each in its own
            worker process; one more gets 503 with ``Retry-After``. Default: 1.
        explain_time_limit_s: wall-clock limit of one explanation request; its worker process
            is stopped at the limit and the request gets 504. Default: 120 s.
        explain_threads: CPU threads of each explanation worker, so that an explanation leaves
            cores to predictions. Default: 1.
        explain_prestart: start the explanation workers when the service starts (else on the
            first explanation request). Default: true.
        retry_after_s: the ``Retry-After`` advice sent with a 503. Default: 10 s.
        max_concurrent_large_decodes: uploads of more than 16 MB decoded
            (:data:`pneumolens.io.LARGE_DECODE_BYTES`) decoded at the same time; others wait, so
            concurrent requests cannot add up the memory of many large decodes. Default: 2.
        allowed_hosts: host names besides ``localhost``, ``127.0.0.1``, ``[::1]`` and the bound
            address that the ``Host`` header may name (a comma-separated list in the
            environment); any other gets 400, which defeats DNS rebinding. ``*`` allows every
            host (only behind a proxy that checks it). Default: none.
        cors_origins: web origins (``https://viewer.example``) whose pages may call the API;
            they get CORS headers. A POST from any other page's origin gets 403. Default: none
            (only the service's own page).
    """

    model_config = SettingsConfigDict(env_prefix="PNEUMOLENS_", extra="ignore")

    checkpoint: Path | None = None
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_upload_bytes: int = Field(default=20_000_000, gt=0)
    max_files: int = Field(default=64, ge=1)
    predict_threads: int | None = Field(default=1, ge=1)
    batch_predictions: bool = True
    max_concurrent_explanations: int = Field(default=1, ge=1, le=64)
    explain_time_limit_s: float = Field(default=120.0, gt=0)
    explain_threads: int = Field(default=1, ge=1)
    explain_prestart: bool = True
    retry_after_s: int = Field(default=10, ge=1)
    max_concurrent_large_decodes: int = Field(default=2, ge=1)
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """``"a, b"`` (the environment's form) → ``["a", "b"]``; lists pass through."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not _ORIGIN.match(origin):
                raise ValueError(
                    f"{origin!r} is not a web origin such as https://viewer.example (scheme and host only)"
                )
        return [origin.lower().rstrip("/") for origin in value]
