"""When an accelerated module may run its own kernel, and when it must run the stock layer.

Every swapped module asks :func:`kernel_serves` on each call and runs its parent ``torch.nn``
layer's ``forward`` whenever the answer is no. The kernels are written for one case only — a
float32 or float64 training step on the CPU with autograd recording — so the stock layer runs:

- in eval mode (inference, Grad-CAM, the ONNX export);
- without autograd (``torch.no_grad``/``inference_mode``), or when nothing needs a gradient;
- under ``torch.autocast`` (the kernels do not cast their operands);
- on tensors that are not plain float32/float64 CPU tensors, or whose dtypes differ;
- while ``torch.compile``, ``torch.jit`` or a ``torch.func`` transform traces the call.

Double backward is not decided here: whether a gradient graph is wanted (``create_graph=True``)
is known only when the backward pass runs, long after this check. So every kernel's backward
must itself be differentiable: fast dropout's multiplies by the same saved mask, which autograd
differentiates again (tests/test_accel.py checks a gradient penalty against the stock model).
"""

from __future__ import annotations

import torch
from torch import nn

#: The dtypes the kernels are written and tested for.
DTYPES = (torch.float32, torch.float64)


def _tracing() -> bool:
    functorch = getattr(torch._C, "_are_functorch_transforms_active", None)
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or bool(functorch is not None and functorch())
    )


def kernel_serves(module: nn.Module, *tensors: torch.Tensor | None) -> bool:
    """Whether ``module``'s accelerated kernel may compute this call on ``tensors`` (``None`` ignored)."""
    if not module.training or not torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
        return False
    present = [t for t in tensors if t is not None]
    if not present or not any(t.requires_grad for t in present):
        return False
    dtype = present[0].dtype
    for t in present:
        if type(t) not in (torch.Tensor, nn.Parameter) or t.device.type != "cpu" or t.dtype != dtype:
            return False
    return dtype in DTYPES and not _tracing()
