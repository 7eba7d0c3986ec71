"""The kernels' shared device functions: problem (pixel indexing and bounds) and tile_gemm (the depthwise
chunk, dy, and the dot), as csrc/kernels/problem.cuh, window.cuh and tile_gemm.cuh."""

from __future__ import annotations

import triton
import triton.language as tl


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
def _pixels(start, M, HWo, Wo, BLOCK_P: tl.constexpr, VEC: tl.constexpr, DEBUG: tl.constexpr):
    """Rows start ... start + BLOCK_P - 1 of the flattened (n, ho, wo) output space: (n, r, ho, wo, mask)
    with r = ho Wo + wo the pixel's index in its image.

    VEC > 1 (the launchers' ``plane_vec``: every activation the kernel indexes by these pixels has dense
    planes, w stride 1 and h stride Wo, and Ho Wo is a multiple of VEC): r is contiguous in aligned groups
    of VEC, which Triton is told, so loads and stores along pixels vectorise (NCHW); DEBUG asserts the
    premise (an image boundary inside a group would break it).
    int32 (64-bit division is a long subroutine on the GPU): the launchers check M + 2 PIX_ALIGN < 2**31.
    Everything multiplied by a stride is cast to int64 first (``_row_off``).
    """
    m = start + tl.arange(0, BLOCK_P)
    n = m // HWo
    r = m - n * HWo
    if VEC > 1:
        if DEBUG:
            tl.device_assert(r % VEC == m % VEC, "fused_dsconv: pixel groups cross an image (VEC)")
        r = tl.max_contiguous(tl.multiple_of(r, VEC), VEC)
    ho = r // Wo
    wo = r - ho * Wo
    return n, r, ho, wo, m < M


@triton.jit
def _row_off(n, r, h, w, sn, sh, sw, VEC: tl.constexpr):
    """int64 element offset of pixel (n, h, w) (channel 0); with VEC > 1 the dense-plane form n sn + r."""
    if VEC > 1:
        return n.to(tl.int64) * sn + r
    return n.to(tl.int64) * sn + h.to(tl.int64) * sh + w.to(tl.int64) * sw


@triton.jit
def _act_off(n, r, ho, wo, kk, mask, sn, sc, sh, sw, span, VEC: tl.constexpr, DEBUG: tl.constexpr):
    """int64 offsets of an activation tile: pixels (n, ho, wo) x channels kk."""
    off = _row_off(n, r, ho, wo, sn, sh, sw, VEC)[:, None] + (kk.to(tl.int64) * sc)[None, :]
    _assert_in(off, mask, span, DEBUG)
    return off


