"""Launchers of the Triton backward kernels (with ``triton_launch``'s forward ones, the counterpart of
csrc/kernels/launch.cuh): ``launch_bn_backward`` (bn_coef, bn_bwd_reduce, bn_bwd_finalize: dbias, dgamma,
dbeta and dy's coefficients), ``launch_bn_bwd_dy`` (bn_bwd_dy: dy stored once for wide layers),
``launch_conv_backward`` (dsconv_bwd_dt: dt and dWp; dsconv_bwd_dx: dx and dWd; colsum for the
weight-gradient partials). What a launcher hands a kernel, and how tile configs are chosen: see
``triton_launch``.
"""

from __future__ import annotations

import torch
import triton

from . import triton_setup as ts
from .contract import output_size
from .triton_launch import launch_bn_coef
from .triton_setup import (
    check_pixels,
    colsum_config,
    dense,
    dot_mode,
    dy_stored,
    ew_config,
    ew_opts,
    k_slice,
    kind_of,
    launch_tuned,
    layout,
    m_class,
    pix_groups,
    plane_vec,
    reduce_config,
    span,
    strides,
)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------


def launch_colsum(ws2d):
    """Fixed-order column sums of an [R, NCOL] fp32 workspace or a view of one (read through its strides)."""
    r, ncol = ws2d.shape
    out = torch.empty(ncol, device=ws2d.device, dtype=torch.float32)
    br, bn = colsum_config()
    ts.kernels().colsum_kernel[(triton.cdiv(ncol, bn),)](ws2d, out, r, ncol, *strides(ws2d), BLOCK_R=br, BLOCK_N=bn)
    return out


def launch_bn_backward(grad_out, y, mean, var, bn_weight, bn_bias, eps, train):
    """The BN / ReLU part of the backward: (coef, dbias, dgamma, dbeta).

    train: ``y`` is the pre-BN output; coef [5, K] holds dy's per-channel coefficients (rows mean,
    a = gamma r, beta, c1, rc2: see the kernels' ``_dy_tile``); dgamma / dbeta are the BN parameters'
    gradients. eval: ``y`` is the block's output, coef is a placeholder (eval's dy needs none),
    dgamma = dbeta = None.
    """
    tk = ts.kernels()
    n, k, ho, wo = y.shape
    m = n * ho * wo
    dev = y.device
    affine = bn_weight is not None
    bt, bkc = reduce_config()
    if train:
        mean, var = dense(mean), dense(var)
        gam = dense(bn_weight) if affine else mean
        coef = launch_bn_coef(mean, var, bn_weight, bn_bias, eps, rows=5)
    else:
        gam = var = coef = torch.empty(1, device=dev, dtype=torch.float32)
    bp, bk = ew_config()
    per, groups = pix_groups(m, triton.cdiv(k, bk), dev)
    ws = torch.empty((3 if train else 1, groups, k), device=dev, dtype=torch.float32)
    tk.bn_bwd_reduce_kernel[(groups, triton.cdiv(k, bk))](
        grad_out,
        y,
        coef,
        ws,
        k,
        wo,
        ho * wo,
        m,
        per,
        *strides(grad_out),
        *strides(y),
        span(grad_out),
        span(y),
        TRAIN=train,
        BLOCK_P=bp,
        BLOCK_K=bk,
        VEC=plane_vec(ho * wo, grad_out, y),
        DEBUG=tk.DEBUG,
        **ew_opts(),
    )
    # Separate storages: op outputs may not alias.
    dbias = torch.empty(k, device=dev, dtype=torch.float32)
    dgamma = torch.empty(k, device=dev, dtype=torch.float32) if train else dbias
    dbeta = torch.empty(k, device=dev, dtype=torch.float32) if train else dbias
    tk.bn_bwd_finalize_kernel[(triton.cdiv(k, bkc),)](
        ws,
        var,
        gam,
        coef,
        dbias,
        dgamma,
        dbeta,
        groups,
        k,
        m,
        eps,
        TRAIN=train,
        HAS_AFFINE=affine,
        BLOCK_T=bt,
        BLOCK_K=bkc,
    )
    return (coef, dbias, dgamma, dbeta) if train else (coef, dbias, None, None)


def launch_bn_bwd_dy(grad_out, y, coef, dtype, train):
    """dy [N*Ho*Wo, K] (K contiguous) in ``dtype`` (the dot operands' storage dtype), from bn_bwd_finalize's
    coefficients (see ``launch_bn_backward``)."""
    tk = ts.kernels()
    n, k, ho, wo = y.shape
    m = n * ho * wo
    dy = torch.empty((m, k), device=y.device, dtype=dtype)
    bp, bk = ew_config()
    tk.bn_bwd_dy_kernel[(triton.cdiv(m, bp), triton.cdiv(k, bk))](
        grad_out,
        y,
        coef,
        dy,
        k,
        wo,
        ho * wo,
        m,
        *strides(grad_out),
        *strides(y),
        span(grad_out),
        span(y),
        span(dy),
        TRAIN=train,
        BLOCK_P=bp,
        BLOCK_K=bk,
        VEC=plane_vec(ho * wo, grad_out, y),
        DEBUG=tk.DEBUG,
        **ew_opts(),
    )
    return dy


