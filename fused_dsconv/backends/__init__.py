"""Backends of the fused joint-block op, as a priority list.

Each backend implements the same four primitives (the contract below) and says, for given inputs,
why it cannot run them. ``select`` walks the list in order and takes the first that can; a user can
force one per module (``JointBlock(backend=...)``) or globally (``FUSED_DSCONV_BACKEND``).
``JointBlock``'s "auto" goes further: it measures every capable backend (and its own unfused layers)
on the user's device and runs the fastest (``fused_dsconv/tune.py``).

Variants: a backend may offer several named configurations of its kernels (tile shapes, Triton
configs) through ``variants``; the tuner times each and passes the winner back as the choice string
"name:variant" (plain "name" is the default variant), which ``resolve`` turns into a backend
configured for it (``with_variant``). Every variant must run every input its backend accepts.

Contract (the op layer in ``fused_dsconv/ops.py`` has validated every argument before a backend
sees it). Every primitive takes its tensors, then ``p``: the call's non-tensor arguments, one frozen
``fused_dsconv.contract.OpParams`` (``p.stride``, ``p.dilation``; ``p.eps`` for the training passes,
``p.save_y`` for the forward ones, ``p.output_mask`` for the backward ones).

- ``x`` is [N, C, H, W] in float32 / float16 / bfloat16, NCHW-contiguous or channels_last;
  ``dw_weight`` [C, 1, 3, 3] and ``pw_weight`` [K, C] have x's dtype and device, contiguous.
  ``bias``, ``bn_weight``, ``bn_bias``, ``mean``, ``var`` are [K] in ``acc_dtype(x)`` (float32; float64
  only for float64 inputs, which only the reference backend takes), or None where Optional.
- Every activation-shaped result has x's dtype and x's memory format (``memory_format_of(x)``).
  Results never alias each other or an input (``torch.library.custom_op`` rejects that), e.g.
  grad_bn_weight and grad_bn_bias are two storages, not two rows of one workspace.
- ``forward_eval(x, dw_weight, pw_weight, bias, p) -> out``:
  out = relu(pw(dw(x)) + bias)  (BN already folded into pw_weight / bias by the caller).
- ``forward_train(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, p) -> (out, y, mean, var)``:
  y = pw(dw(x)) + bias; mean / var are the biased batch statistics (acc_dtype) of y per output channel;
  out = relu((y - mean) * rsqrt(var + eps) * bn_weight + bn_bias). ``y`` is an empty tensor when
  ``p.save_y`` is False (the "recompute" mode: backward rebuilds it from x).
- ``backward_eval(grad_out, out, x, dw_weight, pw_weight, p) -> (grad_x, grad_dw_weight, grad_pw_weight,
  grad_bias)``; ReLU's gradient is masked where out <= 0 (NaN passes, as in ``threshold_backward``).
- ``backward_train(grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, p)
  -> (grad_x, grad_dw_weight, grad_pw_weight, grad_bias, grad_bn_weight, grad_bn_bias)``; ``y`` is None in
  recompute mode; grad_bias / grad_bn_* are [K] in acc_dtype, also when bn_weight is None (the autograd
  layer drops them then).
- ``p.output_mask`` of the backward primitives: three bools, which of grad_x, grad_dw_weight, grad_pw_weight
  to compute, as aten::convolution_backward's. An unwanted one is an empty tensor (numel 0) of its input's
  dtype and device, and the work only it needs is not done.

The split passes: forward_train and backward_train cut where synchronised batch norm merges per-channel
values over processes (``fused_dsconv/distributed.py``; yhat = (y - mean) * rsqrt(var + eps), z = yhat *
bn_weight + bn_bias, dz = grad_out [z > 0]):

- ``forward_stats(x, dw_weight, pw_weight, bias, p) -> (y, mean, var)``: forward_train's y and statistics,
  without the normalisation; ``y`` empty when ``p.save_y`` is False.
- ``forward_normalize(x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, p) -> out``: relu(z)
  with the given statistics; ``y`` None: rebuild it from x first (recompute mode).
- ``backward_reduce(grad_out, y, mean, var, bn_weight, bn_bias, p) -> (sum_dz, sum_dz_yhat)`` per channel.
- ``backward_apply(grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat,
  p) -> (grad_x, grad_dw_weight, grad_pw_weight)`` through
  dy = bn_weight rsqrt(var + eps) (dz - mean_dz - yhat mean_dz_yhat).
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
from torch import Tensor

from ..contract import OpParams, acc_dtype, memory_format_of  # noqa: F401  (part of the backend contract)
from .base import DEFAULT_VARIANT, Backend
from .native import NativeBackend
from .reference import ReferenceBackend
from .triton import TritonBackend

ENV_VAR = "FUSED_DSCONV_BACKEND"
AUTO = "auto"


_REGISTRY: list[Backend] = []


def register(backend: Backend) -> Backend:
    """Append a backend to the priority list (earlier = preferred)."""
    if any(b.name == backend.name for b in _REGISTRY):
        raise ValueError(f"backend {backend.name!r} is already registered")
    _REGISTRY.append(backend)
    return backend


def no_autocast(x: Tensor):
    """Autocast has already chosen the dtype; the kernels (and the reference backend's own convs) must not be
    autocast again underneath."""
    if torch.amp.is_autocast_available(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def names() -> list[str]:
    return [b.name for b in _REGISTRY]


def get(name: str) -> Backend:
    for b in _REGISTRY:
        if b.name == name:
            return b
    raise ValueError(f"backend must be one of {[AUTO] + names()} (optionally 'name:variant'), got {name!r}")


def choice_name(backend: str, variant: str) -> str:
    """The choice string of ``variant`` of ``backend``: the bare name for the default variant."""
    return backend if variant == DEFAULT_VARIANT else f"{backend}:{variant}"


def resolve(choice: str) -> Backend:
    """The backend object for a choice string "name" or "name:variant" (ValueError naming what exists)."""
    if not isinstance(choice, str):
        raise ValueError(
            f"backend must be a string, one of {[AUTO] + names()} (optionally 'name:variant'), got {choice!r}"
        )
    name, _, variant = choice.partition(":")
    return get(name).with_variant(variant or DEFAULT_VARIANT)


def requested(name: Optional[str] = None) -> str:
    """The backend asked for: the explicit choice, else $FUSED_DSCONV_BACKEND, else 'auto'."""
    if name not in (None, AUTO):
        resolve(name)  # validates the name (and variant)
        return name
    choice = os.environ.get(ENV_VAR, AUTO) or AUTO
    if choice != AUTO:
        try:
            resolve(choice)
        except ValueError as e:
            raise ValueError(
                f"environment variable {ENV_VAR}={choice!r} is not a backend: set it to one of "
                f"{[AUTO] + names()} or unset it ({e})"
            ) from None
    return choice


def explain(x: Tensor) -> dict[str, Optional[str]]:
    """For each backend in priority order: None if it can run inputs like ``x``, else why not."""
    return {b.name: b.unavailable(x) for b in _REGISTRY}


def select(x: Tensor, name: Optional[str] = None) -> Backend:
    """The backend that runs ``x``: the named one (which must be able to), else the first that can. The op
    layer calls this once per op call; a caller that has chosen already (``JointBlock``: forced, or measured
    by the tuner) passes its choice as ``name``, which is only resolved here: neither the environment
    variable nor the priority order is consulted again."""
    choice = name if name not in (None, AUTO) else requested(None)
    if choice != AUTO:
        backend = resolve(choice)
        why = backend.unavailable(x)
        if why is not None:
            raise RuntimeError(f"fused_dsconv: backend {choice!r} was requested but cannot run this input: {why}")
        return backend
    reasons = []
    for backend in _REGISTRY:
        why = backend.unavailable(x)
        if why is None:
            return backend
        reasons.append(f"{backend.name}: {why}")
    raise RuntimeError("fused_dsconv: no backend can run this input: " + "; ".join(reasons))


# The priority order: the native CUDA extension, then Triton, then the reference.
for _builtin in (NativeBackend(), TritonBackend(), ReferenceBackend()):
    register(_builtin)
