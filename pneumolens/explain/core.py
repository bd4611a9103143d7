"""One interface for every method: ``explain(model, images, method, seed=0, **params) -> Attribution``.

The dispatcher normalises the input, runs the method inside the guards of
:mod:`pneumolens.explain.base` (eval mode restored afterwards, global RNGs seeded then restored,
cuDNN off for gradients on CUDA), times it, and returns maps at the input size as float32.
Methods are registered in :data:`METHODS`; their keyword arguments are documented on the
functions in ``gradcam.py``, ``ig.py``, ``shap.py``, ``superpixel.py`` and ``occlusion.py``.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .base import Attribution, LogitFn, as_batch, input_size, model_device, model_scope, seeded, to_maps
from .gradcam import gradcam
from .ig import integrated_gradients
from .occlusion import occlusion
from .settings import validate_settings
from .shap import gradient_shap
from .superpixel import kernel_shap, lime

MethodFn = Callable[..., tuple[torch.Tensor, dict[str, Any]]]

#: name -> implementation. Gradient methods: gradcam, ig, shap; perturbation methods: lime, kernelshap, occlusion.
METHODS: dict[str, MethodFn] = {
    "gradcam": gradcam,
    "lime": lime,
    "kernelshap": kernel_shap,
    "shap": gradient_shap,
    "ig": integrated_gradients,
    "occlusion": occlusion,
}

#: Methods whose maps are signed (diverging colormap); Grad-CAM (ReLU) is non-negative.
SIGNED = frozenset({"lime", "kernelshap", "shap", "ig", "occlusion"})

#: Methods that only run the model forward (the fast inference copy may stand in for it).
PERTURBATION = frozenset({"lime", "kernelshap", "occlusion"})

#: Methods that differentiate the logit w.r.t. the input only (a differentiable copy computing
#: the same function, e.g. BatchNorm-folded, may stand in). Grad-CAM hooks the model's own layer.
INPUT_GRADIENT = frozenset({"ig", "shap"})


def method_params(method: str) -> list[str]:
    """The keyword arguments a method accepts (besides model, x, forward)."""
    fn = _method(method)
    return [p for p in inspect.signature(fn).parameters if p not in ("model", "x", "forward")]


def _method(method: str) -> MethodFn:
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}") from None


def explain(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    method: str,
    seed: int = 0,
    forward: LogitFn | None = None,
    grad_forward: LogitFn | None = None,
    **params: Any,
) -> Attribution:
    """Attribute the PNEUMONIA logit of ``model`` to the pixels of ``images``.

    Args:
        model: a network mapping float (B, 1, S, S) in [0, 1] to logits (B,), e.g. ``CnnLstm``.
        images: uint8 (N, S, S) or float (N, 1, S, S) in [0, 1].
        method: one of :data:`METHODS`: ``gradcam``, ``lime``, ``kernelshap``, ``shap``, ``ig``, ``occlusion``.
        seed: seeds every random draw (LIME / KernelSHAP samples, SHAP draws). Default: 0.
        forward: for ``lime``, ``kernelshap`` and ``occlusion`` only: a faster no-gradient
            function computing the same logits (e.g. :func:`pneumolens.backends.optimize`).
            Default: ``model``.
        grad_forward: for ``ig`` and ``shap`` only: a faster *differentiable* function computing
            the same logits (e.g. ``pneumolens.folding.FoldedCnnLstm(model)``; see
            :func:`pneumolens.explain.runner.fast_forwards`). Grad-CAM always runs ``model``,
            whose layer it hooks. Default: ``model``.
        **params: the method's settings (``layer=`` for gradcam, ``n_samples=``, ``baseline=``,
            ``background=`` for shap, ...); an unknown name is a ValueError, a value of the wrong
            type or out of its range (:mod:`pneumolens.explain.settings`) a
            :class:`~pneumolens.errors.SettingError`, both raised before any work.

    Returns:
        :class:`Attribution` with ``maps`` float32 (N, S, S), positive = evidence for pneumonia.

    Example::

        >>> from pneumolens.model import CnnLstm, ModelConfig
        >>> net = CnnLstm(ModelConfig())
        >>> a = explain(net, np.zeros((2, 128, 128), np.uint8), "gradcam")
        >>> a.maps.shape, a.maps.dtype
        ((2, 128, 128), dtype('float32'))
    """
    fn = _method(method)
    allowed = method_params(method)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"{method}: unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(allowed)}")
    size = input_size(model)
    params = validate_settings(method, params, model=model, size=size or int(np.shape(images)[-1]))
    x = as_batch(images, size=size).to(model_device(model))
    fwd = forward if method in PERTURBATION else grad_forward if method in INPUT_GRADIENT else None
    t0 = time.perf_counter()
    with model_scope(model), seeded(seed):
        attr, used = fn(model, x, forward=fwd, **params)
    maps = to_maps(attr)
    elapsed = time.perf_counter() - t0
    record = {"method": method, "seed": int(seed), "target": "PNEUMONIA logit", **used}
    if fwd is not None:
        record["forward"] = getattr(fwd, "backend", type(fwd).__name__)
    return Attribution(method=method, maps=maps, params=record, elapsed_s=elapsed)


def parse_method_spec(spec: str, service: bool = False) -> tuple[str, dict[str, Any]]:
    """``"ig:baseline=blur:n_steps=64"`` → ``("ig", {"baseline": "blur", "n_steps": 64})``.

    Values that look like integers, floats or booleans are converted, then checked against their
    spec (:mod:`pneumolens.explain.settings`; the model-dependent checks, Grad-CAM's layer and the
    occlusion window, wait for :func:`explain`). Raises ValueError for an unknown method or
    parameter or a malformed ``key=value``, and :class:`~pneumolens.errors.SettingError` (also a
    ValueError) for a value of the wrong type or out of range (``service``: the web service's
    tighter upper bounds).
    """
    name, *pairs = [p.strip() for p in spec.strip().split(":")]
    _method(name)
    allowed = method_params(name)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"method {spec!r}: expected key=value after ':', got {pair!r}")
        if key not in allowed or key == "background":
            raise ValueError(f"method {spec!r}: unknown parameter {key!r}; accepted: {', '.join(a for a in allowed if a != 'background')}")
        out[key] = _parse_value(value)
    return name, validate_settings(name, out, service=service)


def _parse_value(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value
