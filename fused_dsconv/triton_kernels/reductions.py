"""reductions: fixed-order merges and column sums (colsum), and the per-channel BN coefficient math the
forward and backward stages share (csrc/kernels/reductions.cuh)."""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import _sum


@triton.jit
def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge (count, mean, M2) b into a (Chan et al.); a may be empty (n_a = 0), b is not."""
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
    return n, mean, m2


@triton.jit
def _bn_scale(var, gam_ptr, kk, k_mask, eps, HAS_AFFINE: tl.constexpr):
    """(r, a) = (1 / sqrt(var + eps), gamma r): one expression for the forward and the backward tables."""
    r = 1.0 / tl.sqrt(var + eps)
    if HAS_AFFINE:
        a = tl.load(gam_ptr + kk, mask=k_mask, other=1.0) * r
    else:
        a = r
    return r, a


@triton.jit
def _store_bn_coef(
    coef_ptr, mean, var, gam_ptr, bet_ptr, kk, k_mask, K, eps, HAS_AFFINE: tl.constexpr, BLOCK_K: tl.constexpr
):
    """Coefficient rows 0..2: mean, a = gamma r, beta (0 without affine parameters)."""
    _, a = _bn_scale(var, gam_ptr, kk, k_mask, eps, HAS_AFFINE)
    if HAS_AFFINE:
        beta = tl.load(bet_ptr + kk, mask=k_mask, other=0.0)
    else:
        beta = tl.full((BLOCK_K,), 0.0, tl.float32)
    tl.store(coef_ptr + kk, mean, mask=k_mask)
    tl.store(coef_ptr + K + kk, a, mask=k_mask)
    tl.store(coef_ptr + 2 * K + kk, beta, mask=k_mask)


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
