"""Triton kernels of the fused joint block (kernels -> launchers in ``triton_launch.py`` -> backend).

Torch-free, like the CUDA stage headers it mirrors (csrc/kernels/): the sections below carry the same
stage names -- problem (pixel indexing), tile_gemm (the depthwise chunk, dy and the dot), reductions
(bn_stats, colsum, bn_bwd_reduce, bn_bwd_finalize), forward (dsconv_fwd, bn_relu) and backward
(dsconv_bwd_dt, dsconv_bwd_dx). The launchers (fused_dsconv/triton_launch.py) allocate outputs and
workspaces, size the grids, pick the dot mode and own the BN-coefficient tables.

This module imports triton and decorates the kernels with ``@triton.jit``; Triton decides at
decoration time whether a kernel runs compiled or in the interpreter (``TRITON_INTERPRET=1``), so
``fused_dsconv`` imports it lazily, on the first launch.

Kernels: plain pointer arithmetic over explicit strides (NCHW and channels_last alike, no copies; no
block pointers), int32 pixel / channel indices and int64 offsets (every product with a stride is
int64), fp32 accumulation. Activations (x, y, out, grad_out, dt, dx) and colsum's workspace views come
with their strides; weights, per-channel vectors and the workspaces the launchers allocate are dense
row-major arrays (the launchers guarantee it).

Tiles. Output pixels are flattened over (n, ho, wo) into M = N*Ho*Wo rows, so a tile of BLOCK_P
consecutive pixels spans images on small layers (no tile is mostly padding on a 7x7 map). The
depthwise chunk T[BLOCK_P, BLOCK_C] is computed in registers from 9 masked loads (zero padding = the
mask; a rolled loop over the taps) and feeds ``tl.dot``. With dense NCHW planes, pixels are contiguous
in aligned groups (VEC, ``_pixels``) and loads / stores along them vectorise.

No recomputation inside a pass:
- dsconv_fwd: a program owns BLOCK_P pixels x BLOCK_K output channels (a wide tile: up to 256) and
  computes each depthwise chunk once for all of them. Only layers with K > BLOCK_K recompute T, once
  per K tile.
- dsconv_bwd_dt: a program owns a C tile and a K slice (all of K up to 256 for 16-bit) and walks a
  group of pixel tiles. Per tile it builds dy[BLOCK_P, K slice] (from grad_out, y and per-channel
  coefficients the finalize stage precomputed) and T[BLOCK_P, BLOCK_C] once each, and uses both
  twice: dt = dy Wp and the pointwise weight gradient dWp += dy^T T (fused).
- dsconv_bwd_dx: dx from dt (9 gathers per input pixel), and the depthwise weight gradient from the
  same gathers: dWd[c, tap] = sum over input pixels q of dt[o(q, tap)] x[q], with x read once.

Dot precision (DOT_MODE, constexpr; the launchers pick it, ``triton_launch.dot_mode``):
  0  float32, IEEE (``input_precision="ieee"``): when TF32 is off for convolutions in PyTorch;
  1  float16 / bfloat16 operands on tensor cores, fp32 accumulator: T and dy rounded to the storage
     dtype, as eager PyTorch rounds them when it stores t and dy (sm_80+: on sm_75 Triton 3.8 emits no
     MMA instruction and the same dot runs on the FMA units);
  2  bfloat16 under the interpreter: its dot cannot multiply bf16 (it stores bf16 as uint16), so the
     operands are rounded to bf16 and multiplied in fp32 -- exact products, so mode 1's dot. Triton
     3.8's interpreter rounds fp32 -> bf16 toward zero (a GPU to nearest even): the tests model it;
  3  float32 as TF32 on tensor cores (``input_precision="tf32"``), when PyTorch lets cuDNN use TF32
     for convolutions (sm_80+);
  4  TF32 under the interpreter, whose dot is exact fp32: the operands are truncated to TF32's 10
     mantissa bits first (a GPU's tensor core reads only those bits), then multiplied in fp32.

Determinism: no float atomics. Per-tile / per-group partials (BN statistics, the BN backward sums, the
weight gradients) go to workspaces reduced in a fixed order. Which tile config runs is the
autotuner's choice (``triton.autotune``, configs below); for one config the results are bitwise
repeatable, and ``FUSED_DSCONV_TRITON_AUTOTUNE=0`` pins the default config.

Debugging: every kernel has a ``DEBUG`` constexpr that asserts, for every load and store, that the
computed offset lies inside the tensor's storage span wherever the mask is on. ``tl.device_assert``
only fires when the builder's options have debug=True: ``set_debug(True)`` does that for the
interpreter (the tests use it); on a GPU also set ``TRITON_DEBUG=1`` before the first launch.
"""
from __future__ import annotations

