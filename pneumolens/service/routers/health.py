"""``GET /healthz`` and ``GET /v1/model``: cheap, never touch the model's weights."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from ...inference import Predictor
from ..dependencies import get_explain_pool, get_predictor
from ..schemas import Health, ModelCard
from ..workers import ExplainPool

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=Health, summary="Liveness and readiness")
async def healthz(request: Request, pool: Annotated[ExplainPool | None, Depends(get_explain_pool)]) -> Health:
    """``ok`` once the model is loaded; also how many explanation workers are busy.

    An ``async`` endpoint that does no work: it answers at once even while explanations run.
    """
    loaded = getattr(request.app.state, "predictor", None) is not None
    explanations: dict[str, Any] = pool.status() if pool is not None else {"workers": 0, "busy": 0}
    explanations["methods"] = request.app.state.methods
    return Health(status="ok" if loaded else "starting", model_loaded=loaded, explanations=explanations)


@router.get("/v1/model", response_model=ModelCard, summary="The served model's card")
def model_card(predictor: Annotated[Predictor, Depends(get_predictor)]) -> ModelCard:
    """Architecture, parameter count, decision threshold in use, provenance and validation metrics."""
    info = predictor.checkpoint.info()
    info["threshold"] = predictor.threshold  # the one in use (a --threshold override wins)
    return ModelCard(**{k: v for k, v in info.items() if k in ModelCard.model_fields})
