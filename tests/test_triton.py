"""The Triton backend's kernels, run in the Triton interpreter on CPU tensors, against the reference.

No GPU is needed: the module-scoped ``triton_interpreter`` fixture (tests/conftest.py) sets
TRITON_INTERPRET=1, (re)imports ``fused_dsconv.triton_kernels`` so its ``@triton.jit`` kernels are
interpreter kernels, and turns on the kernels' bound assertions (``triton_kernels.set_debug``: DEBUG
constexpr + the interpreter builder's debug option, without which ``tl.device_assert`` is a no-op).
Everything is restored afterwards, so other test modules in the same process still see the CPU as
"not Triton's".

float32 runs IEEE here (the fixture turns PyTorch's TF32 for convolutions off); the TF32 tests turn it
on, and the interpreter then emulates TF32 by truncating both dot operands to 10 mantissa bits (its own
dot is exact fp32). What that shows and does not: see test_tf32.

The autotuned kernels run one config per problem class here (the pruner keeps the first that fits; the
interpreter times nothing); test_every_config forces each config of each space in turn.

Grids are small (a few dozen programs per launch): the interpreter runs programs one by one.
"""

from __future__ import annotations

import sys

import pytest
import torch

from fused_dsconv import testing
from fused_dsconv.backends import get

pytestmark = [pytest.mark.slow]  # minutes on the 2-core CPU: every kernel in the Triton interpreter

EPS = 1e-5
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Imported *before* TRITON_INTERPRET is set, as it would be in any process that touched triton first:
# the kernels avoid triton.language.standard's @jit helpers (tl.zeros / tl.sum), so only the kernels'
# own decoration has to happen under the interpreter.
pytest.importorskip("triton")


@pytest.fixture(scope="module", autouse=True)
def interpreter(triton_interpreter):
    """The interpreter for this whole module (tests/conftest.py); the kernels module, for tests that launch."""
    global TK, TL, TLB, TS, TT
    import fused_dsconv.triton_launch as launch
    import fused_dsconv.triton_launch_backward as launch_backward
    import fused_dsconv.triton_setup as setup
    import fused_dsconv.triton_tuning as tuning

    TK, TL, TLB, TS, TT = triton_interpreter, launch, launch_backward, setup, tuning
    return triton_interpreter


TB = testing.FlatCalls(get("triton"))
RB = testing.FlatCalls(get("reference"))
TK = None  # the kernels module, set by the interpreter fixture
TL = None  # the launchers module
TLB = None  # the backward launchers (fused_dsconv.triton_launch_backward)
TS = None  # what a launch needs (fused_dsconv.triton_setup): dot mode, tuned kernels
TT = None  # the autotuner's report (fused_dsconv.triton_tuning)


def _case(dtype, stride, dilation, channels_last, shape=(2, 20, 24, 10, 12), **kw):
    """Default shape: NCHW planes of 10 x 12 (stride 2: 5 x 6) run the kernels' vectorised dense-plane
    path (VEC 8 / 2); 7.5 pixel tiles of 32 (a partial last one)."""
    n, c, k, h, w = shape
    return testing.make_case(n, c, k, h, w, stride=stride, dilation=dilation, channels_last=channels_last, **kw).cast(
        dtype
    )


def _fmt(cl):
    return torch.channels_last if cl else torch.contiguous_format


def _check_layout(t, cl):
    assert t.is_contiguous(memory_format=_fmt(cl)), f"result layout {t.stride()} is not {_fmt(cl)}"


# ----------------------------------------------------------------------------------------------
# The float16 / bfloat16 rounding model
# ----------------------------------------------------------------------------------------------
# The low-precision results are compared with the reference at their dtype's tolerance row (the spec)
# and, tightly, with a model of what the kernels compute in *this* run: float64 arithmetic with every
# fp32 -> storage-dtype rounding applied where the kernels apply it (the depthwise output T and dy
# before each dot, every stored activation; the weight gradients are cast by torch) and the way this
# run applies it. Triton 3.8's interpreter truncates fp32 -> bf16 (toward zero, even when rtne is
# requested: test_interpreter_truncates_bf16_casts), while a GPU rounds to nearest even. A result must
# be that rounding of some value within the float32 tolerance row of the model, a band of about one
# unit in the last place: a wrong rounding (nearest vs truncation, a lost or an extra rounding) fails
# it, where it would hide inside the 16-bit rows (bf16: rtol 1e-2, over two ulps).
# T and dy are rebuilt in fp32 in the kernels' operation order (_dw_tile, _dy_tile), so their rounded
# values, the dot operands, are the kernels' bit for bit; the rest is float64.


def _round_as_run(t, dtype):
    """``t`` rounded to ``dtype`` as the kernels' fp32 -> dtype casts round it in this run."""
    t = t.float()
    if dtype == torch.bfloat16 and TK.INTERPRETED:
        t = (t.view(torch.int32) & -65536).view(torch.float32)  # drop the low 16 bits: toward zero
    return t.to(dtype)


def _assert_rounding_of(actual, model, final, name):
    """actual == final(v) for some v within the float32 tolerance of ``model``; ``final`` is monotone."""
    rtol, atol = testing.TOLERANCES[torch.float32]
    m = model.double()
    band = atol * max(1.0, m.abs().max().item()) + rtol * m.abs()
    lo, hi = final(m - band).double(), final(m + band).double()
    a = actual.double()
    bad = (a < lo) | (a > hi)
    if bad.any():
        i = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {a.numel()} elements are not the {actual.dtype} "
            f"rounding of the model; first at {list(i)}: {a[i].item()} not in "
            f"[{lo[i].item()}, {hi[i].item()}] (model {m[i].item()})"
        )


