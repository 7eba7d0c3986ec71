"""Triton kernels of the fused joint block, and their launchers (kernel -> launcher -> backend).

This module imports triton and decorates the kernels with ``@triton.jit``. Triton decides at
decoration time whether a kernel runs compiled or in the interpreter (``TRITON_INTERPRET=1``), so
``fused_dsconv`` imports this module lazily, on the first launch (``backends/triton.py``).

Layers, one name each:

- kernels (``*_kernel``): @triton.jit functions, plain pointer arithmetic over explicit strides (NCHW
  and channels_last alike, no copies; no block pointers), int32 pixel / channel indices and int64
  offsets (every product with a stride is int64), fp32 accumulation;
- launchers (``launch_*``): allocate outputs / workspaces, pick the tile config, size the grid;
- the backend (``fused_dsconv/backends/triton.py``): the contract's four primitives built from launchers.

What a launcher hands a kernel: activations (x, y, out, grad_out, dt, dx) and workspace views
(``colsum_kernel``) with their strides, so any layout or view reads right; everything else -- conv
weights, per-channel vectors (bias, the BN coefficient rows), the statistics / weight-gradient
workspaces the launchers allocate -- as dense row-major arrays, which the launchers guarantee
(``_dense``) rather than assume: a view whose strides differ, e.g. a [K] slice of a wider tensor or a
workspace row view when a dimension has size 1, would otherwise be read at the wrong addresses.

Tiles. Output pixels are flattened over (n, ho, wo) into M = N*Ho*Wo rows; a program owns
BLOCK_P rows. The depthwise chunk T[BLOCK_P, BLOCK_C] is computed in registers from 9 masked loads
(zero padding = the mask; a rolled loop over the taps), and the pointwise stage is ``tl.dot`` against
Wp^T[BLOCK_C, BLOCK_K]. Tile sizes: ``config`` (GPU) and ``INTERPRETER_CONFIG``.

Dot precision (DOT_MODE, constexpr):
  0  float32 inputs: ``tl.dot(..., input_precision="ieee")`` -- IEEE fp32, never TF32, so the float32
     tolerance row of ``fused_dsconv/testing.py`` holds on GPUs with TF32 tensor cores too;
  1  float16 / bfloat16 inputs: operands rounded to the storage dtype, tensor-core dot, fp32
     accumulator (the rounding eager PyTorch does when it stores t / dy in that dtype);
  2  bfloat16 under the interpreter only: the interpreter's dot cannot multiply bf16 (it stores bf16 as
     uint16), so the operands are rounded to bf16 and multiplied in fp32. A product of two bf16 values
     is exact in fp32, so for the same bf16 operands this is mode 1's dot. The operands are not a GPU's,
     though: Triton 3.8's interpreter rounds fp32 -> bf16 toward zero (``.to``, even with
     ``fp_downcast_rounding="rtne"``), a GPU to nearest even, so under the interpreter T, dy and every
     stored bf16 value can sit one bf16 ulp from what a GPU computes (the tests model this rounding:
     tests/test_triton.py). fp16 casts round to nearest even in both.

Determinism: no float atomics. Per-tile partials (BN statistics, dbeta / dgamma, the depthwise and
pointwise weight gradients) go to a [tiles, ...] workspace that ``colsum_kernel`` / the statistics
merge reduce in a fixed order.

Debugging: every kernel has a ``DEBUG`` constexpr that asserts, for every load and store, that the
computed offset lies inside the tensor's storage span wherever the mask is on. ``tl.device_assert``
only fires when the builder's options have debug=True: ``set_debug(True)`` does that for the
interpreter (the tests use it); on a GPU also set ``TRITON_DEBUG=1`` before the first launch.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import triton
import triton.language as tl

#: True when these kernels were decorated under TRITON_INTERPRET=1 (they then take CPU tensors).
INTERPRETED = bool(triton.knobs.runtime.interpret)
#: Bound assertions in every kernel (see module docstring); see ``set_debug``.
DEBUG = os.environ.get("FUSED_DSCONV_TRITON_DEBUG", "0") == "1"


def set_debug(on: bool) -> bool:
    """Turn the kernels' bound assertions on / off; returns the previous setting.

    Under the interpreter this also flips the interpreter builder's ``debug`` option, without which
    ``tl.device_assert`` is a no-op (triton/runtime/interpreter.py, ``InterpreterOptions``); with it,
    the interpreter also checks int32 arithmetic for overflow.
    """
    global DEBUG
    prev, DEBUG = DEBUG, bool(on)
    if INTERPRETED:
        from triton.runtime import interpreter
        interpreter.interpreter_builder.options = dataclasses.replace(
            interpreter.interpreter_builder.options, debug=bool(on))
    return prev


# ----------------------------------------------------------------------------------------------
# Shared device helpers
# ----------------------------------------------------------------------------------------------

@triton.jit
def _assert_in(off, mask, span, DEBUG: tl.constexpr):
    # Every address a masked-on lane touches must lie inside the tensor's storage span.
    if DEBUG:
        tl.device_assert(((off >= 0) & (off < span)) | ~mask, "fused_dsconv: offset out of range")


@triton.jit
def _sum(x, axis: tl.constexpr):
    # tl.sum's own combine function through tl.reduce: unlike tl.sum / tl.zeros (@jit functions of
    # triton.language.standard, decorated when triton is imported), this works in the interpreter even
    # if triton was imported before TRITON_INTERPRET=1 was set; the interpreter maps it to numpy.sum.
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def _pixels(tile, M, HWo, Wo, BLOCK_P: tl.constexpr):
    """Rows tile*BLOCK_P ... of the flattened (n, ho, wo) output space.

    int32 (64-bit division is a long subroutine on the GPU): the launchers check M + BLOCK_P < 2**31.
    Everything multiplied by a stride is cast to int64 first (``_row_off``).
    """
    m = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    n = m // HWo
    r = m - n * HWo
    ho = r // Wo
    wo = r - ho * Wo
    return n, ho, wo, m < M


@triton.jit
def _row_off(n, h, w, sn, sh, sw):
    """int64 element offset of pixel (n, h, w) (channel 0)."""
    return n.to(tl.int64) * sn + h.to(tl.int64) * sh + w.to(tl.int64) * sw


@triton.jit
def _dw_tile(x_ptr, wd_ptr, n, ho, wo, p_mask, cc, c_mask, H, W, sxn, sxc, sxh, sxw, dil, x_span,
             STRIDE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, DEBUG: tl.constexpr,
             DROP_BOUNDS: tl.constexpr):
    """T[p, c] = sum_ij x[n, c, ho*s + (i-1)d, wo*s + (j-1)d] Wd[c, i, j] in fp32, zero padding by mask."""
    t = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
    hc = ho * STRIDE
    wc = wo * STRIDE
    # The centre tap's offsets; the other 8 differ from it by one scalar each (cheap addresses).
    # (tl.cast, not .to: dil and the strides may arrive as constexpr 1, Triton's specialisation.)
    centre = _row_off(n, hc, wc, sxn, sxh, sxw)[:, None] + (cc.to(tl.int64) * sxc)[None, :]
    # A rolled loop over the 9 taps: unrolled, the compiler issues all 9 gathers at once and needs
    # ~255 registers (tools/report_triton.py); rolled, one tap's addresses and values are live.
    for tap in tl.range(0, 9, loop_unroll_factor=1):
        xv = _x_tap(x_ptr, centre, hc, wc, p_mask, c_mask, tap, dil, H, W, sxh, sxw, x_span, DEBUG, DROP_BOUNDS)
        wv = tl.load(wd_ptr + cc * 9 + tap, mask=c_mask, other=0.0).to(tl.float32)
        t += xv * wv[None, :]
    return t


@triton.jit
def _x_tap(x_ptr, centre, hc, wc, p_mask, c_mask, tap, dil, H, W, sxh, sxw, x_span,
           DEBUG: tl.constexpr, DROP_BOUNDS: tl.constexpr):
    """x under tap (i, j) = divmod(tap, 3) of every (pixel, channel) of a tile, fp32, zero padded.
    ``centre``: offsets of the centre tap (hc, wc) = (ho, wo) * stride."""
    i = tap // 3
    dh = (i - 1) * dil
    dw = (tap - 3 * i - 1) * dil
    hi = hc + dh
    wi = wc + dw
    ok = p_mask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
    if DROP_BOUNDS:  # test hook only: a forgotten padding mask, which DEBUG must catch
        ok = p_mask
    mask = ok[:, None] & c_mask[None, :]
    off = centre + (tl.cast(dh, tl.int64) * sxh + tl.cast(dw, tl.int64) * sxw)
    _assert_in(off, mask, x_span, DEBUG)
    return tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _mma(a, b, acc, dtype_ref, DOT_MODE: tl.constexpr):
    """acc + a @ b with fp32 accumulation; DOT_MODE as in the module docstring.

    ``dtype_ref`` is a pointer whose element type is the storage dtype of the operands.
    """
    if DOT_MODE == 0:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif DOT_MODE == 1:
        acc = tl.dot(a.to(dtype_ref.dtype.element_ty), b.to(dtype_ref.dtype.element_ty), acc)
    else:
        acc = tl.dot(a.to(dtype_ref.dtype.element_ty).to(tl.float32),
                     b.to(dtype_ref.dtype.element_ty).to(tl.float32), acc, input_precision="ieee")
    return acc


@triton.jit
def _ew_tile(M, HWo, Wo, K, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """The (pixels x channels) tile of an elementwise / reduction program on grid (P tiles, K tiles)."""
    n, ho, wo, p_mask = _pixels(tl.program_id(0), M, HWo, Wo, BLOCK_P)
    kk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = kk < K
    return n, ho, wo, kk, k_mask, p_mask[:, None] & k_mask[None, :]


@triton.jit
def _act_off(n, ho, wo, kk, mask, sn, sc, sh, sw, span, DEBUG: tl.constexpr):
    """int64 offsets of an activation tile: pixels (n, ho, wo) x channels kk."""
    off = _row_off(n, ho, wo, sn, sh, sw)[:, None] + (kk.to(tl.int64) * sc)[None, :]
    _assert_in(off, mask, span, DEBUG)
    return off


@triton.jit
def _act_tile(ptr, n, ho, wo, kk, mask, sn, sc, sh, sw, span, DEBUG: tl.constexpr):
    """fp32 values of an activation tile, zero on masked lanes."""
    off = _act_off(n, ho, wo, kk, mask, sn, sc, sh, sw, span, DEBUG)
    return tl.load(ptr + off, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _bn_tile(y, coef_ptr, kk, k_mask, K):
    """yhat = (y - mean) r and z = gamma yhat + beta, from coef rows 0..3 (mean, r, gamma, beta)."""
    mean = tl.load(coef_ptr + kk, mask=k_mask, other=0.0)
    r = tl.load(coef_ptr + K + kk, mask=k_mask, other=0.0)
    gam = tl.load(coef_ptr + 2 * K + kk, mask=k_mask, other=0.0)
    bet = tl.load(coef_ptr + 3 * K + kk, mask=k_mask, other=0.0)
    yhat = (y - mean[None, :]) * r[None, :]
    return yhat, yhat * gam[None, :] + bet[None, :]


@triton.jit
def _dy_tile(g_ptr, y_ptr, coef_ptr, n, ho, wo, p_mask, kk, k_mask, K, sgn, sgc, sgh, sgw, syn, syc, syh, syw,
             g_span, y_span, TRAIN: tl.constexpr, DEBUG: tl.constexpr):
    """dy[p, k] in fp32 from (dout, y, per-channel coefficients), never stored; zero on masked lanes.

    TRAIN: y is the pre-BN output; coef rows 0..6 = mean, r, gamma, beta, gamma*r, c1, c2 and
      dy = gamma r dz - c1 - yhat c2 with yhat = (y - mean) r, z = gamma yhat + beta, dz = dout [z > 0].
    eval: y is the block's output (after ReLU); dy = dz = dout [out > 0].
    NaN passes the mask (z <= 0 is false for NaN), as in threshold_backward.
    """
    mask = p_mask[:, None] & k_mask[None, :]
    g = _act_tile(g_ptr, n, ho, wo, kk, mask, sgn, sgc, sgh, sgw, g_span, DEBUG)
    yv = _act_tile(y_ptr, n, ho, wo, kk, mask, syn, syc, syh, syw, y_span, DEBUG)
    if TRAIN:
        gr = tl.load(coef_ptr + 4 * K + kk, mask=k_mask, other=0.0)
        c1 = tl.load(coef_ptr + 5 * K + kk, mask=k_mask, other=0.0)
        c2 = tl.load(coef_ptr + 6 * K + kk, mask=k_mask, other=0.0)
        yhat, z = _bn_tile(yv, coef_ptr, kk, k_mask, K)
        dz = tl.where(z <= 0, 0.0, g)
        dy = gr[None, :] * dz - c1[None, :] - yhat * c2[None, :]
        dy = tl.where(mask, dy, 0.0)
    else:
        dy = tl.where(yv <= 0, 0.0, g)
    return dy


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------

@triton.jit
def dsconv_fwd_kernel(x_ptr, wd_ptr, wp_ptr, bias_ptr, y_ptr, ws_ptr,
                      C, K, H, W, Wo, HWo, M, dil,
                      sxn, sxc, sxh, sxw, syn, syc, syh, syw, x_span, y_span,
                      STRIDE: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, STATS: tl.constexpr,
                      DOT_MODE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_K: tl.constexpr, DEBUG: tl.constexpr, DROP_BOUNDS: tl.constexpr = False):
    """y[p, k] = sum_c Wp[k, c] dw(x)[p, c] (+ bias[k]) for a BLOCK_P x BLOCK_K tile; grid (P tiles, K tiles).

    RELU: store relu(y) (eval mode; NaN propagates). STATS: also write this tile's Chan partials of
    the fp32 y, per channel: ws[0, tile, k] = tile mean, ws[1, tile, k] = M2 (sum of squared deviations
    from the tile mean) -- no sum-of-squares cancellation when |mean| >> std.
    """
    pid_p = tl.program_id(0)
    pid_k = tl.program_id(1)
    n, ho, wo, p_mask = _pixels(pid_p, M, HWo, Wo, BLOCK_P)
    kk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = kk < K
    acc = tl.full((BLOCK_P, BLOCK_K), 0.0, tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        c_mask = cc < C
        t = _dw_tile(x_ptr, wd_ptr, n, ho, wo, p_mask, cc, c_mask, H, W, sxn, sxc, sxh, sxw, dil, x_span,
                     STRIDE, BLOCK_P, BLOCK_C, DEBUG, DROP_BOUNDS)
        wpt = tl.load(wp_ptr + kk[None, :] * C + cc[:, None], mask=c_mask[:, None] & k_mask[None, :], other=0.0)
        acc = _mma(t, wpt, acc, wp_ptr, DOT_MODE)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + kk, mask=k_mask, other=0.0)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)
    omask = p_mask[:, None] & k_mask[None, :]
    yoff = _row_off(n, ho, wo, syn, syh, syw)[:, None] + (kk.to(tl.int64) * syc)[None, :]
    _assert_in(yoff, omask, y_span, DEBUG)
    tl.store(y_ptr + yoff, acc.to(y_ptr.dtype.element_ty), mask=omask)
    if STATS:
        cnt = _sum(p_mask.to(tl.float32), axis=0)
        mean = _sum(tl.where(omask, acc, 0.0), axis=0) / cnt
        dev = tl.where(omask, acc - mean[None, :], 0.0)
        m2 = _sum(dev * dev, axis=0)
        tiles = tl.num_programs(0).to(tl.int64)
        tl.store(ws_ptr + pid_p.to(tl.int64) * K + kk, mean, mask=k_mask)
        tl.store(ws_ptr + (tiles + pid_p) * K + kk, m2, mask=k_mask)


@triton.jit
def bn_stats_kernel(ws_ptr, mean_ptr, var_ptr, T, K, M,
                    BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    """Merge the T per-tile (count, mean, M2) partials of dsconv_fwd_kernel in tile order (Chan et al.).

    Each step merges a chunk of BLOCK_T tiles (chunk mean and M2 from the count-weighted means) into
    the running (n, mean, M2). Fixed order => bitwise deterministic. var is the biased variance M2 / M.
    """
    pid = tl.program_id(0)
    kk = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = kk < K
    n_a = tl.full((BLOCK_K,), 0.0, tl.float32)
    mean_a = tl.full((BLOCK_K,), 0.0, tl.float32)
    m2_a = tl.full((BLOCK_K,), 0.0, tl.float32)
    for t0 in range(0, T, BLOCK_T):
        tt = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        t_mask = tt < T
        cnt = tl.where(t_mask, tl.minimum(M - tt * BLOCK_P, BLOCK_P), 0).to(tl.float32)
        msk = t_mask[:, None] & k_mask[None, :]
        mu = tl.load(ws_ptr + tt[:, None] * K + kk[None, :], mask=msk, other=0.0)
        m2 = tl.load(ws_ptr + (T + tt)[:, None] * K + kk[None, :], mask=msk, other=0.0)
        n_c = _sum(cnt, axis=0)
        mean_c = _sum(cnt[:, None] * mu, axis=0) / n_c
        d = tl.where(msk, mu - mean_c[None, :], 0.0)
        m2_c = _sum(m2, axis=0) + _sum(cnt[:, None] * d * d, axis=0)
        n_new = n_a + n_c
        delta = mean_c - mean_a
        mean_a = mean_a + delta * (n_c / n_new)
        m2_a = m2_a + m2_c + delta * delta * (n_a * n_c / n_new)
        n_a = n_new
    tl.store(mean_ptr + kk, mean_a, mask=k_mask)
    tl.store(var_ptr + kk, m2_a / n_a, mask=k_mask)


@triton.jit
def bn_relu_kernel(y_ptr, out_ptr, coef_ptr, K, Wo, HWo, M,
                   syn, syc, syh, syw, son, soc, soh, sow, y_span, o_span,
                   BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, DEBUG: tl.constexpr):
    """out = relu((y - mean) r gamma + beta), coef rows = mean, r, gamma, beta; grid (P tiles, K tiles)."""
    n, ho, wo, kk, k_mask, mask = _ew_tile(M, HWo, Wo, K, BLOCK_P, BLOCK_K)
    y = _act_tile(y_ptr, n, ho, wo, kk, mask, syn, syc, syh, syw, y_span, DEBUG)
    ooff = _act_off(n, ho, wo, kk, mask, son, soc, soh, sow, o_span, DEBUG)
    _, z = _bn_tile(y, coef_ptr, kk, k_mask, K)
    z = tl.where(z < 0, 0.0, z)
    tl.store(out_ptr + ooff, z.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------

@triton.jit
def bn_bwd_reduce_kernel(g_ptr, y_ptr, coef_ptr, ws_ptr, K, Wo, HWo, M,
                         sgn, sgc, sgh, sgw, syn, syc, syh, syw, g_span, y_span,
                         TRAIN: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, DEBUG: tl.constexpr):
    """Per-tile partial sums over pixels, ws[j, tile, k]; grid (P tiles, K tiles).

    TRAIN (y = pre-BN output, coef rows mean, r, gamma, beta): j = 0: dz, 1: dz yhat, 2: yhat.
    eval (y = block output): j = 0: dz = dout [out > 0] (the bias gradient).
    """
    n, ho, wo, kk, k_mask, mask = _ew_tile(M, HWo, Wo, K, BLOCK_P, BLOCK_K)
    g = _act_tile(g_ptr, n, ho, wo, kk, mask, sgn, sgc, sgh, sgw, g_span, DEBUG)
    yv = _act_tile(y_ptr, n, ho, wo, kk, mask, syn, syc, syh, syw, y_span, DEBUG)
    tiles = tl.num_programs(0).to(tl.int64)
    row = tl.program_id(0).to(tl.int64) * K
    if TRAIN:
        yhat, z = _bn_tile(yv, coef_ptr, kk, k_mask, K)
        yhat = tl.where(mask, yhat, 0.0)  # masked lanes: g is 0 there, so dz is too
        dz = tl.where(z <= 0, 0.0, g)
        tl.store(ws_ptr + row + kk, _sum(dz, axis=0), mask=k_mask)
        tl.store(ws_ptr + tiles * K + row + kk, _sum(dz * yhat, axis=0), mask=k_mask)
        tl.store(ws_ptr + 2 * tiles * K + row + kk, _sum(yhat, axis=0), mask=k_mask)
    else:
        dz = tl.where(yv <= 0, 0.0, g)
        tl.store(ws_ptr + row + kk, _sum(dz, axis=0), mask=k_mask)


@triton.jit
def colsum_kernel(ws_ptr, out_ptr, R, NCOL, s_r, s_n, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[j] = sum_r ws[r, j] over an [R, NCOL] fp32 workspace (any strides s_r, s_n), in a fixed order."""
    pid = tl.program_id(0)
    cols = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    c_mask = cols < NCOL
    acc = tl.full((BLOCK_R, BLOCK_N), 0.0, tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        m = (rr < R)[:, None] & c_mask[None, :]
        acc += tl.load(ws_ptr + rr[:, None] * s_r + cols[None, :] * s_n, mask=m, other=0.0)
    tl.store(out_ptr + cols, _sum(acc, axis=0), mask=c_mask)


@triton.jit
def dsconv_bwd_dt_kernel(g_ptr, y_ptr, coef_ptr, wp_ptr, x_ptr, dt_ptr, ws_ptr,
                         C, K, H, W, Wo, HWo, M, dil, T, TILES_PER_PROG,
                         sgn, sgc, sgh, sgw, syn, syc, syh, syw, sxn, sxc, sxh, sxw, stn, stc, sth, stw,
                         g_span, y_span, x_span, t_span,
                         STRIDE: tl.constexpr, TRAIN: tl.constexpr, DOT_MODE: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
                         DEBUG: tl.constexpr):
    """dt = dy Wp (fp32, stored) and the depthwise weight-gradient partials from the same tile.

    Grid (pixel-tile groups, C tiles); a program walks TILES_PER_PROG consecutive pixel tiles. Per
    tile: dt[p, c] = sum_k dy[p, k] Wp[k, c] with dy rebuilt from (dout, y, coef) chunk by chunk of
    BLOCK_K channels (dy never stored), then dWd[c, i, j] += sum_p dt[p, c] x_tap(i, j)[p, c] for all 9
    taps. ws[group, c, tap] (tap < 9) receives the group's partial; colsum_kernel reduces the groups.
    """
    pid_g = tl.program_id(0)
    pid_c = tl.program_id(1)
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cc < C
    taps = tl.arange(0, 16)
    dwd = tl.full((BLOCK_C, 16), 0.0, tl.float32)
    for it in range(TILES_PER_PROG):
        tile = pid_g * TILES_PER_PROG + it
        n, ho, wo, p_mask = _pixels(tile, M, HWo, Wo, BLOCK_P)
        acc = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            k_mask = kk < K
            dy = _dy_tile(g_ptr, y_ptr, coef_ptr, n, ho, wo, p_mask, kk, k_mask, K, sgn, sgc, sgh, sgw,
                          syn, syc, syh, syw, g_span, y_span, TRAIN, DEBUG)
            wp = tl.load(wp_ptr + kk[:, None] * C + cc[None, :], mask=k_mask[:, None] & c_mask[None, :], other=0.0)
            acc = _mma(dy, wp, acc, wp_ptr, DOT_MODE)
        pc_mask = p_mask[:, None] & c_mask[None, :]
        toff = _row_off(n, ho, wo, stn, sth, stw)[:, None] + (cc.to(tl.int64) * stc)[None, :]
        _assert_in(toff, pc_mask, t_span, DEBUG)
        tl.store(dt_ptr + toff, acc, mask=pc_mask)
        hc = ho * STRIDE
        wc = wo * STRIDE
        centre = _row_off(n, hc, wc, sxn, sxh, sxw)[:, None] + (cc.to(tl.int64) * sxc)[None, :]
        for tap in tl.range(0, 9, loop_unroll_factor=1):  # rolled, as in _dw_tile
            xv = _x_tap(x_ptr, centre, hc, wc, p_mask, c_mask, tap, dil, H, W, sxh, sxw, x_span, DEBUG, False)
            part = _sum(acc * xv, axis=0)
            dwd += tl.where(taps[None, :] == tap, part[:, None], 0.0)
    woff = pid_g.to(tl.int64) * C * 9 + (cc * 9)[:, None] + taps[None, :]
    tl.store(ws_ptr + woff, dwd, mask=c_mask[:, None] & (taps[None, :] < 9))


@triton.jit
def dsconv_bwd_dwp_kernel(g_ptr, y_ptr, coef_ptr, x_ptr, wd_ptr, ws_ptr,
                          C, K, H, W, Wo, HWo, M, dil, TILES_PER_PROG,
                          sgn, sgc, sgh, sgw, syn, syc, syh, syw, sxn, sxc, sxh, sxw,
                          g_span, y_span, x_span,
                          STRIDE: tl.constexpr, TRAIN: tl.constexpr, DOT_MODE: tl.constexpr,
                          BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
                          DEBUG: tl.constexpr):
    """Pointwise weight-gradient partials: ws[split, k, c] = sum over the split's pixels of dy[p, k] T[p, c].

    Grid (K tiles, C tiles, splits); T is recomputed from the x halo (9 masked loads) and dy from
    (dout, y, coef), so neither is ever stored. colsum_kernel reduces the splits in order.
    """
    pid_k = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_s = tl.program_id(2)
    kk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = kk < K
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cc < C
    acc = tl.full((BLOCK_K, BLOCK_C), 0.0, tl.float32)
    for it in range(TILES_PER_PROG):
        tile = pid_s * TILES_PER_PROG + it
        n, ho, wo, p_mask = _pixels(tile, M, HWo, Wo, BLOCK_P)
        t = _dw_tile(x_ptr, wd_ptr, n, ho, wo, p_mask, cc, c_mask, H, W, sxn, sxc, sxh, sxw, dil, x_span,
                     STRIDE, BLOCK_P, BLOCK_C, DEBUG, False)
        dy = _dy_tile(g_ptr, y_ptr, coef_ptr, n, ho, wo, p_mask, kk, k_mask, K, sgn, sgc, sgh, sgw,
                      syn, syc, syh, syw, g_span, y_span, TRAIN, DEBUG)
        acc = _mma(tl.trans(dy), t, acc, wd_ptr, DOT_MODE)
    woff = pid_s.to(tl.int64) * K * C + (kk * C)[:, None] + cc[None, :]
    tl.store(ws_ptr + woff, acc, mask=k_mask[:, None] & c_mask[None, :])


@triton.jit
def dsconv_bwd_dx_kernel(dt_ptr, wd_ptr, dx_ptr, C, H, W, Ho, Wo, HW, MI, dil,
                         stn, stc, sth, stw, sxn, sxc, sxh, sxw, t_span, x_span,
                         STRIDE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, DEBUG: tl.constexpr):
    """dx[n, c, h, w] = sum_ij dt[n, c, (h + d - i d)/s, (w + d - j d)/s] Wd[c, i, j] over taps that land
    on the output grid (divisible by s, in range); grid (input-pixel tiles, C tiles)."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    m = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # int32: the launcher checks N*H*W + BLOCK_P < 2**31
    p_mask = m < MI
    n = m // HW
    r = m - n * HW
    h = r // W
    w = r - h * W
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cc < C
    acc = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
    base = (n.to(tl.int64) * stn)[:, None] + (cc.to(tl.int64) * stc)[None, :]
    for tap in tl.range(0, 9, loop_unroll_factor=1):  # rolled: unrolled, the 9 gathers spill
        i = tap // 3
        hh = h + (1 - i) * dil
        ww = w + (1 - (tap - 3 * i)) * dil
        hc = tl.maximum(hh, 0)  # no division of negatives (C and Python round them differently)
        wc = tl.maximum(ww, 0)
        ho = hc // STRIDE
        wo = wc // STRIDE
        ok = p_mask & (hh >= 0) & (ho * STRIDE == hc) & (ho < Ho) & (ww >= 0) & (wo * STRIDE == wc) & (wo < Wo)
        mask = ok[:, None] & c_mask[None, :]
        off = base + (ho.to(tl.int64) * sth + wo.to(tl.int64) * stw)[:, None]
        _assert_in(off, mask, t_span, DEBUG)
        v = tl.load(dt_ptr + off, mask=mask, other=0.0)
        wv = tl.load(wd_ptr + cc * 9 + tap, mask=c_mask, other=0.0).to(tl.float32)
        acc += v * wv[None, :]
    xoff = _row_off(n, h, w, sxn, sxh, sxw)[:, None] + (cc.to(tl.int64) * sxc)[None, :]
    pc_mask = p_mask[:, None] & c_mask[None, :]
    _assert_in(xoff, pc_mask, x_span, DEBUG)
    tl.store(dx_ptr + xoff, acc.to(dx_ptr.dtype.element_ty), mask=pc_mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TileConfig:
    """Tile sizes and launch options of the tiled kernels (see ``config``)."""
    BLOCK_P: int
    BLOCK_C: int
    BLOCK_K: int
    num_warps: int = 4
    num_stages: int = 2


#: The one fixed config under the interpreter: small, so test grids stay cheap; 16 is tl.dot's minimum.
INTERPRETER_CONFIG = TileConfig(BLOCK_P=32, BLOCK_C=16, BLOCK_K=16, num_warps=4, num_stages=1)


def config(dtype: torch.dtype, c: int, k: int, kernel: str = "fwd") -> TileConfig:
    """The tile config on a GPU for ``kernel`` in ("fwd", "dt", "dwp"): a fixed table, no autotuning.

    Chosen from the ahead-of-time compile report (tools/report_triton.py, sm_75..sm_89), not from
    timings (none were taken): the largest tiles that compile without register spills on every arch.
    - fwd: 64 output pixels x 64 output channels, input channels in chunks of 32 (16 for fp32, whose
      IEEE dot runs on the FMA units with its operands in registers), 8 warps. The 4-warp and
      BLOCK_K=128 variants need ~255 registers and spill; K > 64 runs several K tiles, each
      recomputing its depthwise chunk (9 FMA per element against 64 in the GEMM).
    - dt: 64 x 16 channels x K chunks of 64; fp32 unpipelined (2 stages spill on sm_80).
    - dwp: 64-pixel steps, 64 (fp32: 32) x 16 weight tile (fp16 C=32 spills on sm_75).
    ``c`` and ``k`` are accepted for a future per-shape table.
    """
    if INTERPRETED:
        return INTERPRETER_CONFIG
    fp32 = dtype == torch.float32
    if kernel == "fwd":
        return TileConfig(BLOCK_P=64, BLOCK_C=16 if fp32 else 32, BLOCK_K=64, num_warps=8, num_stages=2)
    if kernel == "dt":
        return TileConfig(BLOCK_P=64, BLOCK_C=16, BLOCK_K=64, num_warps=8, num_stages=1 if fp32 else 2)
    if kernel == "dwp":
        return TileConfig(BLOCK_P=64, BLOCK_C=16, BLOCK_K=32 if fp32 else 64, num_warps=8, num_stages=2)
    raise ValueError(f"unknown kernel {kernel!r}")


def dot_mode(dtype: torch.dtype) -> int:
    if dtype == torch.float32:
        return 0
    if dtype == torch.bfloat16 and INTERPRETED:
        return 2
    return 1


def _span(t: torch.Tensor) -> int:
    """Elements from t's first to one past its last addressable element (the bound DEBUG asserts)."""
    if t.numel() == 0:
        return 0
    return 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()))


