"""An LSTM layer whose training pass on the CPU is written out step by step around big GEMMs.

Why: oneDNN's LSTM layer (``aten::mkldnn_rnn_layer`` and its backward) spent about 70 ms of a
batch-32 training step on the CnnLstm's first LSTM (2048 inputs, 256 units, 16 steps), a third
of that zero-filling a 127 MB workspace. Almost all of the arithmetic is in three matrix
products over all time steps at once — the input projection ``X @ W_ih^T``, and in the backward
pass ``dGates @ W_ih`` and ``dGates^T @ X`` — which MKL runs at full speed; the recurrence
itself is 16 small products and a few element-wise operations per step.
``bench/bench_train_levers.py`` measures what it gives to a whole training step.

The gradients are the LSTM's exact ones (written out by hand; tested against ``nn.LSTM`` in
float64), summed in another order than oneDNN's, so they agree to float32 rounding.

It applies in training mode with autograd on, on the CPU, to a one-layer, one-direction,
batch-first LSTM with biases and no projection, called on a plain tensor without an initial
state; anything else (eval mode, the ONNX export, other devices) is ``nn.LSTM`` unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.profiler import record_function


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
        ctx.save_for_backward(x, w_ih, w_hh, gates, cs, tanh_cs, hs)
        return hs, cs[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, d_hs: torch.Tensor | None, d_c_last: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        with record_function("pneumolens::lstm_backward"):
            return _LstmLayer._backward(ctx, d_hs, d_c_last)

    @staticmethod
    def _backward(
        ctx: FunctionCtx, d_hs: torch.Tensor | None, d_c_last: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        x, w_ih, w_hh, gates, cs, tanh_cs, hs = ctx.saved_tensors
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


class LSTM(nn.LSTM):
    """``nn.LSTM`` that trains faster on the CPU in the configuration the CnnLstm uses (see the module)."""

    def _unrolled(self, x: object, hx: object) -> bool:
        return (
            self.training
            and torch.is_grad_enabled()
            and hx is None
            and isinstance(x, torch.Tensor)
            and x.dim() == 3
            and x.device.type == "cpu"
            and self.batch_first
            and self.num_layers == 1
            and not self.bidirectional
            and self.bias
            and self.proj_size == 0
        )

    def forward(self, x, hx=None):  # type: ignore[override]  # same signature as nn.LSTM
        if not self._unrolled(x, hx):
            return super().forward(x, hx)
        hs, c_last = _LstmLayer.apply(x, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0)
        return hs, (hs[:, -1].unsqueeze(0), c_last.unsqueeze(0))
