"""The type and range of every setting of every explanation method, checked before any work.

Settings reach the methods from users (``--methods lime:n_samples=200`` on the command line,
the ``methods`` field of ``POST /v1/explain``), so each one is declared here with its type, its
range and its default, and :func:`validate_settings` refuses anything else with one line naming
the method, the setting, the allowed values and the value given (a :class:`SettingError`: exit 2
in the CLI, 422 in the service). Without it a bad value surfaced deep inside Captum, kornia or
scikit-image as an AssertionError, a ZeroDivisionError or an allocation of hundreds of gigabytes.

Upper bounds keep the cost of one explanation bounded. The library and the command line allow
``hi``; the web service allows only ``service_hi`` where one is given, because any visitor can
ask for it and each request holds an explanation worker:

* lime / kernelshap ``n_samples`` (one forward pass each): 50,000, service 5,000;
* ``n_segments`` (the surrogate's features): 1,000, service 500;
* shap ``n_samples`` (Captum holds all draws of an image in one batch, with their activations
  for the backward pass): 256, service 64;
* ig ``n_steps``: 10,000, service 512; ``internal_batch_size``: 256, service 64;
* ``perturbations_per_eval`` (images per forward pass): 1,024, service 256.

Grad-CAM's ``layer`` must be one of the model's convolutional layers (:func:`conv_layers`): only
they output the (N, C, H, W) feature map Grad-CAM weighs; an LSTM or dense layer is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import SettingError
from .base import BASELINES

#: ``Setting.hi`` value meaning "the model's input side" (a window cannot be larger than the image).
INPUT_SIZE = "input_size"


@dataclass(frozen=True)
class Setting:
    """One method setting.

    Attributes:
        kind: ``int``, ``float``, ``bool``, ``choice`` (one of ``choices``), ``layer`` (a
            convolutional layer of the model) or ``background`` (SHAP's training images or a
            fallback name; given by code, never parsed from text).
        default: the method's default (``None``: computed by the method, e.g. sigma = S / 16).
        lo, hi: inclusive bounds for numbers (``hi`` may be :data:`INPUT_SIZE`); ``None``: unbounded.
        lo_open: ``lo`` itself is excluded (a width must be greater than 0).
        service_hi: a tighter upper bound for the web service (cost), if any.
        choices: the values a ``choice`` accepts.
        optional: ``None`` is accepted (the method then computes its default).
    """

    kind: str
    default: Any = None
    lo: float | None = None
    hi: float | str | None = None
    lo_open: bool = False
    service_hi: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False


def _sigma() -> Setting:
    return Setting("float", None, lo=0.0, hi=1000.0, lo_open=True, optional=True)


def _baseline(default: str) -> Setting:
    return Setting("choice", default, choices=BASELINES)


def _surrogate() -> dict[str, Setting]:
    return {
        "n_samples": Setting("int", 1000, lo=2, hi=50_000, service_hi=5_000),
        "n_segments": Setting("int", 100, lo=2, hi=1_000, service_hi=500),
        "compactness": Setting("float", 0.1, lo=0.0, hi=1000.0, lo_open=True),
        "baseline": _baseline("black"),
        "perturbations_per_eval": Setting("int", 125, lo=1, hi=1_024, service_hi=256),
        "sigma": _sigma(),
    }


#: method -> setting name -> its spec (tests check that these are exactly each method's keyword arguments).
SETTINGS: dict[str, dict[str, Setting]] = {
    "gradcam": {
        "layer": Setting("layer", None, optional=True),
        "relu": Setting("bool", True),
    },
    "lime": _surrogate(),
    "kernelshap": _surrogate(),
    "shap": {
        "background": Setting("background", None, optional=True),
        "n_samples": Setting("int", 32, lo=1, hi=256, service_hi=64),
        "stdevs": Setting("float", 0.0, lo=0.0, hi=1.0),
        "sigma": _sigma(),
    },
    "ig": {
        "baseline": _baseline("blur"),
        "n_steps": Setting("int", 32, lo=1, hi=10_000, service_hi=512),
        "internal_batch_size": Setting("int", 64, lo=1, hi=256, service_hi=64),
        "sigma": _sigma(),
    },
    "occlusion": {
        "window": Setting("int", 16, lo=1, hi=INPUT_SIZE),
        "stride": Setting("int", 8, lo=1, hi=INPUT_SIZE),
        "baseline": _baseline("black"),
        "perturbations_per_eval": Setting("int", 128, lo=1, hi=1_024, service_hi=256),
        "sigma": _sigma(),
    },
}


def conv_layers(model: nn.Module) -> list[str]:
    """The layers Grad-CAM may hook: every module of ``model.features`` (the convolutional stack).

    A model without a ``features`` module: every module that is, or contains, a convolution.
    """
    features = getattr(model, "features", None)
    if isinstance(features, nn.Module):
        return ["features"] + [f"features.{name}" for name, _ in features.named_modules() if name]
    return [
        name
        for name, module in model.named_modules()
        if name and any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())
    ]


def validate_settings(
    method: str,
    params: dict[str, Any],
    model: nn.Module | None = None,
    size: int | None = None,
    service: bool = False,
) -> dict[str, Any]:
    """Check ``params`` against :data:`SETTINGS` and return them normalised (ints as int, numbers as float).

    Args:
        method: a method name of :data:`SETTINGS`.
        params: the settings to check (the method's keyword arguments).
        model: the model to be explained: Grad-CAM's layer must be one of its :func:`conv_layers`.
            Default: the layer's type is checked, not its existence.
        size: the model's input side (bounds ``window`` and ``stride``). Default: unchecked here.
        service: apply the web service's tighter upper bounds.

    Raises:
        SettingError: an unknown method or setting, a wrong type, a value out of range; the
            message is one line starting with the method's name.
    """
    spec = SETTINGS.get(method)
    if spec is None:
        raise SettingError(f"unknown method {method!r}; choose from {', '.join(SETTINGS)}")
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise SettingError(f"{method}: unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(spec)}")
    return {name: _check(method, name, spec[name], value, model, size, service) for name, value in params.items()}


def _check(
    method: str, name: str, setting: Setting, value: Any, model: nn.Module | None, size: int | None, service: bool
) -> Any:
    if value is None and setting.optional:
        return None
    if setting.kind == "bool":
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise SettingError(f"{method}: {name} must be true or false, got {value!r}")
    if setting.kind == "choice":
        if isinstance(value, str) and value in setting.choices:
            return value
        raise SettingError(f"{method}: unknown {name} {value!r}; choose one of {', '.join(setting.choices)}")
    if setting.kind == "layer":
        return _check_layer(method, value, model)
    if setting.kind == "background":
        if isinstance(value, str) and value not in BASELINES:
            raise SettingError(f"{method}: background must be training images or one of {', '.join(BASELINES)}, "
                               f"got {value!r}")
        return value
    return _check_number(method, name, setting, value, size, service)


def _check_layer(method: str, value: Any, model: nn.Module | None) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise SettingError(f"{method}: layer must be a layer name such as features.block3.relu, got {value!r}")
    name = str(value)
    if model is None:
        return name
    allowed = conv_layers(model)
    if name in allowed:
        return name
    try:
        model.get_submodule(name)
    except AttributeError:
        raise SettingError(f"{method}: unknown layer {name!r}; choose one of {', '.join(allowed)}") from None
    raise SettingError(
        f"{method}: layer {name!r} is not a convolutional layer (its output is not a (N, C, H, W) feature map); "
        f"choose one of {', '.join(allowed)}"
    )


def _check_number(method: str, name: str, setting: Setting, value: Any, size: int | None, service: bool) -> Any:
    hi = setting.hi
    if hi == INPUT_SIZE:
        hi = size
    limited = service and setting.service_hi is not None
    if limited:
        hi = setting.service_hi
    is_int = setting.kind == "int"
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        number = value
        if is_int and isinstance(value, float):
            number = int(value) if value.is_integer() else None
    ok = number is not None
    if ok and setting.lo is not None:
        ok = number > setting.lo if setting.lo_open else number >= setting.lo
    if ok and hi is not None:
        ok = number <= float(hi)  # type: ignore[arg-type]
    if ok:
        return int(number) if is_int else float(number)  # type: ignore[arg-type]
    raise SettingError(f"{method}: {name} must be {_describe(setting, hi, is_int)}"
                       f"{' (the service limit)' if limited else ''}, got {value!r}")


def _describe(setting: Setting, hi: Any, is_int: bool) -> str:
    kind = "an integer" if is_int else "a number"
    lo = setting.lo
    fmt = (lambda v: f"{int(v)}") if is_int else (lambda v: f"{v:g}")
    if lo is not None and setting.lo_open:
        return f"{kind} greater than {fmt(lo)}" + (f" and at most {fmt(hi)}" if hi is not None else "")
    if lo is not None and hi is not None:
        return f"{kind} from {fmt(lo)} to {fmt(hi)}"
    if lo is not None:
        return f"{kind} of at least {fmt(lo)}"
    return kind + (f" of at most {fmt(hi)}" if hi is not None else "")
