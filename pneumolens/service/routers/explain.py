"""``POST /v1/explain``: one uploaded image → prediction + an overlay per explanation method.

The explanation itself runs in a worker process (:mod:`pneumolens.service.workers`) under the
service's concurrency and time limits; this endpoint only checks the request, predicts, and
waits for the worker in FastAPI's thread pool.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from PIL import Image

from ...inference import Predictor
from ..dependencies import get_explain_pool, get_predictor
from ..explaining import DEFAULT_METHODS, film_of_upload, parse_methods
from ..schemas import ExplainResponse, MethodResult, MethodsResponse, Prediction, error_responses
from ..uploads import UploadRoute, read_upload
from ..workers import ExplainPool

router = APIRouter(prefix="/v1", tags=["explain"], route_class=UploadRoute)


@router.get("/explain/methods", response_model=MethodsResponse, summary="Explanation methods on offer")
async def methods(request: Request) -> MethodsResponse:
    available = request.app.state.methods
    return MethodsResponse(methods=available, default=[m for m in DEFAULT_METHODS if m in available])


@router.post(
    "/explain",
    response_model=ExplainResponse,
    summary="Predict and explain one X-ray",
    responses=error_responses(400, 413, 415, 422, 500, 503, 504),
)
def explain(
    file: Annotated[UploadFile, File(description="one chest X-ray: JPEG, PNG or DICOM")],
    predictor: Annotated[Predictor, Depends(get_predictor)],
    pool: Annotated[ExplainPool | None, Depends(get_explain_pool)],
    methods: Annotated[
        str,
        Form(
            description=(
                "comma-separated methods, each optionally with settings: "
                "`gradcam,lime:n_samples=200`; see GET /v1/explain/methods"
            ),
            max_length=1000,
        ),
    ] = ",".join(DEFAULT_METHODS),
    raw: Annotated[bool, Form(description="also return each raw map (S x S floats)")] = False,
    seed: Annotated[int, Form(ge=0, le=2**31 - 1, description="seed of every random draw")] = 0,
) -> ExplainResponse:
    """The prediction, then for each method a base64 PNG overlay, its timing and settings.

    Positive attribution is evidence for PNEUMONIA. 503 with ``Retry-After`` when every
    explanation worker is busy; 504 when the explanation runs past the time limit.
    """
    t0 = time.perf_counter()
    if pool is None:
        raise HTTPException(status_code=503, detail="explanations are not available in this install")
    specs = parse_methods(methods, model=getattr(predictor, "model", None), size=predictor.size)
    name, image = read_upload(file, 0, predictor.size)
    p = predictor.predict_arrays(np.stack([image]), [name])[0]
    film = film_of_upload(file, name)  # the overlays are drawn on the film in its own aspect ratio
    results = pool.run({"image": image, "film": film, "methods": specs, "raw": raw, "seed": seed})
    return ExplainResponse(
        prediction=Prediction.of(p),
        input_png=png_base64(image),
        explanations=[MethodResult(**r) for r in results],
        elapsed_s=time.perf_counter() - t0,
    )


def png_base64(image: np.ndarray) -> str:
    """A uint8 grayscale array as a base64 PNG (for the page to show what the model saw)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
