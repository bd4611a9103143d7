"""Uploads: the request-size limit, in-memory multipart parsing, and bytes → pixels with clear errors.

Three guarantees live here:

* a request body over the limit gets 413, judged from ``Content-Length`` before anything is
  read *and* by counting the bytes as they arrive (a client may send no length, or lie);
* uploaded files are parsed into memory and never written to disk: Starlette spools files
  over 1 MB to a temporary file, so upload routes use a request whose parser keeps every part
  in memory (the body is already capped, so memory is bounded by the limit);
* an upload's file name is only ever a label in messages and JSON (its last path component,
  stripped of control characters), never part of a file path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import HTTPException, Request, Response, UploadFile
from fastapi.routing import APIRoute
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InvalidImageError, UnsupportedDicomError
from ..io import load_image

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_CHARS = 120


class UploadTooLarge(HTTPException):
    """A request body that went over the limit while it was being read (→ 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=too_large_message(limit))


def too_large_message(limit: int) -> str:
    return f"request body exceeds the upload limit of {limit:,} bytes (PNEUMOLENS_MAX_UPLOAD_BYTES)"


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413: by ``Content-Length``, then by counting.

    A declared length over the limit is answered at once, without reading the body. Otherwise
    the bytes are counted as the app reads them, and the read that crosses the limit raises
    :class:`UploadTooLarge` (an HTTPException, so FastAPI answers it with a JSON 413).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await JSONResponse({"detail": too_large_message(self.max_bytes)}, status_code=413)(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadTooLarge(self.max_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except UploadTooLarge as exc:  # raised where no exception handler saw it
            if started:
                raise
            await JSONResponse({"detail": exc.detail}, status_code=413)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class InMemoryFormRequest(Request):
    """A request whose multipart form keeps uploaded files in memory (never spooled to disk)."""

    async def form(  # type: ignore[override]  # awaited by FastAPI, like Starlette's
        self, *, max_files: int | float = 1000, max_fields: int | float = 1000, max_part_size: int = 1024 * 1024
    ) -> FormData:
        content_type = self.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            return await super().form(max_files=max_files, max_fields=max_fields, max_part_size=max_part_size)
        if getattr(self, "_in_memory_form", None) is None:
            settings = self.app.state.settings
            parser = MultiPartParser(
                self.headers,
                self.stream(),
                max_files=min(max_files, settings.max_files),
                max_fields=max_fields,
                max_part_size=max_part_size,
            )
            parser.spool_max_size = settings.max_upload_bytes + 1  # a part never outgrows memory
            try:
                self._in_memory_form = await parser.parse()
            except MultiPartException as exc:
                raise HTTPException(status_code=400, detail=f"malformed multipart upload: {exc.message}") from exc
        return self._in_memory_form


class UploadRoute(APIRoute):
    """Route class for upload endpoints: hands them an :class:`InMemoryFormRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def in_memory_handler(request: Request) -> Response:
            return await handler(InMemoryFormRequest(request.scope, request.receive))

        return in_memory_handler


def safe_name(filename: str | None, index: int) -> str:
    """A display label for an upload: its base name without control characters, or ``upload-N``."""
    name = _UNSAFE.sub("", (filename or "").replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if len(name) > MAX_NAME_CHARS:
        name = name[: MAX_NAME_CHARS - 3] + "..."
    return name or f"upload-{index + 1}"


def read_upload(upload: UploadFile, index: int, size: int) -> tuple[str, np.ndarray]:
    """Decode one uploaded file to the model's input: (label, uint8 (size, size)).

    Raises:
        InvalidImageError: the message names the file and the problem (see :func:`image_error_status`).
    """
    name = safe_name(upload.filename, index)
    upload.file.seek(0)
    return name, load_image(upload.file.read(), size, name=name)


def image_error_status(exc: InvalidImageError) -> int:
    """HTTP status for a bad image: 415 for a DICOM we cannot handle, 422 for the rest.

    422 (Unprocessable Content) covers files that are not images, corrupt or truncated ones,
    too-small ones and ones with too many pixels: the request was well formed, the file is not.
    """
    return 415 if isinstance(exc, UnsupportedDicomError) else 422
