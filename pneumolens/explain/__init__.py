"""Explanations of the PNEUMONIA logit: Grad-CAM, LIME, KernelSHAP, GradientSHAP, IG, occlusion.

One call for every method, one result type::

    from pneumolens.explain import explain
    att = explain(model, images_uint8, "gradcam")          # Attribution, maps (N, S, S) float32
    att = explain(model, images_uint8, "shap", background=build_background())

Rendering lives in :mod:`pneumolens.explain.render`, faithfulness measures in
:mod:`pneumolens.explain.faithfulness` (the evaluation pipeline: :mod:`pneumolens.explain.evaluation`).
"""

from __future__ import annotations

from .base import BASELINES, Attribution, layer_names
from .core import INPUT_GRADIENT, METHODS, PERTURBATION, SIGNED, explain, method_params, parse_method_spec
from .shap import build_background, load_background, save_background

__all__ = [
    "Attribution",
    "BASELINES",
    "INPUT_GRADIENT",
    "METHODS",
    "PERTURBATION",
    "SIGNED",
    "build_background",
    "explain",
    "layer_names",
    "load_background",
    "method_params",
    "parse_method_spec",
    "save_background",
]