def launch_conv_backward(grad_out, y, coef, x, dw_weight, pw_weight, stride, dilation, train, output_mask=None):
    """(dx, dWd, dWp) given dy = f(grad_out, y, coef) (the kernels' ``_dy_tile``).

    ``output_mask`` (default all True) picks which of the three to compute; an unwanted one is an empty
    tensor. No dWp: dsconv_bwd_dt builds no T tiles and its colsum is not launched. Neither dx nor dWd: no dt
    is stored and dsconv_bwd_dx is not launched. Only one of dx, dWd: dsconv_bwd_dx runs whole (both come
    from the same dt gathers), leaving out the dx store or the dWd colsum."""
    want_dx, want_dwd, want_dwp = (True, True, True) if output_mask is None else (bool(m) for m in output_mask)
    want_dt = want_dx or want_dwd
    if not (want_dt or want_dwp):
        return x.new_empty(0), dw_weight.new_empty(0), pw_weight.new_empty(0)
    tk = ts.kernels()
    n, c, h, w = x.shape
    k = pw_weight.shape[0]
    ho, wo = output_size(h, stride), output_size(w, stride)
    m, mi = n * ho * wo, n * h * w
    check_pixels(mi, "N*H*W")
    check_pixels(m, "N*Ho*Wo")
    coef, dw_weight, pw_weight = dense(coef), dense(dw_weight), dense(pw_weight)
    mf = torch.channels_last if layout(x) else torch.contiguous_format
    dev, mcls, lay = x.device, m_class(m), layout(x)

    # dy once, for every C tile of dsconv_bwd_dt to read (``dy_stored``); else each rebuilds it.
    dy_in = dy_stored(c)
    dy = launch_bn_bwd_dy(grad_out, y, coef, x.dtype, train) if dy_in else coef

    # dt (fp32, x's layout; one slice per K slice) and the pointwise weight-gradient partials.
    mode = dot_mode(x)
    bk = k_slice(k, kind_of(x, mode))
    slices = triton.cdiv(k, bk)
    # An unwanted product's buffer is a placeholder of its layout on the meta device (strides, span), and the
    # kernel gets another tensor's pointer it never dereferences for it (WANT_DT / WANT_DWP are constexprs).
    dt = torch.empty((slices * n, c, ho, wo), device=dev if want_dt else "meta", dtype=torch.float32, memory_format=mf)
    dt_slice = n * c * ho * wo
    min_bc = min(cfg.kwargs["BLOCK_C"] for cfg in tk.DT_CONFIGS)
    per, groups = pix_groups(m, triton.cdiv(c, 2 * min_bc) * slices, dev)
    ws_pw = torch.empty((groups, k * c) if want_dwp else (1,), device=dev, dtype=torch.float32)
    dt_arg = dt if want_dt else ws_pw
    launch_tuned(
        "dsconv_bwd_dt",
        lambda meta: (triton.cdiv(c, meta["BLOCK_C"]) * slices * groups,),
        grad_out,
        y,
        coef,
        x,
        dw_weight,
        pw_weight,
        dy,
        dt_arg,
        ws_pw if want_dwp else dt_arg,
        c,
        k,
        h,
        w,
        wo,
        ho * wo,
        m,
        dilation,
        per,
        slices,
        dt_slice,
        mcls,
        lay,
        *strides(grad_out),
        *strides(y),
        *strides(x),
        *strides(dt),
        span(grad_out),
        span(y),
        span(x),
        span(dt),
        span(dy),
        STRIDE=stride,
        TRAIN=train,
        DOT_MODE=mode,
        DEBUG=tk.DEBUG,
        DY_IN=dy_in,
        WANT_DT=want_dt,
        WANT_DWP=want_dwp,
        BLOCK_K=bk,
        VEC=plane_vec(ho * wo, grad_out, y, dt, *((x,) if stride == 1 else ())),
    )
    d_pw = launch_colsum(ws_pw).reshape(k, c).to(pw_weight.dtype) if want_dwp else pw_weight.new_empty(0)
    if not want_dt:
        return x.new_empty(0), dw_weight.new_empty(0), d_pw

    # dx and the depthwise weight-gradient partials.
    dx = torch.empty_like(x, memory_format=mf) if want_dx else x  # x: a placeholder dsconv_bwd_dx never writes
    # Groups of class-local input pixels (the kernel walks each group in every class (h mod stride, w mod
    # stride); the first class is the largest).
    min_bc = min(cfg.kwargs["BLOCK_C"] for cfg in tk.DX_CONFIGS)
    per, groups = pix_groups(n * triton.cdiv(h, stride) * triton.cdiv(w, stride), triton.cdiv(c, 2 * min_bc), dev)
    ws_dw = torch.empty((groups, c * 9), device=dev, dtype=torch.float32)
    launch_tuned(
        "dsconv_bwd_dx",
        lambda meta: (triton.cdiv(c, meta["BLOCK_C"]) * groups,),
        dt,
        dw_weight,
        x,
        dx,
        ws_dw,
        c,
        h,
        w,
        ho,
        wo,
        h * w,
        n,
        dilation,
        per,
        slices,
        dt_slice,
        mcls,
        lay,
        *strides(dt),
        *strides(x),
        *strides(dx),
        span(dt),
        span(x),
        span(dx),
        STRIDE=stride,
        VEC=plane_vec(h * w, x, dx) if stride == 1 else 1,
        DEBUG=tk.DEBUG,
        STORE_DX=want_dx,
    )
    d_dw = launch_colsum(ws_dw).reshape(c, 1, 3, 3).to(dw_weight.dtype) if want_dwd else dw_weight.new_empty(0)
    return (dx if want_dx else x.new_empty(0)), d_dw, d_pw
