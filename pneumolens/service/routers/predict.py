"""``POST /v1/predict``: one or more uploaded images → probability and label for each."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, UploadFile

from ...errors import InvalidImageError, UnsupportedDicomError
from ...inference import Predictor
from ..batching import PredictionBatcher
from ..dependencies import get_batcher, get_predictor
from ..schemas import Prediction, PredictResponse, error_responses
from ..uploads import UploadRoute, read_upload, safe_name

router = APIRouter(prefix="/v1", tags=["predict"], route_class=UploadRoute)


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Predict pneumonia for uploaded X-rays",
    responses=error_responses(400, 413, 415, 422, 503),
)
def predict(
    file: Annotated[list[UploadFile], File(description="one or more chest X-rays: JPEG, PNG or DICOM")],
    predictor: Annotated[Predictor, Depends(get_predictor)],
    batcher: Annotated[PredictionBatcher | None, Depends(get_batcher)],
) -> PredictResponse:
    """The calibrated probability of PNEUMONIA and the label at the model's threshold, per file.

    Each entry also carries ``ood_score`` and ``in_distribution`` from the model's
    out-of-distribution guard, and ``warning`` when the image is flagged: it does not look like
    the training films, and its probability and label (kept) are not to be trusted.

    One bad file in a single-file request is an error (415 or 422, naming the file). In a
    multi-file request each bad file gets an entry with ``error`` and the others are predicted;
    the request fails only if no file could be read, and its error then names every file.

    A plain ``def``: FastAPI runs it in its thread pool, so decoding and the forward pass never
    block the event loop; concurrent requests share forward passes through the batcher.
    """
    names: list[str] = []
    images: list[np.ndarray] = []
    errors: dict[int, tuple[str, InvalidImageError]] = {}
    for i, upload in enumerate(file):
        try:
            name, image = read_upload(upload, i, predictor.size)
        except InvalidImageError as exc:
            errors[i] = (safe_name(upload.filename, i), exc)
            continue
        names.append(name)
        images.append(image)
    if not images:
        raise _all_bad([exc for _, exc in errors.values()])
    stacked = np.stack(images)
    predicted = iter(batcher.predict(predictor, stacked, names) if batcher else predictor.predict_arrays(stacked, names))
    results = []
    for i in range(len(file)):
        if i in errors:
            name, exc = errors[i]
            results.append(Prediction(file=name, threshold=predictor.threshold, error=str(exc)))
        else:
            p = next(predicted)
            results.append(Prediction.of(p))
    return PredictResponse(results=results)


def _all_bad(errors: list[InvalidImageError]) -> InvalidImageError:
    """The error of a request none of whose files could be read: each file's own error, in order.

    One file: its error as it is. Several: one line naming every file and its reason (415 when
    every file is a DICOM we cannot handle, else 422).
    """
    if len(errors) == 1:
        return errors[0]
    kind = UnsupportedDicomError if all(isinstance(e, UnsupportedDicomError) for e in errors) else InvalidImageError
    return kind(f"none of the {len(errors)} files could be read: " + "; ".join(str(e) for e in errors))
