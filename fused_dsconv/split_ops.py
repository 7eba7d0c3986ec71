"""The split training passes of the registered op family, for synchronised batch statistics
(``fused_dsconv/distributed.py``): forward_train cut at the statistics -- pass 1 (``forward_stats``) gives
this process's statistics, the caller merges them over processes, pass 2 (``forward_normalize``) normalises
with the merged ones -- and backward_train cut the same way at the two per-channel BN gradient sums
(``backward_reduce``, then ``backward_apply`` with the merged means). Each op is functional, so the
collectives between them trace in torch.compile like any other op. They have no autograd of their own:
``fused_dsconv.distributed`` composes them into one."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import backends
from .checks import check_apply_inputs, check_inputs, check_normalize_inputs, check_reduce_inputs
from .contract import OpParams, acc_dtype, check_output_mask, memory_format_of, output_mask_schema
from .empty import grad_or_empty, out_like, stat_zeros, y_without_input, zero_grads


@torch.library.custom_op("fused_dsconv::forward_stats", mutates_args=())
def forward_stats(
    x: Tensor,
    dw_weight: Tensor,
    pw_weight: Tensor,
    bias: Optional[Tensor],
    stride: int,
    dilation: int,
    save_y: bool = True,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Pass 1: (y, mean, var) with y = pw(dw(x)) + bias (an empty tensor when ``save_y`` is False) and mean /
    var the biased statistics of y per channel over this call's N*Ho*Wo pixels, as forward_train's. An empty
    batch gives zeros (it contributes nothing to a merge; forward_train's NaN would poison one)."""
    check_inputs(x, dw_weight, pw_weight, stride, dilation, bias=bias)
    k = pw_weight.shape[0]
    if x.numel() == 0:
        y = y_without_input(x, k, stride, bias)
        mean = bias.clone() if bias is not None and y.numel() > 0 else stat_zeros(x, k)
        return (y if save_y else x.new_empty(0)), mean, stat_zeros(x, k)
    impl = backends.select(x, backend)
    with backends.no_autocast(x):
        p = OpParams(stride, dilation, save_y=save_y)
        return impl.forward_stats(x, dw_weight.contiguous(), pw_weight.contiguous(), bias, p)


@forward_stats.register_fake
def _(x, dw_weight, pw_weight, bias, stride, dilation, save_y=True, backend="auto"):
    check_inputs(x, dw_weight, pw_weight, stride, dilation, bias=bias)
    k = pw_weight.shape[0]
    y = out_like(x, k, stride) if save_y else x.new_empty(0)
    return y, x.new_empty(k, dtype=acc_dtype(x)), x.new_empty(k, dtype=acc_dtype(x))


@torch.library.custom_op("fused_dsconv::forward_normalize", mutates_args=())
def forward_normalize(
    x: Tensor,
    dw_weight: Tensor,
    pw_weight: Tensor,
    bias: Optional[Tensor],
    y: Optional[Tensor],
    mean: Tensor,
    var: Tensor,
    bn_weight: Optional[Tensor],
    bn_bias: Optional[Tensor],
    stride: int,
    dilation: int,
    eps: float,
    backend: str = "auto",
) -> Tensor:
    """Pass 2: out = relu((y - mean) / sqrt(var + eps) * bn_weight + bn_bias) with the given (merged)
    statistics; ``y`` None (or empty: recompute mode) rebuilds y from x first."""
    y = check_normalize_inputs(x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, stride, dilation)
    if x.numel() == 0:
        yf = y_without_input(x, pw_weight.shape[0], stride, bias).to(mean.dtype)
        z = torch.nn.functional.batch_norm(yf, mean, var, bn_weight, bn_bias, False, 0.0, eps)
        return z.relu().to(x.dtype).contiguous(memory_format=memory_format_of(x))
    impl = backends.select(x, backend)
    with backends.no_autocast(x):
        return impl.forward_normalize(
            x,
            dw_weight.contiguous(),
            pw_weight.contiguous(),
            bias,
            y,
            mean,
            var,
            bn_weight,
            bn_bias,
            OpParams(stride, dilation, eps),
        )


