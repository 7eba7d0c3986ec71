"""forward: dsconv_fwd (y or out, and the per-group BN statistics partials), bn_stats (their fixed-order
merge and bn_relu's coefficients), bn_coef (the coefficients from given statistics), bn_relu (as
csrc/kernels/forward.cuh)."""

from __future__ import annotations

import triton
import triton.language as tl

from .configs import FWD_CONFIGS, _p2, _tuned
from .reductions import _bn_scale, _chan, _store_bn_coef
from .tiles import _act_off, _act_tile, _bn_z, _dot, _dw_tile, _ew_tile, _pixels, _sum


@triton.jit
def bn_stats_kernel(
    ws_ptr,
    out_ptr,
    mean_ptr,
    var_ptr,
    gam_ptr,
    bet_ptr,
    coef_ptr,
    T,
    PLANE,
    K,
    M,
    PIX_ROW,
    ROWS,
    eps,
    FINAL: tl.constexpr,
    HAS_AFFINE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Merge (count, mean, M2) partials in row order (Chan et al.); grid (K tiles, row chunks).

    ws: mean plane and M2 plane, PLANE rows of K apart, T rows used; row t covers the pixels
    [t PIX_ROW, min((t + 1) PIX_ROW, M)). A program merges rows [ROWS pid, ROWS (pid + 1)) of its
    channels, a chunk of BLOCK_T rows per step (chunk mean and M2 from the count-weighted means). Not FINAL: it writes its merged row to out [2, chunks, K] (a
    row of ROWS PIX_ROW pixels, the next level's input). FINAL (one chunk): mean, biased var (= M2 / M)
    and bn_relu's coefficient rows (mean, a = gamma r, beta). Fixed order => bitwise deterministic.
    """
    kk = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = kk < K
    pid_t = tl.program_id(1)
    n_a = tl.full((BLOCK_K,), 0.0, tl.float32)
    mean_a = tl.full((BLOCK_K,), 0.0, tl.float32)
    m2_a = tl.full((BLOCK_K,), 0.0, tl.float32)
    plane = tl.cast(PLANE, tl.int64) * K
    first = pid_t * ROWS
    last = tl.minimum(first + ROWS, T)
    for t0 in range(first, last, BLOCK_T):
        tt = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        t_mask = tt < last
        cnt = tl.where(t_mask, tl.minimum(M - tt * PIX_ROW, PIX_ROW), 0).to(tl.float32)
        msk = t_mask[:, None] & k_mask[None, :]
        mu = tl.load(ws_ptr + tt[:, None] * K + kk[None, :], mask=msk, other=0.0)
        m2 = tl.load(ws_ptr + plane + tt[:, None] * K + kk[None, :], mask=msk, other=0.0)
        n_c = _sum(cnt, axis=0)
        mean_c = _sum(cnt[:, None] * mu, axis=0) / n_c
        d = tl.where(msk, mu - mean_c[None, :], 0.0)
        m2_c = _sum(m2, axis=0) + _sum(cnt[:, None] * d * d, axis=0)
        n_a, mean_a, m2_a = _chan(n_a, mean_a, m2_a, n_c, mean_c, m2_c)
    if FINAL:
        var = m2_a / n_a
        tl.store(mean_ptr + kk, mean_a, mask=k_mask)
        tl.store(var_ptr + kk, var, mask=k_mask)
        _store_bn_coef(coef_ptr, mean_a, var, gam_ptr, bet_ptr, kk, k_mask, K, eps, HAS_AFFINE, BLOCK_K)
    else:
        row = pid_t.to(tl.int64) * K
        tl.store(out_ptr + row + kk, mean_a, mask=k_mask)
        tl.store(out_ptr + tl.num_programs(1).to(tl.int64) * K + row + kk, m2_a, mask=k_mask)


@triton.jit
def bn_coef_kernel(
    mean_ptr,
    var_ptr,
    gam_ptr,
    bet_ptr,
    mdz_ptr,
    mdzd_ptr,
    coef_ptr,
    K,
    eps,
    HAS_AFFINE: tl.constexpr,
    DY_ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Coefficient rows 0..2 (mean, a = gamma r, beta) from the batch statistics: bit for bit the rows
    bn_stats wrote in the forward (same expression, same inputs). DY_ROWS: also dy's rows 3, 4 from the
    means of dz and dz yhat over every process's pixels (the split statistics' backward_apply), c1 = a
    mean_dz and rc2 = r (a mean_dz_yhat), with bn_bwd_finalize's r and a."""
    kk = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = kk < K
    mean = tl.load(mean_ptr + kk, mask=k_mask, other=0.0)
    var = tl.load(var_ptr + kk, mask=k_mask, other=1.0)
    _store_bn_coef(coef_ptr, mean, var, gam_ptr, bet_ptr, kk, k_mask, K, eps, HAS_AFFINE, BLOCK_K)
    if DY_ROWS:
        r, a = _bn_scale(var, gam_ptr, kk, k_mask, eps, HAS_AFFINE)
        mdz = tl.load(mdz_ptr + kk, mask=k_mask, other=0.0)
        mdzd = tl.load(mdzd_ptr + kk, mask=k_mask, other=0.0)
        tl.store(coef_ptr + 3 * K + kk, a * mdz, mask=k_mask)
        tl.store(coef_ptr + 4 * K + kk, r * (a * mdzd), mask=k_mask)


def _fwd_limits(a):
    return {"BLOCK_K": max(32, _p2(a["K"])), "BLOCK_C": max(16, _p2(a["C"])), "BLOCK_P": max(32, _p2(a["M"]))}


@_tuned(
    "dsconv_fwd",
    FWD_CONFIGS,
    ["C", "K", "HWo", "M_CLASS", "LAYOUT", "STRIDE", "DOT_MODE", "STATS", "RELU", "VEC"],
    _fwd_limits,
)
@triton.jit(do_not_specialize=["M_CLASS", "LAYOUT"])
def dsconv_fwd_kernel(
    x_ptr,
    wd_ptr,
    wp_ptr,
    bias_ptr,
    y_ptr,
    ws_ptr,
    C,
    K,
    H,
    W,
    Wo,
    HWo,
    M,
    dil,
    WS_PLANE,
    M_CLASS,
    LAYOUT,
    sxn,
    sxc,
    sxh,
    sxw,
    syn,
    syc,
    syh,
    syw,
    x_span,
    y_span,
    STRIDE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    RELU: tl.constexpr,
    STATS: tl.constexpr,
    DOT_MODE: tl.constexpr,
    VEC: tl.constexpr,
    DEBUG: tl.constexpr,
    DROP_BOUNDS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """y[p, k] = sum_c Wp[k, c] dw(x)[p, c] (+ bias[k]) for a BLOCK_P x BLOCK_K tile.

    1-D grid over (pixel tiles x K tiles), K tiles fastest: the programs of one pixel tile run side by
    side and share its x halo in L2. RELU: store relu(y) (eval mode; NaN propagates). STATS: also write
    this tile's statistics of the fp32 y per channel: ws[tile, k] = tile mean, ws[WS_PLANE + tile K + k]
    = M2, the squared deviations from the tile mean (no sum-of-squares cancellation when |mean| >> std);
    bn_stats merges them (Chan et al.).
    (No walk over several tiles here: a loop around the tile keeps its loop-invariant addresses live and
    costs ~80 registers per thread, tools/report_triton.py.)
    M_CLASS and LAYOUT are unused: they key the autotuner (the size class of M, channels_last or not).
    """
    pid = tl.program_id(0)
    k_tiles = (K + BLOCK_K - 1) // BLOCK_K
    pid_k = pid % k_tiles
    pid_p = pid // k_tiles
    n, r, ho, wo, p_mask = _pixels(pid_p * BLOCK_P, M, HWo, Wo, BLOCK_P, VEC, DEBUG)
    kk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = kk < K
    acc = tl.full((BLOCK_P, BLOCK_K), 0.0, tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        c_mask = cc < C
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
            DROP_BOUNDS,
        )
        wpt = tl.load(wp_ptr + kk[None, :] * C + cc[:, None], mask=c_mask[:, None] & k_mask[None, :], other=0.0)
        acc = _dot(t, wpt, acc, wp_ptr, DOT_MODE)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + kk, mask=k_mask, other=0.0)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)
    omask = p_mask[:, None] & k_mask[None, :]
    yoff = _act_off(n, r, ho, wo, kk, omask, syn, syc, syh, syw, y_span, VEC, DEBUG)
    tl.store(y_ptr + yoff, acc.to(y_ptr.dtype.element_ty), mask=omask)
    if STATS:
        cnt = _sum(p_mask.to(tl.float32), axis=0)
        mean = _sum(tl.where(omask, acc, 0.0), axis=0) / cnt
        dev = tl.where(omask, acc - mean[None, :], 0.0)
        row = pid_p.to(tl.int64) * K
        tl.store(ws_ptr + row + kk, mean, mask=k_mask)
        tl.store(ws_ptr + WS_PLANE + row + kk, _sum(dev * dev, axis=0), mask=k_mask)


@triton.jit
def bn_relu_kernel(
    y_ptr,
    out_ptr,
    coef_ptr,
    K,
    Wo,
    HWo,
    M,
    syn,
    syc,
    syh,
    syw,
    son,
    soc,
    soh,
    sow,
    y_span,
    o_span,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    VEC: tl.constexpr,
    DEBUG: tl.constexpr,
):
    """out = relu((y - mean) a + beta), coefficient rows mean, a = gamma r, beta; grid (P tiles, K tiles).
    One program loads and stores each element, so out may be y (normalised in place)."""
    n, r, ho, wo, kk, k_mask, mask = _ew_tile(M, HWo, Wo, K, BLOCK_P, BLOCK_K, VEC, DEBUG)
    y = _act_tile(y_ptr, n, r, ho, wo, kk, mask, syn, syc, syh, syw, y_span, VEC, DEBUG)
    ooff = _act_off(n, r, ho, wo, kk, mask, son, soc, soh, sow, o_span, VEC, DEBUG)
    _, z = _bn_z(y, coef_ptr, kk, k_mask, K)
    z = tl.where(z < 0, 0.0, z)
    tl.store(out_ptr + ooff, z.to(out_ptr.dtype.element_ty), mask=mask)
