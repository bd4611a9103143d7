"""Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391) on a convolutional layer.

Captum's ``LayerGradCam`` weights each channel of the layer's output by the spatial mean of the
logit's gradient, sums over channels, and (here, by default) keeps the positive part, as the
paper does; the coarse map is then upsampled bilinearly to the input size. The layer is named
by its dotted path (``model.get_submodule``).

Default layer: the last convolutional block's ReLU output (``features.block3.relu`` on the
128x128 CnnLstm: 128 channels at 32x32, before the max-pooling whose 16x16 output the LSTM reads).
Measured, not habit, with ``pneumolens explain-eval --split validation --n 40 --methods
gradcam:layer=...`` against the pooled output, the block's conv output (pre-BatchNorm) and the
second block's ReLU (64x64), on the interim model of 2026-11-25, three of the models shipped on
2026-11-29 and a 2-epoch one (docs/figures/gradcam-layers/README.md). The last block's output (relu or
pool) led the conv output and the earlier block on the deletion gap on every model (tied by
block2.relu on the 2-epoch model). The rule: the layer with the highest deletion gap
(reverse-order minus deletion AUC, ROAD-style), unless another matches it within two paired
standard errors, when the finer map wins. Pool won it on the 20-epoch model of 2026-11-29 (about
four standard errors) and was the default for it and the 30-epoch model after it; on the
context-swap model shipped next pool's lead is under two standard errors, so relu, the finer
map, is the default again. All layers pass the randomisation check (Spearman with the
re-initialised model's maps between -0.6 and 0.3). ``relu=False`` (signed Grad-CAM) is available
for "evidence against" views.
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from .base import LogitFn, column, gradient_scope, model_device, resolve_layer

#: The last conv block's module that Grad-CAM hooks by default (see the module docstring).
DEFAULT_BLOCK_PART = "relu"


def default_layer(model: nn.Module) -> str:
    """``features.block<last>.relu`` for a CnnLstm-shaped model.

    Raises:
        ValueError: the model has no ``features`` sequence of conv blocks; pass ``layer=``.
    """
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and len(features) > 0:
        last = list(features.named_children())[-1][0]
        name = f"features.{last}.{DEFAULT_BLOCK_PART}"
        try:
            model.get_submodule(name)
            return name
        except AttributeError:
            pass
    raise ValueError(
        f"gradcam: this model has no features.<block>.{DEFAULT_BLOCK_PART} layer; pass layer='<dotted name>'"
    )


def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    layer: str | None = None,
    relu: bool = True,
    forward: LogitFn | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Grad-CAM maps for a batch.

    Args:
        model: the network (its ``layer`` gets a temporary hook; Captum removes it in ``finally``).
        x: float (N, 1, S, S) in [0, 1].
        layer: dotted name of a layer with a (N, C, h, w) output. Default: :func:`default_layer`.
        relu: keep only positive evidence (the paper's Grad-CAM). Default: True.
        forward: ignored (Grad-CAM must run the hooked model itself); accepted for a uniform call.

    Returns:
        (maps (N, 1, S, S), params).

    Raises:
        ValueError: unknown layer, or a layer whose output is not a spatial feature map.
    """
    name = layer or default_layer(model)
    module = resolve_layer(model, name)
    cam = LayerGradCam(column(model), module)
    with gradient_scope(model_device(model)):
        try:
            attr = cam.attribute(x, target=0, relu_attributions=relu)
        except (AttributeError, TypeError) as exc:  # e.g. an LSTM's tuple output
            raise ValueError(f"gradcam: layer {name!r} does not output a (N, C, H, W) feature map ({exc})") from exc
    if attr.ndim != 4:
        raise ValueError(f"gradcam: layer {name!r} outputs shape {tuple(attr.shape)}, not a (N, C, H, W) feature map")
    coarse = tuple(attr.shape[-2:])
    maps = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return maps, {"layer": name, "relu": bool(relu), "layer_resolution": list(coarse), "upsampling": "bilinear"}
