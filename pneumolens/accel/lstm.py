"""An LSTM layer whose training pass on the CPU is written out step by step around big GEMMs.

Why: oneDNN's LSTM layer (``aten::mkldnn_rnn_layer`` and its backward) spends much of a CPU
training step on the CnnLstm's first LSTM (2048 inputs, 256 units, 16 steps), a large part of
it zero-filling its workspace. Almost all of the arithmetic is in three matrix products over all
time steps at once — the input projection ``X @ W_ih^T``, and in the backward pass
``dGates @ W_ih`` and ``dGates^T @ X`` — which MKL runs at full speed; the recurrence itself is
a few small products and element-wise operations per step.
``bench/bench_accel.py`` measures what it gives to a whole training step.

The gradients are the LSTM's exact ones (written out by hand; tested against ``nn.LSTM`` in
float64), summed in another order than oneDNN's, so they agree to float32 rounding. When a
gradient graph is asked for (double backward), the backward pass instead differentiates
:func:`reference`, the same layer written with differentiable operations.

:class:`UnrolledLSTM` is what :func:`pneumolens.accel.accelerate_cpu_training` turns the model's
first ``nn.LSTM`` into. It runs the unrolled pass for a one-layer, one-direction, batch-first
LSTM with biases and no projection, called on a (B, T, I) tensor without an initial state,
wherever :func:`pneumolens.accel.fallback.kernel_serves` says yes; everything else is
``nn.LSTM`` unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import FunctionCtx
from torch.nn import functional as F
from torch.profiler import record_function

from .fallback import kernel_serves


def reference(
    x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same layer in differentiable operations: all hidden states (B, T, H) and the last cell state (B, H)."""
    steps = x.shape[1]
    pre = F.linear(x, w_ih, b_ih + b_hh)  # (B, T, 4H), gates in PyTorch's order i, f, g, o
    hs = []
    h = c = None
    for t in range(steps):
        a = pre[:, t] if h is None else pre[:, t] + h @ w_hh.t()
        i, f, g, o = a.chunk(4, 1)
        c = torch.sigmoid(i) * torch.tanh(g) if c is None else torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append(h)
    return torch.stack(hs, 1), c


