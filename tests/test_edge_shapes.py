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

import pytest
import torch

from fused_dsconv import testing
from fused_dsconv.backends import get, memory_format_of, native

EPS = 1e-5
REF = testing.FlatCalls(get("reference"))
F32, F16 = torch.float32, torch.float16

# (N, C, K, H, W), stride, dilation, dtype, channels_last. Triton's interpreter tiles are 32 output
# pixels, the native tiles 8x8 pixels of one image.
SHAPES = [
    # K = 1 over 3 Triton tiles (a walk of 2 tiles per program, with a tail) and 4 native tiles.
    pytest.param(((1, 3, 1, 9, 10), 1, 2, F32, False), id="k1-tiles"),
    # C = 1, stride 2 on odd sizes (5x7 -> 3x4): one Triton tile, one native tile per image.
    pytest.param(((2, 1, 3, 5, 7), 2, 1, F32, False), id="c1-s2-odd"),
    # H = 1 and stride 2 on an odd width; dilation 3 puts every off-centre row tap outside the image.
    pytest.param(((2, 2, 3, 1, 9), 2, 3, F32, False), id="h1-s2"),
    # W = 1 with C = K = 1: every GEMM is 1 x 1.
    pytest.param(((3, 1, 1, 7, 1), 1, 2, F32, False), id="w1-c1-k1"),
    pytest.param(((2, 2, 3, 1, 9), 2, 3, F32, True), id="h1-s2-channels_last"),
    # (Not C = 1 in float16: with one input channel, BN makes the exact dpw 0, a cancelling sum of O(1)
    # terms, which float16 operands cannot resolve to the float16 tolerance scaled by max|dpw| ~ 0.)
    pytest.param(((1, 3, 1, 9, 10), 1, 2, F16, False), id="k1-tiles-float16"),
]


@pytest.fixture(
    scope="module",
    params=[
        "reference",
        pytest.param("triton", marks=pytest.mark.slow),
        pytest.param("native-emu", marks=pytest.mark.build),
    ],
)
def backend(request):
    if request.param == "triton":
        request.getfixturevalue("triton_interpreter")
        return testing.FlatCalls(get("triton"))
    if request.param == "native-emu":
        return testing.FlatCalls(native.load_emulator())
    return REF


@pytest.fixture(params=SHAPES)
def shape(request):
    """(case, stride, dilation, dtype)."""
    (n, c, k, h, w), stride, dilation, dtype, channels_last = request.param
    case = testing.make_case(n, c, k, h, w, stride=stride, dilation=dilation, channels_last=channels_last)
    case = case.cast(dtype)
    if channels_last:
        assert memory_format_of(case.x) == torch.channels_last, "the case must really be channels_last"
    return case, stride, dilation, dtype


def _d(t):
    return None if t is None else t.double()


def _grad(shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _check(got, expected, names, dtype, x, mode=""):
    for name, a, e in zip(names, got, expected):
        testing.assert_close(a, e, dtype, name + mode)
        if a.dim() == 4:
            fmt = memory_format_of(x)
            assert a.is_contiguous(memory_format=fmt), f"{name}{mode}: layout {a.stride()} is not {fmt}"


def test_forward_eval(backend, shape):
    c, stride, dilation, dtype = shape
    out = backend.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, stride, dilation)
    exp = REF.forward_eval(c.x.double(), c.dw_weight.double(), c.pw_weight.double(), c.bias.double(), stride, dilation)
    assert out.dtype == dtype
    _check([out], [exp], ["out"], dtype, c.x)


def test_forward_train(backend, shape):
    c, stride, dilation, dtype = shape
    params = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias)
    rest = (stride, dilation, EPS)
    got = backend.forward_train(*params, *rest, True)
    exp = REF.forward_train(*(_d(t) for t in params), *rest, True)
    assert got[0].dtype == got[1].dtype == dtype and got[2].dtype == got[3].dtype == torch.float32
    _check(got, exp, ("out", "y", "mean", "var"), dtype, c.x)
    out, y, mean, var = backend.forward_train(*params, *rest, False)
    assert y.numel() == 0
    _check((out, mean, var), (exp[0], exp[2], exp[3]), ("out", "mean", "var"), dtype, c.x, " (save_y=False)")


def test_backward_eval(backend, shape):
    c, stride, dilation, dtype = shape
    out = REF.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, stride, dilation)
    g = _grad(out.shape, dtype, 1)
    got = backend.backward_eval(g, out, c.x, c.dw_weight, c.pw_weight, stride, dilation)
    exp = REF.backward_eval(
        g.double(), out.double(), c.x.double(), c.dw_weight.double(), c.pw_weight.double(), stride, dilation
    )
    assert [t.dtype for t in got] == [dtype] * 3 + [torch.float32]
    _check(got, exp, ("dx", "ddw", "dpw", "dbias"), dtype, c.x)


def test_backward_train(backend, shape):
    """From the y this backend's forward stored, and in recompute mode (which must rebuild that y)."""
    c, stride, dilation, dtype = shape
    params = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias)
    rest = (stride, dilation, EPS)
    out, y, mean, var = backend.forward_train(*params, *rest, True)
    g = _grad(out.shape, dtype, 2)
    exp = REF.backward_train(g.double(), *(_d(t) for t in params), y.double(), mean.double(), var.double(), *rest)
    for mode, saved in ((" (saved y)", y), (" (recompute)", None)):
        got = backend.backward_train(g, *params, saved, mean, var, *rest)
        assert [t.dtype for t in got] == [dtype] * 3 + [torch.float32] * 3
        _check(got, exp, ("dx", "ddw", "dpw", "dbias", "dgamma", "dbeta"), dtype, c.x, mode)
