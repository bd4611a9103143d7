"""An inference-only copy of a trained CnnLstm with BatchNorm folded into the neighbouring weights.

Why: in eval mode every BatchNorm is a fixed affine map and every Dropout is the identity, so
both can be folded into the weights next to them; the result computes the same logits with
fewer passes over memory. The copy is built from stock ``torch.nn`` layers only (``Conv2d``,
``MaxPool2d``, ``ReLU``, ``LSTM``, ``Linear``), whatever layers the trained model uses, so that
PyTorch's ONNX exporter can write it (:mod:`pneumolens.onnx_export`) and it is the one
definition every inference backend runs (:mod:`pneumolens.backends`).

It has two stages, which the exporter can also write as separate graphs: ``features`` (the conv
stage, image → last feature map) and ``head`` (the two LSTMs and the dense layers, feature map →
logit).

The original :class:`~pneumolens.model.CnnLstm` is never modified: explanations need gradients
through its own modules (Grad-CAM hooks ``features.block3``), so the predictor keeps it as
``predictor.model`` and uses the folded copy only for plain predictions.

Example::

    >>> from pneumolens.model import CnnLstm
    >>> folded = FoldedCnnLstm(CnnLstm().eval())
    >>> folded(torch.rand(2, 1, 128, 128)).shape
    torch.Size([2])
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError
from .model import CnnLstm

BatchNorm = nn.modules.batchnorm._BatchNorm


def _bn_affine(bn: BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``y = x * scale + shift`` (per feature), in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError(f"cannot fold BatchNorm without running statistics ({bn})")
    scale = torch.rsqrt(bn.running_var.detach().cpu().double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().cpu().double()
    shift = -bn.running_mean.detach().cpu().double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().cpu().double()
    return scale, shift


def fold_bn_after(layer: nn.Conv2d | nn.Linear, bn: BatchNorm) -> None:
    """In place: ``bn(layer(x)) == layer'(x)`` (BatchNorm on the layer's outputs)."""
    scale, shift = _bn_affine(bn)
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(scale)
    shape = (-1,) + (1,) * (w.ndim - 1)
    new_w, new_b = w * scale.view(shape), b * scale + shift
    layer.weight = nn.Parameter(new_w.to(layer.weight.dtype), requires_grad=False)
    layer.bias = nn.Parameter(new_b.to(layer.weight.dtype), requires_grad=False)


def fold_bn_before(bn: BatchNorm, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``W @ bn(x) + b == W' @ x + b'`` for a (out, in) weight: returns ``(W', b')``."""
    scale, shift = _bn_affine(bn)
    w = weight.detach().double()
    return (w * scale[None, :]).to(weight.dtype), (bias.detach().double() + w @ shift).to(weight.dtype)


def fold_bn_into_lstm(bn: BatchNorm, lstm: nn.LSTM) -> None:
    """In place: ``lstm(bn(x)) == lstm'(x)`` by rewriting the first layer's input weights."""
    if lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size:
        raise ConfigError("BatchNorm folding supports single-layer, unidirectional LSTMs only")
    if not lstm.bias:
        raise ConfigError("BatchNorm folding into an LSTM needs its bias vectors")
    w, b = fold_bn_before(bn, lstm.weight_ih_l0, lstm.bias_ih_l0)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(w)
        lstm.bias_ih_l0.copy_(b)


def _stock_copy(layer: nn.Module) -> nn.Module:
    """A float32 CPU copy of a Conv2d, Linear or LSTM (or a subclass) as the plain ``torch.nn`` layer.

    The trained model may use accelerated subclasses with their own ``forward``; the copy runs
    PyTorch's, which is what the ONNX exporter understands.
    """
    if isinstance(layer, nn.Conv2d):
        stock = nn.Conv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode,
        )  # fmt: skip
    elif isinstance(layer, nn.Linear):
        stock = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
    elif isinstance(layer, nn.LSTM):
        stock = nn.LSTM(
            layer.input_size, layer.hidden_size, layer.num_layers, layer.bias, layer.batch_first,
            bidirectional=layer.bidirectional, proj_size=layer.proj_size,
        )  # fmt: skip
    else:
        raise ConfigError(f"cannot fold a {type(layer).__name__}")
    stock.load_state_dict({k: v.detach().float().cpu() for k, v in layer.state_dict().items()})
    return stock


