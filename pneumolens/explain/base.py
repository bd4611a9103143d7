"""What every explainer shares: the result type, input checks, and the guards around a call.

Every method explains the same number: the model's single PNEUMONIA logit. The model returns
logits shaped (B,); Captum is given a forward that returns (B, 1) and ``target=0``, so all
methods see one consistent output. Positive attribution = evidence for pneumonia.

The guards (:func:`model_scope`, :func:`seeded`, :func:`gradient_scope`) make a call leave no
trace: the model's train/eval flag is restored, the global RNG states are restored, cuDNN is
disabled only for the duration of a gradient call on CUDA (LSTM backward in eval mode needs it).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

#: A callable ``float (B, 1, S, S) -> logits (B,)``: the model, or a faster copy of it.
LogitFn = Callable[[torch.Tensor], torch.Tensor]

BASELINES = ("black", "mean", "blur")


@dataclass(frozen=True, eq=False)
class Attribution:
    """The result of :func:`pneumolens.explain.explain`.

    Attributes:
        method: the method's name (``gradcam``, ``lime``, ``kernelshap``, ``shap``, ``ig``, ``occlusion``).
        maps: float32 (N, S, S) at the model's input size; positive = evidence for PNEUMONIA.
        params: every setting that produced the maps (layer, samples, baseline, seed, ...), JSON-friendly.
        elapsed_s: wall time of the whole call, in seconds.
    """

    method: str
    maps: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def __len__(self) -> int:
        return int(self.maps.shape[0])


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def as_batch(images: np.ndarray | torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Images → float32 (N, 1, S, S) in [0, 1], the model's input.

    Accepts uint8 (N, S, S) or (S, S) (divided by 255), or float (N, 1, S, S), (N, S, S) or
    (S, S) already in [0, 1].

    Raises:
        ValueError: wrong rank, more than one channel, non-square, a size other than ``size``,
            an empty batch, or float values outside [0, 1].
    """
    t = torch.as_tensor(np.array(images)) if isinstance(images, np.ndarray) else torch.as_tensor(images)  # a copy: inputs may be read-only
    if t.ndim == 2:
        t = t[None]
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"images: expected (N, S, S) uint8 or (N, 1, S, S) float, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError("images: empty batch")
    if t.shape[2] != t.shape[3]:
        raise ValueError(f"images: expected square images, got {t.shape[2]}x{t.shape[3]}")
    if size is not None and t.shape[2] != size:
        raise ValueError(f"images: the model takes {size}x{size} inputs, got {t.shape[2]}x{t.shape[3]}")
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if not t.is_floating_point():
        raise ValueError(f"images: expected uint8 or float pixels, got {t.dtype}")
    t = t.float()
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-6 or hi > 1 + 1e-6 or not np.isfinite(lo + hi):
        raise ValueError(f"images: float pixels must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]")
    return t


def input_size(model: nn.Module) -> int | None:
    """The square input side the model declares (``model.config.input_size``), if any."""
    cfg = getattr(model, "config", None)
    return int(cfg.input_size) if cfg is not None and hasattr(cfg, "input_size") else None


def layer_names(model: nn.Module) -> list[str]:
    """Every submodule's dotted name (what ``layer=`` accepts)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)``, with a ValueError listing the valid names when it is unknown."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"unknown layer {name!r}; valid layers: {', '.join(layer_names(model))}") from None


def column(fn: LogitFn) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a ``(B,)``-logit forward as ``(B, 1)`` so Captum explains column ``target=0``."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = fn(x)
        return out.reshape(-1, 1)

    return forward


def no_grad_column(fn: LogitFn) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``(B, 1)`` forward under ``torch.inference_mode`` for perturbation methods.

    The result is cloned out of inference mode so Captum may keep and index it freely.
    """

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = fn(x).reshape(-1, 1)
        return out.clone()

    return forward


@contextlib.contextmanager
def model_scope(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (dropout off, BatchNorm running statistics), then restore the flag.

    Never switches a model into training mode: an explanation must describe the deployed model.
    """
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch, NumPy and ``random`` for the block, then restore their previous states.

    Captum samples with the global generators (``torch.bernoulli``, ``np.random.uniform``), so
    a deterministic call needs them seeded; restoring them keeps the caller's streams intact.
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


@contextlib.contextmanager
def gradient_scope(device: torch.device) -> Iterator[None]:
    """Gradients through an ``nn.LSTM`` in eval mode fail under cuDNN: disable it here, on CUDA only."""
    if device.type == "cuda":
        with torch.backends.cudnn.flags(enabled=False):
            yield
    else:
        yield


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a (N, 1, S, S) batch (reflect padding), kernel ~ 4 sigma each side."""
    from kornia.filters import gaussian_blur2d

    k = 2 * int(round(4 * sigma)) + 1
    k = min(k, 2 * (x.shape[-1] // 2) - 1)  # reflect padding needs the kernel to fit the image
    return gaussian_blur2d(x, (k, k), (float(sigma), float(sigma)), border_type="reflect")


def make_baseline(x: torch.Tensor, kind: str, sigma: float | None = None) -> torch.Tensor:
    """The reference image for ``x`` (N, 1, S, S).

    Args:
        kind: ``black`` (all 0: on an X-ray, radiolucent air, i.e. no opacity), ``mean`` (each
            image's mean grey level everywhere), or ``blur`` (a Gaussian blur: keeps the coarse
            intensity, removes the structure).
        sigma: blur width in pixels. Default: input side / 16 (8 px at 128).

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "black":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x).clone()
    if kind == "blur":
        return blur(x, sigma if sigma is not None else x.shape[-1] / 16)
    raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}")


def baseline_params(kind: str, x: torch.Tensor, sigma: float | None) -> dict[str, Any]:
    """How a baseline was made, for the ``params`` record."""
    out: dict[str, Any] = {"baseline": kind}
    if kind == "blur":
        out["baseline_sigma"] = float(sigma if sigma is not None else x.shape[-1] / 16)
    return out


def to_maps(attr: torch.Tensor) -> np.ndarray:
    """(N, 1, S, S) attributions → float32 NumPy (N, S, S)."""
    return attr.detach().float().cpu().reshape(attr.shape[0], attr.shape[-2], attr.shape[-1]).numpy().astype(np.float32)