def _op(t, dtype, tf32=False):
    """A dot operand as the kernels' dot reads it in this run (float64): 16-bit dtypes rounded as the run
    rounds; float32 truncated to TF32's 10 mantissa bits in TF32 mode (DOT_MODE 4), else as is."""
    if dtype != torch.float32:
        return _round_as_run(t, dtype).double()
    t = t.float()
    return ((t.view(torch.int32) & -8192).view(torch.float32) if tf32 else t).double()


def _taps(x, stride, dilation, ho, wo):
    """x under each of the 9 taps at the output pixels (zero padded), in the kernels' tap order."""
    d = dilation
    xp = torch.nn.functional.pad(x, (d, d, d, d))
    for i in range(3):
        for j in range(3):
            rows = slice(i * d, i * d + (ho - 1) * stride + 1, stride)
            cols = slice(j * d, j * d + (wo - 1) * stride + 1, stride)
            yield i, j, xp[:, :, rows, cols]


def _model_t(c, s, d, tf32=False):
    """The depthwise output T in fp32 as _dw_tile accumulates it (tap by tap), rounded as the dot operand."""
    n, _, h, w = c.x.shape
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    t = torch.zeros((n, c.x.shape[1], ho, wo))
    wd = c.dw_weight.float()
    for i, j, xs in _taps(c.x.float(), s, d, ho, wo):
        t = t + xs * wd[:, 0, i, j].view(1, -1, 1, 1)
    return _op(t, c.x.dtype, tf32)


def _model_y(c, s, d, tf32=False):
    """(rounded T, y before its store) in float64."""
    t = _model_t(c, s, d, tf32)
    y = torch.einsum("nchw,kc->nkhw", t, _op(c.pw_weight, c.x.dtype, tf32))
    return t, y + c.bias.double().view(1, -1, 1, 1) if c.bias is not None else y


def _model_conv_grads(dy, t, c, s, d, tf32=False):
    """(dx before its store, ddw and dpw before torch's cast) from dy rounded as the dot operand."""
    dyr = _op(dy, c.x.dtype, tf32)
    dt = torch.einsum("nkhw,kc->nchw", dyr, _op(c.pw_weight, c.x.dtype, tf32))  # stored in fp32 by the kernel
    dx, ddw, _ = torch.ops.aten.convolution_backward(
        dt,
        c.x.double(),
        c.dw_weight.double(),
        None,
        [s] * 2,
        [d] * 2,
        [d] * 2,
        False,
        [0, 0],
        c.x.shape[1],
        [True, True, False],
    )
    return dx, ddw, torch.einsum("nkhw,nchw->kc", dyr, t)


def _check_model_forward_eval(out, c, s, d, tf32=False):
    _, y = _model_y(c, s, d, tf32)
    _assert_rounding_of(out, y.clamp(min=0), lambda v: _round_as_run(v.clamp(min=0), out.dtype), "out (model)")


def _check_model_forward_train(got, c, s, d, tf32=False):
    out, y, mean, var = got
    _, ym = _model_y(c, s, d, tf32)
    _assert_rounding_of(y, ym, lambda v: _round_as_run(v, y.dtype), "y (model)")
    # Statistics of the fp32 y before its store; out from the stored y (the normalise kernel's input).
    var_m, mean_m = torch.var_mean(ym, dim=(0, 2, 3), unbiased=False)
    testing.assert_close(mean, mean_m, torch.float32, "mean (model)")
    testing.assert_close(var, var_m, torch.float32, "var (model)")
    k = (1, -1, 1, 1)
    z = (y.double() - mean.double().view(k)) * torch.rsqrt(var.double() + EPS).view(k)
    if c.bn_weight is not None:
        z = z * c.bn_weight.double().view(k) + c.bn_bias.double().view(k)
    _assert_rounding_of(out, z.clamp(min=0), lambda v: _round_as_run(v.clamp(min=0), out.dtype), "out (model)")


def _check_model_backward(got, dy, c, s, d, names, tf32=False):
    t, _ = _model_y(c, s, d, tf32)
    dx, ddw, dpw = _model_conv_grads(dy, t, c, s, d, tf32)
    _assert_rounding_of(got[0], dx, lambda v: _round_as_run(v, got[0].dtype), f"{names[0]} (model)")
    for name, a, e in zip(names[1:3], got[1:3], (ddw, dpw)):  # torch's cast: nearest even everywhere
        _assert_rounding_of(a, e, lambda v: v.to(a.dtype), f"{name} (model)")
    testing.assert_close(got[3], dy.double().sum((0, 2, 3)), torch.float32, f"{names[3]} (model)")


def _check_model_backward_train(got, g, y, mean, var, c, s, d, tf32=False):
    """dy as _dy_tile forms it in fp32 from bn_bwd_finalize's coefficients, rebuilt here in the kernels'
    operation order from the kernels' own (dgamma, dbeta), which the float64 model checks."""
    k, m = (1, -1, 1, 1), y.numel() // y.shape[1]
    bet = c.bn_bias.float() if c.bn_bias is not None else torch.zeros_like(mean)
    dgamma, dbeta = got[4], got[5]
    r = 1.0 / torch.sqrt(var + EPS)
    a = c.bn_weight.float() * r if c.bn_weight is not None else r
    c1 = a * dbeta / m
    rc2 = r * (a * dgamma / m)
    dv = y.float() - mean.view(k)
    z = dv * a.view(k) + bet.view(k)
    dz = torch.where(z <= 0, 0.0, g.float())
    dy = a.view(k) * dz - c1.view(k) - dv * rc2.view(k)
    gam64 = c.bn_weight.double() if c.bn_weight is not None else torch.ones_like(mean).double()
    yhat64 = (y.double() - mean.double().view(k)) * torch.rsqrt(var.double() + EPS).view(k)
    dz64 = torch.where(yhat64 * gam64.view(k) + bet.double().view(k) <= 0, 0.0, g.double())
    testing.assert_close(dbeta, dz64.sum((0, 2, 3)), torch.float32, "dbeta (model)")
    testing.assert_close(dgamma, (dz64 * yhat64).sum((0, 2, 3)), torch.float32, "dgamma (model)")
    _check_model_backward(got, dy, c, s, d, TRAIN_NAMES, tf32)