import dataclasses
import os

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


# ==============================================================================================
# Autotune config spaces (per tuned kernel) and their pruning
# ==============================================================================================
# Chosen from the ahead-of-time compile report (tools/report_triton.py: every config below compiles
# for sm_75 / sm_80 / sm_86 / sm_89 without register spills), not from timings: no GPU was at hand.
# The tuner times the candidates that survive pruning on the first call of each problem class (the
# ``key``: C, K, per-image output size, a bucket of M, layout, stride, dot mode, dtypes) and keeps the
# fastest for the process. Pruning keeps compile time down: a tile wider than the problem is dropped,
# so a class compiles at most MAX_CANDIDATES configs.

#: Largest BLOCK_P of any config: pixel groups (the backward kernels' walks) are multiples of it, so a
#: tile never straddles two groups whatever config runs.
PIX_ALIGN = 128
#: At most this many configs are timed per problem class.
MAX_CANDIDATES = 4


#: How tl.dot runs in Triton 3.8, which decides what compiles without spills: "mma16" fp16 / bf16
#: operands on tensor cores (sm_80+); "tf32" float32 operands as TF32 on tensor cores (sm_80+); "fma32"
#: IEEE float32 on the FMA units (any GPU; also where TF32 is asked for below sm_80); "fma16" fp16
#: operands on sm_75, where Triton 3.8 emits no MMA instruction at all (tl.dot becomes FMA loops).
KINDS = ("mma16", "tf32", "fma32", "fma16")


def dot_kind(op_bytes, dot_mode=None, arch=None) -> str:
    """KINDS entry of a launch: operand size in bytes, DOT_MODE (None: a kernel without a dot, classed by
    its operand size), compute capability as 75 / 80 / ... (None: unknown, taken as sm_80+)."""
    if dot_mode is None:
        dot_mode = 1 if op_bytes == 2 else 0
    tc = arch is None or arch >= 80
    if dot_mode in (1, 2):
        return "mma16" if tc else "fma16"
    if dot_mode in (3, 4):
        return "tf32" if tc else "fma32"
    return "fma32"


#: config -> (the KINDS it is for, widest dsconv_bwd_dt K slice it is for or None). Derived from the
#: compile report: a config is in scope for a kind when every build of it for that kind, on every arch
#: the kind runs on, has no spills.
SCOPE: dict = {}
ALL = frozenset(KINDS)
MMA = frozenset(("mma16", "tf32"))


def _cfg(num_warps, num_stages, kinds=ALL, max_k_slice=None, **tiles):
    cfg = triton.Config(tiles, num_warps=num_warps, num_stages=num_stages)
    SCOPE[cfg] = (frozenset(kinds), max_k_slice)
    return cfg


