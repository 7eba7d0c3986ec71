"""What the ops return without running a kernel: the outputs their fake kernels describe, and the results for
inputs with no elements (an empty batch, or no channels)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .contract import acc_dtype, memory_format_of, output_size


def out_like(x: Tensor, k: int, stride: int) -> Tensor:
    """An uninitialised activation-shaped result for ``x``: [N, K, Ho, Wo] in x's dtype and layout."""
    n, _, h, w = x.shape
    shape = (n, k, output_size(h, stride), output_size(w, stride))
    return x.new_empty(shape).contiguous(memory_format=memory_format_of(x))


def stat_zeros(x: Tensor, k: int) -> Tensor:
    """Zeros per output channel in the statistics dtype of ``x``."""
    return x.new_zeros(k, dtype=acc_dtype(x))


def y_without_input(x: Tensor, k: int, stride: int, bias: Optional[Tensor]) -> Tensor:
    """y of an input with no elements: empty for an empty batch; the bias (or 0) everywhere for C = 0."""
    y = out_like(x, k, stride)
    return y.copy_((bias if bias is not None else stat_zeros(x, k)).view(1, k, 1, 1).to(x.dtype).expand_as(y))


def grad_or_empty(t: Tensor, wanted: bool, like=torch.empty_like) -> Tensor:
    """``like(t)`` for a wanted gradient of ``t``; an empty tensor of t's dtype and device for an unwanted one."""
    return like(t) if wanted else t.new_empty(0)


def zero_grads(
    x: Tensor, dw_weight: Tensor, pw_weight: Tensor, n_per_channel: int, output_mask=(True, True, True)
) -> tuple[Tensor, ...]:
    """Gradients of an input with no elements: zeros for x and both weights (empty where ``output_mask`` does not
    want them), and ``n_per_channel`` [K] zeros."""
    k = pw_weight.shape[0]
    return (
        *(grad_or_empty(t, m, torch.zeros_like) for t, m in zip((x, dw_weight, pw_weight), output_mask)),
        *(stat_zeros(x, k) for _ in range(n_per_channel)),
    )