# Full grid for fp32; fp16/bf16 on dilations 1 and 3 (same code path, different dot mode).
GRID = [
    (dt, s, d, cl)
    for dt in DTYPES
    for s in (1, 2)
    for d in (1, 2, 3, 4)
    for cl in (False, True)
    if dt == torch.float32 or d in (1, 3)
]


def _id(p):
    dt, s, d, cl = p
    return f"{str(dt)[6:]}-s{s}-d{d}-{'nhwc' if cl else 'nchw'}"


@pytest.mark.parametrize("p", GRID, ids=_id)
def test_forward_eval(p):
    dt, s, d, cl = p
    c = _case(dt, s, d, cl)
    out = torch.ops.fused_dsconv.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, d, backend="triton")
    ref = RB.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, d)
    _check_layout(out, cl)
    testing.assert_close(out, ref, dt, "out")
    if dt != torch.float32:
        _check_model_forward_eval(out, c, s, d)


@pytest.mark.parametrize(
    "shape", [(1, 3, 5, 7, 5), (2, 33, 40, 6, 13), (3, 16, 16, 1, 9)], ids=["tiny-channels", "multi-chunk", "one-row"]
)
@pytest.mark.parametrize("s", [1, 2])
def test_forward_eval_odd_shapes(shape, s):
    c = _case(torch.float32, s, 2, False, shape)
    out = TB.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, 2)
    testing.assert_close(out, RB.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, 2), torch.float32, "out")


TRAIN_GRID = [
    (dt, s, d, cl)
    for dt in DTYPES
    for s in (1, 2)
    for d in (1, 3)
    for cl in (False, True)
    if dt == torch.float32 or (s, d, cl) in ((1, 3, True), (2, 1, False))
]


@pytest.mark.parametrize("p", TRAIN_GRID, ids=_id)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_forward_train(p, affine):
    dt, s, d, cl = p
    c = _case(dt, s, d, cl, bias=affine, affine=affine)
    args = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, s, d, EPS)
    got = torch.ops.fused_dsconv.forward_train(*args, True, backend="triton")
    ref = RB.forward_train(*args, True)
    for name, a, e in zip(("out", "y", "mean", "var"), got, ref):
        testing.assert_close(a, e, dt, name)
    if dt != torch.float32:
        _check_model_forward_train(got, c, s, d)
    _check_layout(got[0], cl)
    _check_layout(got[1], cl)
    assert got[2].dtype == got[3].dtype == torch.float32
    out2, y2, *_ = TB.forward_train(*args, False)
    assert y2.numel() == 0
    assert torch.equal(out2, got[0])


def test_forward_train_stats_large_mean():
    # |mean| >> std: a sum-of-squares variance would cancel; the Chan merge must not.
    c = _case(torch.float32, 1, 1, False, (2, 16, 20, 10, 10))
    c.bias = c.bias + 1000.0
    args = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 1, 1, EPS)
    _, _, mean, var = TB.forward_train(*args, False)
    y64 = RB.forward_train(*(t.double() if isinstance(t, torch.Tensor) else t for t in args), True)[1]
    var64, mean64 = torch.var_mean(y64, dim=(0, 2, 3), unbiased=False)
    testing.assert_close(mean, mean64, torch.float32, "mean")
    testing.assert_close(var, var64, torch.float32, "var")  # var ~ 1 next to mean ~ 1000


@pytest.mark.parametrize("chunk", [3, 8], ids=["3-rows", "8-rows"])
def test_forward_train_stats_two_levels(monkeypatch, chunk):
    """bn_stats' first level (chunks of tile rows merged in parallel, the last one partial) and its final
    merge, with |mean| >> std: 8 tiles of 32 pixels in chunks of 3 (3 chunks, the last partial) or of 8
    (exactly one chunk, so no first level: the boundary)."""
    monkeypatch.setattr(TL, "STATS_CHUNK_ROWS", chunk)
    c = _case(torch.float32, 1, 1, False, (2, 6, 20, 10, 12))
    c.bias = c.bias + 1000.0
    args = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 1, 1, EPS)
    got = TB.forward_train(*args, True)
    y64 = RB.forward_train(*(t.double() if isinstance(t, torch.Tensor) else t for t in args), True)[1]
    var64, mean64 = torch.var_mean(y64, dim=(0, 2, 3), unbiased=False)
    testing.assert_close(got[2], mean64, torch.float32, "mean")
    testing.assert_close(got[3], var64, torch.float32, "var")
    for name, a, e in zip(("out", "y"), got, RB.forward_train(*args, True)):
        testing.assert_close(a, e, torch.float32, name)


def test_forward_train_deterministic():
    c = _case(torch.float32, 2, 2, True)
    args = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 2, 2, EPS, True)
    a, b = TB.forward_train(*args), TB.forward_train(*args)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


BWD_GRID = [
    (dt, s, d, cl)
    for dt in DTYPES
    for s in (1, 2)
    for d in (1, 2, 4)
    for cl in (False, True)
    if (dt == torch.float32 and (d != 2 or s == 1)) or (s, d, cl) in ((2, 2, True), (1, 4, False))
]


def _grads_close(got, ref, names, dt):
    for name, a, e in zip(names, got, ref):
        testing.assert_close(a, e, dt, name)
        assert a.dtype == e.dtype, f"{name}: dtype {a.dtype} != {e.dtype}"


TRAIN_NAMES = ("dx", "ddw", "dpw", "dbias", "dgamma", "dbeta")


@pytest.fixture(params=["dy-rebuilt", "dy-stored"])
def dy_path(request, monkeypatch):
    """dsconv_bwd_dt's two sources of dy: rebuilt per C tile from (dout, y, coef), or bn_bwd_dy's stored
    [M, K] buffer (the launcher's choice by C, DY_STORE_MIN_C, forced either way on these small C)."""
    monkeypatch.setattr(TS, "DY_STORE_MIN_C", 1 if request.param == "dy-stored" else 1 << 30)
    return request.param