@triton.jit
def _act_tile(ptr, n, r, ho, wo, kk, mask, sn, sc, sh, sw, span, VEC: tl.constexpr, DEBUG: tl.constexpr):
    """fp32 values of an activation tile, zero on masked lanes."""
    off = _act_off(n, r, ho, wo, kk, mask, sn, sc, sh, sw, span, VEC, DEBUG)
    return tl.load(ptr + off, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _ew_tile(M, HWo, Wo, K, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, VEC: tl.constexpr, DEBUG: tl.constexpr):
    """The (pixels x channels) tile of an elementwise / reduction program on grid (P tiles, K tiles)."""
    n, r, ho, wo, p_mask = _pixels(tl.program_id(0) * BLOCK_P, M, HWo, Wo, BLOCK_P, VEC, DEBUG)
    kk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = kk < K
    return n, r, ho, wo, kk, k_mask, p_mask[:, None] & k_mask[None, :]


@triton.jit
def _dy_off(m, kk, K, mask, span, DEBUG: tl.constexpr):
    """int64 offsets of pixels m x channels kk in bn_bwd_dy's [M, K] buffer (K contiguous)."""
    off = m.to(tl.int64)[:, None] * K + kk[None, :]
    _assert_in(off, mask, span, DEBUG)
    return off


@triton.jit
def _x_tap(
    x_ptr,
    centre,
    hc,
    wc,
    p_mask,
    c_mask,
    tap,
    dil,
    H,
    W,
    sxh,
    sxw,
    x_span,
    DEBUG: tl.constexpr,
    DROP_BOUNDS: tl.constexpr,
):
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
    # (tl.cast, not .to: dil and the strides may arrive as constexpr 1, Triton's specialisation.)
    off = centre + (tl.cast(dh, tl.int64) * sxh + tl.cast(dw, tl.int64) * sxw)
    _assert_in(off, mask, x_span, DEBUG)
    return tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _dw_tile(
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
    STRIDE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    VEC: tl.constexpr,
    DEBUG: tl.constexpr,
    DROP_BOUNDS: tl.constexpr,
):
    """T[p, c] = sum_ij x[n, c, ho*s + (i-1)d, wo*s + (j-1)d] Wd[c, i, j] in fp32, zero padding by mask,
    accumulated tap by tap from 0 in tap order (tests/test_triton.py models exactly this order)."""
    t = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
    hc = ho * STRIDE
    wc = wo * STRIDE
    # The centre tap's offsets; the other 8 differ from it by one scalar each (cheap addresses). At stride 1
    # x's planes are the output's (padding = dilation), so the dense-plane form applies to x too.
    centre = (
        _row_off(n, r, hc, wc, sxn, sxh, sxw, VEC if STRIDE == 1 else 1)[:, None] + (cc.to(tl.int64) * sxc)[None, :]
    )
    # A rolled loop over the 9 taps: unrolled, the compiler issues all 9 gathers at once and runs out
    # of registers (tools/report_triton.py); rolled, one tap's addresses and values are live.
    for tap in tl.range(0, 9, loop_unroll_factor=1):
        xv = _x_tap(x_ptr, centre, hc, wc, p_mask, c_mask, tap, dil, H, W, sxh, sxw, x_span, DEBUG, DROP_BOUNDS)
        wv = tl.load(wd_ptr + cc * 9 + tap, mask=c_mask, other=0.0).to(tl.float32)
        t += xv * wv[None, :]
    return t


@triton.jit
def _tf32(v):
    # TF32 keeps fp32's sign and exponent and the top 10 mantissa bits: clear the low 13 (truncation).
    return (v.to(tl.float32).to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _dot(a, b, acc, dtype_ref, DOT_MODE: tl.constexpr):
    """acc + a @ b with fp32 accumulation; DOT_MODE as in the module docstring.

    ``dtype_ref`` is a pointer whose element type is the storage dtype of the operands.
    """
    if DOT_MODE == 0:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif DOT_MODE == 1:
        acc = tl.dot(a.to(dtype_ref.dtype.element_ty), b.to(dtype_ref.dtype.element_ty), acc)
    elif DOT_MODE == 2:
        acc = tl.dot(
            a.to(dtype_ref.dtype.element_ty).to(tl.float32),
            b.to(dtype_ref.dtype.element_ty).to(tl.float32),
            acc,
            input_precision="ieee",
        )
    elif DOT_MODE == 3:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="tf32")
    else:
        acc = tl.dot(_tf32(a), _tf32(b), acc, input_precision="ieee")
    return acc


@triton.jit
def _bn_z(y, coef_ptr, kk, k_mask, K):
    """(d, z): d = y - mean and the BN output z = d a + beta, from coefficient rows 0..2 (mean, a = gamma r,
    beta). The same expression in bn_relu, bn_bwd_reduce and dy: forward and backward agree on z's sign."""
    mean = tl.load(coef_ptr + kk, mask=k_mask, other=0.0)
    a = tl.load(coef_ptr + K + kk, mask=k_mask, other=0.0)
    beta = tl.load(coef_ptr + 2 * K + kk, mask=k_mask, other=0.0)
    d = y - mean[None, :]
    return d, d * a[None, :] + beta[None, :]


@triton.jit
def _dy_tile(
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
    TRAIN: tl.constexpr,
    VEC: tl.constexpr,
    DEBUG: tl.constexpr,
):
    """dy[p, k] in fp32 from (dout, y, per-channel coefficients), never stored; zero on masked lanes.

    TRAIN: y is the pre-BN output; coefficient rows (bn_bwd_finalize): 0 mean, 1 a = gamma r, 2 beta,
      3 c1 = a sum(dz) / M, 4 rc2 = r a sum(dz yhat) / M, and
      dy = a dz - c1 - d rc2 with d = y - mean, dz = dout [d a + beta > 0]   (evaluated in that order).
    eval: y is the block's output (after ReLU); dy = dz = dout [out > 0].
    NaN passes the mask (z <= 0 is false for NaN), as in threshold_backward.
    """
    mask = p_mask[:, None] & k_mask[None, :]
    g = _act_tile(g_ptr, n, r, ho, wo, kk, mask, sgn, sgc, sgh, sgw, g_span, VEC, DEBUG)
    yv = _act_tile(y_ptr, n, r, ho, wo, kk, mask, syn, syc, syh, syw, y_span, VEC, DEBUG)
    if TRAIN:
        d, z = _bn_z(yv, coef_ptr, kk, k_mask, K)
        a = tl.load(coef_ptr + K + kk, mask=k_mask, other=0.0)
        c1 = tl.load(coef_ptr + 3 * K + kk, mask=k_mask, other=0.0)
        rc2 = tl.load(coef_ptr + 4 * K + kk, mask=k_mask, other=0.0)
        dz = tl.where(z <= 0, 0.0, g)
        dy = a[None, :] * dz - c1[None, :] - d * rc2[None, :]
        dy = tl.where(mask, dy, 0.0)
    else:
        dy = tl.where(yv <= 0, 0.0, g)
    return dy
