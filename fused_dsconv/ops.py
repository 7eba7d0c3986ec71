"""The registered op family ``torch.ops.fused_dsconv.*``: schemas, fake kernels, autograd formulas.

The ops are functional (they return the batch statistics instead of updating running statistics):
``torch.library`` will not attach autograd to an op that mutates its inputs, and a functional op is
what torch.compile traces without a graph break. ``JointBlock`` updates the running statistics.

Each op checks its inputs (``fused_dsconv.checks``) and hands the work to one backend
(``fused_dsconv.backends``), selected once per call from ``backend``: a name from that list, or "auto"
(the first capable backend in priority order; ``JointBlock`` passes its measured choice instead).

The two forward ops carry autograd formulas, registered below each op: backward calls the matching
backward op on the same backend, so it stays opaque to torch.compile. The depthwise output is never
saved: every backend rebuilds it from x. Gradients no input needs are not computed: when neither x nor
either conv weight needs one, no convolution-gradient kernel runs (the BN and bias gradients come from
per-channel sums). Double backward is not supported (the backward ops have no autograd of their own).
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from . import backends
from .checks import (check_apply_inputs, check_backward_eval_inputs, check_backward_train_inputs, check_inputs,
                     check_normalize_inputs, check_reduce_inputs, check_train_inputs)
from .contract import acc_dtype, memory_format_of, output_size


def _out_like(x: Tensor, k: int, stride: int) -> Tensor:
    n, _, h, w = x.shape
    shape = (n, k, output_size(h, stride), output_size(w, stride))
    return x.new_empty(shape).contiguous(memory_format=memory_format_of(x))


def _no_autocast(x: Tensor):
    """Autocast has already chosen the dtype; the kernels (and the reference backend's own convs) must not be
    autocast again underneath."""
    if torch.amp.is_autocast_available(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


class EvalParams(NamedTuple):
    """forward_eval's non-tensor arguments, kept for its backward."""

    stride: int
    dilation: int
    backend: str


class TrainParams(NamedTuple):
    """forward_train's non-tensor arguments, kept for its backward."""

    stride: int
    dilation: int
    eps: float
    save_y: bool
    backend: str


@torch.library.custom_op("fused_dsconv::forward_eval", mutates_args=())
def forward_eval(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, bias: Tensor, stride: int, dilation: int,
                 backend: str = "auto") -> Tensor:
    """relu(pw(dw(x)) + bias): the eval-mode joint block with BN folded into pw_weight and bias."""
    check_inputs(x, dw_weight, pw_weight, stride, dilation, bias=bias)
    if x.numel() == 0:
        return _out_like(x, pw_weight.shape[0], stride)
    impl = backends.select(x, backend)
    with _no_autocast(x):
        return impl.forward_eval(x, dw_weight.contiguous(), pw_weight.contiguous(), bias, stride, dilation)


@forward_eval.register_fake
def _(x, dw_weight, pw_weight, bias, stride, dilation, backend="auto"):
    check_inputs(x, dw_weight, pw_weight, stride, dilation, bias=bias)
    return _out_like(x, pw_weight.shape[0], stride)


@torch.library.custom_op("fused_dsconv::forward_train", mutates_args=())
def forward_train(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, bias: Optional[Tensor],
                  bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], stride: int, dilation: int,
                  eps: float, save_y: bool = True, backend: str = "auto"
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training-mode joint block: returns (out, y, mean, var).

    y = pw(dw(x)) + bias (empty when ``save_y`` is False); mean / var are the biased batch
    statistics (float32; float64 for float64 x) of y per channel; out = relu(bn_weight * (y - mean) / sqrt(var + eps) + bn_bias).
    """
    check_train_inputs(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation)
    if x.numel() == 0:  # an empty batch has no statistics: NaN, as torch.var_mean of nothing
        out = _out_like(x, pw_weight.shape[0], stride)
        stat = torch.full((pw_weight.shape[0],), float("nan"), dtype=acc_dtype(x), device=x.device)
        return out, out.clone() if save_y else x.new_empty(0), stat, stat.clone()
    impl = backends.select(x, backend)
    with _no_autocast(x):
        return impl.forward_train(x, dw_weight.contiguous(), pw_weight.contiguous(), bias, bn_weight, bn_bias,
                                  stride, dilation, eps, save_y)


@forward_train.register_fake
def _(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, eps, save_y=True, backend="auto"):
    check_train_inputs(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation)
    k = pw_weight.shape[0]
    out = _out_like(x, k, stride)
    y = _out_like(x, k, stride) if save_y else x.new_empty(0)
    stat = x.new_empty(k, dtype=acc_dtype(x))
    return out, y, stat, stat.clone()


@torch.library.custom_op("fused_dsconv::backward_eval", mutates_args=())
def backward_eval(grad_out: Tensor, out: Tensor, x: Tensor, dw_weight: Tensor, pw_weight: Tensor, stride: int,
                  dilation: int, backend: str = "auto") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of forward_eval w.r.t. (x, dw_weight, pw_weight, bias)."""
    check_backward_eval_inputs(grad_out, out, x, dw_weight, pw_weight, stride, dilation)
    if x.numel() == 0:
        return _zero_grads(x, dw_weight, pw_weight, 1)
    impl = backends.select(x, backend)
    with _no_autocast(x):
        return impl.backward_eval(grad_out, out, x, dw_weight.contiguous(), pw_weight.contiguous(), stride, dilation)


@backward_eval.register_fake
def _(grad_out, out, x, dw_weight, pw_weight, stride, dilation, backend="auto"):
    check_backward_eval_inputs(grad_out, out, x, dw_weight, pw_weight, stride, dilation)
    return (torch.empty_like(x), torch.empty_like(dw_weight), torch.empty_like(pw_weight),
            x.new_empty(pw_weight.shape[0], dtype=acc_dtype(x)))


@torch.library.custom_op("fused_dsconv::backward_train", mutates_args=())
def backward_train(grad_out: Tensor, x: Tensor, dw_weight: Tensor, pw_weight: Tensor, bias: Optional[Tensor],
                   bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], y: Optional[Tensor], mean: Tensor,
                   var: Tensor, stride: int, dilation: int, eps: float, backend: str = "auto"
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of forward_train w.r.t. (x, dw_weight, pw_weight, bias, bn_weight, bn_bias).

    ``y`` None means recompute mode. The last two are [K] tensors even when bn_weight is None
    (the autograd layer drops them then).
    """
    y = check_backward_train_inputs(grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, stride,
                              dilation)
    if x.numel() == 0:
        return _zero_grads(x, dw_weight, pw_weight, 3)
    impl = backends.select(x, backend)
    with _no_autocast(x):
        return impl.backward_train(grad_out, x, dw_weight.contiguous(), pw_weight.contiguous(), bias, bn_weight,
                                   bn_bias, y, mean, var, stride, dilation, eps)


@backward_train.register_fake
def _(grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, stride, dilation, eps,
      backend="auto"):
    check_backward_train_inputs(grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, stride, dilation)
    k = pw_weight.shape[0]
    stats = [x.new_empty(k, dtype=acc_dtype(x)) for _ in range(3)]
    return (torch.empty_like(x), torch.empty_like(dw_weight), torch.empty_like(pw_weight), *stats)


# -- the split training passes (synchronised batch statistics: fused_dsconv/distributed.py) -------------
# forward_train cut at the statistics: pass 1 (forward_stats) gives this process's statistics, the caller
# merges them over processes, pass 2 (forward_normalize) normalises with the merged ones; backward_train cut
# the same way at the two per-channel BN gradient sums (backward_reduce, then backward_apply with the merged
# means). Each op is functional, so the collectives between them trace in torch.compile like any other op.

def _stat_out(x, k):
    return x.new_zeros(k, dtype=acc_dtype(x))


def _y_without_input(x, k, stride, bias):
    """y of an input with no elements: empty for an empty batch; the bias (or 0) everywhere for C = 0."""
    y = _out_like(x, k, stride)
    return y.copy_((bias if bias is not None else _stat_out(x, k)).view(1, k, 1, 1).to(x.dtype).expand_as(y))


@torch.library.custom_op("fused_dsconv::forward_stats", mutates_args=())
def forward_stats(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, bias: Optional[Tensor], stride: int,
                  dilation: int, save_y: bool = True, backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """Pass 1: (y, mean, var) with y = pw(dw(x)) + bias (an empty tensor when ``save_y`` is False) and mean /
    var the biased statistics of y per channel over this call's N*Ho*Wo pixels, as forward_train's. An empty
    batch gives zeros (it contributes nothing to a merge; forward_train's NaN would poison one)."""
    check_inputs(x, dw_weight, pw_weight, stride, dilation, bias=bias)
    k = pw_weight.shape[0]
    if x.numel() == 0:
        y = _y_without_input(x, k, stride, bias)
        mean = bias.clone() if bias is not None and y.numel() > 0 else _stat_out(x, k)
        return (y if save_y else x.new_empty(0)), mean, _stat_out(x, k)
    impl = backends.select(x, backend)
    with _no_autocast(x):
        return impl.forward_stats(x, dw_weight.contiguous(), pw_weight.contiguous(), bias, stride, dilation, save_y)


@forward_stats.register_fake
def _(x, dw_weight, pw_weight, bias, stride, dilation, save_y=True, backend="auto"):
    check_inputs(x, dw_weight, pw_weight, stride, dilation, bias=bias)
    k = pw_weight.shape[0]
    y = _out_like(x, k, stride) if save_y else x.new_empty(0)
    return y, x.new_empty(k, dtype=acc_dtype(x)), x.new_empty(k, dtype=acc_dtype(x))


@torch.library.custom_op("fused_dsconv::forward_normalize", mutates_args=())
def forward_normalize(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, bias: Optional[Tensor], y: Optional[Tensor],
                      mean: Tensor, var: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], stride: int,
                      dilation: int, eps: float, backend: str = "auto") -> Tensor:
    """Pass 2: out = relu((y - mean) / sqrt(var + eps) * bn_weight + bn_bias) with the given (merged)
    statistics; ``y`` None (or empty: recompute mode) rebuilds y from x first."""
    y = check_normalize_inputs(x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, stride, dilation)
    if x.numel() == 0:
        yf = _y_without_input(x, pw_weight.shape[0], stride, bias).to(mean.dtype)
        z = torch.nn.functional.batch_norm(yf, mean, var, bn_weight, bn_bias, False, 0.0, eps)
        return z.relu().to(x.dtype).contiguous(memory_format=memory_format_of(x))
    impl = backends.select(x, backend)
    with _no_autocast(x):
        return impl.forward_normalize(x, dw_weight.contiguous(), pw_weight.contiguous(), bias, y, mean, var,
                                      bn_weight, bn_bias, stride, dilation, eps)


@forward_normalize.register_fake
def _(x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, stride, dilation, eps, backend="auto"):
    check_normalize_inputs(x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, stride, dilation)
    return _out_like(x, pw_weight.shape[0], stride)


@torch.library.custom_op("fused_dsconv::backward_reduce", mutates_args=())
def backward_reduce(grad_out: Tensor, y: Tensor, mean: Tensor, var: Tensor, bn_weight: Optional[Tensor],
                    bn_bias: Optional[Tensor], eps: float, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """(sum dz, sum dz * yhat) per channel over this call's pixels, with yhat = (y - mean) / sqrt(var + eps),
    z = yhat * bn_weight + bn_bias and dz = grad_out [z > 0]: the BN parameters' gradients (dbeta, dgamma)
    and, merged over processes, what backward_apply needs."""
    check_reduce_inputs(grad_out, y, mean, var, bn_weight, bn_bias)
    if y.numel() == 0:
        return _stat_out(y, y.shape[1]), _stat_out(y, y.shape[1])
    impl = backends.select(y, backend)
    with _no_autocast(y):
        return impl.backward_reduce(grad_out, y, mean, var, bn_weight, bn_bias, eps)


@backward_reduce.register_fake
def _(grad_out, y, mean, var, bn_weight, bn_bias, eps, backend="auto"):
    check_reduce_inputs(grad_out, y, mean, var, bn_weight, bn_bias)
    k = y.shape[1]
    return y.new_empty(k, dtype=acc_dtype(y)), y.new_empty(k, dtype=acc_dtype(y))


@torch.library.custom_op("fused_dsconv::backward_apply", mutates_args=())
def backward_apply(grad_out: Tensor, x: Tensor, dw_weight: Tensor, pw_weight: Tensor, y: Tensor, mean: Tensor,
                   var: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], mean_dz: Tensor,
                   mean_dz_yhat: Tensor, stride: int, dilation: int, eps: float, backend: str = "auto"
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_dw_weight, grad_pw_weight) through dy = bn_weight / sqrt(var + eps) * (dz - mean_dz -
    yhat * mean_dz_yhat), where mean_dz / mean_dz_yhat are backward_reduce's sums divided by the pixel count
    (merged over processes: nn.SyncBatchNorm's backward)."""
    check_apply_inputs(grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat,
                 stride, dilation)
    if x.numel() == 0:
        return _zero_grads(x, dw_weight, pw_weight, 0)
    impl = backends.select(x, backend)
    with _no_autocast(x):
        return impl.backward_apply(grad_out, x, dw_weight.contiguous(), pw_weight.contiguous(), y, mean, var,
                                   bn_weight, bn_bias, mean_dz, mean_dz_yhat, stride, dilation, eps)


@backward_apply.register_fake
def _(grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat, stride, dilation,
      eps, backend="auto"):
    check_apply_inputs(grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat,
                 stride, dilation)
    return torch.empty_like(x), torch.empty_like(dw_weight), torch.empty_like(pw_weight)


def _zero_grads(x, dw_weight, pw_weight, n_per_channel):
    k = pw_weight.shape[0]
    return (torch.zeros_like(x), torch.zeros_like(dw_weight), torch.zeros_like(pw_weight),
            *(x.new_zeros(k, dtype=acc_dtype(x)) for _ in range(n_per_channel)))



# -- autograd of the forward ops ---------------------------------------------------------------------
def _setup_eval(ctx, inputs, output):
    x, dw_weight, pw_weight, _bias = inputs[:4]
    ctx.save_for_backward(output, x, dw_weight, pw_weight)
    ctx.params = EvalParams(*inputs[4:])


def _backward_eval(ctx, grad_out):
    out, x, dw_weight, pw_weight = ctx.saved_tensors
    p, need = ctx.params, ctx.needs_input_grad
    if any(need[:3]):
        dx, ddw, dpw, dbias = backward_eval(grad_out, out, x, dw_weight, pw_weight, p.stride, p.dilation, p.backend)
    else:  # only the bias: ReLU's gradient summed per channel, no convolution-gradient kernel
        dx = ddw = dpw = None
        dbias = torch.ops.aten.threshold_backward(grad_out, out, 0).sum((0, 2, 3), dtype=acc_dtype(x))
    return (dx if need[0] else None, ddw if need[1] else None, dpw if need[2] else None,
            dbias if need[3] else None, None, None, None)


def _setup_train(ctx, inputs, output):
    x, dw_weight, pw_weight, bias, bn_weight, bn_bias = inputs[:6]
    p = TrainParams(*inputs[6:])
    _, y, mean, var = output
    # y and the statistics feed the running-stat update (under no_grad) and backward only: a
    # gradient arriving for them would be silently dropped, so they are marked non-differentiable.
    ctx.mark_non_differentiable(y, mean, var)
    ctx.save_for_backward(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y if p.save_y else None, mean, var)
    ctx.params = p


def _backward_train(ctx, grad_out, _grad_y, _grad_mean, _grad_var):
    x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var = ctx.saved_tensors
    p, need = ctx.params, ctx.needs_input_grad
    if any(need[:3]):
        dx, ddw, dpw, dbias, dgamma, dbeta = backward_train(grad_out, x, dw_weight, pw_weight, bias, bn_weight,
                                                            bn_bias, y, mean, var, p.stride, p.dilation, p.eps,
                                                            p.backend)
    else:  # frozen convolutions, x without gradient: the BN parameters' gradients are two per-channel sums
        if y is None:  # recompute mode
            y = forward_stats(x, dw_weight, pw_weight, bias, p.stride, p.dilation, True, p.backend)[0]
        dbeta, dgamma = backward_reduce(grad_out, y, mean, var, bn_weight, bn_bias, p.eps, p.backend)
        dx = ddw = dpw = None
        dbias = torch.zeros_like(mean)  # the batch mean absorbs any shift of y: the bias has no gradient
    affine = bn_weight is not None
    return (dx if need[0] else None, ddw if need[1] else None, dpw if need[2] else None,
            dbias if bias is not None and need[3] else None, dgamma if affine and need[4] else None,
            dbeta if affine and need[5] else None, None, None, None, None, None)


torch.library.register_autograd("fused_dsconv::forward_eval", _backward_eval, setup_context=_setup_eval)
torch.library.register_autograd("fused_dsconv::forward_train", _backward_train, setup_context=_setup_train)
