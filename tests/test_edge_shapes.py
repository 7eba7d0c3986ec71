"""Degenerate and boundary shapes, for every backend and every op, against the float64 reference.

The shapes where a kernel's assumptions break: one output channel (K = 1: a [rows, tiles, K] workspace
view stops being contiguous), one input channel (C = 1), one image (N = 1), a problem that fits in one
pixel tile and one that spans several (partial last tile, the multi-tile walk and its tail), H = 1 and
W = 1, stride 2 on odd sizes, a dilation that reaches past the image. float32 NCHW for all of them,
plus one float16 and one channels_last case.

Backends: the reference (float32 against float64), Triton in its interpreter (TRITON_INTERPRET=1, bound
assertions on: tests/conftest.py) and the native kernels through the CUDA emulator build
(``native.load_emulator``). Ops: forward_eval, forward_train (save_y True and False), backward_eval,
backward_train from a saved y and in recompute mode. Tolerances: ``fused_dsconv.testing``.

Kept small: the interpreter and the emulator run each program / thread in turn.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from fused_dsconv import testing
from fused_dsconv.backends import get, memory_format_of, native

EPS = 1e-5
REF = get("reference")


@dataclass(frozen=True)
class Shape:
    name: str
    n: int
    c: int
    k: int
    h: int
    w: int
    stride: int
    dilation: int
    dtype: torch.dtype = torch.float32
    channels_last: bool = False


# Triton's interpreter tiles are 32 output pixels, the native tiles 8x8 pixels of one image.
SHAPES = [
    # K = 1 over 3 Triton tiles (a walk of 2 tiles per program, with a tail) and 4 native tiles.
    Shape("k1-tiles", 1, 3, 1, 9, 10, 1, 2),
    # C = 1, stride 2 on odd sizes (5x7 -> 3x4): one Triton tile, one native tile per image.
    Shape("c1-s2-odd", 2, 1, 3, 5, 7, 2, 1),
    # H = 1 and stride 2 on an odd width; dilation 3 puts every off-centre row tap outside the image.
    Shape("h1-s2", 2, 2, 3, 1, 9, 2, 3),
    # W = 1 with C = K = 1: every GEMM is 1 x 1.
    Shape("w1-c1-k1", 3, 1, 1, 7, 1, 1, 2),
    Shape("h1-s2-channels_last", 2, 2, 3, 1, 9, 2, 3, channels_last=True),
    # (Not C = 1 in float16: with one input channel, BN makes the exact dpw 0, a cancelling sum of O(1)
    # terms, which float16 operands cannot resolve to the float16 tolerance scaled by max|dpw| ~ 0.)
    Shape("k1-tiles-float16", 1, 3, 1, 9, 10, 1, 2, dtype=torch.float16),
]


@pytest.fixture(scope="module", params=["reference", "triton", "native-emu"])
def backend(request):
    if request.param == "triton":
        request.getfixturevalue("triton_interpreter")
        return get("triton")
    if request.param == "native-emu":
        return native.load_emulator()
    return REF


@pytest.fixture(params=SHAPES, ids=lambda s: s.name)
def shape(request):
    return request.param


def _inputs(s: Shape):
    case = testing.make_case(s.n, s.c, s.k, s.h, s.w, stride=s.stride, dilation=s.dilation,
                             channels_last=s.channels_last).cast(s.dtype)
    if s.channels_last:
        assert memory_format_of(case.x) == torch.channels_last, "the case must really be channels_last"
    return case


def _d(t):
    return None if t is None else t.double()


def _grad(shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _check(got, expected, names, dtype, x):
    for name, a, e in zip(names, got, expected):
        testing.assert_close(a, e, dtype, name)
        if a.dim() == 4:
            fmt = memory_format_of(x)
            assert a.is_contiguous(memory_format=fmt), f"{name}: layout {a.stride()} is not {fmt}"


def test_forward_eval(backend, shape):
    c = _inputs(shape)
    args = (shape.stride, shape.dilation)
    out = backend.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, *args)
    exp = REF.forward_eval(c.x.double(), c.dw_weight.double(), c.pw_weight.double(), c.bias.double(), *args)
    assert out.dtype == shape.dtype
    _check([out], [exp], ["out"], shape.dtype, c.x)


def test_forward_train(backend, shape):
    c = _inputs(shape)
    rest = (shape.stride, shape.dilation, EPS)
    got = backend.forward_train(c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, *rest, True)
    exp = REF.forward_train(c.x.double(), c.dw_weight.double(), c.pw_weight.double(), _d(c.bias),
                            _d(c.bn_weight), _d(c.bn_bias), *rest, True)
    assert got[0].dtype == got[1].dtype == shape.dtype and got[2].dtype == got[3].dtype == torch.float32
    _check(got, exp, ("out", "y", "mean", "var"), shape.dtype, c.x)
    out, y, mean, var = backend.forward_train(c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias,
                                              *rest, False)
    assert y.numel() == 0
    _check((out, mean, var), (exp[0], exp[2], exp[3]), ("out (save_y=False)", "mean (save_y=False)",
                                                       "var (save_y=False)"), shape.dtype, c.x)


def test_backward_eval(backend, shape):
    c = _inputs(shape)
    args = (shape.stride, shape.dilation)
    out = REF.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, *args)
    g = _grad(out.shape, shape.dtype, 1)
    got = backend.backward_eval(g, out, c.x, c.dw_weight, c.pw_weight, *args)
    exp = REF.backward_eval(g.double(), out.double(), c.x.double(), c.dw_weight.double(), c.pw_weight.double(),
                            *args)
    assert [t.dtype for t in got] == [shape.dtype] * 3 + [torch.float32]
    _check(got, exp, ("dx", "ddw", "dpw", "dbias"), shape.dtype, c.x)


def test_backward_train(backend, shape):
    """From the y this backend's forward stored, and in recompute mode (which must rebuild that y)."""
    c = _inputs(shape)
    params = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias)
    rest = (shape.stride, shape.dilation, EPS)
    out, y, mean, var = backend.forward_train(*params, *rest, True)
    g = _grad(out.shape, shape.dtype, 2)
    exp = REF.backward_train(g.double(), *(_d(t) for t in params), y.double(), mean.double(), var.double(), *rest)
    names = ("dx", "ddw", "dpw", "dbias", "dgamma", "dbeta")
    for mode, saved in (("saved y", y), ("recompute", None)):
        got = backend.backward_train(g, *params, saved, mean, var, *rest)
        assert [t.dtype for t in got] == [shape.dtype] * 3 + [torch.float32] * 3
        _check(got, exp, [f"{n} ({mode})" for n in names], shape.dtype, c.x)
