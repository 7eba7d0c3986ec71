"""The registered ops' input checks: each raises a ValueError / TypeError naming the argument and what is
allowed, before anything runs or changes. ``fused_dsconv.ops`` runs them in every op and fake kernel;
``JointBlock`` and ``fused_dsconv.distributed`` run the same ones before they touch module state."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .contract import FLOAT_DTYPES, acc_dtype, check_dilation, check_stride, output_size


def check_inputs(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, stride: int, dilation: int, **per_channel) -> None:
    """Raise a ValueError / TypeError naming the argument for anything the op cannot take."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor [N, C, H, W], got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    n, c, h, w = x.shape
    if h == 0 or w == 0:
        raise ValueError(f"x must have non-zero height and width, got shape {tuple(x.shape)}")
    check_stride(stride)
    check_dilation(dilation)
    if tuple(dw_weight.shape) != (c, 1, 3, 3):
        raise ValueError(
            f"dw_weight must have shape (C, 1, 3, 3) = {(c, 1, 3, 3)} for x with C={c} channels, "
            f"got {tuple(dw_weight.shape)}"
        )
    if pw_weight.dim() != 2 or pw_weight.shape[1] != c:
        raise ValueError(f"pw_weight must have shape (K, C) with C={c}, got {tuple(pw_weight.shape)}")
    for name, t in (("dw_weight", dw_weight), ("pw_weight", pw_weight)):
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    _check_vectors(x, "x", pw_weight.shape[0], per_channel)
    _check_devices(x, "x", {"dw_weight": dw_weight, "pw_weight": pw_weight, **per_channel})


def _check_vectors(ref: Tensor, ref_name: str, k: int, vectors: dict) -> None:
    """Per-channel tensors (None: absent) of shape [k] in the accumulation dtype of ``ref``."""
    for name, t in vectors.items():
        if t is None:
            continue
        if tuple(t.shape) != (k,):
            raise ValueError(f"{name} must have shape ({k},) (one value per output channel), got {tuple(t.shape)}")
        if t.dtype != acc_dtype(ref):
            raise TypeError(f"{name} must be {acc_dtype(ref)} for {ref_name} of dtype {ref.dtype}, got {t.dtype}")


def _check_devices(ref: Tensor, ref_name: str, tensors: dict) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise ValueError(
                f"{name} is on {t.device} but {ref_name} is on {ref.device}: all tensors must be on one device"
            )


def check_activations(x: Tensor, pw_weight: Tensor, stride: int, **acts: Optional[Tensor]) -> None:
    """Backward inputs shaped like the forward's output ([N, K, Ho, Wo], x's dtype and device; any strides:
    every backend reads them through their strides). Call after ``check_inputs``."""
    n, _, h, w = x.shape
    shape = (n, pw_weight.shape[0], output_size(h, stride), output_size(w, stride))
    for name, t in acts.items():
        if t is None:
            continue
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{name} must have the forward output's shape [N, K, Ho, Wo] = {shape} for x of shape "
                f"{tuple(x.shape)}, K={shape[1]} and stride {stride}, got {tuple(t.shape)}"
            )
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}: all tensors must be on one device")


def check_train_inputs(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, *, synced=False, **stats):
    """forward_train's checks (JointBlock runs them before it touches its running statistics). ``synced``:
    the statistics are merged over processes, so one value per channel here is allowed (the merged count is
    checked once it is known, ``fused_dsconv.distributed``)."""
    check_inputs(x, dw_weight, pw_weight, stride, dilation, bias=bias, bn_weight=bn_weight, bn_bias=bn_bias, **stats)
    if (bn_weight is None) != (bn_bias is None):
        raise ValueError("bn_weight and bn_bias must be given together (affine batch norm) or both be None")
    if synced:
        return
    n, _, h, w = x.shape
    per_channel = n * output_size(h, stride) * output_size(w, stride)
    if per_channel == 1:
        # nn.BatchNorm2d's own message, so code that catches it keeps working.
        raise ValueError(
            "Expected more than 1 value per channel when training, got input size "
            f"{torch.Size((n, pw_weight.shape[0], output_size(h, stride), output_size(w, stride)))}"
        )


def check_normalize_inputs(x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, stride, dilation):
    check_train_inputs(
        x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, synced=True, mean=mean, var=var
    )
    if y is not None and y.dim() == 1 and y.numel() == 0:
        y = None
    check_activations(x, pw_weight, stride, y=y)
    return y


def check_reduce_inputs(grad_out, y, mean, var, bn_weight, bn_bias):
    if not isinstance(y, Tensor) or y.dim() != 4:
        raise ValueError(
            f"y must be the pre-BN activation [N, K, Ho, Wo], got "
            f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}"
        )
    if y.dtype not in FLOAT_DTYPES:
        raise TypeError(f"y must be float32, float16, bfloat16 or float64, got {y.dtype}")
    if (bn_weight is None) != (bn_bias is None):
        raise ValueError("bn_weight and bn_bias must be given together (affine batch norm) or both be None")
    vectors = {"mean": mean, "var": var, "bn_weight": bn_weight, "bn_bias": bn_bias}
    _check_vectors(y, "y", y.shape[1], vectors)
    _check_devices(y, "y", vectors)
    if not isinstance(grad_out, Tensor) or tuple(grad_out.shape) != tuple(y.shape):
        raise ValueError(
            f"grad_out must have y's shape {tuple(y.shape)}, got "
            f"{tuple(grad_out.shape) if isinstance(grad_out, Tensor) else type(grad_out).__name__}"
        )
    if grad_out.dtype != y.dtype or grad_out.device != y.device:
        raise TypeError(
            f"grad_out must have y's dtype {y.dtype} and device {y.device}, got {grad_out.dtype} on {grad_out.device}"
        )


def check_apply_inputs(
    grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat, stride, dilation
):
    check_train_inputs(
        x,
        dw_weight,
        pw_weight,
        None,
        bn_weight,
        bn_bias,
        stride,
        dilation,
        synced=True,
        mean=mean,
        var=var,
        mean_dz=mean_dz,
        mean_dz_yhat=mean_dz_yhat,
    )
    if y is None:
        raise ValueError("y must be given (backward_apply has no recompute mode: rebuild y with forward_stats)")
    check_activations(x, pw_weight, stride, grad_out=grad_out, y=y)


def check_backward_eval_inputs(grad_out, out, x, dw_weight, pw_weight, stride, dilation):
    check_inputs(x, dw_weight, pw_weight, stride, dilation)
    check_activations(x, pw_weight, stride, grad_out=grad_out, out=out)


def check_backward_train_inputs(
    grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, stride, dilation
) -> Optional[Tensor]:
    """Validates backward_train's inputs; returns y, or None for recompute mode (y None, or the empty tensor
    forward_train returns with save_y=False)."""
    check_train_inputs(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, mean=mean, var=var)
    if y is not None and y.dim() == 1 and y.numel() == 0:
        y = None
    check_activations(x, pw_weight, stride, grad_out=grad_out, y=y)
    return y