@pytest.mark.parametrize("p", BWD_GRID, ids=_id)
def test_backward_train(p, monkeypatch):
    """Against the reference; dt's source of dy alternates over the grid (stored on odd entries: each dtype,
    layout and stride meets both; test_backward_stored_dy_is_bitwise_rebuilt shows the two agree bitwise)."""
    monkeypatch.setattr(TS, "DY_STORE_MIN_C", 1 if BWD_GRID.index(p) % 2 else 1 << 30)
    dt, s, d, cl = p
    c = _case(dt, s, d, cl)
    fargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, s, d, EPS)
    _, y, mean, var = RB.forward_train(*fargs, True)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dt)
    bargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, y, mean, var, s, d, EPS)
    got = torch.ops.fused_dsconv.backward_train(g, *bargs, backend="triton")
    ref = RB.backward_train(g, *bargs)
    _grads_close(got, ref, TRAIN_NAMES, dt)
    if dt != torch.float32:
        _check_model_backward_train(got, g, y, mean, var, c, s, d)
    _check_layout(got[0], cl)


@pytest.mark.parametrize("dt", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_backward_train_recompute(dt, cl):
    """y=None: against the reference's own recompute (fp32/fp16: the two recomputed y agree to the ulp,
    no ReLU mask flips on this case)."""
    c = _case(dt, 2, 3, cl)
    fargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 2, 3, EPS)
    _, _, mean, var = RB.forward_train(*fargs, False)
    g = torch.randn((2, 24, 5, 6), generator=torch.Generator().manual_seed(2)).to(dt)  # y's shape
    bargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, None, mean, var, 2, 3, EPS)
    _grads_close(TB.backward_train(g, *bargs), RB.backward_train(g, *bargs), TRAIN_NAMES, dt)


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: str(d)[6:])
def test_backward_train_recompute_matches_saved(dt):
    """Recompute mode rebuilds exactly the y the Triton forward stored (same kernel, same rounding).

    (Against the reference's recompute, bf16 can differ by a ReLU mask flip where the two y round to
    different bf16 neighbours next to z = 0: the tensor-core dot rounds T to bf16, the reference does not.)
    A small case (2 pixel tiles, 1 K tile): what is checked is bitwise equality, which the shape does not help.
    """
    c = _case(dt, 1, 2, True, (1, 12, 16, 7, 9))
    fargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 1, 2, EPS)
    _, y, mean, var = TB.forward_train(*fargs, True)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(dt)
    rest = (mean, var, 1, 2, EPS)
    saved = TB.backward_train(g, *fargs[:6], y, *rest)
    recomputed = TB.backward_train(g, *fargs[:6], None, *rest)
    for name, a, b in zip(TRAIN_NAMES, recomputed, saved):
        assert torch.equal(a, b), f"{name}: recompute differs from saved-y backward"
    _grads_close(saved, RB.backward_train(g, *fargs[:6], y, *rest), TRAIN_NAMES, dt)


@pytest.mark.parametrize(
    "p,save_y",
    [((torch.float32, 2, 2, False), True), ((torch.float16, 1, 3, True), False)],
    ids=lambda v: _id(v) if isinstance(v, tuple) else ("saved-y" if v else "recompute"),
)
def test_split_passes_merged_over_processes(p, save_y):
    """The synchronised block's split passes (fused_dsconv/distributed.py), four processes simulated here with
    batches 2, 0, 1, 2: merged statistics, outputs and every gradient equal one forward_train / backward_train
    on the whole batch (the reference at the same dtype)."""
    dt, s, d, cl = p
    c = _case(dt, s, d, cl, shape=(5, 12, 20, 6, 7))
    fargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, s, d, EPS)
    out, y, mean, var = RB.forward_train(*fargs, True)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(dt)
    want = RB.backward_train(g, *fargs[:6], y, mean, var, s, d, EPS)
    got = testing.split_passes("triton", c, [2, 0, 1, 2], g, EPS, save_y)
    assert got["count"].item() == y.numel() // y.shape[1]
    for name, e in (
        ("mean", mean),
        ("var", var),
        ("out", out),
        ("dx", want[0]),
        ("d_dw", want[1]),
        ("d_pw", want[2]),
        ("d_gamma", want[4]),
        ("d_beta", want[5]),
    ):
        testing.assert_close(got[name], e, dt, name)
    for part in got["parts"]:
        if part["out"].numel():
            _check_layout(part["out"], cl)
            _check_layout(part["dx"], cl)


@pytest.mark.parametrize("affine", [True, False])
def test_dy_rows_from_merged_means_are_the_finalize_kernels(affine):
    """The split statistics' dy coefficients come from bn_coef (the launcher's table, with the kernels' r and
    a), not from a second formula in the backend: with one process's means they equal the rows
    bn_bwd_finalize writes from that process's sums, up to where the division by M falls."""
    c = _case(torch.float32, 1, 2, False, affine=affine)
    out, y, mean, var = RB.forward_train(c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 1, 2, EPS, True)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    coef, _, dgamma, dbeta = TLB.launch_bn_backward(g, y, mean, var, c.bn_weight, c.bn_bias, EPS, train=True)
    m = y.numel() // y.shape[1]  # dbeta = sum dz, dgamma = sum dz yhat: backward_reduce's two sums
    merged = TL.launch_bn_coef(mean, var, c.bn_weight, c.bn_bias, EPS, dy_means=(dbeta / m, dgamma / m))
    assert merged.shape == (5, y.shape[1])
    assert torch.equal(merged[:3], coef[:3])
    torch.testing.assert_close(merged[3:], coef[3:], rtol=1e-5, atol=1e-7)
    assert merged[3:].abs().max() > 1e-3  # rows that could be wrong


