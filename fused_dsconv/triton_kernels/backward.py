"""backward: dsconv_bwd_dt (dt and the pointwise weight gradient), dsconv_bwd_dx (dx and the depthwise
weight gradient), as csrc/kernels/backward.cuh (its BN part: ``backward_bn``)."""

from __future__ import annotations

import triton
import triton.language as tl

from .configs import DT_CONFIGS, DX_CONFIGS, _p2, _tuned
from .tiles import _act_off, _act_tile, _assert_in, _dot, _dw_tile, _dy_off, _dy_tile, _pixels, _sum


def _dt_limits(a):
    return {"BLOCK_C": max(16, _p2(a["C"])), "BLOCK_P": max(32, _p2(a["M"]))}


@_tuned(
    "dsconv_bwd_dt",
    DT_CONFIGS,
    ["C", "K", "HWo", "M_CLASS", "LAYOUT", "STRIDE", "DOT_MODE", "TRAIN", "VEC", "BLOCK_K"],
    _dt_limits,
)
@triton.jit(do_not_specialize=["M_CLASS", "LAYOUT"])
def dsconv_bwd_dt_kernel(
    g_ptr,
    y_ptr,
    coef_ptr,
    x_ptr,
    wd_ptr,
    wp_ptr,
    dy_ptr,
    dt_ptr,
    ws_ptr,
    C,
    K,
    H,
    W,
    Wo,
    HWo,
    M,
    dil,
    PIX_GROUP,
    K_SLICES,
    DT_SLICE,
    M_CLASS,
    LAYOUT,
    sgn,
    sgc,
    sgh,
    sgw,
    syn,
    syc,
    syh,
    syw,
    sxn,
    sxc,
    sxh,
    sxw,
    stn,
    stc,
    sth,
    stw,
    g_span,
    y_span,
    x_span,
    t_span,
    dy_span,
    STRIDE: tl.constexpr,
    TRAIN: tl.constexpr,
    DOT_MODE: tl.constexpr,
    VEC: tl.constexpr,
    DEBUG: tl.constexpr,
    DY_IN: tl.constexpr,
    WANT_DT: tl.constexpr,
    WANT_DWP: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """dt = dy Wp over this program's K slice, and the pointwise weight-gradient partial dy^T T.

    DY_IN: dy is read from dy_ptr (bn_bwd_dy's [M, K] buffer); otherwise built from (dout, y, coef) here,
    once per C tile, and dy_ptr is a placeholder.
    WANT_DT / WANT_DWP False (a gradient the caller does not want): that product is neither computed nor
    stored, and its pointer is a placeholder (with WANT_DWP False no T tile is built either).

    1-D grid over (C tiles x K slices x pixel groups), C tiles fastest (they share dy's inputs in L2).
    A program owns input channels [BLOCK_C], output channels [BLOCK_K] (its K slice) and walks the
    PIX_GROUP pixels of its group in BLOCK_P tiles. Per tile: dy[BLOCK_P, BLOCK_K] (never stored) and
    T[BLOCK_P, BLOCK_C] once each; dt_slice = dy Wp[slice, c tile] stored (fp32) into slice ``ks`` of
    the dt buffer (DT_SLICE elements apart; dsconv_bwd_dx adds the K_SLICES slices); dWp[slice, c tile]
    += dy^T T accumulated over the group and stored to ws[group, K, C] (colsum reduces the groups).
    """
    pid = tl.program_id(0)
    c_tiles = (C + BLOCK_C - 1) // BLOCK_C
    pid_c = pid % c_tiles
    rest = pid // c_tiles
    pid_k = rest % K_SLICES
    pid_g = rest // K_SLICES
    kk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = kk < K
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cc < C
    kc_mask = k_mask[:, None] & c_mask[None, :]
    wp = tl.load(wp_ptr + kk[:, None] * C + cc[None, :], mask=kc_mask, other=0.0)
    dwp = tl.full((BLOCK_K, BLOCK_C), 0.0, tl.float32)
    start = pid_g * PIX_GROUP
    end = tl.minimum(start + PIX_GROUP, M)
    dt_base = dt_ptr + pid_k.to(tl.int64) * DT_SLICE
    for p0 in range(start, end, BLOCK_P):
        n, r, ho, wo, p_mask = _pixels(p0, end, HWo, Wo, BLOCK_P, VEC, DEBUG)
        if DY_IN:
            mask = p_mask[:, None] & k_mask[None, :]
            off = _dy_off(p0 + tl.arange(0, BLOCK_P), kk, K, mask, dy_span, DEBUG)
            dy = tl.load(dy_ptr + off, mask=mask, other=0.0)
        else:
            dy = _dy_tile(
                g_ptr,
                y_ptr,
                coef_ptr,
                n,
                r,
                ho,
                wo,
                p_mask,
                kk,
                k_mask,
                K,
                sgn,
                sgc,
                sgh,
                sgw,
                syn,
                syc,
                syh,
                syw,
                g_span,
                y_span,
                TRAIN,
                VEC,
                DEBUG,
            )
        if WANT_DWP:
            t = _dw_tile(
                x_ptr,
                wd_ptr,
                n,
                r,
                ho,
                wo,
                p_mask,
                cc,
                c_mask,
                H,
                W,
                sxn,
                sxc,
                sxh,
                sxw,
                dil,
                x_span,
                STRIDE,
                BLOCK_P,
                BLOCK_C,
                VEC,
                DEBUG,
                False,
            )
        # dt before the dWp product, as before the gradient mask: the other order kept more live at once and
        # spilled (float16 b4 K256 P32 C32 on sm_80, float32 b3 P16 C16 on sm_86 / sm_89: 240 bytes in all).
        if WANT_DT:
            dt = _dot(dy, wp, tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32), wp_ptr, DOT_MODE)
            pc_mask = p_mask[:, None] & c_mask[None, :]
            toff = _act_off(n, r, ho, wo, cc, pc_mask, stn, stc, sth, stw, t_span, VEC, DEBUG)
            tl.store(dt_base + toff, dt, mask=pc_mask)
        if WANT_DWP:
            dwp = _dot(tl.trans(dy), t, dwp, wp_ptr, DOT_MODE)
    if WANT_DWP:
        woff = pid_g.to(tl.int64) * K * C + (kk * C)[:, None] + cc[None, :]
        tl.store(ws_ptr + woff, dwp, mask=kc_mask)


