"""The FastAPI application: :func:`create_app` wires settings, model, workers, routes and the page.

Startup (``lifespan``) loads one :class:`~pneumolens.inference.Predictor` into ``app.state``,
starts the prediction batcher and the explanation workers, and caps the large image decodes
running at once (:func:`pneumolens.io.limit_large_decodes`); shutdown undoes all three. Every
request first passes the ``Host`` / ``Origin`` checks of :mod:`pneumolens.service.guard`.
Nothing is loaded at import time, so importing this module is cheap and every test builds its
own app with its own settings.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..checkpoint import SHIPPED
from ..errors import CheckpointError, InvalidImageError, PneumoLensError
from ..inference import Predictor
from ..io import limit_large_decodes
from .batching import PredictionBatcher
from .explaining import available_methods
from .guard import HostOriginGuard
from .routers import explain, health, predict
from .schemas import NOTICE
from .settings import ServeSettings
from .uploads import BodyLimitMiddleware, image_error_status
from .workers import ExplainBusy, ExplainFailed, ExplainInputError, ExplainPool, ExplainTimeout

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: The page and its assets come only from this app: no CDN, no inline script.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def _load_predictor(settings: ServeSettings) -> Predictor:
    predictor = Predictor(settings.checkpoint, threshold=settings.threshold)
    _ = predictor.fast_model  # build the optimised model now, not on the first request (~1 s)
    return predictor


def _worker_extras(settings: ServeSettings, size: int, stored: Any = None) -> dict[str, Any]:
    """SHAP's training background: the films stored in the checkpoint (``stored``, what the CLI uses
    too), else ``background.npy`` (of the model's size) beside the checkpoint.

    Without either, GradientSHAP falls back to a blurred copy of the image (recorded in its params).
    """
    if stored is not None:
        return {"background": stored}
    try:
        from ..explain.shap import background_beside, load_background
    except ImportError:
        return {}
    path = background_beside(settings.checkpoint if settings.checkpoint is not None else SHIPPED)
    if not path.is_file():
        return {}
    try:
        background = load_background(path)
    except CheckpointError as exc:
        log.warning("ignoring the SHAP background: %s", exc)
        return {}
    if background.shape[1:] != (size, size):
        log.warning("ignoring the SHAP background %s: %s images, the model takes %d", path, background.shape[1:], size)
        return {}
    return {"background": background}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model (unless one was given to :func:`create_app`), start workers; stop them after."""
    settings: ServeSettings = app.state.settings
    threads_before = torch.get_num_threads()
    decodes_before = limit_large_decodes(settings.max_concurrent_large_decodes)  # bounds the memory of uploads
    if settings.predict_threads is not None:
        torch.set_num_threads(settings.predict_threads)  # before the predictor builds its fast copy
    predictor = app.state.preloaded or await run_in_threadpool(_load_predictor, settings)
    pool = None
    if app.state.methods:
        extras = await run_in_threadpool(_worker_extras, settings, predictor.size,
                                         getattr(predictor.checkpoint, "shap_background", None))
        pool = ExplainPool(
            predictor.checkpoint,
            size=settings.max_concurrent_explanations,
            time_limit_s=settings.explain_time_limit_s,
            threads=settings.explain_threads,
            extras=extras,
        )
        if settings.explain_prestart:
            pool.start()
    batcher = PredictionBatcher(max_images=predictor.batch_size) if settings.batch_predictions else None
    app.state.predictor, app.state.explain_pool, app.state.batcher = predictor, pool, batcher
    try:
        yield
    finally:
        app.state.predictor = app.state.explain_pool = app.state.batcher = None
        if batcher is not None:
            await run_in_threadpool(batcher.close)
        if pool is not None:
            await run_in_threadpool(pool.close)
        torch.set_num_threads(threads_before)
        limit_large_decodes(decodes_before)


class SecurityHeaders:
    """Adds ``nosniff`` and ``no-referrer`` to every response, and a strict CSP to the page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        page = path == "/" or path.startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if page:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    """Library errors → HTTP statuses, each with a one-line JSON ``detail``."""

    @app.exception_handler(InvalidImageError)
    async def bad_image(request: Request, exc: InvalidImageError) -> JSONResponse:
        return _error(image_error_status(exc), str(exc))

    @app.exception_handler(ExplainInputError)
    async def bad_explain_request(request: Request, exc: ExplainInputError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(ExplainBusy)
    async def busy(request: Request, exc: ExplainBusy) -> JSONResponse:
        return _error(503, str(exc), headers={"Retry-After": str(settings.retry_after_s)})

    @app.exception_handler(ExplainTimeout)
    async def timed_out(request: Request, exc: ExplainTimeout) -> JSONResponse:
        return _error(504, str(exc))

    @app.exception_handler(ExplainFailed)
    async def failed(request: Request, exc: ExplainFailed) -> JSONResponse:
        return _error(500, str(exc))

    @app.exception_handler(PneumoLensError)
    async def other(request: Request, exc: PneumoLensError) -> JSONResponse:
        return _error(422, str(exc))


def _offline_docs_dir() -> Path | None:
    """Swagger UI's files from the ``fastapi-offline`` package, if installed (else /docs uses a CDN)."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    assets = Path(fastapi_offline.__file__).resolve().parent / "static"
    return assets if (assets / "swagger-ui-bundle.js").is_file() else None


def _add_offline_docs(app: FastAPI, assets: Path) -> None:
    """Serve ``/docs`` from local Swagger UI files: the docs work on an offline machine too."""
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount("/docs-static", StaticFiles(directory=assets), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )


def create_app(settings: ServeSettings | None = None, predictor: Predictor | None = None) -> FastAPI:
    """Build the service.

    Args:
        settings: limits, checkpoint, workers. Default: ``ServeSettings()`` (environment).
        predictor: an already loaded model to serve (the CLI loads it first to report a bad
            checkpoint in one line). Default: load ``settings.checkpoint`` at startup.

    Explanation workers are started with ``multiprocessing``'s *spawn* method, which re-imports
    the main module: a script that calls this must guard its entry point with
    ``if __name__ == "__main__":`` (``pneumolens serve`` and ``uvicorn`` already do).

    Example::

        >>> app = create_app(ServeSettings(checkpoint="runs/train/model.pt"))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)                       # doctest: +SKIP
    """
    settings = settings or ServeSettings()
    docs_assets = _offline_docs_dir()
    app = FastAPI(
        title="PneumoLens",
        version=__version__,
        summary="Pneumonia in paediatric chest X-rays: prediction and explanations.",
        description=NOTICE,
        lifespan=lifespan,
        docs_url=None if docs_assets else "/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.preloaded = predictor
    app.state.methods = available_methods()
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    # outermost first: security headers on every answer, then Host / Origin checks before any work
    app.add_middleware(
        HostOriginGuard,
        bound_host=settings.host,
        allowed_hosts=settings.allowed_hosts,
        cors_origins=settings.cors_origins,
    )
    app.add_middleware(SecurityHeaders)
    _add_error_handlers(app, settings)
    app.include_router(health.router)
    app.include_router(predict.router)
    app.include_router(explain.router)
    if docs_assets is not None:
        _add_offline_docs(app, docs_assets)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return app