@forward_normalize.register_fake
def _(x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, stride, dilation, eps, backend="auto"):
    check_normalize_inputs(x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, stride, dilation)
    return out_like(x, pw_weight.shape[0], stride)


@torch.library.custom_op("fused_dsconv::backward_reduce", mutates_args=())
def backward_reduce(
    grad_out: Tensor,
    y: Tensor,
    mean: Tensor,
    var: Tensor,
    bn_weight: Optional[Tensor],
    bn_bias: Optional[Tensor],
    eps: float,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """(sum dz, sum dz * yhat) per channel over this call's pixels, with yhat = (y - mean) / sqrt(var + eps),
    z = yhat * bn_weight + bn_bias and dz = grad_out [z > 0]: the BN parameters' gradients (dbeta, dgamma)
    and, merged over processes, what backward_apply needs."""
    check_reduce_inputs(grad_out, y, mean, var, bn_weight, bn_bias)
    if y.numel() == 0:
        return stat_zeros(y, y.shape[1]), stat_zeros(y, y.shape[1])
    impl = backends.select(y, backend)
    with backends.no_autocast(y):
        # Only y's geometry matters here: a stride-1 problem of y's size (as the native binding's act_problem).
        return impl.backward_reduce(grad_out, y, mean, var, bn_weight, bn_bias, OpParams(1, 1, eps))


@backward_reduce.register_fake
def _(grad_out, y, mean, var, bn_weight, bn_bias, eps, backend="auto"):
    check_reduce_inputs(grad_out, y, mean, var, bn_weight, bn_bias)
    k = y.shape[1]
    return y.new_empty(k, dtype=acc_dtype(y)), y.new_empty(k, dtype=acc_dtype(y))


def _backward_apply(
    grad_out: Tensor,
    x: Tensor,
    dw_weight: Tensor,
    pw_weight: Tensor,
    y: Tensor,
    mean: Tensor,
    var: Tensor,
    bn_weight: Optional[Tensor],
    bn_bias: Optional[Tensor],
    mean_dz: Tensor,
    mean_dz_yhat: Tensor,
    stride: int,
    dilation: int,
    eps: float,
    backend: str = "auto",
    output_mask: Optional[list[bool]] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_dw_weight, grad_pw_weight) through dy = bn_weight / sqrt(var + eps) * (dz - mean_dz -
    yhat * mean_dz_yhat), where mean_dz / mean_dz_yhat are backward_reduce's sums divided by the pixel count
    (merged over processes: nn.SyncBatchNorm's backward). ``output_mask`` picks which of the three to compute,
    as fused_dsconv::backward_train's (an unwanted one is an empty tensor and costs no kernel of its own)."""
    mask = check_output_mask(output_mask)
    check_apply_inputs(
        grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat, stride, dilation
    )
    if x.numel() == 0:
        return zero_grads(x, dw_weight, pw_weight, 0, mask)
    impl = backends.select(x, backend)
    with backends.no_autocast(x):
        return impl.backward_apply(
            grad_out,
            x,
            dw_weight.contiguous(),
            pw_weight.contiguous(),
            y,
            mean,
            var,
            bn_weight,
            bn_bias,
            mean_dz,
            mean_dz_yhat,
            OpParams(stride, dilation, eps, output_mask=mask),
        )


backward_apply = torch.library.custom_op(
    "fused_dsconv::backward_apply", _backward_apply, mutates_args=(), schema=output_mask_schema(_backward_apply)
)


@backward_apply.register_fake
def _(
    grad_out,
    x,
    dw_weight,
    pw_weight,
    y,
    mean,
    var,
    bn_weight,
    bn_bias,
    mean_dz,
    mean_dz_yhat,
    stride,
    dilation,
    eps,
    backend="auto",
    output_mask=None,
):
    mask = check_output_mask(output_mask)
    check_apply_inputs(
        grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat, stride, dilation
    )
    return tuple(grad_or_empty(t, m) for t, m in zip((x, dw_weight, pw_weight), mask))