@triton.jit
def _tap_range(phase, dil, STRIDE: tl.constexpr):
    """(first, end, step) of the tap rows i (or columns) that land on the output grid from input rows
    h = phase (mod STRIDE): those with phase + (1 - i) d = 0 (mod STRIDE). Stride 1: all three. Stride 2:
    with d odd, i = phase + 1 (mod 2); with d even, all of them for phase 0 and none for phase 1."""
    tl.static_assert(STRIDE <= 2, "strides 1 and 2 (contract.check_stride)")
    if STRIDE == 1:
        return 0, 3, 1
    odd = dil % 2
    first = tl.where(odd == 1, (phase + 1) % 2, 0)
    end = tl.where((odd == 1) | (phase == 0), 3, 0)
    return first, end, 1 + odd


def _dx_limits(a):
    return {"BLOCK_C": max(16, _p2(a["C"])), "BLOCK_P": max(32, _p2(a["N"] * a["HW"]))}


@_tuned("dsconv_bwd_dx", DX_CONFIGS, ["C", "HW", "M_CLASS", "LAYOUT", "STRIDE", "K_SLICES", "VEC"], _dx_limits)
@triton.jit(do_not_specialize=["M_CLASS", "LAYOUT"])
def dsconv_bwd_dx_kernel(
    dt_ptr,
    wd_ptr,
    x_ptr,
    dx_ptr,
    ws_ptr,
    C,
    H,
    W,
    Ho,
    Wo,
    HW,
    N,
    dil,
    PIX_GROUP,
    K_SLICES,
    DT_SLICE,
    M_CLASS,
    LAYOUT,
    stn,
    stc,
    sth,
    stw,
    sxn,
    sxc,
    sxh,
    sxw,
    sdn,
    sdc,
    sdh,
    sdw,
    t_span,
    x_span,
    d_span,
    STRIDE: tl.constexpr,
    VEC: tl.constexpr,
    DEBUG: tl.constexpr,
    STORE_DX: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """dx and the depthwise weight-gradient partials, from dt (the sum of its K_SLICES slices).

    STORE_DX False: dx is not wanted (dx_ptr is a placeholder, never written); the partials still need the
    same dt gathers, so only the store is left out.

    For input pixel q = (n, h, w) and tap (i, j), the output pixel o = ((h + d - i d) / s, (w + d - j d) / s)
    when that lands on the output grid; then
        dx[q, c] += dt[o, c] Wd[c, i, j]      and      dWd[c, i, j] += dt[o, c] x[q, c],
    which enumerates every (o, q) pair of each tap exactly once, so x is read once per pixel (no halo).

    Input pixels are walked by class (h mod s, w mod s), each class as its own (N, ceil(H / s), ceil(W / s))
    grid: within a class the taps whose row and column can land on the output grid are a fixed progression
    (``_tap_range``), so at stride 2 a program gathers only those (1, 2 or 4 of the 9 with odd d, 2.25 on
    average) instead of masking the others off pixel by pixel. Stride 1 has one class, every pixel.
    1-D grid over (C tiles x pixel groups); a group is a range of class-local pixels, walked in every class,
    so all programs do the same mix of taps. ws[group, c, tap] (tap < 9) receives the group's dWd partial;
    colsum reduces the groups.
    """
    tl.static_assert(STRIDE == 1 or VEC == 1, "a class's pixels are not contiguous in memory")
    pid = tl.program_id(0)
    c_tiles = (C + BLOCK_C - 1) // BLOCK_C
    pid_c = pid % c_tiles
    pid_g = pid // c_tiles
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cc < C
    wv_base = wd_ptr + cc * 9
    taps = tl.arange(0, 16)
    dwd = tl.full((BLOCK_C, 16), 0.0, tl.float32)
    start = pid_g * PIX_GROUP
    for cls in range(0, STRIDE * STRIDE):
        ph = cls // STRIDE
        pw = cls - ph * STRIDE
        hc = (H - ph + STRIDE - 1) // STRIDE  # the class's rows and columns
        wc = (W - pw + STRIDE - 1) // STRIDE
        i0, i_end, i_step = _tap_range(ph, dil, STRIDE)
        j0, j_end, j_step = _tap_range(pw, dil, STRIDE)
        end = tl.minimum(start + PIX_GROUP, N * hc * wc)
        for p0 in range(start, end, BLOCK_P):
            n, r, h, w, p_mask = _pixels(p0, end, hc * wc, wc, BLOCK_P, VEC, DEBUG)
            h = h * STRIDE + ph
            w = w * STRIDE + pw
            pc_mask = p_mask[:, None] & c_mask[None, :]
            xv = _act_tile(x_ptr, n, r, h, w, cc, pc_mask, sxn, sxc, sxh, sxw, x_span, VEC, DEBUG)
            base = (n.to(tl.int64) * stn)[:, None] + (cc.to(tl.int64) * stc)[None, :]
            acc = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
            # Rolled loops (runtime bounds): unrolled, the 9 gathers need too many registers.
            for i in range(i0, i_end, i_step):
                hh = h + (1 - i) * dil
                hcl = tl.maximum(hh, 0)  # no division of negatives (C and Python round them differently)
                ho = hcl // STRIDE
                ok_h = p_mask & (hh >= 0) & (ho < Ho)
                for j in range(j0, j_end, j_step):
                    ww = w + (1 - j) * dil
                    wcl = tl.maximum(ww, 0)
                    wo = wcl // STRIDE
                    ok = ok_h & (ww >= 0) & (wo < Wo)
                    mask = ok[:, None] & c_mask[None, :]
                    off = base + (ho.to(tl.int64) * sth + wo.to(tl.int64) * stw)[:, None]
                    v = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
                    for ks in range(0, K_SLICES):
                        offk = off + tl.cast(ks, tl.int64) * DT_SLICE
                        _assert_in(offk, mask, t_span, DEBUG)
                        v += tl.load(dt_ptr + offk, mask=mask, other=0.0)
                    tap = 3 * i + j
                    wv = tl.load(wv_base + tap, mask=c_mask, other=0.0).to(tl.float32)
                    acc += v * wv[None, :]
                    part = _sum(v * xv, axis=0)
                    dwd += tl.where(taps[None, :] == tap, part[:, None], 0.0)
            if STORE_DX:
                doff = _act_off(n, r, h, w, cc, pc_mask, sdn, sdc, sdh, sdw, d_span, VEC, DEBUG)
                tl.store(dx_ptr + doff, acc.to(dx_ptr.dtype.element_ty), mask=pc_mask)
    woff = pid_g.to(tl.int64) * C * 9 + (cc * 9)[:, None] + taps[None, :]
    tl.store(ws_ptr + woff, dwd, mask=c_mask[:, None] & (taps[None, :] < 9))