class FoldedFeatures(nn.Module):
    """The conv stage: (B, 1, S, S) image → (B, C, S/8, S/8) feature map.

    Each block is Conv (BatchNorm folded in) → MaxPool 2 → ReLU: ReLU and max-pooling commute
    (ReLU is monotone), and pooling first leaves the ReLU a quarter of the values.
    """

    def __init__(self, convs: list[nn.Conv2d], channels_last: bool = True) -> None:
        super().__init__()
        self.channels_last = channels_last
        layers: list[nn.Module] = []
        for conv in convs:
            layers += [conv, nn.MaxPool2d(2), nn.ReLU()]
        self.layers = nn.Sequential(*layers)
        if channels_last:  # NHWC: oneDNN's fast layout for convolutions
            self.layers.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.layers(x)


class FoldedHead(nn.Module):
    """The LSTM head: (B, C, H, W) feature map → (B,) logits.

    The map is read as the model reads it: H steps of W·C features (channels-last order), the
    first LSTM's outputs at every step feed the second, whose last step feeds the dense layers.
    """

    def __init__(self, lstm1: nn.LSTM, lstm2: nn.LSTM, dense: nn.Sequential) -> None:
        super().__init__()
        self.lstm1 = lstm1
        self.lstm2 = lstm2
        self.dense = dense

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        b, c, h, w = fmap.shape
        seq = fmap.permute(0, 2, 3, 1).reshape(b, h, w * c)  # free in channels-last memory
        seq, _ = self.lstm1(seq)
        seq, _ = self.lstm2(seq)
        return self.dense(seq[:, -1]).squeeze(-1)


class FoldedCnnLstm(nn.Module):
    """The CnnLstm with BatchNorm folded away and Dropout removed: same logits, eval only.

    Args:
        model: a trained :class:`CnnLstm` (its train/eval mode does not matter: the running
            statistics are used, as in eval mode). It is read, never changed.
        channels_last: run the convolutions in NHWC memory layout. Default: True.
        conv_chunk: run the conv stage on at most this many images at a time (0: all at once).
            Keeps every activation small and in cache: at batch 64 and 128x128 the first
            block's output alone is 64·32·128·128 floats (134 MB), allocated afresh, page by
            page, on every call. The LSTMs still see the whole batch. ``bench/bench_core.py``
            measures it (``BN-folded`` against ``chunked``). Default: 8.

    Attributes:
        features: the conv stage (:class:`FoldedFeatures`).
        head: the LSTM head (:class:`FoldedHead`).
    """

    def __init__(self, model: CnnLstm, channels_last: bool = True, conv_chunk: int = 8) -> None:
        super().__init__()
        self.config = model.config
        self.conv_chunk = int(conv_chunk)
        convs = []
        for block in model.features:
            conv = _stock_copy(block.conv)
            fold_bn_after(conv, block.bn)
            convs.append(conv)
        self.features = FoldedFeatures(convs, channels_last)

        lstm1, lstm2 = _stock_copy(model.lstm1), _stock_copy(model.lstm2)
        fold_bn_into_lstm(model.bn1, lstm2)  # BN over lstm1's features feeds every lstm2 step
        blocks = list(model.head)[:-1]
        linears = [_stock_copy(block.fc) for block in blocks] + [_stock_copy(model.head.out)]
        w, b = fold_bn_before(model.bn2, linears[0].weight, linears[0].bias)  # BN on lstm2's last step
        linears[0].weight = nn.Parameter(w, requires_grad=False)
        linears[0].bias = nn.Parameter(b, requires_grad=False)
        for lin, block in zip(linears, blocks):
            fold_bn_after(lin, block.bn)
        dense: list[nn.Module] = []
        for lin in linears[:-1]:
            dense += [lin, nn.ReLU()]
        self.head = FoldedHead(lstm1, lstm2, nn.Sequential(*dense, linears[-1]))

        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if 0 < self.conv_chunk < x.shape[0]:
            fmap = torch.cat([self.features(part) for part in x.split(self.conv_chunk)])
        else:
            fmap = self.features(x)
        return self.head(fmap)