@pytest.mark.parametrize(
    "p",
    [
        (torch.float32, 1, 1, False),
        (torch.float32, 2, 3, True),
        (torch.float16, 2, 2, False),
        (torch.bfloat16, 1, 4, True),
    ],
    ids=_id,
)
def test_backward_eval(p, dy_path):
    dt, s, d, cl = p
    c = _case(dt, s, d, cl)
    out = RB.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, d)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(dt)
    bargs = (g, out, c.x, c.dw_weight, c.pw_weight, s, d)
    got = torch.ops.fused_dsconv.backward_eval(*bargs, backend="triton")
    _grads_close(got, RB.backward_eval(*bargs), ("dx", "ddw", "dpw", "dbias"), dt)
    if dt != torch.float32:
        dy = torch.where(out.float() <= 0, 0.0, g.float())
        _check_model_backward(got, dy, c, s, d, ("dx", "ddw", "dpw", "dbias"))


def test_backward_strided_grad():
    """grad_out with stride-0 dims (from .sum().backward()) and a transposed layout: read via strides."""
    c = _case(torch.float32, 2, 1, False)
    fargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 2, 1, EPS)
    _, y, mean, var = RB.forward_train(*fargs, True)
    for g in (
        torch.full((1, 1, 1, 1), 0.5).expand(y.shape),
        torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).contiguous(memory_format=torch.channels_last),
    ):
        bargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, y, mean, var, 2, 1, EPS)
        _grads_close(TB.backward_train(g, *bargs), RB.backward_train(g, *bargs), TRAIN_NAMES, torch.float32)


def test_autograd_end_to_end():
    """forward_train + backward through the registered ops and their autograd formulas."""
    c = _case(torch.float32, 1, 2, True, (2, 8, 12, 6, 7))
    leaves = [t.clone().requires_grad_() for t in (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias)]
    grads = []
    for backend in ("triton", "reference"):
        for t in leaves:
            t.grad = None
        out = torch.ops.fused_dsconv.forward_train(*leaves, 1, 2, EPS, False, backend=backend)[0]
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads.append([t.grad.clone() for t in leaves])
    for name, a, e in zip(("x", "dw", "pw", "bias", "gamma", "beta"), *grads):
        testing.assert_close(a, e, torch.float32, name)


def test_nan_propagates():
    c = _case(torch.float32, 1, 1, False, (1, 4, 16, 4, 4))
    x = c.x.clone()
    x[0, :, 1, 1] = float("nan")
    out = TB.forward_eval(x, c.dw_weight, c.pw_weight, c.bias, 1, 1)
    ref = RB.forward_eval(x, c.dw_weight, c.pw_weight, c.bias, 1, 1)
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().any()
    # Backward: a NaN pre-activation passes its gradient (z <= 0 is false for NaN).
    g = torch.ones_like(out)
    got = TB.backward_eval(g, out, x, c.dw_weight, c.pw_weight, 1, 1)
    exp = RB.backward_eval(g, out, x, c.dw_weight, c.pw_weight, 1, 1)
    for a, e in zip(got, exp):
        assert torch.equal(a.isnan(), e.isnan())


def test_every_stage_is_redecorated_for_the_interpreter(interpreter):
    """Each stage module of the kernels package, re-imported with the package (``_stage``), holds interpreter
    kernels: a stage left cached from a compiled import would launch GPU kernels on CPU tensors (what a
    new stage missing from ``_stage``'s list did)."""
    import pathlib

    stages = [p.stem for p in pathlib.Path(interpreter.__file__).parent.glob("*.py") if p.stem != "__init__"]
    kernels = []
    for stage in stages:
        mod = getattr(interpreter, stage, None)
        assert mod is sys.modules[f"{interpreter.__name__}.{stage}"], f"stage {stage} is not re-imported"
        kernels += [getattr(mod, n) for n in dir(mod) if n.endswith("_kernel")]
    assert len(kernels) == len([n for n in dir(interpreter) if n.endswith("_kernel")])
    for k in kernels:
        fn = k.fn if type(k).__name__ == "Autotuner" else k
        assert type(fn).__name__ == "InterpretedFunction", k


def test_out_of_range_access_is_caught(interpreter):
    """A forgotten padding mask (DROP_BOUNDS test hook) must trip the DEBUG bound assertion."""
    c = _case(torch.float32, 1, 2, False, (1, 4, 16, 5, 6))
    out = torch.empty((1, 16, 5, 6))
    TL.launch_conv(c.x, c.dw_weight, c.pw_weight, c.bias, 1, 2, out, relu=True, stats=False)  # fine
    with pytest.raises(Exception, match="offset out of range"):
        TL.launch_conv(c.x, c.dw_weight, c.pw_weight, c.bias, 1, 2, out, relu=True, stats=False, _drop_bounds=True)


def test_unavailable_reasons(interpreter, monkeypatch):
    x = torch.zeros(1, 2, 3, 3)
    assert TB.unavailable(x) is None  # interpreter on
    assert "float64" in TB.unavailable(x.double())
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in TB.unavailable(x)


def test_triton_op_forward_eval():
    """fused_dsconv_triton::forward_eval (triton_op + wrap_triton), eagerly in the interpreter."""
    import fused_dsconv.triton_ops  # noqa: F401  (registers the op; imports triton)

    c = _case(torch.float16, 2, 3, True)
    out = torch.ops.fused_dsconv_triton.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, 2, 3)
    _check_layout(out, True)
    testing.assert_close(out, RB.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, 2, 3), torch.float16, "out")