def _strides(t: torch.Tensor):
    return tuple(t.stride())


def _dense(t):
    """``t`` as the dense row-major array a kernel indexes without strides (see the module docstring);
    no copy when it already is one. A view (a strided [K] slice, a transposed weight) is copied, not
    read through the wrong strides."""
    return None if t is None else t.contiguous()


def _groups(tiles: int, per_wave: int, device: torch.device) -> int:
    """Tiles per program for the kernels that walk several pixel tiles (bounds the workspaces)."""
    if INTERPRETED:
        return 2  # exercises the walk and its tail
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, triton.cdiv(tiles, max(1, 4 * sms // max(1, per_wave))))


def _launch_opts(cfg: TileConfig) -> dict:
    return {} if INTERPRETED else {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def output_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def _check_pixels(count: int, what: str) -> None:
    # Pixel indices are int32 inside the kernels (offsets are int64); 2**31 pixels would be >= 8 GiB per
    # channel of fp32 activations, far beyond any joint block, but say so rather than wrap around.
    if count + 1024 >= 2 ** 31:
        raise ValueError(f"fused_dsconv triton backend: {what} = {count} pixels exceeds the int32 pixel index")


def launch_conv(x, dw_weight, pw_weight, bias, stride, dilation, out, *, relu, stats, wrap=False,
                _drop_bounds=False):
    """Run dsconv_fwd_kernel into ``out`` (any strides). Returns the [2, tiles, K] statistics
    workspace when ``stats`` (else None), the number of tiles and BLOCK_P.

    ``wrap``: launch through ``torch.library.wrap_triton`` (inside a ``triton_op``: fused_dsconv/triton_ops.py),
    which lets torch.compile trace the launch; a no-op wrapper for interpreter kernels.
    """
    n, c, h, w = x.shape
    k = pw_weight.shape[0]
    ho, wo = output_size(h, stride), output_size(w, stride)
    m = n * ho * wo
    _check_pixels(m, "N*Ho*Wo")
    cfg = config(x.dtype, c, k)
    tiles = triton.cdiv(m, cfg.BLOCK_P)
    ws = torch.empty((2, tiles, k), device=x.device, dtype=torch.float32) if stats else out
    grid = (tiles, triton.cdiv(k, cfg.BLOCK_K))
    kernel = torch.library.wrap_triton(dsconv_fwd_kernel) if wrap else dsconv_fwd_kernel
    dw_weight, pw_weight, bias = _dense(dw_weight), _dense(pw_weight), _dense(bias)
    kernel[grid](
        x, dw_weight, pw_weight, bias if bias is not None else out, out, ws,
        c, k, h, w, wo, ho * wo, m, dilation,
        *_strides(x), *_strides(out), _span(x), _span(out),
        STRIDE=stride, HAS_BIAS=bias is not None, RELU=relu, STATS=stats, DOT_MODE=dot_mode(x.dtype),
        BLOCK_P=cfg.BLOCK_P, BLOCK_C=cfg.BLOCK_C, BLOCK_K=cfg.BLOCK_K, DEBUG=DEBUG, DROP_BOUNDS=_drop_bounds,
        **_launch_opts(cfg))
    return (ws if stats else None), tiles, cfg.BLOCK_P


def launch_stats(ws, tiles, block_p, m, k):
    """(mean, biased var) in fp32 from dsconv_fwd_kernel's statistics workspace."""
    mean = torch.empty(k, device=ws.device, dtype=torch.float32)
    var = torch.empty_like(mean)
    block_k = 32
    bn_stats_kernel[(triton.cdiv(k, block_k),)](ws, mean, var, tiles, k, m, BLOCK_P=block_p, BLOCK_T=64,
                                               BLOCK_K=block_k)
    return mean, var


def _bn_coef(mean, var, bn_weight, bn_bias, eps):
    r = torch.rsqrt(var + eps)
    g = bn_weight if bn_weight is not None else torch.ones_like(mean)
    b = bn_bias if bn_bias is not None else torch.zeros_like(mean)
    return torch.stack([mean, r, g, b]).contiguous()


_EW_OPTS = {} if INTERPRETED else {"num_warps": 8, "num_stages": 1}


def ew_config():
    """(BLOCK_P, BLOCK_K) of the elementwise / reduction tiles (bn_relu, bn_bwd_reduce)."""
    return (32, 16) if INTERPRETED else (64, 64)


def colsum_config():
    """(BLOCK_R, BLOCK_N) of colsum_kernel."""
    return (16, 32) if INTERPRETED else (32, 128)


def dx_config():
    """(BLOCK_P, BLOCK_C) of dsconv_bwd_dx_kernel (input pixels x channels)."""
    return (32, 16) if INTERPRETED else (64, 32)


def launch_bn_relu(y, out, coef):
    n, k, ho, wo = y.shape
    m = n * ho * wo
    bp, bk = ew_config()
    grid = (triton.cdiv(m, bp), triton.cdiv(k, bk))
    bn_relu_kernel[grid](y, out, _dense(coef), k, wo, ho * wo, m, *_strides(y), *_strides(out), _span(y),
                         _span(out), BLOCK_P=bp, BLOCK_K=bk, DEBUG=DEBUG, **_EW_OPTS)


def launch_colsum(ws2d):
    """Fixed-order column sums of an [R, NCOL] fp32 workspace or a view of one (read through its strides)."""
    r, ncol = ws2d.shape
    out = torch.empty(ncol, device=ws2d.device, dtype=torch.float32)
    br, bn = colsum_config()
    colsum_kernel[(triton.cdiv(ncol, bn),)](ws2d, out, r, ncol, *_strides(ws2d), BLOCK_R=br, BLOCK_N=bn)
    return out


def launch_bwd_reduce(grad_out, y, coef, train):
    """Column sums over pixels: train -> (sum dz, sum dz yhat, sum yhat); eval -> (sum dz,)."""
    n, k, ho, wo = y.shape
    m = n * ho * wo
    bp, bk = ew_config()
    tiles = triton.cdiv(m, bp)
    rows = 3 if train else 1
    ws = torch.empty((rows, tiles, k), device=y.device, dtype=torch.float32)
    bn_bwd_reduce_kernel[(tiles, triton.cdiv(k, bk))](
        grad_out, y, _dense(coef), ws, k, wo, ho * wo, m, *_strides(grad_out), *_strides(y),
        _span(grad_out), _span(y),
        TRAIN=train, BLOCK_P=bp, BLOCK_K=bk, DEBUG=DEBUG, **_EW_OPTS)
    # One reduction per row of the workspace: each result has its own storage (op outputs may not alias).
    return [launch_colsum(ws[j]) for j in range(rows)]


def launch_conv_backward(grad_out, y, coef, x, dw_weight, pw_weight, stride, dilation, train):
    """(dx, dWd, dWp) given dy = f(grad_out, y, coef) (see _dy_tile); ``coef`` is ignored in eval."""
    n, c, h, w = x.shape
    k = pw_weight.shape[0]
    ho, wo = output_size(h, stride), output_size(w, stride)
    m = n * ho * wo
    _check_pixels(n * h * w, "N*H*W")
    coef, dw_weight, pw_weight = _dense(coef), _dense(dw_weight), _dense(pw_weight)
    mode = dot_mode(x.dtype)
    mf = torch.channels_last if (not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)) \
        else torch.contiguous_format

    def consts(cfg):
        return dict(STRIDE=stride, TRAIN=train, DOT_MODE=mode, BLOCK_P=cfg.BLOCK_P, BLOCK_C=cfg.BLOCK_C,
                    BLOCK_K=cfg.BLOCK_K, DEBUG=DEBUG, **_launch_opts(cfg))

    # dt (fp32, x's layout) and the depthwise weight-gradient partials.
    cfg = config(x.dtype, c, k, "dt")
    tiles = triton.cdiv(m, cfg.BLOCK_P)
    c_tiles = triton.cdiv(c, cfg.BLOCK_C)
    dt = torch.empty((n, c, ho, wo), device=x.device, dtype=torch.float32, memory_format=mf)
    per = _groups(tiles, c_tiles, x.device)
    groups = triton.cdiv(tiles, per)
    ws_dw = torch.empty((groups, c * 9), device=x.device, dtype=torch.float32)
    dsconv_bwd_dt_kernel[(groups, c_tiles)](
        grad_out, y, coef, pw_weight, x, dt, ws_dw, c, k, h, w, wo, ho * wo, m, dilation, tiles, per,
        *_strides(grad_out), *_strides(y), *_strides(x), *_strides(dt),
        _span(grad_out), _span(y), _span(x), _span(dt), **consts(cfg))
    d_dw = launch_colsum(ws_dw).reshape(c, 1, 3, 3).to(dw_weight.dtype)

    # Pointwise weight gradient, split over pixels.
    cfg = config(x.dtype, c, k, "dwp")
    tiles = triton.cdiv(m, cfg.BLOCK_P)
    c_tiles = triton.cdiv(c, cfg.BLOCK_C)
    k_tiles = triton.cdiv(k, cfg.BLOCK_K)
    per = _groups(tiles, c_tiles * k_tiles, x.device)
    splits = triton.cdiv(tiles, per)
    ws_pw = torch.empty((splits, k * c), device=x.device, dtype=torch.float32)
    dsconv_bwd_dwp_kernel[(k_tiles, c_tiles, splits)](
        grad_out, y, coef, x, dw_weight, ws_pw, c, k, h, w, wo, ho * wo, m, dilation, per,
        *_strides(grad_out), *_strides(y), *_strides(x), _span(grad_out), _span(y), _span(x), **consts(cfg))
    d_pw = launch_colsum(ws_pw).reshape(k, c).to(pw_weight.dtype)

    # Depthwise data gradient from dt.
    dx = torch.empty_like(x, memory_format=mf)
    mi = n * h * w
    bp, bc = dx_config()
    dsconv_bwd_dx_kernel[(triton.cdiv(mi, bp), triton.cdiv(c, bc))](
        dt, dw_weight, dx, c, h, w, ho, wo, h * w, mi, dilation, *_strides(dt), *_strides(dx),
        _span(dt), _span(dx), STRIDE=stride, BLOCK_P=bp, BLOCK_C=bc, DEBUG=DEBUG, **_EW_OPTS)
    return dx, d_dw, d_pw
