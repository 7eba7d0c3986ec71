"""The registered op family ``torch.ops.fused_dsconv.*``: schemas, fake kernels, autograd formulas.

The ops are functional (they return the batch statistics instead of updating running statistics):
``torch.library`` will not attach autograd to an op that mutates its inputs, and a functional op is
what torch.compile traces without a graph break. ``JointBlock`` updates the running statistics.

The split training passes of synchronised batch norm are the same family's other four ops
(``fused_dsconv/split_ops.py``). Each op checks its inputs (``fused_dsconv.checks``) and hands the work to one backend
(``fused_dsconv.backends``), selected once per call from ``backend``: a name from that list, or "auto"
(the first capable backend in priority order; ``JointBlock`` passes its measured choice instead).

The two forward ops carry autograd formulas, registered below each op: backward calls the matching
backward op on the same backend, so it stays opaque to torch.compile. The depthwise output is never
saved: every backend rebuilds it from x. Gradients no input needs are not computed: backward passes
``ctx.needs_input_grad`` of x, dw_weight and pw_weight to the backward op as its ``output_mask``, so a
frozen weight costs no kernel of its own; when none of the three needs one, no convolution-gradient kernel
runs (the BN and bias gradients come from per-channel sums). Double backward is not supported (the
backward ops have no autograd of their own).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import backends
from .checks import check_backward_eval_inputs, check_backward_train_inputs, check_inputs, check_train_inputs
from .contract import OpParams, acc_dtype, check_output_mask, output_mask_schema
from .empty import grad_or_empty, out_like, zero_grads
from .split_ops import backward_reduce, forward_stats


@torch.library.custom_op("fused_dsconv::forward_eval", mutates_args=())
def forward_eval(
    x: Tensor, dw_weight: Tensor, pw_weight: Tensor, bias: Tensor, stride: int, dilation: int, backend: str = "auto"
) -> Tensor:
    """relu(pw(dw(x)) + bias): the eval-mode joint block with BN folded into pw_weight and bias."""
    check_inputs(x, dw_weight, pw_weight, stride, dilation, bias=bias)
    if x.numel() == 0:
        return out_like(x, pw_weight.shape[0], stride)
    impl = backends.select(x, backend)
    with backends.no_autocast(x):
        return impl.forward_eval(x, dw_weight.contiguous(), pw_weight.contiguous(), bias, OpParams(stride, dilation))


@forward_eval.register_fake
def _(x, dw_weight, pw_weight, bias, stride, dilation, backend="auto"):
    check_inputs(x, dw_weight, pw_weight, stride, dilation, bias=bias)
    return out_like(x, pw_weight.shape[0], stride)


@torch.library.custom_op("fused_dsconv::forward_train", mutates_args=())
def forward_train(
    x: Tensor,
    dw_weight: Tensor,
    pw_weight: Tensor,
    bias: Optional[Tensor],
    bn_weight: Optional[Tensor],
    bn_bias: Optional[Tensor],
    stride: int,
    dilation: int,
    eps: float,
    save_y: bool = True,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training-mode joint block: returns (out, y, mean, var).

    y = pw(dw(x)) + bias (empty when ``save_y`` is False); mean / var are the biased batch
    statistics (float32; float64 for float64 x) of y per channel; out = relu(bn_weight * (y - mean) / sqrt(var + eps) + bn_bias).
    """
    check_train_inputs(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation)
    if x.numel() == 0:  # an empty batch has no statistics: NaN, as torch.var_mean of nothing
        out = out_like(x, pw_weight.shape[0], stride)
        stat = torch.full((pw_weight.shape[0],), float("nan"), dtype=acc_dtype(x), device=x.device)
        return out, out.clone() if save_y else x.new_empty(0), stat, stat.clone()
    impl = backends.select(x, backend)
    with backends.no_autocast(x):
        p = OpParams(stride, dilation, eps, save_y)
        return impl.forward_train(x, dw_weight.contiguous(), pw_weight.contiguous(), bias, bn_weight, bn_bias, p)


