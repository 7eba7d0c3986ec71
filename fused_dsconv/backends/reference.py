"""The reference backend: the four primitives in plain PyTorch, accumulating in float32 (float64 for float64).

It runs on any device and is the fallback when no fused backend can run. It is unfused (it
materialises the depthwise output) but follows the same contract and the same backward formulas
as the kernels, so it also checks those formulas against autograd in the tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import Backend, acc_dtype, memory_format_of, register


def _pre_bn(x, dw_weight, pw_weight, bias, stride, dilation):
    """(t, y) in float32: depthwise output and pointwise output plus bias."""
    c, k, acc = x.shape[1], pw_weight.shape[0], acc_dtype(x)
    t = F.conv2d(x.to(acc), dw_weight.to(acc), None, stride, dilation, dilation, c)
    y = F.conv2d(t, pw_weight.to(acc).reshape(k, c, 1, 1), bias)
    return t, y


def _relu_mask(grad, z):
    # threshold_backward semantics: zero where z <= 0, so a NaN pre-activation passes its gradient on.
    return torch.where(z <= 0, torch.zeros((), dtype=grad.dtype, device=grad.device), grad)


def _conv_grads(dy, x, dw_weight, pw_weight, stride, dilation):
    """Gradients of y = pw(dw(x)) w.r.t. x, dw_weight, pw_weight, given dy in acc_dtype."""
    c, k, acc = x.shape[1], pw_weight.shape[0], acc_dtype(x)
    t, _ = _pre_bn(x, dw_weight, pw_weight, None, stride, dilation)
    pw4 = pw_weight.to(acc).reshape(k, c, 1, 1)
    dt, dpw, _ = torch.ops.aten.convolution_backward(
        dy, t, pw4, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, False])
    dx, ddw, _ = torch.ops.aten.convolution_backward(
        dt, x.to(acc), dw_weight.to(acc), None, [stride] * 2, [dilation] * 2, [dilation] * 2,
        False, [0, 0], c, [True, True, False])
    return (dx.to(x.dtype).contiguous(memory_format=memory_format_of(x)),
            ddw.to(dw_weight.dtype), dpw.reshape(k, c).to(pw_weight.dtype))


class ReferenceBackend(Backend):
    name = "reference"

    def unavailable(self, x):
        return None

    def forward_eval(self, x, dw_weight, pw_weight, bias, stride, dilation):
        _, y = _pre_bn(x, dw_weight, pw_weight, bias, stride, dilation)
        return F.relu(y).to(x.dtype).contiguous(memory_format=memory_format_of(x))

    def forward_train(self, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, eps, save_y):
        mf = memory_format_of(x)
        _, y32 = _pre_bn(x, dw_weight, pw_weight, bias, stride, dilation)
        var, mean = torch.var_mean(y32, dim=(0, 2, 3), unbiased=False)
        y = y32.to(x.dtype)
        # Normalise the stored (rounded) y, as a kernel that writes y and re-reads it does.
        z = _normalise(y.to(mean.dtype), mean, var, bn_weight, bn_bias, eps)
        out = F.relu(z).to(x.dtype).contiguous(memory_format=mf)
        y_saved = y.contiguous(memory_format=mf) if save_y else x.new_empty(0)
        return out, y_saved, mean, var

    def backward_eval(self, grad_out, out, x, dw_weight, pw_weight, stride, dilation):
        dz = _relu_mask(grad_out.to(acc_dtype(x)), out)
        dx, ddw, dpw = _conv_grads(dz, x, dw_weight, pw_weight, stride, dilation)
        return dx, ddw, dpw, dz.sum((0, 2, 3))

    def backward_train(self, grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var,
                       stride, dilation, eps):
        if y is None:
            y = _pre_bn(x, dw_weight, pw_weight, bias, stride, dilation)[1].to(x.dtype)
        yf = y.to(acc_dtype(x))
        m = yf.numel() // yf.shape[1]
        r = torch.rsqrt(var + eps)
        yhat = (yf - mean[:, None, None]) * r[:, None, None]
        z = _normalise(yf, mean, var, bn_weight, bn_bias, eps)
        dz = _relu_mask(grad_out.to(yf.dtype), z)
        dbeta = dz.sum((0, 2, 3))
        dgamma = (dz * yhat).sum((0, 2, 3))
        g = bn_weight if bn_weight is not None else torch.ones_like(mean)
        # dy = g r / M * (M dz - dbeta - yhat dgamma): the BN backward with batch statistics.
        dy = (g * r)[:, None, None] * (dz - (dbeta / m)[:, None, None] - yhat * (dgamma / m)[:, None, None])
        dx, ddw, dpw = _conv_grads(dy, x, dw_weight, pw_weight, stride, dilation)
        return dx, ddw, dpw, dy.sum((0, 2, 3)), dgamma, dbeta


def _normalise(yf, mean, var, bn_weight, bn_bias, eps):
    z = (yf - mean[:, None, None]) * torch.rsqrt(var + eps)[:, None, None]
    if bn_weight is not None:
        z = z * bn_weight[:, None, None] + bn_bias[:, None, None]
    return z


register(ReferenceBackend())