@pytest.mark.parametrize("recompute", [False, True], ids=["saved-y", "recompute"])
def test_joint_block_train_then_eval(recompute):
    """JointBlock(backend="triton") against the same module run unfused: one training step (output,
    gradients, running statistics), then eval (BN folded into the pointwise weights)."""
    from fused_dsconv.block import JointBlock

    torch.manual_seed(0)
    ref = JointBlock(6, 10, stride=2, dilation=3, backend="reference")
    blk = JointBlock(6, 10, stride=2, dilation=3, backend="triton", recompute=recompute)
    blk.load_state_dict(ref.state_dict())
    x = (torch.randn(2, 6, 9, 8) + 0.5).contiguous(memory_format=torch.channels_last)
    outs = []
    for m in (blk, ref):
        out = m(x)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        outs.append(out)
    assert blk.last_backend == "triton"
    testing.assert_close(outs[0], outs[1], torch.float32, "out")
    for (name, p), q in zip(blk.named_parameters(), ref.parameters()):
        testing.assert_close(p.grad, q.grad, torch.float32, f"grad {name}")
    for (name, b), c in zip(blk.named_buffers(), ref.buffers()):
        testing.assert_close(b, c, torch.float32, name)
    blk.eval()
    ref.eval()
    with torch.no_grad():
        testing.assert_close(blk(x), ref(x), torch.float32, "eval out")


def test_backward_deterministic():
    c = _case(torch.float16, 2, 2, True)
    fargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 2, 2, EPS)
    _, y, mean, var = TB.forward_train(*fargs, True)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(6)).to(torch.float16)
    a = TB.backward_train(g, *fargs[:6], y, mean, var, 2, 2, EPS)
    b = TB.backward_train(g, *fargs[:6], y, mean, var, 2, 2, EPS)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_backward_odd_shape_dilation_beyond_image():
    """3 -> 5 channels (below every tile), 7x5 image with dilation 4 at stride 2 (most taps padding)."""
    c = _case(torch.float32, 2, 4, False, (1, 3, 5, 7, 5))
    fargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 2, 4, EPS)
    got, ref = TB.forward_train(*fargs, True), RB.forward_train(*fargs, True)
    for name, a, e in zip(("out", "y", "mean", "var"), got, ref):
        testing.assert_close(a, e, torch.float32, name)
    g = torch.randn(ref[1].shape, generator=torch.Generator().manual_seed(7))
    bargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, ref[1], ref[2], ref[3], 2, 4, EPS)
    _grads_close(TB.backward_train(g, *bargs), RB.backward_train(g, *bargs), TRAIN_NAMES, torch.float32)
    eargs = (g, ref[0], c.x, c.dw_weight, c.pw_weight, 2, 4)
    _grads_close(TB.backward_eval(*eargs), RB.backward_eval(*eargs), ("dx", "ddw", "dpw", "dbias"), torch.float32)


def test_strided_input_view():
    """An x that is neither NCHW- nor channels_last-contiguous (a column slice) is read through its strides."""
    c = _case(torch.float32, 1, 2, False, (2, 8, 12, 6, 14))
    x = c.x[:, :, :, ::2]
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    out = TB.forward_eval(x, c.dw_weight, c.pw_weight, c.bias, 1, 2)
    testing.assert_close(out, RB.forward_eval(x, c.dw_weight, c.pw_weight, c.bias, 1, 2), torch.float32, "out")


def test_strided_parameter_views():
    """Weights and [K] vectors that are views with other strides (a transposed pw_weight, every second
    element of a wider tensor) give bitwise the results of their contiguous copies: the kernels index
    them as dense arrays, so the launchers must make them dense (or they read the wrong elements)."""
    c = _case(torch.float32, 1, 2, False, (1, 3, 4, 5, 6))
    wide = lambda t: torch.stack([t, torch.full_like(t, 7.0)], -1)[..., 0]  # noqa: E731  (stride 2)
    pw_view = c.pw_weight.t().contiguous().t()
    views = dict(
        dw_weight=wide(c.dw_weight),
        pw_weight=pw_view,
        bias=wide(c.bias),
        bn_weight=wide(c.bn_weight),
        bn_bias=wide(c.bn_bias),
    )
    assert not any(t.is_contiguous() for t in views.values())
    dense = dict(dw_weight=c.dw_weight, pw_weight=c.pw_weight, bias=c.bias, bn_weight=c.bn_weight, bn_bias=c.bn_bias)

    def run(p):
        params = (c.x, p["dw_weight"], p["pw_weight"], p["bias"], p["bn_weight"], p["bn_bias"])
        out, y, mean, var = TB.forward_train(*params, 1, 2, EPS, True)
        g = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        stats = (wide(mean), wide(var)) if p is views else (mean, var)
        return (
            TB.forward_eval(c.x, p["dw_weight"], p["pw_weight"], p["bias"], 1, 2),
            out,
            y,
            mean,
            var,
            *TB.backward_train(g, *params, None, *stats, 1, 2, EPS),
            *TB.backward_eval(g, out, c.x, p["dw_weight"], p["pw_weight"], 1, 2),
        )

    for i, (a, b) in enumerate(zip(run(views), run(dense))):
        assert torch.equal(a, b), f"result {i} differs with strided parameter views"


