"""JSON shapes of the API: what each endpoint returns, as pydantic models (they make the OpenAPI spec)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

NOTICE = "Research use only: not a medical device. Do not use for diagnosis or treatment decisions."


class ErrorResponse(BaseModel):
    """An error: one line naming the file or field and the problem (FastAPI's own request
    validation errors carry a list of field errors instead)."""

    detail: str | list[Any] = Field(examples=["scan.png: corrupt or truncated image (image file is truncated)"])


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry documenting error statuses of an endpoint in the OpenAPI spec."""
    return {code: {"model": ErrorResponse, "description": ERROR_MEANINGS[code]} for code in codes}


ERROR_MEANINGS = {
    400: "Malformed multipart upload",
    413: "Request body over the upload limit",
    415: "A DICOM file this service cannot read (colour, multi-frame, compressed without a decoder)",
    422: "Not an image, corrupt or truncated, too small, too many pixels; or an invalid field",
    500: "The explanation failed",
    503: "Every explanation worker is busy (see Retry-After), or the model is still loading",
    504: "The explanation ran past the time limit and was stopped",
}


class Health(BaseModel):
    status: str = Field(description="`ok` once the model is loaded")
    model_loaded: bool
    explanations: dict[str, Any] = Field(description="explanation workers: total, busy, methods")


class ModelCard(BaseModel):
    """The served checkpoint: what :meth:`pneumolens.checkpoint.Checkpoint.info` reports."""

    format: str
    architecture: str
    parameters: int = Field(description="trainable parameters")
    config: dict[str, Any] = Field(description="the architecture's settings (input size, layer sizes)")
    class_names: list[str]
    threshold: float = Field(description="decision threshold on the PNEUMONIA probability in use")
    threshold_rule: str = Field(description="how the checkpoint's threshold was chosen")
    temperature: float = Field(description="logit temperature from calibration (1 = none)")
    bias: float = Field(
        default=0.0, description="calibration bias (0 = none): probability = sigmoid(logit / temperature + bias)"
    )
    preprocessing: dict[str, Any]
    provenance: dict[str, Any] = Field(description="data, code and command that produced the weights")
    metrics: dict[str, Any] = Field(description="validation metrics recorded at training time")
    ood: dict[str, Any] | None = Field(
        default=None,
        description="the out-of-distribution guard: method, threshold, share of validation films it flags "
        "(null when the model has none)",
    )
    notice: str = NOTICE


class Prediction(BaseModel):
    """The model's answer for one file, or why there is none."""

    file: str = Field(description="the upload's file name (a label only)")
    probability: float | None = Field(default=None, description="calibrated probability of PNEUMONIA")
    label: str | None = Field(default=None, description="PNEUMONIA if probability >= threshold, else NORMAL")
    threshold: float
    ood_score: float | None = Field(
        default=None,
        description="out-of-distribution score: higher = less like the training films (null without a guard)",
    )
    in_distribution: bool | None = Field(
        default=None,
        description="false: the image does not look like the training films, and the prediction is not to be "
        "trusted (it is kept); null when the model has no out-of-distribution guard",
    )
    warning: str | None = Field(
        default=None, description="the plain warning shown for an image flagged out of distribution", examples=[
            "does not look like the paediatric chest films this model was trained on"]
    )
    error: str | None = Field(default=None, description="why this file has no prediction (batch uploads only)")

    @classmethod
    def of(cls, p: Any) -> "Prediction":
        """The response entry of a :class:`pneumolens.inference.Prediction` (non-finite numbers as null)."""
        from ..ood import WARNING

        d = p.to_dict()
        return cls(**d, warning=WARNING if d["in_distribution"] is False else None)


class PredictResponse(BaseModel):
    results: list[Prediction] = Field(description="one entry per uploaded file, in upload order")
    notice: str = NOTICE


class MethodResult(BaseModel):
    """One explanation method's output for the uploaded image."""

    method: str
    overlay_png: str = Field(description="base64 PNG: the attribution map drawn over the model's input")
    elapsed_s: float = Field(description="time the method took, in seconds")
    render_s: float = Field(description="time drawing the overlay took, in seconds")
    params: dict[str, Any] = Field(description="every setting that produced the map")
    signed: bool = Field(description="true: red = for PNEUMONIA, blue = against; false: evidence for only")
    scale: float = Field(description="largest absolute value in the map (the colour scale's end)")
    map: list[list[float]] | None = Field(default=None, description="the raw map (S x S), when raw=true")


class ExplainResponse(BaseModel):
    prediction: Prediction
    input_png: str = Field(description="base64 PNG of the model's input: the image as the model sees it")
    explanations: list[MethodResult]
    elapsed_s: float = Field(description="wall time of the whole request, in seconds")
    notice: str = NOTICE


class MethodsResponse(BaseModel):
    methods: list[str] = Field(description="explanation methods this install can compute")
    default: list[str] = Field(description="what /v1/explain computes when `methods` is not given")