#: dsconv_fwd: pixels x output channels x input-channel chunk. Wide K tiles first: each depthwise chunk
#: then feeds 128-256 output channels (K > BLOCK_K recomputes it per K tile). 8 warps for the wide tiles
#: (4 warps hold twice the accumulator per thread and spill). fp16 on sm_75 (FMA dot, operands in
#: registers) spills on every tile wider than 64 x 64.
_WIDE = ("mma16", "tf32", "fma32")
FWD_CONFIGS = [
    _cfg(8, 2, kinds=_WIDE, BLOCK_P=64, BLOCK_K=256, BLOCK_C=32),
    _cfg(8, 2, kinds=("fma32",), BLOCK_P=64, BLOCK_K=128, BLOCK_C=32),
    _cfg(8, 2, kinds=("mma16", "tf32"), BLOCK_P=64, BLOCK_K=128, BLOCK_C=16),
    _cfg(8, 2, kinds=_WIDE, BLOCK_P=128, BLOCK_K=64, BLOCK_C=32),
    _cfg(4, 2, kinds=("mma16", "tf32", "fma16"), BLOCK_P=64, BLOCK_K=64, BLOCK_C=16),
    _cfg(4, 2, BLOCK_P=32, BLOCK_K=32, BLOCK_C=16),
]
#: dsconv_bwd_dt: pixels x input-channel tile (BLOCK_K, the K slice, is the launcher's: it sizes dt's
#: partial buffer; the dy tile and the dWp accumulator grow with it).
DT_CONFIGS = [
    _cfg(8, 2, kinds=("mma16",), max_k_slice=128, BLOCK_P=64, BLOCK_C=32),
    _cfg(8, 2, kinds=("mma16", "tf32", "fma16"), BLOCK_P=32, BLOCK_C=32),
    _cfg(8, 2, BLOCK_P=32, BLOCK_C=16),
    _cfg(4, 2, kinds=("mma16", "fma16"), max_k_slice=128, BLOCK_P=32, BLOCK_C=16),
    _cfg(4, 1, BLOCK_P=16, BLOCK_C=16),
]
#: dsconv_bwd_dx: input pixels x channels (no dot: kinds by operand size). ptxas caps the small 4-warp
#: tiles at 64-96 registers for 16-bit data and spills a few bytes there.
DX_CONFIGS = [
    _cfg(8, 1, BLOCK_P=128, BLOCK_C=16),
    _cfg(8, 1, BLOCK_P=64, BLOCK_C=32),
    _cfg(4, 1, kinds=("fma32", "fma16"), BLOCK_P=64, BLOCK_C=16),
    _cfg(4, 1, kinds=("fma32",), BLOCK_P=32, BLOCK_C=16),
]

#: Tests and debugging: kernel name -> the one config to run (bypasses timing); see triton_launch.
FORCED: dict[str, triton.Config] = {}
#: Under the interpreter, or with FUSED_DSCONV_TRITON_AUTOTUNE=0: the config a class runs untimed.
AUTOTUNE = os.environ.get("FUSED_DSCONV_TRITON_AUTOTUNE", "1") != "0"


def _p2(v: int) -> int:
    return triton.next_power_of_2(max(1, int(v)))


def _wide(cfg: triton.Config, dims: dict) -> bool:
    """A tile wider than the problem in some dimension (beyond the smallest such tile of the space)."""
    return any(cfg.kwargs.get(name, 0) > lim for name, lim in dims.items())


def in_scope(cfg, kind=None, k_slice=None) -> bool:
    """Whether ``cfg`` is meant for this dot kind (KINDS; None: any) and K slice (see ``SCOPE``)."""
    kinds, max_k = SCOPE.get(cfg, (ALL, None))
    return (kind is None or kind in kinds) and (k_slice is None or max_k is None or k_slice <= max_k)


def candidates(configs, limits: dict, kind=None, k_slice=None) -> list:
    """The configs worth timing for a problem: those for its dot kind and K slice (``SCOPE``) no wider
    than it (``limits``: {constexpr: widest useful value}); if the problem is narrower than every such
    tile, the narrowest; at most MAX_CANDIDATES."""
    configs = [c for c in configs if in_scope(c, kind, k_slice)]
    keep = [c for c in configs if not _wide(c, limits)]
    if not keep:
        narrow = min(tuple(c.kwargs.get(k, 0) for k in limits) for c in configs)
        keep = [c for c in configs if tuple(c.kwargs.get(k, 0) for k in limits) == narrow]
    return keep[:MAX_CANDIDATES]


