"""Triton kernels of the fused joint block (kernels -> launchers in ``triton_launch.py`` -> backend).

Torch-free, like the CUDA stage headers it mirrors (csrc/kernels/), one module per stage with the same
stage names: ``tiles`` (problem: pixel indexing; tile_gemm: the depthwise chunk, dy and the dot),
``reductions`` (colsum, the Chan merge and the BN coefficient math), ``forward`` (dsconv_fwd, bn_stats,
bn_coef, bn_relu), ``backward_bn`` (bn_bwd_reduce, bn_bwd_finalize, bn_bwd_dy) and ``backward``
(dsconv_bwd_dt, dsconv_bwd_dx); ``configs`` holds the autotuner's config spaces. This package re-exports all
of it. The launchers (fused_dsconv/triton_launch.py, triton_launch_backward.py) allocate outputs and
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
  group of pixel tiles. Per tile it gets dy[BLOCK_P, K slice] (stored once by bn_bwd_dy on layers
  with many C tiles; else built from grad_out, y and per-channel coefficients the finalize stage
  precomputed) and builds T[BLOCK_P, BLOCK_C] once, and uses both twice: dt = dy Wp and the pointwise
  weight gradient dWp += dy^T T (fused).
- dsconv_bwd_dx: dx from dt (a gather per tap that lands on the output grid: all 9 at stride 1, 2.25
  on average at stride 2, input pixels walked by stride class), and the depthwise weight gradient from
  the same gathers: dWd[c, tap] = sum over input pixels q of dt[o(q, tap)] x[q], with x read once.

Dot precision (DOT_MODE, constexpr; the launchers pick it, ``triton_setup.dot_mode``):
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
import importlib
import os
import sys


def _stage(name: str):
    """Stage module ``name``, imported afresh: decorating happens at import, so re-importing this package (a
    test switching TRITON_INTERPRET) must re-decorate every stage too, not reuse a cached one."""
    full = f"{__name__}.{name}"
    sys.modules.pop(full, None)
    return importlib.import_module(full)


configs = _stage("configs")
tiles = _stage("tiles")
reductions = _stage("reductions")
forward = _stage("forward")
backward_bn = _stage("backward_bn")
backward = _stage("backward")

from .backward import dsconv_bwd_dt_kernel, dsconv_bwd_dx_kernel
from .backward_bn import bn_bwd_dy_kernel, bn_bwd_finalize_kernel, bn_bwd_reduce_kernel
from .configs import (
    ALL,
    AUTOTUNE,
    DT_CONFIGS,
    DX_CONFIGS,
    FORCED,
    FWD_CONFIGS,
    INTERPRETED,
    KINDS,
    LIMITS,
    MAX_CANDIDATES,
    MMA,
    PIX_ALIGN,
    SCOPE,
    candidates,
    dot_kind,
    in_scope,
)
from .forward import bn_coef_kernel, bn_relu_kernel, bn_stats_kernel, dsconv_fwd_kernel
from .reductions import colsum_kernel

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
            interpreter.interpreter_builder.options, debug=bool(on)
        )
    return prev


__all__ = [
    "ALL",
    "AUTOTUNE",
    "DEBUG",
    "DT_CONFIGS",
    "DX_CONFIGS",
    "FORCED",
    "FWD_CONFIGS",
    "INTERPRETED",
    "KINDS",
    "LIMITS",
    "MAX_CANDIDATES",
    "MMA",
    "PIX_ALIGN",
    "SCOPE",
    "bn_bwd_dy_kernel",
    "bn_bwd_finalize_kernel",
    "bn_bwd_reduce_kernel",
    "bn_coef_kernel",
    "bn_relu_kernel",
    "bn_stats_kernel",
    "candidates",
    "colsum_kernel",
    "dot_kind",
    "dsconv_bwd_dt_kernel",
    "dsconv_bwd_dx_kernel",
    "dsconv_fwd_kernel",
    "in_scope",
    "set_debug",
]
