"""backward_bn: the BN / ReLU part of the backward, as csrc/kernels/backward.cuh's: bn_bwd_reduce and
bn_bwd_finalize (the BN gradient sums and dy's coefficients), bn_bwd_dy (dy stored once for wide layers)."""

from __future__ import annotations

import triton
import triton.language as tl

from .reductions import _bn_scale
from .tiles import _act_tile, _bn_z, _dy_off, _dy_tile, _ew_tile, _pixels, _sum


@triton.jit
def bn_bwd_reduce_kernel(
    g_ptr,
    y_ptr,
    coef_ptr,
    ws_ptr,
    K,
    Wo,
    HWo,
    M,
    PIX_GROUP,
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
    TRAIN: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    VEC: tl.constexpr,
    DEBUG: tl.constexpr,
):
    """Per-group partial sums over pixels, ws[j, group, k]; grid (pixel groups, K tiles), a program walks
    the PIX_GROUP pixels of its group in tiles of BLOCK_P.

    TRAIN (y = pre-BN output, coefficient rows mean, a, beta; d = y - mean): j = 0: dz, 1: dz d, 2: d.
    eval (y = block output): j = 0: dz = dout [out > 0] (the bias gradient).
    """
    pid_g = tl.program_id(0)
    kk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = kk < K
    s0 = tl.full((BLOCK_P, BLOCK_K), 0.0, tl.float32)
    s1 = tl.full((BLOCK_P, BLOCK_K), 0.0, tl.float32)
    s2 = tl.full((BLOCK_P, BLOCK_K), 0.0, tl.float32)
    start = pid_g * PIX_GROUP
    end = tl.minimum(start + PIX_GROUP, M)
    for p0 in range(start, end, BLOCK_P):
        n, r, ho, wo, p_mask = _pixels(p0, end, HWo, Wo, BLOCK_P, VEC, DEBUG)
        mask = p_mask[:, None] & k_mask[None, :]
        g = _act_tile(g_ptr, n, r, ho, wo, kk, mask, sgn, sgc, sgh, sgw, g_span, VEC, DEBUG)
        yv = _act_tile(y_ptr, n, r, ho, wo, kk, mask, syn, syc, syh, syw, y_span, VEC, DEBUG)
        if TRAIN:
            d, z = _bn_z(yv, coef_ptr, kk, k_mask, K)
            d = tl.where(mask, d, 0.0)  # masked lanes: g is 0 there, so dz is too
            dz = tl.where(z <= 0, 0.0, g)
            s0 += dz
            s1 += dz * d
            s2 += d
        else:
            s0 += tl.where(yv <= 0, 0.0, g)
    groups = tl.num_programs(0).to(tl.int64)
    row = pid_g.to(tl.int64) * K
    tl.store(ws_ptr + row + kk, _sum(s0, axis=0), mask=k_mask)
    if TRAIN:
        tl.store(ws_ptr + groups * K + row + kk, _sum(s1, axis=0), mask=k_mask)
        tl.store(ws_ptr + 2 * groups * K + row + kk, _sum(s2, axis=0), mask=k_mask)


@triton.jit
def bn_bwd_finalize_kernel(
    ws_ptr,
    var_ptr,
    gam_ptr,
    coef_ptr,
    dbias_ptr,
    dgam_ptr,
    dbet_ptr,
    T,
    K,
    M,
    eps,
    TRAIN: tl.constexpr,
    HAS_AFFINE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Reduce bn_bwd_reduce's [rows, T, K] partials in tile order and turn them into the gradients of the
    per-channel parameters and dy's coefficient rows.

    TRAIN: coef rows 0..2 (mean, a, beta) are already in place (bn_coef); this writes row 3 c1 = a dbeta / M
    and row 4 rc2 = r a dgamma / M, with dbeta = sum dz, dgamma = r sum dz d, and
    dbias = sum_p dy = a dbeta - M c1 - rc2 sum d (0 up to rounding; d = y - mean of the stored y).
    eval: dbias = sum dz.
    """
    pid = tl.program_id(0)
    kk = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = kk < K
    s0 = tl.full((BLOCK_T, BLOCK_K), 0.0, tl.float32)
    s1 = tl.full((BLOCK_T, BLOCK_K), 0.0, tl.float32)
    s2 = tl.full((BLOCK_T, BLOCK_K), 0.0, tl.float32)
    plane = tl.cast(T, tl.int64) * K
    for t0 in range(0, T, BLOCK_T):
        tt = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        off = tt[:, None] * K + kk[None, :]
        msk = (tt < T)[:, None] & k_mask[None, :]
        s0 += tl.load(ws_ptr + off, mask=msk, other=0.0)
        if TRAIN:
            s1 += tl.load(ws_ptr + plane + off, mask=msk, other=0.0)
            s2 += tl.load(ws_ptr + 2 * plane + off, mask=msk, other=0.0)
    dbeta = _sum(s0, axis=0)
    if TRAIN:
        sdd = _sum(s1, axis=0)
        sd = _sum(s2, axis=0)
        var = tl.load(var_ptr + kk, mask=k_mask, other=1.0)
        r, a = _bn_scale(var, gam_ptr, kk, k_mask, eps, HAS_AFFINE)
        dgamma = r * sdd
        c1 = a * dbeta / M
        rc2 = r * (a * dgamma / M)
        tl.store(coef_ptr + 3 * K + kk, c1, mask=k_mask)
        tl.store(coef_ptr + 4 * K + kk, rc2, mask=k_mask)
        tl.store(dbias_ptr + kk, a * dbeta - M * c1 - rc2 * sd, mask=k_mask)
        tl.store(dgam_ptr + kk, dgamma, mask=k_mask)
        tl.store(dbet_ptr + kk, dbeta, mask=k_mask)
    else:
        tl.store(dbias_ptr + kk, dbeta, mask=k_mask)


@triton.jit
def bn_bwd_dy_kernel(
    g_ptr,
    y_ptr,
    coef_ptr,
    dy_ptr,
    K,
    Wo,
    HWo,
    M,
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
    dy_span,
    TRAIN: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    VEC: tl.constexpr,
    DEBUG: tl.constexpr,
):
    """dy[M, K] (pixel-major, K contiguous) in dy_ptr's dtype, the dot operand dsconv_bwd_dt would
    otherwise rebuild from (dout, y, coef) in every one of its C tiles; grid (P tiles, K tiles).

    Stored in the operands' storage dtype, which is what ``_dot`` rounds dy to: dt and dWp come out the
    same whichever way dy arrives. Its K-contiguous rows load as wide vectors in dt even where dout's
    planes do not (NCHW with Ho Wo odd: one scalar load per element there).
    """
    n, r, ho, wo, kk, k_mask, mask = _ew_tile(M, HWo, Wo, K, BLOCK_P, BLOCK_K, VEC, DEBUG)
    m = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    dy = _dy_tile(
        g_ptr,
        y_ptr,
        coef_ptr,
        n,
        r,
        ho,
        wo,
        m < M,
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
    off = _dy_off(m, kk, K, mask, dy_span, DEBUG)
    tl.store(dy_ptr + off, dy.to(dy_ptr.dtype.element_ty), mask=mask)