class _LstmLayer(torch.autograd.Function):
    """One LSTM layer over a (B, T, I) batch from zero state: returns all hidden states and the last cell state."""

    @staticmethod
    def forward(ctx: FunctionCtx, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tensors``: x, w_ih, w_hh, b_ih, b_hh (see :meth:`_forward`)."""
        with record_function("pneumolens::lstm_forward"):  # bench_core's profile counts it as LSTM
            return _LstmLayer._forward(ctx, *tensors)

    @staticmethod
    def _forward(
        ctx: FunctionCtx,
        x: torch.Tensor,
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor,
        b_hh: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, steps, n_in = x.shape
        hidden = w_hh.shape[1]
        # Pre-activations of every step from the inputs, in one product; each step adds h @ W_hh^T
        # and then overwrites its slice with the gate activations (i, f, g, o), kept for backward.
        gates = torch.addmm(b_ih + b_hh, x.reshape(b * steps, n_in), w_ih.t()).view(b, steps, 4 * hidden)
        hs = x.new_empty(b, steps, hidden)
        cs = x.new_empty(b, steps, hidden)
        tanh_cs = x.new_empty(b, steps, hidden)
        w_hh_t = w_hh.t()
        for t in range(steps):
            a = gates[:, t]
            if t:
                a.addmm_(hs[:, t - 1], w_hh_t)
            a[:, : 2 * hidden].sigmoid_()
            a[:, 2 * hidden : 3 * hidden].tanh_()
            a[:, 3 * hidden :].sigmoid_()
            i, f, g, o = a.chunk(4, 1)
            c = cs[:, t]
            torch.mul(i, g, out=c)
            if t:
                c.addcmul_(f, cs[:, t - 1])
            torch.tanh(c, out=tanh_cs[:, t])
            torch.mul(o, tanh_cs[:, t], out=hs[:, t])
        ctx.save_for_backward(x, w_ih, w_hh, b_ih, b_hh, gates, cs, tanh_cs, hs)
        return hs, cs[:, -1].clone()

    @staticmethod
    def backward(
        ctx: FunctionCtx, d_hs: torch.Tensor | None, d_c_last: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward (double backward)
            return _LstmLayer._differentiable_backward(ctx, d_hs, d_c_last)
        with record_function("pneumolens::lstm_backward"):
            return _LstmLayer._backward(ctx, d_hs, d_c_last)

    @staticmethod
    def _differentiable_backward(
        ctx: FunctionCtx, d_hs: torch.Tensor | None, d_c_last: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        """The input gradients as a graph of their own: :func:`reference` recomputed and differentiated."""
        inputs = ctx.saved_tensors[:5]
        wanted = [t for t, need in zip(inputs, ctx.needs_input_grad) if need]
        hs, c_last = reference(*inputs)
        d_hs = torch.zeros_like(hs) if d_hs is None else d_hs
        d_c_last = torch.zeros_like(c_last) if d_c_last is None else d_c_last
        got = iter(torch.autograd.grad((hs, c_last), wanted, (d_hs, d_c_last), create_graph=True, allow_unused=True))
        return tuple(next(got) if need else None for need in ctx.needs_input_grad)

    @staticmethod
    def _backward(
        ctx: FunctionCtx, d_hs: torch.Tensor | None, d_c_last: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        x, w_ih, w_hh, _, _, gates, cs, tanh_cs, hs = ctx.saved_tensors
        b, steps, n_in = x.shape
        hidden = w_hh.shape[1]
        d_gates = torch.empty_like(gates)  # gradients of the pre-activations
        # The activations' derivatives for all steps at once: sigmoid' = s (1 - s) for i, f, o,
        # tanh' = 1 - g^2 for g; and o * tanh'(c), the path from h back to c.
        deriv = gates * (1 - gates)
        g_all = gates[..., 2 * hidden : 3 * hidden]
        torch.mul(g_all, g_all, out=deriv[..., 2 * hidden : 3 * hidden]).neg_().add_(1)
        o_dtanh = gates[..., 3 * hidden :] * (1 - tanh_cs * tanh_cs)
        d_h = d_hs[:, -1].clone() if d_hs is not None else torch.zeros_like(cs[:, -1])
        d_c = d_c_last.clone() if d_c_last is not None else torch.zeros_like(cs[:, -1])
        for t in range(steps - 1, -1, -1):
            i, f, g, _ = gates[:, t].chunk(4, 1)
            di, df, dg, do = d_gates[:, t].chunk(4, 1)
            torch.mul(d_h, tanh_cs[:, t], out=do)
            d_c.addcmul_(d_h, o_dtanh[:, t])  # through h = o * tanh(c)
            torch.mul(d_c, g, out=di)
            torch.mul(d_c, i, out=dg)
            if t:
                torch.mul(d_c, cs[:, t - 1], out=df)
            else:
                df.zero_()
            d_c.mul_(f)  # to the previous step's cell
            d_gates[:, t].mul_(deriv[:, t])  # through the activations
            if t:
                if d_hs is not None:
                    d_h = torch.addmm(d_hs[:, t - 1], d_gates[:, t], w_hh)
                else:
                    d_h = d_gates[:, t] @ w_hh
        flat = d_gates.view(b * steps, 4 * hidden)
        need_x, need_w_ih, need_w_hh, need_b_ih, need_b_hh = ctx.needs_input_grad
        d_x = (flat @ w_ih).view(b, steps, n_in) if need_x else None
        d_w_ih = flat.t() @ x.reshape(b * steps, n_in) if need_w_ih else None
        d_w_hh = None
        if need_w_hh:
            d_w_hh = d_gates[:, 1:].reshape(-1, 4 * hidden).t() @ hs[:, :-1].reshape(-1, hidden)
        d_b = flat.sum(0) if need_b_ih or need_b_hh else None
        return d_x, d_w_ih, d_w_hh, d_b if need_b_ih else None, d_b if need_b_hh else None


def fits(lstm: nn.Module) -> bool:
    """Whether ``lstm`` is an ``nn.LSTM`` of the one configuration the unrolled pass computes."""
    return (
        isinstance(lstm, nn.LSTM)
        and lstm.batch_first
        and lstm.num_layers == 1
        and not lstm.bidirectional
        and lstm.bias
        and lstm.proj_size == 0
    )


class UnrolledLSTM(nn.LSTM):
    """``nn.LSTM`` whose CPU training pass is unrolled around big GEMMs (see the module).

    Made only by swapping the class of a fitting ``nn.LSTM`` (:func:`fits`): the same
    parameters, hooks and state-dict keys.
    """

    def forward(self, x, hx=None):  # type: ignore[override]  # same signature as nn.LSTM
        weights = (self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0)
        if not (
            hx is None
            and isinstance(x, torch.Tensor)
            and x.dim() == 3
            and fits(self)
            and kernel_serves(self, x, *weights)
        ):
            return super().forward(x, hx)
        hs, c_last = _LstmLayer.apply(x, *weights)
        return hs, (hs[:, -1].unsqueeze(0), c_last.unsqueeze(0))
