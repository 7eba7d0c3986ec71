"""The reference backend: the backend contract's primitives in plain PyTorch, accumulating in float32
(float64 for float64).

Not the spec: the spec (``fused_dsconv/spec.py``) is the unfused block as PyTorch's modules compute it,
with autograd doing the backward. This backend is what runs when no fused backend can: unfused (it
materialises the depthwise output), but with the contract's inputs and outputs (folded biases, batch
statistics returned, explicit backward formulas as the kernels have them), and it is tested against the
spec like every other backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..contract import OpParams, acc_dtype, memory_format_of
from .base import Backend


def _depthwise(x, dw_weight, stride, dilation):
    """t, the depthwise output, in acc_dtype."""
    acc = acc_dtype(x)
    return F.conv2d(x.to(acc), dw_weight.to(acc), None, stride, dilation, dilation, x.shape[1])


def _pre_bn(x, dw_weight, pw_weight, bias, stride, dilation):
    """(t, y) in float32: depthwise output and pointwise output plus bias."""
    c, k, acc = x.shape[1], pw_weight.shape[0], acc_dtype(x)
    t = _depthwise(x, dw_weight, stride, dilation)
    y = F.conv2d(t, pw_weight.to(acc).reshape(k, c, 1, 1), bias)
    return t, y


def _conv_grads(dy, x, dw_weight, pw_weight, p: OpParams, bias_grad):
    """Gradients of y = pw(dw(x)) + b w.r.t. x, dw_weight, pw_weight (and b), given dy in acc_dtype.

    ``p.output_mask`` picks which of the first three to compute; an unwanted one is an empty tensor. The
    depthwise output t is recomputed here (the fused backends do the same on chip), not saved, and only for
    the pointwise weight's gradient: dt needs only dy and the pointwise weight.
    """
    want_dx, want_dwd, want_dwp = p.output_mask
    c, k, acc = x.shape[1], pw_weight.shape[0], acc_dtype(x)
    want_dt = want_dx or want_dwd
    if want_dwp:
        t = _depthwise(x, dw_weight, p.stride, p.dilation)
    else:  # only its shape is read (no weight gradient is asked of this convolution)
        t = dy.new_empty((dy.shape[0], c, *dy.shape[2:]))
    pw4 = pw_weight.to(acc).reshape(k, c, 1, 1)
    dbias = dy.new_zeros(k)  # the contract returns a [K] tensor; autograd drops it when there is no bias
    dt = dpw = None
    if want_dt or want_dwp or bias_grad:
        dt, dpw, db = torch.ops.aten.convolution_backward(
            dy,
            t,
            pw4,
            [k] if bias_grad else None,
            [1, 1],
            [0, 0],
            [1, 1],
            False,
            [0, 0],
            1,
            [want_dt, want_dwp, bias_grad],
        )
        dbias = db if bias_grad else dbias
    dx = ddw = None
    if want_dt:
        dx, ddw, _ = torch.ops.aten.convolution_backward(
            dt,
            x.to(acc),
            dw_weight.to(acc),
            None,
            [p.stride] * 2,
            [p.dilation] * 2,
            [p.dilation] * 2,
            False,
            [0, 0],
            c,
            [want_dx, want_dwd, False],
        )
    return (
        dx.to(x.dtype).contiguous(memory_format=memory_format_of(x)) if want_dx else x.new_empty(0),
        ddw.to(dw_weight.dtype) if want_dwd else dw_weight.new_empty(0),
        dpw.reshape(k, c).to(pw_weight.dtype) if want_dwp else pw_weight.new_empty(0),
        dbias,
    )


def _normalise(yf, mean, var, bn_weight, bn_bias, eps):
    # Eval-mode batch_norm with the batch statistics passed as the "running" ones: one native pass.
    return F.batch_norm(yf, mean, var, bn_weight, bn_bias, False, 0.0, eps)


class ReferenceBackend(Backend):
    name = "reference"

    def unavailable(self, x):
        return None

    def forward_eval(self, x, dw_weight, pw_weight, bias, p):
        _, y = _pre_bn(x, dw_weight, pw_weight, bias, p.stride, p.dilation)
        return F.relu(y).to(x.dtype).contiguous(memory_format=memory_format_of(x))

    def forward_train(self, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, p):
        mf = memory_format_of(x)
        _, y32 = _pre_bn(x, dw_weight, pw_weight, bias, p.stride, p.dilation)
        y = y32.to(x.dtype)
        yf = y.to(y32.dtype)
        # One native pass for statistics and normalisation. Scratch "running" buffers with momentum 1
        # receive exactly the batch mean and PyTorch's own unbiased variance (a separate var_mean
        # over N, H, W is a slow strided reduction on CPU).
        k = y.shape[1]
        mean, unbiased = yf.new_zeros(k), yf.new_zeros(k)
        z = torch.native_batch_norm(yf, bn_weight, bn_bias, mean, unbiased, True, 1.0, p.eps)[0]
        m = yf.numel() // k
        var = unbiased * ((m - 1) / m)
        out = F.relu(z).to(x.dtype).contiguous(memory_format=mf)
        return out, y.contiguous(memory_format=mf) if p.save_y else x.new_empty(0), mean, var

    def backward_eval(self, grad_out, out, x, dw_weight, pw_weight, p):
        # threshold_backward: zero where out <= 0, so a NaN passes its gradient on, as ReLU's does.
        dz = torch.ops.aten.threshold_backward(grad_out.to(acc_dtype(x)), out, 0)
        return _conv_grads(dz, x, dw_weight, pw_weight, p, True)

    def backward_train(self, grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, p):
        if y is None:
            y = _pre_bn(x, dw_weight, pw_weight, bias, p.stride, p.dilation)[1].to(x.dtype)
        yf = y.to(mean.dtype)
        z = _normalise(yf, mean, var, bn_weight, bn_bias, p.eps)
        dz = torch.ops.aten.threshold_backward(grad_out.to(yf.dtype), z, 0)
        affine = bn_weight is not None
        # BN backward with batch statistics: dy = g r / M (M dz - dbeta - yhat dgamma).
        dy, dgamma, dbeta = torch.ops.aten.native_batch_norm_backward(
            dz, yf, bn_weight, None, None, mean, torch.rsqrt(var + p.eps), True, p.eps, [True, affine, affine]
        )
        if not affine:
            dgamma, dbeta = mean.new_zeros(mean.shape), mean.new_zeros(mean.shape)
        dx, ddw, dpw, dbias = _conv_grads(dy, x, dw_weight, pw_weight, p, bias is not None)
        return dx, ddw, dpw, dbias, dgamma, dbeta

    # -- the split passes (synchronised batch norm) --
    def forward_stats(self, x, dw_weight, pw_weight, bias, p):
        _, y32 = _pre_bn(x, dw_weight, pw_weight, bias, p.stride, p.dilation)
        y = y32.to(x.dtype)
        # Statistics of the stored (rounded) y, as forward_train's; batch_norm_update_stats is one native pass
        # (scratch running buffers; it returns the biased variance).
        k = y.shape[1]
        mean, var = torch.batch_norm_update_stats(y.to(y32.dtype), y32.new_zeros(k), y32.new_zeros(k), 0.0)
        return (y.contiguous(memory_format=memory_format_of(x)) if p.save_y else x.new_empty(0)), mean, var

    def forward_normalize(self, x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, p):
        if y is None:
            y = _pre_bn(x, dw_weight, pw_weight, bias, p.stride, p.dilation)[1].to(x.dtype)
        z = _normalise(y.to(mean.dtype), mean, var, bn_weight, bn_bias, p.eps)
        return F.relu(z).to(x.dtype).contiguous(memory_format=memory_format_of(x))

    def backward_reduce(self, grad_out, y, mean, var, bn_weight, bn_bias, p):
        yf = y.to(mean.dtype)
        dz = torch.ops.aten.threshold_backward(
            grad_out.to(yf.dtype), _normalise(yf, mean, var, bn_weight, bn_bias, p.eps), 0
        )
        # The weight gradient of a batch norm without weight is sum(dz * yhat), its bias gradient sum(dz).
        _, sum_dz_yhat, sum_dz = torch.ops.aten.native_batch_norm_backward(
            dz, yf, None, None, None, mean, torch.rsqrt(var + p.eps), True, p.eps, [False, True, True]
        )
        return sum_dz, sum_dz_yhat

    def backward_apply(
        self, grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat, p
    ):
        yf = y.to(mean.dtype)
        dz = torch.ops.aten.threshold_backward(
            grad_out.to(yf.dtype), _normalise(yf, mean, var, bn_weight, bn_bias, p.eps), 0
        )
        r = torch.rsqrt(var + p.eps)
        a = r if bn_weight is None else bn_weight * r
        yhat = (yf - mean[:, None, None]) * r[:, None, None]
        dy = a[:, None, None] * (dz - mean_dz[:, None, None] - yhat * mean_dz_yhat[:, None, None])
        return _conv_grads(dy, x, dw_weight, pw_weight, p, False)[:3]
