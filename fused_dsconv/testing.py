"""Shared by every backend's tests and the benchmarks: inputs, tolerances, the comparison rule.

Tolerances per storage dtype (modelled on causal-conv1d's tests). Each backend's result is
compared in float64 against the float64 reference of the *same* (rounded) inputs, and ``atol`` is
scaled by the reference's largest magnitude, so one table serves outputs and gradients alike:

    |actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|

    dtype      rtol    atol
    float64    1e-7    1e-9
    float32    3e-4    1e-3
    "tf32"     3e-3    5e-3    float32 storage, GEMM operands rounded to TF32 (10 mantissa bits)
    float16    3e-3    5e-3
    bfloat16   1e-2    5e-2

A float32 result whose GEMM ran in TF32 (PyTorch's default for convolutions on sm_80+, and the Triton
backend's whenever PyTorch's is: ``conv_tf32``) is held to the "tf32" row: TF32 keeps float16's 10-bit
mantissa, and both GEMM operands are rounded (the weights too, which in float16 runs are stored, hence
exact), so each product carries up to 2**-9 relative error when the hardware truncates -- inside rtol
3e-3; atol covers cancellation, as in the float16 row. IEEE float32 GEMMs meet the float32 row.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .contract import OpParams, memory_format_of

TF32 = "tf32"  # the tolerance row of float32 results computed with TF32 GEMM operands

TOLERANCES = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (3e-4, 1e-3),
    TF32: (3e-3, 5e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (1e-2, 5e-2),
}


# Shapes that give every tile class of the native CUDA kernels (csrc/kernels/launch.cuh) and its edges:
# ((N, C, K, H, W), stride, dilation, the forward's tile class). tests/test_emu_kernels.py runs every op
# on them through the emulator; tests/test_perf_model.py checks the class against the launcher's mirror.
NATIVE_TILE_CASES = [
    ((1, 9, 70, 20, 120), 1, 2, "rect8x8"),  # wide map (Wo > 112), K > 64: 128 channels x 8x8, 3x15 tiles
    ((1, 9, 70, 20, 19), 1, 2, "span64"),  # 16 < Wo <= 112: span tiles
    ((2, 5, 6, 12, 40), 1, 1, "span64"),  # Wo = 40: tiles crossing rows and both images
    ((2, 70, 6, 24, 24), 1, 1, "span64"),  # enough pixels for dsconv_dw's 8 channels per thread (70 = 8 x 8 + 6)
    ((1, 6, 10, 40, 240), 2, 3, "rect8x16"),  # K <= 64 on a wide map (Wo = 120), stride 2
    ((1, 6, 10, 20, 40), 1, 5, "rect8x16"),  # the runtime-dilation path on 8x16 tiles
    ((3, 5, 6, 7, 7), 1, 3, "span64"),  # 64-pixel tiles spanning 7x7 images (147 pixels, 3 tiles)
    ((3, 5, 6, 14, 13), 2, 1, "span64"),  # spanning, stride 2, odd input size
    ((1, 1, 1, 5, 6), 1, 1, "span64"),  # C = K = N = 1, one partial tile
    ((2, 3, 1, 4, 4), 2, 2, "span64"),  # K = 1, every tap of a 2x2 map out of range but the centre
    ((1, 1, 3, 23, 120), 1, 4, "rect8x16"),  # C = 1, many partial tiles, K <= 64
    ((1, 70, 3, 9, 9), 2, 4, "span64"),  # C > 64 (two dt channel blocks), tiny K
    ((2, 70, 20, 5, 5), 2, 3, "span64"),  # one tile: the forward's input channels split over 2 blocks
    ((1, 9, 130, 6, 6), 1, 1, "span64"),  # one tile, K > 128: dt's output channels split over 2 blocks
    ((1, 130, 9, 6, 6), 1, 2, "span64"),  # C > 128: dy stored once by bn_bwd_dy (2 dt + 3 dWp C blocks)
    ((1, 130, 9, 8, 120), 1, 3, "rect8x16"),  # the same on rect tiles (dWp on 8x8 tiles)
    ((3, 3, 5, 49, 49), 1, 1, "span64"),  # 113 tiles: dsconv_fwd takes them in pairs, the last pair half
    # C % 4 == 0, as in every block of the classifier: Wp rows read and dWp rows stored 4 channels at a time
    ((2, 8, 12, 9, 10), 1, 2, "span64"),  # 3 tiles: dWp partials (split over the tiles)
    ((1, 12, 6, 5, 5), 2, 3, "span64"),  # one tile: dWp stored by its kernel (one split)
    ((1, 16, 70, 12, 120), 1, 4, "rect8x8"),  # rect tiles, K > 64
    # K, C >= 128 on span tiles: dWp in 128 x 128 blocks (dwide). 15 tiles (the last 4 pixels) in 8 splits, 4-
    # and 8-channel corner blocks, dy stored; then dy formed and one tile, dWp stored by its kernel
    ((1, 132, 136, 30, 30), 1, 2, "span64"),
    ((2, 128, 128, 5, 5), 1, 3, "span64"),
]


def max_error(actual: Tensor, expected: Tensor) -> float:
    return (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0


@contextlib.contextmanager
def conv_tf32(on: bool):
    """PyTorch's convolutions (and so the Triton backend's float32 GEMMs) in TF32 or not, inside the block:
    the legacy ``torch.backends.cudnn.allow_tf32`` flag, which sets the per-op settings consistently."""
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = bool(on)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = prev


def assert_close(actual: Tensor, expected: Tensor, dtype, name: str, verbose: bool = True) -> float:
    """Assert the tolerance rule above for ``dtype`` (a torch dtype, or TF32); print and return the max abs
    error."""
    rtol, atol = TOLERANCES[dtype]
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a, e = actual.double(), expected.double()
    scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
    err = max_error(a, e)
    if verbose:
        print(f"{name} [{dtype}]: max abs err {err:.3e} (scale {scale:.3g})")
    bad = ~((a - e).abs() <= atol * scale + rtol * e.abs()) & ~(a.isnan() & e.isnan())
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"{name} [{dtype}]: {int(bad.sum())} of {e.numel()} elements out of tolerance "
            f"(rtol {rtol}, atol {atol} x {scale:.3g}); max abs err {err:.3e}; first at {idx}: "
            f"{a[tuple(idx)].item()} vs {e[tuple(idx)].item()}"
        )
    return err


@dataclass
class Case:
    """Inputs of one joint block call; params are float32 (the model's master weights)."""

    x: Tensor
    dw_weight: Tensor
    pw_weight: Tensor
    bias: Optional[Tensor]
    bn_weight: Optional[Tensor]
    bn_bias: Optional[Tensor]
    stride: int
    dilation: int

    def cast(self, dtype: torch.dtype) -> "Case":
        """x and conv weights in ``dtype`` (per-channel tensors stay in the accumulation dtype)."""
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        pc = lambda t: None if t is None else t.to(acc)  # noqa: E731
        mf = memory_format_of(self.x)
        return Case(
            self.x.to(dtype).contiguous(memory_format=mf),
            self.dw_weight.to(dtype),
            self.pw_weight.to(dtype),
            pc(self.bias),
            pc(self.bn_weight),
            pc(self.bn_bias),
            self.stride,
            self.dilation,
        )


def make_case(
    n: int,
    c: int,
    k: int,
    h: int,
    w: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    channels_last: bool = False,
    bias: bool = True,
    affine: bool = True,
    seed: int = 0,
    device: str = "cpu",
) -> Case:
    """Random, non-degenerate inputs (no zeros, BN weight away from 0, a non-zero mean in y)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = r(n, c, h, w) + 0.5  # an offset so the batch mean is not ~0: exercises the variance formula
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    case = Case(
        x,
        r(c, 1, 3, 3) / 3,
        r(k, c) / c**0.5,
        r(k) if bias else None,
        (torch.rand(k, generator=g) + 0.5) if affine else None,
        r(k) * 0.5 if affine else None,
        stride,
        dilation,
    )
    return Case(*(t.to(device) if isinstance(t, Tensor) else t for t in case.__dict__.values()))


def split_passes(
    backend: str, case: Case, sizes: list[int], grad_out: Tensor, eps: float = 1e-5, save_y: bool = True
) -> dict:
    """The synchronised block's passes on ``backend``, one process per entry of ``sizes`` simulated in this one:
    ``case.x`` cut into batches of those sizes (0 allowed), pass 1 on each, the statistics merged as the
    all-gather merges them (``fused_dsconv.distributed.merge_statistics``), pass 2 on each, the BN gradient sums
    added up as the all-reduce adds them, and the rest of the backward on each. Returns the merged
    statistics and the whole-batch results (outputs and dx concatenated, weight / BN gradients summed), to
    compare with one call on the whole batch."""
    from .distributed import merge_statistics

    ops = torch.ops.fused_dsconv
    c = case
    assert sum(sizes) == c.x.shape[0]
    k = c.pw_weight.shape[0]
    cuts = torch.tensor([0, *sizes]).cumsum(0).tolist()
    xs = [c.x[a:b] for a, b in zip(cuts, cuts[1:])]
    gs = [grad_out[a:b] for a, b in zip(cuts, cuts[1:])]
    conv = (c.dw_weight, c.pw_weight, c.bias)
    rows, ys = [], []
    for x in xs:
        y, mean, var = ops.forward_stats(x, *conv, c.stride, c.dilation, save_y, backend)
        count = x.shape[0] * ((x.shape[2] - 1) // c.stride + 1) * ((x.shape[3] - 1) // c.stride + 1)
        rows.append(torch.cat([mean.new_full((1,), count), mean, var * count]))
        ys.append(y if save_y else None)
    n, mean, var = merge_statistics(torch.cat(rows), k)
    outs = [
        ops.forward_normalize(x, *conv, y, mean, var, c.bn_weight, c.bn_bias, c.stride, c.dilation, eps, backend)
        for x, y in zip(xs, ys)
    ]
    if not save_y:  # as the backward rebuilds it in recompute mode
        ys = [ops.forward_stats(x, *conv, c.stride, c.dilation, True, backend)[0] for x in xs]
    sums = [ops.backward_reduce(g, y, mean, var, c.bn_weight, c.bn_bias, eps, backend) for g, y in zip(gs, ys)]
    sum_dz, sum_dz_yhat = sum(s[0] for s in sums), sum(s[1] for s in sums)
    grads = [
        ops.backward_apply(
            g,
            x,
            c.dw_weight,
            c.pw_weight,
            y,
            mean,
            var,
            c.bn_weight,
            c.bn_bias,
            sum_dz / n,
            sum_dz_yhat / n,
            c.stride,
            c.dilation,
            eps,
            backend,
        )
        for g, x, y in zip(gs, xs, ys)
    ]
    return {
        "count": n,
        "mean": mean,
        "var": var,
        "out": torch.cat(outs),
        "dx": torch.cat([g[0] for g in grads]),
        "d_dw": sum(g[1] for g in grads),
        "d_pw": sum(g[2] for g in grads),
        "d_gamma": sum_dz_yhat,
        "d_beta": sum_dz,
        "parts": [{"out": o, "dx": g[0]} for o, g in zip(outs, grads)],
    }


class FlatCalls:
    """A backend whose primitives take the registered ops' flat argument lists (the non-tensor arguments
    positionally after the tensors, in the ops' order, without ``backend``; the backward ops' ``output_mask``
    last), as the kernel tests compare them with the ops; each call builds the ``OpParams`` the backend takes.
    Everything else (``unavailable``, ``name``, ...) is the backend's own."""

    def __init__(self, backend):
        self.backend = backend

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def forward_eval(self, x, dw_weight, pw_weight, bias, stride, dilation):
        return self.backend.forward_eval(x, dw_weight, pw_weight, bias, OpParams(stride, dilation))

    def forward_train(self, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, stride, dilation, eps, save_y=True):
        p = OpParams(stride, dilation, eps, save_y)
        return self.backend.forward_train(x, dw_weight, pw_weight, bias, bn_weight, bn_bias, p)

    def backward_eval(self, grad_out, out, x, dw_weight, pw_weight, stride, dilation, output_mask=None):
        p = OpParams(stride, dilation).with_mask(output_mask)
        return self.backend.backward_eval(grad_out, out, x, dw_weight, pw_weight, p)

    def backward_train(
        self, grad_out, x, dw, pw, bias, bn_weight, bn_bias, y, mean, var, stride, dilation, eps, output_mask=None
    ):
        p = OpParams(stride, dilation, eps).with_mask(output_mask)
        return self.backend.backward_train(grad_out, x, dw, pw, bias, bn_weight, bn_bias, y, mean, var, p)

    def forward_stats(self, x, dw_weight, pw_weight, bias, stride, dilation, save_y=True):
        return self.backend.forward_stats(x, dw_weight, pw_weight, bias, OpParams(stride, dilation, save_y=save_y))

    def forward_normalize(self, x, dw, pw, bias, y, mean, var, bn_weight, bn_bias, stride, dilation, eps):
        p = OpParams(stride, dilation, eps)
        return self.backend.forward_normalize(x, dw, pw, bias, y, mean, var, bn_weight, bn_bias, p)

    def backward_reduce(self, grad_out, y, mean, var, bn_weight, bn_bias, eps):
        return self.backend.backward_reduce(grad_out, y, mean, var, bn_weight, bn_bias, OpParams(1, 1, eps))

    def backward_apply(
        self,
        grad_out,
        x,
        dw,
        pw,
        y,
        mean,
        var,
        bn_weight,
        bn_bias,
        mean_dz,
        mean_dz_yhat,
        stride,
        dilation,
        eps,
        output_mask=None,
    ):
        p = OpParams(stride, dilation, eps).with_mask(output_mask)
        return self.backend.backward_apply(
            grad_out, x, dw, pw, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat, p
        )