def test_interpreter_truncates_bf16_casts(interpreter):
    """The premise of _round_as_run: this interpreter casts fp32 -> bf16 toward zero, also when
    round-to-nearest-even is requested, where torch (and a GPU) round to nearest even. If a Triton update
    changes that, this fails and _round_as_run must follow it."""
    import triton
    import triton.language as tl

    @triton.jit
    def cast(x_ptr, plain_ptr, rtne_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        v = tl.load(x_ptr + i)
        tl.store(plain_ptr + i, v.to(tl.bfloat16))
        tl.store(rtne_ptr + i, v.to(tl.bfloat16, fp_downcast_rounding="rtne"))

    # 1 + 3/4 ulp, 1 + 1/2 ulp (a tie), 1 + 5/2 ulp, a value just above a tie, both signs; bf16 ulp(1) = 2**-7.
    x = torch.tensor(
        [
            1 + 0.75 * 2**-7,
            1 + 0.5 * 2**-7,
            1 + 2.5 * 2**-7,
            3.1415927,
            -(1 + 0.75 * 2**-7),
            -(1 + 0.5 * 2**-7),
            0.1,
            -0.1,
        ]
    )
    plain, rtne = torch.empty(8, dtype=torch.bfloat16), torch.empty(8, dtype=torch.bfloat16)
    cast[(1,)](x, plain, rtne, N=8)
    toward_zero = (x.view(torch.int32) & -65536).view(torch.float32).to(torch.bfloat16)
    assert interpreter.INTERPRETED
    assert torch.equal(plain, toward_zero) and torch.equal(rtne, toward_zero), (plain, rtne)
    assert not torch.equal(toward_zero, x.to(torch.bfloat16))  # the cases tell the two roundings apart
    assert torch.equal(_round_as_run(x, torch.bfloat16), toward_zero)


# ----------------------------------------------------------------------------------------------
# TF32, tile configs, the autotuner
# ----------------------------------------------------------------------------------------------


def test_dot_mode_follows_pytorch(monkeypatch):
    """float32 runs TF32 exactly when PyTorch's convolutions do (and, on a GPU, on sm_80+ only)."""
    x32, x16, xb = torch.zeros(1), torch.zeros(1, dtype=torch.float16), torch.zeros(1, dtype=torch.bfloat16)
    with testing.conv_tf32(False):
        assert TS.dot_mode(x32) == 0
    with testing.conv_tf32(True):
        assert TS.conv_tf32_enabled() and TS.dot_mode(x32) == 4  # the interpreter's emulation
        assert (TS.dot_mode(x16), TS.dot_mode(xb)) == (1, 2)
        # As the compiled kernels would pick it (kernels not interpreted, a GPU of that capability):
        monkeypatch.setattr(TK, "INTERPRETED", False)
        for cap, mode in (((8, 6), 3), ((7, 5), 0)):
            monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, cap=cap: cap)
            assert TS.dot_mode(x32) == mode, cap
        assert (TS.dot_mode(x16), TS.dot_mode(xb)) == (1, 1)
    with testing.conv_tf32(False):
        assert TS.dot_mode(x32) == 0


@pytest.mark.parametrize("p", [(torch.float32, 1, 1, False), (torch.float32, 2, 3, True)], ids=_id)
def test_tf32(p):
    """float32 with TF32 on: against the reference at the TF32 row, and against the float64 model with
    both dot operands truncated to TF32 at the float32 row.

    What this shows: TF32 is applied to exactly the GEMM operands (T and Wp forward; dy, Wp and T backward)
    and nowhere else (the depthwise stage, BN, dt, the reductions stay fp32), and the TF32 row holds for
    truncated operands (the larger error of the two roundings a tensor core may apply). What it does not
    show: the interpreter's dot is exact fp32 and the truncation is ours (DOT_MODE 4); whether a GPU's
    tensor core truncates or rounds, and how it accumulates inside one MMA, needs a GPU run (DOT_MODE 3).
    """
    dt, s, d, cl = p
    c = _case(dt, s, d, cl)
    fargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, s, d, EPS)
    ieee = TB.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, d)
    with testing.conv_tf32(True):
        out = TB.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, d)
        got = TB.forward_train(*fargs, True)
        _, y, mean, var = got
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(8))
        bwd = TB.backward_train(g, *fargs[:6], y, mean, var, s, d, EPS)
    assert not torch.equal(out, ieee), "TF32 mode left the results bitwise IEEE"
    testing.assert_close(out, RB.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, d), testing.TF32, "out")
    for name, a, e in zip(("out", "y", "mean", "var"), got, RB.forward_train(*fargs, True)):
        testing.assert_close(a, e, testing.TF32, name)
    for name, a, e in zip(TRAIN_NAMES, bwd, RB.backward_train(g, *fargs[:6], y, mean, var, s, d, EPS)):
        testing.assert_close(a, e, testing.TF32, name)
    _check_model_forward_eval(out, c, s, d, tf32=True)
    _check_model_forward_train(got, c, s, d, tf32=True)
    _check_model_backward_train(bwd, g, y, mean, var, c, s, d, tf32=True)


def _config_cases():
    return [
        (name, i) for name in ("dsconv_fwd", "dsconv_bwd_dt", "dsconv_bwd_dx") for i in range(len(get_configs(name)))
    ]


def get_configs(name):
    import fused_dsconv.triton_kernels as kernels  # the spaces do not depend on how the kernels were decorated

    return {
        "dsconv_fwd": kernels.FWD_CONFIGS,
        "dsconv_bwd_dt": kernels.DT_CONFIGS,
        "dsconv_bwd_dx": kernels.DX_CONFIGS,
    }[name]


@pytest.mark.parametrize("name,i", _config_cases(), ids=[f"{n[7:]}-{i}" for n, i in _config_cases()])
def test_every_config(name, i, monkeypatch):
    """Each config of each tuned kernel's space, forced, against the reference; dtypes and layouts rotate
    over the configs, stride 2 and channels_last (odd 9 x 11 planes) on odd ones, NCHW with 10 x 12 planes
    (the dense-plane path) on even ones, and so does dt's source of dy (stored on odd ones). K = 40 and
    C = 20 span several K / C tiles of the small configs."""
    monkeypatch.setattr(TS, "DY_STORE_MIN_C", 1 if i % 2 else 1 << 30)
    cfg = TS.configs(name)[i]
    dt, cl, s = DTYPES[i % 3], bool(i % 2), 1 + i % 2
    c = _case(dt, s, 3, cl, (2, 20, 40, 9, 11) if cl else (2, 20, 40, 10, 12))
    fargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, s, 3, EPS)
    with TS.forced_config(name, cfg):
        if name == "dsconv_fwd":
            out = TB.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, 3)
            testing.assert_close(out, RB.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, 3), dt, "out")
            got = TB.forward_train(*fargs, True)
            for nm, a, e in zip(("out", "y", "mean", "var"), got, RB.forward_train(*fargs, True)):
                testing.assert_close(a, e, dt, nm)
            _check_layout(got[0], cl)
        else:
            _, y, mean, var = RB.forward_train(*fargs, True)
            g = torch.randn(y.shape, generator=torch.Generator().manual_seed(9)).to(dt)
            bargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, y, mean, var, s, 3, EPS)
            got = TB.backward_train(g, *bargs)
            _grads_close(got, RB.backward_train(g, *bargs), TRAIN_NAMES, dt)
            _check_layout(got[0], cl)
        assert TS.tuned_kernel(name).best_config is cfg


