"""Request dependencies: how an endpoint reaches the predictor, the batcher and the workers.

Everything loaded at startup lives on ``app.state`` and is reached only through these
functions, so a test can swap any of them with ``app.dependency_overrides[get_predictor] = ...``.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from ..inference import Predictor
from .batching import PredictionBatcher
from .workers import ExplainPool


def get_predictor(request: Request) -> Predictor:
    """The loaded model; 503 while the service is still starting (or already stopping)."""
    predictor = getattr(request.app.state, "predictor", None)
    if predictor is None:
        raise HTTPException(status_code=503, detail="the model is not loaded yet; retry in a moment")
    return predictor


def get_explain_pool(request: Request) -> ExplainPool | None:
    """The explanation workers, or ``None`` where this install has no explanation library."""
    return getattr(request.app.state, "explain_pool", None)


def get_batcher(request: Request) -> PredictionBatcher | None:
    """The shared prediction batcher, or ``None`` when ``batch_predictions`` is off."""
    return getattr(request.app.state, "batcher", None)
