"""The service's only contact with the explanation library (:mod:`pneumolens.explain`).

Two halves:

* in the web process, :func:`available_methods` and :func:`parse_methods` check a request's
  ``methods`` field (``"gradcam,lime:n_samples=200"``) before any work is queued;
* in a worker process, :func:`run_job` computes each method's map with
  :func:`pneumolens.explain.explain` and draws it with
  :func:`pneumolens.explain.render.overlay_png` over the uploaded film in its own aspect ratio
  (:func:`film_of_upload`), as the CLI's panels are drawn. GradientSHAP explains against the
  training films stored with the model (the pool's ``background``), as the CLI does.

If the library's interface changes, this file is the one to adapt.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np

from .workers import ExplainInputError

#: What ``/v1/explain`` computes when the request names no method: the fastest one.
DEFAULT_METHODS = ("gradcam",)

#: Most methods in one request (each one is a full explanation).
MAX_METHODS = 8


def available_methods() -> list[str]:
    """Method names this install can compute (empty if the explanation library is missing)."""
    try:
        from ..explain import METHODS
    except ImportError:
        return []
    return list(METHODS)


def parse_methods(text: str | None, model: Any = None, size: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``"gradcam, lime:n_samples=200"`` → ``[("gradcam", {}), ("lime", {"n_samples": 200})]``.

    An empty field means :data:`DEFAULT_METHODS`; a repeated method is computed once. Every
    setting is checked against its spec with the service's tighter upper bounds
    (:mod:`pneumolens.explain.settings`), Grad-CAM's layer against ``model``'s convolutional
    layers and the occlusion window against ``size``, before any work is queued.

    Raises:
        ExplainInputError: an unknown method or parameter, a malformed ``key=value``, a value
            of the wrong type or out of range, or more than :data:`MAX_METHODS` methods; the
            message lists what is accepted.
    """
    from ..explain import parse_method_spec
    from ..explain.settings import validate_settings

    specs = [s.strip() for s in (text or "").split(",") if s.strip()] or list(DEFAULT_METHODS)
    out: list[tuple[str, dict[str, Any]]] = []
    for spec in specs:
        try:
            head, sep, rest = spec.partition(":")
            name, params = parse_method_spec(head.strip().lower() + sep + rest, service=True)
            params = validate_settings(name, params, model=model, size=size, service=True)
        except ValueError as exc:  # SettingError is a ValueError too
            raise ExplainInputError(f"methods: {exc}") from None
        if name not in [n for n, _ in out]:
            out.append((name, params))
    if len(out) > MAX_METHODS:
        raise ExplainInputError(f"methods: at most {MAX_METHODS} methods per request, got {len(out)}")
    return out


def film_of_upload(upload: Any, name: str) -> np.ndarray | None:
    """The uploaded film decoded and shrunk for drawing, aspect ratio kept
    (:func:`~pneumolens.explain.render.display_film`); None if it cannot be (the overlay then
    uses the model input). Called after the upload was read once as the model input."""
    from ..errors import PneumoLensError
    from ..explain.render import DISPLAY_SIDE, display_film
    from ..io import read_image

    try:
        upload.file.seek(0)
        return display_film(read_image(upload.file.read(), name=name, draft_size=DISPLAY_SIDE))
    except (PneumoLensError, OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- worker side


def warm_up(context: dict[str, Any]) -> None:
    """Worker start: import the library and build the fast copies of the model the methods use.

    ``forward`` (no gradient) serves the perturbation methods, ``grad_forward`` (BatchNorm
    folded, differentiable) the input-gradient ones: the same function at a fraction of the cost.
    """
    from ..explain import METHODS, render  # noqa: F401  (imports Captum, scikit-image, matplotlib)
    from ..explain.runner import fast_forwards

    context["forward"], context["grad_forward"] = fast_forwards(context["model"], list(METHODS))


def run_job(context: dict[str, Any], payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Explain one image with each requested method (runs in a worker process).

    Args:
        context: ``model`` (the served CnnLstm), ``forward`` and ``grad_forward`` (its fast
            copies, set by :func:`warm_up`) and optionally ``background`` (uint8 (K, S, S) training images
            for ``shap``).
        payload: ``image`` uint8 (S, S) (the model's input), optionally ``film`` uint8 (H, W)
            (the upload shrunk for drawing: :func:`film_of_upload`), ``methods`` (from
            :func:`parse_methods`), ``raw`` (bool: include the maps, on the model's input grid),
            ``seed`` (int).

    Returns:
        One dict per method: method, overlay_png (base64), elapsed_s (the explanation),
        render_s (drawing the overlay), params, signed, scale, map.
    """
    from ..explain import explain
    from ..explain.render import is_signed, overlay_png
    from ..explain.runner import MAX_PARAM_ARRAY
    from ..jsonable import jsonable

    image = np.asarray(payload["image"], dtype=np.uint8)
    film = payload.get("film")
    film = image if film is None else np.asarray(film, dtype=np.uint8)
    results = []
    for method, params in payload["methods"]:
        params = dict(params)
        if method == "shap" and "background" not in params and context.get("background") is not None:
            params["background"] = context["background"]
        att = explain(
            context["model"],
            image[None],
            method,
            seed=int(payload.get("seed", 0)),
            forward=context.get("forward"),
            grad_forward=context.get("grad_forward"),
            **params,
        )
        heat = att.maps[0]
        t0 = time.perf_counter()
        png = overlay_png(film, heat, method)
        results.append(
            {
                "method": method,
                "overlay_png": base64.b64encode(png).decode("ascii"),
                "elapsed_s": float(att.elapsed_s),
                "render_s": time.perf_counter() - t0,
                "params": jsonable(att.params, max_array=MAX_PARAM_ARRAY),
                "signed": is_signed(method, heat),
                "scale": float(np.max(np.abs(heat))) if heat.size else 0.0,
                "map": heat.tolist() if payload.get("raw") else None,
            }
        )
    return results


run_job.warm_up = warm_up  # type: ignore[attr-defined]
