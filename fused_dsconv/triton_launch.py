"""Launchers of the Triton kernels (the counterpart of csrc/kernels/launch.cuh): kernels -> launchers -> backend.

A launcher allocates outputs and workspaces, sizes the grid, picks the dot mode, and owns the BN
coefficient tables; the kernels are in ``fused_dsconv/triton_kernels/`` (looked up on every call, so a
test can re-import them under ``TRITON_INTERPRET=1``), the backend (``fused_dsconv/backends/triton.py``)
composes the launchers into the contract's four primitives.

Stages (the names the CUDA kernels share):

- forward: ``launch_conv`` (dsconv_fwd: y or relu(y), and per-group statistics), ``launch_bn_stats``
  (bn_stats: mean, var and bn_relu's coefficients), ``launch_bn_relu`` (bn_relu);
- backward (``triton_launch_backward``): ``launch_bn_backward`` (bn_coef, bn_bwd_reduce, bn_bwd_finalize:
  dbias, dgamma, dbeta and dy's coefficients), ``launch_bn_bwd_dy``, ``launch_conv_backward``
  (dsconv_bwd_dt: dt and dWp; dsconv_bwd_dx: dx and dWd; colsum for the weight-gradient partials).

What a launcher hands a kernel: activations with their strides; weights, per-channel vectors and the
workspaces it allocates as dense row-major arrays, which it guarantees (``triton_setup.dense``) rather than
assumes: a view whose strides differ (a [K] slice of a wider tensor, a transposed weight) would
otherwise be read at the wrong addresses.

Tile configs. The three heavy kernels are ``triton.autotune``-d (config spaces and pruning in the
kernels module); everything the grid or a workspace depends on is either fixed here (pixel groups, the
backward's K slice) or read back from the chosen config, so any config gives the same results up to
summation order (the tuned-kernel machinery: ``fused_dsconv/triton_setup.py``). ``triton_tuning.tuned_configs()`` lists what the tuner chose in this process;
``FUSED_DSCONV_TRITON_VERBOSE=1`` prints each choice as it is made (``fused-dsconv info --verbose`` shows
the config spaces and the candidates per block of the classifier).
"""

from __future__ import annotations

import torch
import triton

from . import triton_setup as ts
from .contract import output_size
from .triton_setup import (
    check_pixels,
    dense,
    dot_mode,
    ew_config,
    ew_opts,
    launch_tuned,
    layout,
    m_class,
    plane_vec,
    reduce_config,
    span,
    strides,
)


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


def launch_conv(x, dw_weight, pw_weight, bias, stride, dilation, out, *, relu, stats, wrap=False, _drop_bounds=False):
    """dsconv_fwd into ``out`` (any strides). Returns the statistics partials when ``stats``: ``(ws, rows,
    pixels per row)``, ws [2, rows allocated, K] of which the first ``rows`` hold one pixel tile each;
    else None.

    ``wrap``: launch through ``torch.library.wrap_triton`` (inside a ``triton_op``: fused_dsconv/triton_ops.py),
    which lets torch.compile trace the launch.
    """
    tk = ts.kernels()
    n, c, h, w = x.shape
    k = pw_weight.shape[0]
    ho, wo = output_size(h, stride), output_size(w, stride)
    m = n * ho * wo
    check_pixels(m, "N*Ho*Wo")
    dw_weight, pw_weight, bias = dense(dw_weight), dense(pw_weight), dense(bias)
    # Statistics partials per pixel tile: room for the smallest tile of the space; the chosen config's
    # BLOCK_P, read back after the launch, says how many rows it wrote.
    rows_alloc = triton.cdiv(m, min(cfg.kwargs["BLOCK_P"] for cfg in tk.FWD_CONFIGS)) if stats else 0
    ws = torch.empty((2, rows_alloc, k), device=x.device, dtype=torch.float32) if stats else out

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_P"]) * triton.cdiv(k, meta["BLOCK_K"]),)

    args = (
        x,
        dw_weight,
        pw_weight,
        bias if bias is not None else out,
        out,
        ws,
        c,
        k,
        h,
        w,
        wo,
        ho * wo,
        m,
        dilation,
        rows_alloc * k,
        m_class(m),
        layout(x),
        *strides(x),
        *strides(out),
        span(x),
        span(out),
    )
    vec = plane_vec(ho * wo, out, *((x,) if stride == 1 else ()))
    consts = dict(
        STRIDE=stride,
        HAS_BIAS=bias is not None,
        RELU=relu,
        STATS=stats,
        DOT_MODE=dot_mode(x),
        VEC=vec,
        DEBUG=tk.DEBUG,
        DROP_BOUNDS=_drop_bounds,
    )
    if wrap:
        torch.library.wrap_triton(tk.dsconv_fwd_kernel)[grid](*args, **consts)
        return None
    cfg = launch_tuned("dsconv_fwd", grid, *args, **consts)
    if not stats:
        return None
    block_p = cfg.kwargs["BLOCK_P"]
    return ws, triton.cdiv(m, block_p), block_p


