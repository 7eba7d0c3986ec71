"""The backend interface: the primitives every backend implements (the contract is in the docstring of
``fused_dsconv/backends/__init__.py``) and the questions the selector and the tuner ask it."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..contract import OpParams

DEFAULT_VARIANT = "default"


class Backend:
    """One implementation of the primitives. Subclasses set ``name`` and override. Every primitive takes its
    tensors, then ``p``, the call's non-tensor arguments (``fused_dsconv.contract.OpParams``)."""

    name: str = ""

    def unavailable(self, x: Tensor) -> Optional[str]:
        """Why this backend cannot run inputs like ``x`` (device, dtype, build), or None if it can."""
        raise NotImplementedError

    def not_timed(self, x: Tensor) -> Optional[str]:
        """Why timing this backend on inputs like ``x`` says nothing about its speed (an interpreter or an
        emulator runs it), or None. The tuner leaves such a backend out; forcing it still works."""
        return None

    def variants(self, problem) -> list[str]:
        """Names of the configurations the tuner may time on ``problem`` (a ``fused_dsconv.tune.Problem``),
        the default first."""
        return [DEFAULT_VARIANT]

    def with_variant(self, variant: str) -> "Backend":
        """This backend running ``variant`` (self for the default)."""
        if variant == DEFAULT_VARIANT:
            return self
        raise ValueError(f"backend {self.name!r} has no variant {variant!r} (it has only its default)")

    def forward_eval(self, x, dw_weight, pw_weight, bias, p: OpParams):
        raise NotImplementedError

    def forward_train(self, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, p: OpParams):
        raise NotImplementedError

    def backward_eval(self, grad_out, out, x, dw_weight, pw_weight, p: OpParams):
        raise NotImplementedError

    def backward_train(self, grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, p: OpParams):
        raise NotImplementedError

    def forward_stats(self, x, dw_weight, pw_weight, bias, p: OpParams):
        raise NotImplementedError

    def forward_normalize(self, x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, p: OpParams):
        raise NotImplementedError

    def backward_reduce(self, grad_out, y, mean, var, bn_weight, bn_bias, p: OpParams):
        raise NotImplementedError

    def backward_apply(
        self, grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat, p: OpParams
    ):
        raise NotImplementedError