def test_k_slices(monkeypatch, dy_path):
    """dsconv_bwd_dt over several K slices (dt partials that dsconv_bwd_dx adds in order): the slice cap
    lowered so that K = 40 runs 3 slices of 16, eval and train."""
    monkeypatch.setitem(TS.K_SLICE_CAP, "fma32", 16)
    assert TS.k_slice(40, TS.kind_of(torch.zeros(1))) == 16
    c = _case(torch.float32, 2, 1, True, (2, 6, 40, 7, 8))
    fargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 2, 1, EPS)
    _, y, mean, var = RB.forward_train(*fargs, True)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(10))
    bargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, y, mean, var, 2, 1, EPS)
    _grads_close(TB.backward_train(g, *bargs), RB.backward_train(g, *bargs), TRAIN_NAMES, torch.float32)
    out = RB.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, 2, 1)
    eargs = (g, out, c.x, c.dw_weight, c.pw_weight, 2, 1)
    _grads_close(TB.backward_eval(*eargs), RB.backward_eval(*eargs), ("dx", "ddw", "dpw", "dbias"), torch.float32)


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_backward_stored_dy_is_bitwise_rebuilt(monkeypatch, dt, train):
    """bn_bwd_dy stores dy in the dtype the dot rounds it to, so reading it back changes no bit of any
    gradient (dt, dWp, and through dt dx, dWd), whatever the dtype; odd 9 x 11 planes (no VEC)."""
    c = _case(dt, 1, 2, False, (2, 20, 40, 9, 11))
    fargs = (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 1, 2, EPS)
    _, y, mean, var = RB.forward_train(*fargs, True)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(11)).to(dt)
    runs = []
    for min_c in (1, 1 << 30):
        monkeypatch.setattr(TS, "DY_STORE_MIN_C", min_c)
        if train:
            runs.append(TB.backward_train(g, *fargs[:6], y, mean, var, 1, 2, EPS))
        else:
            out = RB.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, 1, 2)
            runs.append(TB.backward_eval(g, out, c.x, c.dw_weight, c.pw_weight, 1, 2))
    for name, a, b in zip(TRAIN_NAMES, *runs):
        assert torch.equal(a, b), f"{name}: stored dy changed the result"


def test_chosen_configs_are_visible(monkeypatch, capsys):
    """What the tuner chose is listed per kernel and problem class (tuned_configs) and, with
    FUSED_DSCONV_TRITON_VERBOSE=1, printed when chosen."""
    monkeypatch.setattr(TS, "VERBOSE", True)
    for name in TS.TUNED:
        TS.tuned_kernel(name).cache.clear()
    c = _case(torch.float16, 1, 1, True, (1, 8, 12, 5, 6))
    out = TB.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, 1, 1)
    TB.backward_eval(torch.ones_like(out), out, c.x, c.dw_weight, c.pw_weight, 1, 1)
    err = capsys.readouterr().err
    rows = TT.tuned_configs()
    assert {r["kernel"] for r in rows} == set(TS.TUNED)
    fwd = next(r for r in rows if r["kernel"] == "dsconv_fwd")
    assert fwd["key"]["C"] == 8 and fwd["key"]["K"] == 12 and fwd["key"]["LAYOUT"] == 1, fwd
    assert "float16" in fwd["key"]["dtypes"] and "BLOCK_P=" in fwd["config"]
    for name in TS.TUNED:
        assert f"fused_dsconv triton: {name} " in err, err
    # The same class again: no new choice, nothing printed.
    TB.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, 1, 1)
    assert "fused_dsconv triton:" not in capsys.readouterr().err


def test_candidates_per_layer():
    """Pruning: no tile wider than the layer (beyond the narrowest of the space), at most MAX_CANDIDATES,
    never none; the classifier's first and last blocks at batch 32."""
    b1 = TT.explain_configs(32, 32, 64, 224, 224, 2)
    b9 = TT.explain_configs(32, 1024, 1024, 7, 7, 1)
    tiny = TT.explain_configs(1, 3, 5, 4, 4, 1)
    for table in (b1, b9, tiny):
        assert set(table) == set(TS.TUNED)
        assert all(1 <= len(v) <= TK.MAX_CANDIDATES for v in table.values()), table
    assert all("BLOCK_K=128" not in c and "BLOCK_K=256" not in c for c in b1["dsconv_fwd"]), b1
    assert any("BLOCK_K=256" in c or "BLOCK_K=128" in c for c in b9["dsconv_fwd"]), b9
    assert all("BLOCK_K=32" in c and "BLOCK_C=16" in c for c in tiny["dsconv_fwd"]), tiny


def test_info_verbose_describes_configs():
    """``fused-dsconv info --verbose``'s Triton section: every space with its scopes, candidates for each of the
    nine blocks in three modes, and the choices made in this process."""
    text = TT.describe()
    for name in TS.TUNED:
        assert f"{name} space:" in text
    assert text.count("BLOCK_P=") >= sum(len(TS.configs(n)) for n in TS.TUNED)
    for b in range(1, 10):
        assert text.count(f"    b{b} C=") == 3, text
    assert "candidates per block (batch 32, float32 TF32, sm_86)" in text
    assert "chosen in this process:" in text
