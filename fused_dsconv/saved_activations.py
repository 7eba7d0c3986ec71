"""What a training step keeps alive for backward, measured with saved-tensor hooks (works on CPU).

Bytes are counted per distinct storage, so a tensor saved by two ops (or a view of one) counts
once, and parameters are left out: they exist whether or not autograd saves them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def saved_activation_bytes(fn: Callable[[], torch.Tensor], module: nn.Module | None = None) -> int:
    """Bytes of distinct non-parameter storages saved for backward while ``fn()`` runs its forward."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()} if module is not None else set()
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in params and s.device.type != "meta":
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def module_saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Saved-activation bytes of one training forward of ``module`` on ``x`` (input included if saved)."""
    x = x.detach().requires_grad_(x.is_floating_point())
    return saved_activation_bytes(lambda: module(x), module)
