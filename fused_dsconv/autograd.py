"""Autograd formulas for the forward ops, registered with ``torch.library.register_autograd``.

Backward calls the matching backward op, so it runs on the same backend as the forward and stays
opaque to torch.compile. The depthwise output is never saved: every backend rebuilds it from x.
Double backward is not supported (the backward ops have no autograd of their own).
"""
from __future__ import annotations

import torch

from . import ops


def _setup_eval(ctx, inputs, output):
    x, dw_weight, pw_weight, bias, stride, dilation, backend = inputs
    ctx.save_for_backward(output, x, dw_weight, pw_weight)
    ctx.conf = (stride, dilation, backend)


def _backward_eval(ctx, grad_out):
    out, x, dw_weight, pw_weight = ctx.saved_tensors
    stride, dilation, backend = ctx.conf
    dx, ddw, dpw, dbias = ops.backward_eval(grad_out, out, x, dw_weight, pw_weight, stride, dilation, backend)
    return dx, ddw, dpw, dbias, None, None, None


def _setup_train(ctx, inputs, output):
    x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, eps, save_y, backend = inputs
    out, y, mean, var = output
    # y and the statistics feed the running-stat update (under no_grad) and backward only: a
    # gradient arriving for them would be silently dropped, so they are marked non-differentiable.
    ctx.mark_non_differentiable(y, mean, var)
    ctx.save_for_backward(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y if save_y else None, mean, var)
    ctx.conf = (stride, dilation, eps, backend)


def _backward_train(ctx, grad_out, _grad_y, _grad_mean, _grad_var):
    x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var = ctx.saved_tensors
    stride, dilation, eps, backend = ctx.conf
    dx, ddw, dpw, dbias, dgamma, dbeta = ops.backward_train(
        grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, stride, dilation, eps, backend)
    affine = bn_weight is not None
    return (dx, ddw, dpw, dbias if bias is not None else None, dgamma if affine else None,
            dbeta if affine else None, None, None, None, None, None)


torch.library.register_autograd("fused_dsconv::forward_eval", _backward_eval, setup_context=_setup_eval)
torch.library.register_autograd("fused_dsconv::forward_train", _backward_train, setup_context=_setup_train)
