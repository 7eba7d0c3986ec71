"""Shared by every backend's tests and the benchmarks: inputs, tolerances, the comparison rule.

Tolerances per storage dtype (after causal-conv1d's, notes section 4). Each backend's result is
compared in float64 against the float64 reference of the *same* (rounded) inputs, and ``atol`` is
scaled by the reference's largest magnitude, so one table serves outputs and gradients alike:

    |actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|

    dtype      rtol    atol
    float64    1e-7    1e-9
    float32    3e-4    1e-3
    float16    3e-3    5e-3
    bfloat16   1e-2    5e-2

fp32 ``tl.dot`` / tensor-core paths must run in IEEE fp32 (not TF32) to meet the float32 row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

TOLERANCES = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (3e-4, 1e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (1e-2, 5e-2),
}


# Shapes that give every tile class of the native CUDA kernels (csrc/kernels/launch.cuh) and its edges:
# ((N, C, K, H, W), stride, dilation, the forward's tile class). tests/test_emu_kernels.py runs every op
# on them through the emulator; tests/test_perf_model.py checks the class against the launcher's mirror.
NATIVE_TILE_CASES = [
    ((1, 9, 70, 20, 19), 1, 2, "rect8x8"),      # Wo > 16, K > 64: 128 channels x 8x8, 3x3 tiles
    ((1, 6, 10, 40, 36), 2, 3, "rect8x16"),     # K <= 64 on a wide map, stride 2
    ((1, 6, 10, 20, 40), 1, 5, "rect8x16"),     # the runtime-dilation path on 8x16 tiles
    ((3, 5, 6, 7, 7), 1, 3, "span64"),          # 64-pixel tiles spanning 7x7 images (147 pixels, 3 tiles)
    ((3, 5, 6, 14, 13), 2, 1, "span64"),        # spanning, stride 2, odd input size
    ((1, 1, 1, 5, 6), 1, 1, "span64"),          # C = K = N = 1, one partial tile
    ((2, 3, 1, 4, 4), 2, 2, "span64"),          # K = 1, every tap of a 2x2 map out of range but the centre
    ((1, 1, 3, 23, 18), 1, 4, "rect8x16"),      # C = 1, many partial tiles, K <= 64
    ((1, 70, 3, 9, 9), 2, 4, "span64"),         # C > 64 (two dt channel blocks), tiny K
    ((2, 70, 20, 5, 5), 2, 3, "span64"),        # one tile: the forward's input channels split over 2 blocks
    ((1, 9, 130, 6, 6), 1, 1, "span64"),        # one tile, K > 128: dt's output channels split over 2 blocks
]


def max_error(actual: Tensor, expected: Tensor) -> float:
    return (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0


def assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype, name: str, verbose: bool = True) -> float:
    """Assert the tolerance rule above for ``dtype``; print and return the max abs error."""
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
        raise AssertionError(f"{name} [{dtype}]: {int(bad.sum())} of {e.numel()} elements out of tolerance "
                             f"(rtol {rtol}, atol {atol} x {scale:.3g}); max abs err {err:.3e}; first at {idx}: "
                             f"{a[tuple(idx)].item()} vs {e[tuple(idx)].item()}")
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
        mf = torch.channels_last if is_channels_last(self.x) else torch.contiguous_format
        return Case(self.x.to(dtype).contiguous(memory_format=mf), self.dw_weight.to(dtype),
                    self.pw_weight.to(dtype), pc(self.bias), pc(self.bn_weight), pc(self.bn_bias),
                    self.stride, self.dilation)


def is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def make_case(n: int, c: int, k: int, h: int, w: int, *, stride: int = 1, dilation: int = 1,
              channels_last: bool = False, bias: bool = True, affine: bool = True, seed: int = 0,
              device: str = "cpu") -> Case:
    """Random, non-degenerate inputs (no zeros, BN weight away from 0, a non-zero mean in y)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = r(n, c, h, w) + 0.5  # an offset so the batch mean is not ~0: exercises the variance formula
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    case = Case(x, r(c, 1, 3, 3) / 3, r(k, c) / c ** 0.5, r(k) if bias else None,
                (torch.rand(k, generator=g) + 0.5) if affine else None, r(k) * 0.5 if affine else None,
                stride, dilation)
    return Case(*(t.to(device) if isinstance(t, Tensor) else t for t in case.__dict__.values()))