def _pruner(name: str, limits):
    """early_config_prune for kernel ``name`` (``limits(args)``: see ``candidates``); a single config when
    forced, when autotuning is off, or under the interpreter (timing it would be meaningless)."""
    def prune(configs, nargs, **kwargs):
        if name in FORCED:
            return [FORCED[name]]
        x = nargs.get("x_ptr")  # BLOCK_K among the launch's kwargs: dsconv_bwd_dt's K slice
        kind = dot_kind(x.element_size(), kwargs.get("DOT_MODE"), _arch()) if x is not None else None
        keep = candidates(configs, limits({**nargs, **kwargs}), kind, kwargs.get("BLOCK_K"))
        return keep[:1] if INTERPRETED or not AUTOTUNE else keep
    return prune


def _arch():
    """The current GPU's compute capability as 75 / 80 / ... (None under the interpreter)."""
    if INTERPRETED:
        return None
    return triton.runtime.driver.active.get_current_target().arch


#: kernel name -> limits function (filled in next to each tuned kernel).
LIMITS: dict = {}


def _bench(kernel_call, quantiles):
    """The tuner's timer: triton's on a GPU. Under the interpreter a single candidate is ever timed
    (the pruner keeps one), so no timing is taken; the call still runs, as the tuner expects."""
    if INTERPRETED:
        kernel_call()
        return [0.0 for _ in quantiles]
    from triton.testing import do_bench
    return do_bench(kernel_call, quantiles=quantiles)


def _tuned(name, configs, key, limits):
    LIMITS[name] = limits
    return triton.autotune(configs=configs, key=key, do_bench=_bench,
                           prune_configs_by={"early_config_prune": _pruner(name, limits)})


# ==============================================================================================
# problem: pixel indexing and bounds
# ==============================================================================================

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


# ==============================================================================================
# tile_gemm: the depthwise chunk, dy, and the dot
# ==============================================================================================

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
    # (tl.cast, not .to: dil and the strides may arrive as constexpr 1, Triton's specialisation.)
    off = centre + (tl.cast(dh, tl.int64) * sxh + tl.cast(dw, tl.int64) * sxw)
    _assert_in(off, mask, x_span, DEBUG)
    return tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _dw_tile(x_ptr, wd_ptr, n, r, ho, wo, p_mask, cc, c_mask, H, W, sxn, sxc, sxh, sxw, dil, x_span,
             STRIDE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, VEC: tl.constexpr,
             DEBUG: tl.constexpr, DROP_BOUNDS: tl.constexpr):
    """T[p, c] = sum_ij x[n, c, ho*s + (i-1)d, wo*s + (j-1)d] Wd[c, i, j] in fp32, zero padding by mask,
    accumulated tap by tap from 0 in tap order (tests/test_triton.py models exactly this order)."""
    t = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
    hc = ho * STRIDE
    wc = wo * STRIDE
    # The centre tap's offsets; the other 8 differ from it by one scalar each (cheap addresses). At stride 1
    # x's planes are the output's (padding = dilation), so the dense-plane form applies to x too.
    centre = _row_off(n, r, hc, wc, sxn, sxh, sxw, VEC if STRIDE == 1 else 1)[:, None] + \
        (cc.to(tl.int64) * sxc)[None, :]
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
        acc = tl.dot(a.to(dtype_ref.dtype.element_ty).to(tl.float32),
                     b.to(dtype_ref.dtype.element_ty).to(tl.float32), acc, input_precision="ieee")
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
def _dy_tile(g_ptr, y_ptr, coef_ptr, n, r, ho, wo, p_mask, kk, k_mask, K, sgn, sgc, sgh, sgw, syn, syc, syh, syw,
             g_span, y_span, TRAIN: tl.constexpr, VEC: tl.constexpr, DEBUG: tl.constexpr):
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