@forward_train.register_fake
def _(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, eps, save_y=True, backend="auto"):
    check_train_inputs(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation)
    k = pw_weight.shape[0]
    out = out_like(x, k, stride)
    y = out_like(x, k, stride) if save_y else x.new_empty(0)
    stat = x.new_empty(k, dtype=acc_dtype(x))
    return out, y, stat, stat.clone()


def _backward_eval(
    grad_out: Tensor,
    out: Tensor,
    x: Tensor,
    dw_weight: Tensor,
    pw_weight: Tensor,
    stride: int,
    dilation: int,
    backend: str = "auto",
    output_mask: Optional[list[bool]] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of forward_eval w.r.t. (x, dw_weight, pw_weight, bias).

    ``output_mask`` (as aten::convolution_backward's; default all True): which of the first three to compute.
    An unwanted one is an empty tensor and the kernels only it needs do not run: without grad pw_weight no
    pointwise weight-gradient kernel; without grad x and grad dw_weight no depthwise-output gradient and no dx
    kernel. grad x and grad dw_weight come from one kernel (they share its input window): asking for either
    runs it, leaving out only the other's store or reduction. The bias gradient is always computed.
    """
    mask = check_output_mask(output_mask)
    check_backward_eval_inputs(grad_out, out, x, dw_weight, pw_weight, stride, dilation)
    if x.numel() == 0:
        return zero_grads(x, dw_weight, pw_weight, 1, mask)
    impl = backends.select(x, backend)
    with backends.no_autocast(x):
        p = OpParams(stride, dilation, output_mask=mask)
        return impl.backward_eval(grad_out, out, x, dw_weight.contiguous(), pw_weight.contiguous(), p)


backward_eval = torch.library.custom_op(
    "fused_dsconv::backward_eval", _backward_eval, mutates_args=(), schema=output_mask_schema(_backward_eval)
)


@backward_eval.register_fake
def _(grad_out, out, x, dw_weight, pw_weight, stride, dilation, backend="auto", output_mask=None):
    mask = check_output_mask(output_mask)
    check_backward_eval_inputs(grad_out, out, x, dw_weight, pw_weight, stride, dilation)
    return (
        *(grad_or_empty(t, m) for t, m in zip((x, dw_weight, pw_weight), mask)),
        x.new_empty(pw_weight.shape[0], dtype=acc_dtype(x)),
    )


def _backward_train(
    grad_out: Tensor,
    x: Tensor,
    dw_weight: Tensor,
    pw_weight: Tensor,
    bias: Optional[Tensor],
    bn_weight: Optional[Tensor],
    bn_bias: Optional[Tensor],
    y: Optional[Tensor],
    mean: Tensor,
    var: Tensor,
    stride: int,
    dilation: int,
    eps: float,
    backend: str = "auto",
    output_mask: Optional[list[bool]] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of forward_train w.r.t. (x, dw_weight, pw_weight, bias, bn_weight, bn_bias).

    ``y`` None means recompute mode. The last two are [K] tensors even when bn_weight is None
    (the autograd layer drops them then). ``output_mask`` picks which of the first three to compute, as
    backward_eval's (the BN and bias gradients are always computed: every convolution gradient needs their sums).
    """
    mask = check_output_mask(output_mask)
    y = check_backward_train_inputs(
        grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, stride, dilation
    )
    if x.numel() == 0:
        return zero_grads(x, dw_weight, pw_weight, 3, mask)
    impl = backends.select(x, backend)
    with backends.no_autocast(x):
        return impl.backward_train(
            grad_out,
            x,
            dw_weight.contiguous(),
            pw_weight.contiguous(),
            bias,
            bn_weight,
            bn_bias,
            y,
            mean,
            var,
            OpParams(stride, dilation, eps, output_mask=mask),
        )


backward_train = torch.library.custom_op(
    "fused_dsconv::backward_train", _backward_train, mutates_args=(), schema=output_mask_schema(_backward_train)
)


@backward_train.register_fake
def _(
    grad_out,
    x,
    dw_weight,
    pw_weight,
    bias,
    bn_weight,
    bn_bias,
    y,
    mean,
    var,
    stride,
    dilation,
    eps,
    backend="auto",
    output_mask=None,
):
    mask = check_output_mask(output_mask)
    check_backward_train_inputs(
        grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, stride, dilation
    )
    k = pw_weight.shape[0]
    stats = [x.new_empty(k, dtype=acc_dtype(x)) for _ in range(3)]
    return (*(grad_or_empty(t, m) for t, m in zip((x, dw_weight, pw_weight), mask)), *stats)


# -- autograd of the forward ops ---------------------------------------------------------------------
# ctx.params: the forward's OpParams (its backward asks for the gradients ctx.needs_input_grad wants);
# ctx.backend: the forward's backend argument, so backward runs on the same one.
def _setup_eval(ctx, inputs, output):
    x, dw_weight, pw_weight, _bias, stride, dilation, backend = inputs
    ctx.save_for_backward(output, x, dw_weight, pw_weight)
    ctx.params, ctx.backend = OpParams(stride, dilation), backend


def _autograd_eval(ctx, grad_out):
    out, x, dw_weight, pw_weight = ctx.saved_tensors
    p, need = ctx.params.with_mask(ctx.needs_input_grad[:3]), ctx.needs_input_grad
    if any(p.output_mask):
        dx, ddw, dpw, dbias = backward_eval(
            grad_out, out, x, dw_weight, pw_weight, p.stride, p.dilation, ctx.backend, list(p.output_mask)
        )
    else:  # only the bias: ReLU's gradient summed per channel, no convolution-gradient kernel
        dx = ddw = dpw = None
        dbias = torch.ops.aten.threshold_backward(grad_out, out, 0).sum((0, 2, 3), dtype=acc_dtype(x))
    return (
        dx if need[0] else None,
        ddw if need[1] else None,
        dpw if need[2] else None,
        dbias if need[3] else None,
        None,
        None,
        None,
    )


def _setup_train(ctx, inputs, output):
    x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, eps, save_y, backend = inputs
    p = OpParams(stride, dilation, eps, save_y)
    _, y, mean, var = output
    # y and the statistics feed the running-stat update (under no_grad) and backward only: a
    # gradient arriving for them would be silently dropped, so they are marked non-differentiable.
    ctx.mark_non_differentiable(y, mean, var)
    ctx.save_for_backward(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y if p.save_y else None, mean, var)
    ctx.params, ctx.backend = p, backend


def _autograd_train(ctx, grad_out, _grad_y, _grad_mean, _grad_var):
    x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var = ctx.saved_tensors
    p, need = ctx.params.with_mask(ctx.needs_input_grad[:3]), ctx.needs_input_grad
    if any(p.output_mask):
        dx, ddw, dpw, dbias, dgamma, dbeta = backward_train(
            grad_out,
            x,
            dw_weight,
            pw_weight,
            bias,
            bn_weight,
            bn_bias,
            y,
            mean,
            var,
            p.stride,
            p.dilation,
            p.eps,
            ctx.backend,
            list(p.output_mask),
        )
    else:  # frozen convolutions, x without gradient: the BN parameters' gradients are two per-channel sums
        if y is None:  # recompute mode
            y = forward_stats(x, dw_weight, pw_weight, bias, p.stride, p.dilation, True, ctx.backend)[0]
        dbeta, dgamma = backward_reduce(grad_out, y, mean, var, bn_weight, bn_bias, p.eps, ctx.backend)
        dx = ddw = dpw = None
        dbias = torch.zeros_like(mean)  # the batch mean absorbs any shift of y: the bias has no gradient
    affine = bn_weight is not None
    return (
        dx if need[0] else None,
        ddw if need[1] else None,
        dpw if need[2] else None,
        dbias if bias is not None and need[3] else None,
        dgamma if affine and need[4] else None,
        dbeta if affine and need[5] else None,
        None,
        None,
        None,
        None,
        None,
    )


torch.library.register_autograd("fused_dsconv::forward_eval", _autograd_eval, setup_context=_setup_eval)
torch.library.register_autograd("fused_dsconv::forward_train", _autograd_train, setup_context=_setup_train)