#: Rows (pixel tiles) bn_stats merges per program in its first level; None: 4 BLOCK_T (tests lower it).
STATS_CHUNK_ROWS = None


def launch_bn_stats(partials, m, bn_weight, bn_bias, eps):
    """(mean, biased var, coef [3, K]) from dsconv_fwd's statistics partials; coef rows are bn_relu's
    (mean, a = gamma / sqrt(var + eps), beta). Two levels: chunks of CHUNK rows in parallel, then one
    merge of the chunks (a single serial merge of every tile's row would take one program per 64
    channels through up to M / 32 rows)."""
    tk = ts.kernels()
    ws, rows, per_row = partials
    k = ws.shape[2]
    dev = ws.device
    mean = torch.empty(k, device=dev, dtype=torch.float32)
    var = torch.empty_like(mean)
    coef = torch.empty((3, k), device=dev, dtype=torch.float32)
    affine = bn_weight is not None
    gam = dense(bn_weight) if affine else mean
    bet = dense(bn_bias) if affine else mean
    bt, bk = reduce_config()
    chunk = STATS_CHUNK_ROWS or 4 * bt
    if rows > chunk:
        chunks = triton.cdiv(rows, chunk)
        mid = torch.empty((2, chunks, k), device=dev, dtype=torch.float32)
        tk.bn_stats_kernel[(triton.cdiv(k, bk), chunks)](
            ws,
            mid,
            mean,
            var,
            gam,
            bet,
            coef,
            rows,
            ws.shape[1],
            k,
            m,
            per_row,
            chunk,
            eps,
            FINAL=False,
            HAS_AFFINE=affine,
            BLOCK_T=bt,
            BLOCK_K=bk,
        )
        ws, rows, per_row = mid, chunks, per_row * chunk
    tk.bn_stats_kernel[(triton.cdiv(k, bk), 1)](
        ws,
        ws,
        mean,
        var,
        gam,
        bet,
        coef,
        rows,
        ws.shape[1],
        k,
        m,
        per_row,
        rows,
        eps,
        FINAL=True,
        HAS_AFFINE=affine,
        BLOCK_T=bt,
        BLOCK_K=bk,
    )
    return mean, var, coef


def launch_bn_coef(mean, var, bn_weight, bn_bias, eps, rows=3, dy_means=None):
    """A [rows, K] coefficient table whose rows 0..2 (mean, a = gamma r, beta) bn_coef fills from the given
    statistics. ``dy_means`` = (mean_dz, mean_dz_yhat), the means over every process's pixels: bn_coef also
    fills dy's rows 3, 4 (c1, rc2) from them, as bn_bwd_finalize does from one process's sums; without,
    rows beyond 2 are left for bn_bwd_finalize."""
    k = mean.shape[0]
    bkc = reduce_config()[1]
    mean, var = dense(mean), dense(var)
    affine, dy_rows = bn_weight is not None, dy_means is not None
    mdz, mdzd = (dense(t.float()) for t in dy_means) if dy_rows else (mean, mean)
    coef = torch.empty((max(rows, 5) if dy_rows else rows, k), device=mean.device, dtype=torch.float32)
    ts.kernels().bn_coef_kernel[(triton.cdiv(k, bkc),)](
        mean,
        var,
        dense(bn_weight) if affine else mean,
        dense(bn_bias) if affine else mean,
        mdz,
        mdzd,
        coef,
        k,
        eps,
        HAS_AFFINE=affine,
        DY_ROWS=dy_rows,
        BLOCK_K=bkc,
    )
    return coef


def launch_bn_relu(y, out, coef):
    """out = relu(BN(y)) from bn_stats' coefficients; ``out`` may be ``y`` (in place)."""
    tk = ts.kernels()
    n, k, ho, wo = y.shape
    m = n * ho * wo
    bp, bk = ew_config()
    grid = (triton.cdiv(m, bp), triton.cdiv(k, bk))
    tk.bn_relu_kernel[grid](
        y,
        out,
        dense(coef),
        k,
        wo,
        ho * wo,
        m,
        *strides(y),
        *strides(out),
        span(y),
        span(out),
        BLOCK_P=bp,
        BLOCK_K=bk,
        VEC=plane_vec(ho * wo, y, out),
        DEBUG=tk.DEBUG,
        **ew_opts(),
    )