# ==============================================================================================
# reductions: BN statistics and coefficients, fixed-order column sums
# ==============================================================================================

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
def _store_bn_coef(coef_ptr, mean, var, gam_ptr, bet_ptr, kk, k_mask, K, eps, HAS_AFFINE: tl.constexpr,
                   BLOCK_K: tl.constexpr):
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
def bn_stats_kernel(ws_ptr, out_ptr, mean_ptr, var_ptr, gam_ptr, bet_ptr, coef_ptr, T, PLANE, K, M, PIX_ROW, ROWS, eps,
                    FINAL: tl.constexpr, HAS_AFFINE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
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
def bn_bwd_reduce_kernel(g_ptr, y_ptr, coef_ptr, ws_ptr, K, Wo, HWo, M, PIX_GROUP,
                         sgn, sgc, sgh, sgw, syn, syc, syh, syw, g_span, y_span,
                         TRAIN: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, VEC: tl.constexpr,
                         DEBUG: tl.constexpr):
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
def bn_coef_kernel(mean_ptr, var_ptr, gam_ptr, bet_ptr, coef_ptr, K, eps,
                   HAS_AFFINE: tl.constexpr, BLOCK_K: tl.constexpr):
    """Coefficient rows 0..2 (mean, a = gamma r, beta) from the batch statistics: bit for bit the rows
    bn_stats wrote in the forward (same expression, same inputs)."""
    kk = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = kk < K
    mean = tl.load(mean_ptr + kk, mask=k_mask, other=0.0)
    var = tl.load(var_ptr + kk, mask=k_mask, other=1.0)
    _store_bn_coef(coef_ptr, mean, var, gam_ptr, bet_ptr, kk, k_mask, K, eps, HAS_AFFINE, BLOCK_K)


@triton.jit
def bn_bwd_finalize_kernel(ws_ptr, var_ptr, gam_ptr, coef_ptr, dbias_ptr, dgam_ptr, dbet_ptr, T, K, M, eps,
                           TRAIN: tl.constexpr, HAS_AFFINE: tl.constexpr, BLOCK_T: tl.constexpr,
                           BLOCK_K: tl.constexpr):
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


# ==============================================================================================
# forward: dsconv_fwd, bn_relu
# ==============================================================================================

def _fwd_limits(a):
    return {"BLOCK_K": max(32, _p2(a["K"])), "BLOCK_C": max(16, _p2(a["C"])),
            "BLOCK_P": max(32, _p2(a["M"]))}


@_tuned("dsconv_fwd", FWD_CONFIGS,
        ["C", "K", "HWo", "M_CLASS", "LAYOUT", "STRIDE", "DOT_MODE", "STATS", "RELU", "VEC"], _fwd_limits)
@triton.jit(do_not_specialize=["M_CLASS", "LAYOUT"])
def dsconv_fwd_kernel(x_ptr, wd_ptr, wp_ptr, bias_ptr, y_ptr, ws_ptr,
                      C, K, H, W, Wo, HWo, M, dil, WS_PLANE, M_CLASS, LAYOUT,
                      sxn, sxc, sxh, sxw, syn, syc, syh, syw, x_span, y_span,
                      STRIDE: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, STATS: tl.constexpr,
                      DOT_MODE: tl.constexpr, VEC: tl.constexpr, DEBUG: tl.constexpr, DROP_BOUNDS: tl.constexpr,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
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
        t = _dw_tile(x_ptr, wd_ptr, n, r, ho, wo, p_mask, cc, c_mask, H, W, sxn, sxc, sxh, sxw, dil, x_span,
                     STRIDE, BLOCK_P, BLOCK_C, VEC, DEBUG, DROP_BOUNDS)
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
def bn_relu_kernel(y_ptr, out_ptr, coef_ptr, K, Wo, HWo, M,
                   syn, syc, syh, syw, son, soc, soh, sow, y_span, o_span,
                   BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, VEC: tl.constexpr, DEBUG: tl.constexpr):
    """out = relu((y - mean) a + beta), coefficient rows mean, a = gamma r, beta; grid (P tiles, K tiles).
    One program loads and stores each element, so out may be y (normalised in place)."""
    n, r, ho, wo, kk, k_mask, mask = _ew_tile(M, HWo, Wo, K, BLOCK_P, BLOCK_K, VEC, DEBUG)
    y = _act_tile(y_ptr, n, r, ho, wo, kk, mask, syn, syc, syh, syw, y_span, VEC, DEBUG)
    ooff = _act_off(n, r, ho, wo, kk, mask, son, soc, soh, sow, o_span, VEC, DEBUG)
    _, z = _bn_z(y, coef_ptr, kk, k_mask, K)
    z = tl.where(z < 0, 0.0, z)
    tl.store(out_ptr + ooff, z.to(out_ptr.dtype.element_ty), mask=mask)


# ==============================================================================================
# backward: dsconv_bwd_dt (dt and the pointwise weight gradient), dsconv_bwd_dx (dx and the
# depthwise weight gradient)
# ==============================================================================================

def _dt_limits(a):
    return {"BLOCK_C": max(16, _p2(a["C"])), "BLOCK_P": max(32, _p2(a["M"]))}


@_tuned("dsconv_bwd_dt", DT_CONFIGS, ["C", "K", "HWo", "M_CLASS", "LAYOUT", "STRIDE", "DOT_MODE", "TRAIN", "VEC",
                                      "BLOCK_K"], _dt_limits)
@triton.jit(do_not_specialize=["M_CLASS", "LAYOUT"])
def dsconv_bwd_dt_kernel(g_ptr, y_ptr, coef_ptr, x_ptr, wd_ptr, wp_ptr, dt_ptr, ws_ptr,
                         C, K, H, W, Wo, HWo, M, dil, PIX_GROUP, K_SLICES, DT_SLICE, M_CLASS, LAYOUT,
                         sgn, sgc, sgh, sgw, syn, syc, syh, syw, sxn, sxc, sxh, sxw, stn, stc, sth, stw,
                         g_span, y_span, x_span, t_span,
                         STRIDE: tl.constexpr, TRAIN: tl.constexpr, DOT_MODE: tl.constexpr, VEC: tl.constexpr,
                         DEBUG: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dt = dy Wp over this program's K slice, and the pointwise weight-gradient partial dy^T T.

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
        dy = _dy_tile(g_ptr, y_ptr, coef_ptr, n, r, ho, wo, p_mask, kk, k_mask, K, sgn, sgc, sgh, sgw,
                      syn, syc, syh, syw, g_span, y_span, TRAIN, VEC, DEBUG)
        t = _dw_tile(x_ptr, wd_ptr, n, r, ho, wo, p_mask, cc, c_mask, H, W, sxn, sxc, sxh, sxw, dil, x_span,
                     STRIDE, BLOCK_P, BLOCK_C, VEC, DEBUG, False)
        dt = _dot(dy, wp, tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32), wp_ptr, DOT_MODE)
        pc_mask = p_mask[:, None] & c_mask[None, :]
        toff = _act_off(n, r, ho, wo, cc, pc_mask, stn, stc, sth, stw, t_span, VEC, DEBUG)
        tl.store(dt_base + toff, dt, mask=pc_mask)
        dwp = _dot(tl.trans(dy), t, dwp, wp_ptr, DOT_MODE)
    woff = pid_g.to(tl.int64) * K * C + (kk * C)[:, None] + cc[None, :]
    tl.store(ws_ptr + woff, dwp, mask=kc_mask)


def _dx_limits(a):
    return {"BLOCK_C": max(16, _p2(a["C"])), "BLOCK_P": max(32, _p2(a["MI"]))}


@_tuned("dsconv_bwd_dx", DX_CONFIGS, ["C", "HW", "M_CLASS", "LAYOUT", "STRIDE", "K_SLICES", "VEC"], _dx_limits)
@triton.jit(do_not_specialize=["M_CLASS", "LAYOUT"])
def dsconv_bwd_dx_kernel(dt_ptr, wd_ptr, x_ptr, dx_ptr, ws_ptr, C, H, W, Ho, Wo, HW, MI, dil,
                         PIX_GROUP, K_SLICES, DT_SLICE, M_CLASS, LAYOUT,
                         stn, stc, sth, stw, sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw, t_span, x_span, d_span,
                         STRIDE: tl.constexpr, VEC: tl.constexpr, DEBUG: tl.constexpr, BLOCK_P: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    """dx and the depthwise weight-gradient partials, from dt (the sum of its K_SLICES slices).

    1-D grid over (C tiles x input-pixel groups). For input pixel q = (n, h, w) and tap (i, j), the
    output pixel o = ((h + d - i d) / s, (w + d - j d) / s) when that lands on the output grid; then
        dx[q, c] += dt[o, c] Wd[c, i, j]      and      dWd[c, i, j] += dt[o, c] x[q, c],
    which enumerates every (o, q) pair of each tap exactly once, so x is read once per pixel (no halo).
    ws[group, c, tap] (tap < 9) receives the group's dWd partial; colsum reduces the groups.
    """
    pid = tl.program_id(0)
    c_tiles = (C + BLOCK_C - 1) // BLOCK_C
    pid_c = pid % c_tiles
    pid_g = pid // c_tiles
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cc < C
    taps = tl.arange(0, 16)
    dwd = tl.full((BLOCK_C, 16), 0.0, tl.float32)
    start = pid_g * PIX_GROUP
    end = tl.minimum(start + PIX_GROUP, MI)
    for p0 in range(start, end, BLOCK_P):
        n, r, h, w, p_mask = _pixels(p0, end, HW, W, BLOCK_P, VEC, DEBUG)
        pc_mask = p_mask[:, None] & c_mask[None, :]
        xv = _act_tile(x_ptr, n, r, h, w, cc, pc_mask, sxn, sxc, sxh, sxw, x_span, VEC, DEBUG)
        base = (n.to(tl.int64) * stn)[:, None] + (cc.to(tl.int64) * stc)[None, :]
        acc = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
        for tap in tl.range(0, 9, loop_unroll_factor=1):  # rolled: unrolled, the 9 gathers need too many registers
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
            v = tl.full((BLOCK_P, BLOCK_C), 0.0, tl.float32)
            for ks in range(0, K_SLICES):
                offk = off + tl.cast(ks, tl.int64) * DT_SLICE
                _assert_in(offk, mask, t_span, DEBUG)
                v += tl.load(dt_ptr + offk, mask=mask, other=0.0)
            wv = tl.load(wd_ptr + cc * 9 + tap, mask=c_mask, other=0.0).to(tl.float32)
            acc += v * wv[None, :]
            part = _sum(v * xv, axis=0)
            dwd += tl.where(taps[None, :] == tap, part[:, None], 0.0)
        doff = _act_off(n, r, h, w, cc, pc_mask, sdn, sdc, sdh, sdw, d_span, VEC, DEBUG)
        tl.store(dx_ptr + doff, acc.to(dx_ptr.dtype.element_ty), mask=pc_mask)
    woff = pid_g.to(tl.int64) * C * 9 + (cc * 9)[:, None] + taps[None, :]
    tl.store(ws_ptr + woff, dwd, mask=c_mask[:, None] & (taps[None, :] < 9))
