"""The native kernels (csrc/kernels/*.cuh), run on the CPU through the CUDA emulator build, against the
reference backend: every op, every compile-time specialisation (dilation 1..4) and the runtime-dilation
path, strides 1/2, NCHW and channels_last, fp32/fp16/bf16, odd shapes. Also the NativeBackend glue.

The emulator runs a block's CUDA threads as fibers, each as far as it can before its next barrier, over
poisoned shared memory, so a missing barrier or an unwritten shared-memory read shows up as a wrong (NaN)
result here; see tests/test_emu_tsan.py for the ThreadSanitizer run
(fibers whose only happens-before edges are the barriers').
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fused_dsconv.backends import native
from fused_dsconv.backends.reference import ReferenceBackend
from fused_dsconv.testing import NATIVE_TILE_CASES, FlatCalls, assert_close, make_case

pytestmark = [pytest.mark.build]  # builds the CPU emulator extension first

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import perf_model as pm  # noqa: E402

REF = FlatCalls(ReferenceBackend())
EPS = 1e-5
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.fixture(scope="session")
def emu():
    return FlatCalls(native.load_emulator())


def _d(t):
    return None if t is None else t.double()


def _cases():
    out = []
    for cl in (False, True):
        for s in (1, 2):
            for d in (1, 2, 3, 4, 5):  # 1..4 specialised, 5 the runtime-dilation path
                out.append((F32, cl, s, d))
    # fp16 / bf16: both layouts, both strides, a specialised and the runtime dilation, spread over 4 cases
    out += [(F16, False, 1, 1), (F16, True, 2, 5), (BF16, True, 1, 1), (BF16, False, 2, 5)]
    out.append((F32, False, 1, 9))  # runtime dilation with the gathered (non-dense) halo at stride 1
    return out


CASES = _cases()
IDS = [f"{str(dt).split('.')[-1]}-{'cl' if cl else 'nchw'}-s{s}-d{d}" for dt, cl, s, d in CASES]
SHAPE = (2, 5, 7, 9, 11)  # N, C, K, H, W: odd, several tiles, partial tiles


def _case(dtype, cl, s, d, shape=SHAPE, **kw):
    n, c, k, h, w = shape
    return make_case(n, c, k, h, w, stride=s, dilation=d, channels_last=cl, **kw).cast(dtype)


def _layout_ok(t, cl):
    return t.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


@pytest.mark.parametrize("dtype,cl,s,d", CASES, ids=IDS)
def test_forward_eval(emu, dtype, cl, s, d):
    c = _case(dtype, cl, s, d)
    out = emu.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, d)
    exp = REF.forward_eval(c.x.double(), c.dw_weight.double(), c.pw_weight.double(), c.bias.double(), s, d)
    assert out.dtype == dtype and _layout_ok(out, cl)
    assert_close(out, exp, dtype, "out")


@pytest.mark.parametrize("dtype,cl,s,d", CASES, ids=IDS)
def test_forward_train(emu, dtype, cl, s, d):
    c = _case(dtype, cl, s, d)
    out, y, mean, var = emu.forward_train(
        c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, s, d, EPS, True
    )
    eo, ey, em, ev = REF.forward_train(
        c.x.double(),
        c.dw_weight.double(),
        c.pw_weight.double(),
        _d(c.bias),
        _d(c.bn_weight),
        _d(c.bn_bias),
        s,
        d,
        EPS,
        True,
    )
    assert out.dtype == dtype and y.dtype == dtype and mean.dtype == F32 and var.dtype == F32
    assert _layout_ok(out, cl) and _layout_ok(y, cl)
    for name, a, e in (("y", y, ey), ("mean", mean, em), ("var", var, ev), ("out", out, eo)):
        assert_close(a, e, dtype, name)
    out2, y2, _, _ = emu.forward_train(c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, s, d, EPS, False)
    assert y2.numel() == 0 and torch.equal(out2, out)


@pytest.mark.parametrize("dtype,cl,s,d", CASES, ids=IDS)
@pytest.mark.parametrize("recompute", [False, True], ids=["saved_y", "recompute"])
def test_backward_train(emu, dtype, cl, s, d, recompute, shape=SHAPE):
    c = _case(dtype, cl, s, d, shape=shape)
    out, y, mean, var = emu.forward_train(
        c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, s, d, EPS, True
    )
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = emu.backward_train(
        g, c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, None if recompute else y, mean, var, s, d, EPS
    )
    # Expected: from the y the forward stored (rounded to the storage dtype). Recompute mode must rebuild
    # exactly that y, else the ReLU mask near z = 0 disagrees with the forward's.
    exp = REF.backward_train(
        g.double(),
        c.x.double(),
        c.dw_weight.double(),
        c.pw_weight.double(),
        _d(c.bias),
        _d(c.bn_weight),
        _d(c.bn_bias),
        y.double(),
        mean.double(),
        var.double(),
        s,
        d,
        EPS,
    )
    assert _layout_ok(got[0], cl)
    for name, a, e in zip(("dx", "d_dw", "d_pw", "dbias", "dgamma", "dbeta"), got, exp):
        assert_close(a, e, dtype, name)


@pytest.mark.parametrize("dtype,cl,s,d", CASES, ids=IDS)
def test_backward_eval(emu, dtype, cl, s, d, shape=SHAPE):
    c = _case(dtype, cl, s, d, shape=shape)
    out = emu.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, d)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    got = emu.backward_eval(g, out, c.x, c.dw_weight, c.pw_weight, s, d)
    exp = REF.backward_eval(g.double(), out.double(), c.x.double(), c.dw_weight.double(), c.pw_weight.double(), s, d)
    assert _layout_ok(got[0], cl)
    for name, a, e in zip(("dx", "d_dw", "d_pw", "dbias"), got, exp):
        assert_close(a, e, dtype, name)


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("s", [1, 2])
def test_fast_build_runs_every_dilation(emu, s, cl):
    """Dilations 1..4 on the kernels a fast build has (rect tiles, D = 0): the CMake and JIT build tests
    compile that build, so its plans must be right here. The shape takes span tiles in a full build."""
    c = _case(F32, cl, s, 1)
    native.emulator_launch_counts(reset=True)
    emu.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, 1)
    assert native.emulator_launch_counts(reset=True).get("dsconv_dw_kernel") == 1  # full build: span tiles
    ops = torch.ops.fused_dsconv_emu
    prev = ops.set_runtime_dilation_only(True)
    try:
        for d in (1, 2, 3, 4):
            c = _case(F32, cl, s, d)
            out, y, mean, var = emu.forward_train(
                c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, s, d, EPS, True
            )
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(d))
            got = emu.backward_train(
                g, c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, y, mean, var, s, d, EPS
            )
            launched = native.emulator_launch_counts(reset=True)
            assert "dsconv_dw_kernel" not in launched and launched["dsconv_fwd_kernel"] == 1, launched
            args = [_d(t) for t in (c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias)]
            exp_fwd = REF.forward_train(*args, s, d, EPS, True)
            for name, a, e in zip(("out", "y", "mean", "var"), (out, y, mean, var), exp_fwd):
                assert_close(a, e, F32, f"d={d} {name}")
            exp = REF.backward_train(g.double(), *args, y.double(), mean.double(), var.double(), s, d, EPS)
            for name, a, e in zip(("dx", "d_dw", "d_pw", "dbias", "dgamma", "dbeta"), got, exp):
                assert_close(a, e, F32, f"d={d} {name}")
    finally:
        ops.set_runtime_dilation_only(prev)


# C > 128: dsconv_bwd_dt and dsconv_bwd_dwp read dy from bn_bwd_dy's workspace (plan.cuh dyws) instead of
# forming it; the fp32 cases are in TILE_CASES (test_tile_classes), the 16-bit types and layouts here.
DY_CASES = [
    (F16, False, 1, 2, (1, 130, 9, 6, 6)),
    (BF16, True, 2, 3, (2, 130, 9, 9, 7)),
    (F16, True, 1, 5, (1, 130, 5, 4, 9)),
    (BF16, True, 1, 2, (1, 130, 130, 6, 6)),  # dWp in 128 x 128 blocks (dwide), stored by its kernel
]


@pytest.mark.parametrize(
    "dtype,cl,s,d,shape", DY_CASES, ids=["f16-nchw-span", "bf16-cl-span", "f16-cl-runtime", "bf16-cl-wide"]
)
def test_backward_from_stored_dy(emu, dtype, cl, s, d, shape):
    assert pm.native_geometry(pm.Layer("t", *shape, stride=s, dilation=d)).dyws == 1
    test_backward_train(emu, dtype, cl, s, d, False, shape=shape)
    test_backward_eval(emu, dtype, cl, s, d, shape=shape)


@pytest.mark.parametrize(
    "shape,s,d", [((1, 70, 66, 13, 10), 2, 3), ((2, 70, 66, 19, 17), 1, 2)], ids=["one-tile", "18-tiles"]
)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_multi_chunk_shapes(emu, cl, shape, s, d):
    """C > 64 and K > 64: several depthwise chunks, K tiles, dt channel blocks and dWp splits; no bias/affine.
    With 18 pixel tiles, the (tile, channel block) order of the forward and dt grids is exercised too."""
    c = _case(F32, cl, s, d, shape=shape, bias=False, affine=False)
    k = shape[2]
    out = emu.forward_eval(c.x, c.dw_weight, c.pw_weight, torch.zeros(k), s, d)
    assert_close(
        out,
        REF.forward_eval(
            c.x.double(), c.dw_weight.double(), c.pw_weight.double(), torch.zeros(k, dtype=torch.float64), s, d
        ),
        F32,
        "out",
    )
    o, y, m, v = emu.forward_train(c.x, c.dw_weight, c.pw_weight, None, None, None, s, d, EPS, True)
    eo, ey, em, ev = REF.forward_train(
        c.x.double(), c.dw_weight.double(), c.pw_weight.double(), None, None, None, s, d, EPS, True
    )
    for name, a, e in (("y", y, ey), ("mean", m, em), ("var", v, ev), ("out", o, eo)):
        assert_close(a, e, F32, name)
    g = torch.randn(o.shape, generator=torch.Generator().manual_seed(3))
    got = emu.backward_train(g, c.x, c.dw_weight, c.pw_weight, None, None, None, y, m, v, s, d, EPS)
    exp = REF.backward_train(
        g.double(),
        c.x.double(),
        c.dw_weight.double(),
        c.pw_weight.double(),
        None,
        None,
        None,
        y.double(),
        m.double(),
        v.double(),
        s,
        d,
        EPS,
    )
    for name, a, e in zip(("dx", "d_dw", "d_pw", "dbias", "dgamma", "dbeta"), got, exp):
        assert_close(a, e, F32, name)


# Shapes that put every tile class of csrc/kernels/launch.cuh (and its edges) through every op; the class
# each one selects is asserted from the launcher's mirror in bench/perf_model.py (native_geometry), which
# tests/test_perf_model.py checks against the C++.
TILE_CASES = NATIVE_TILE_CASES
TILE_IDS = [f"{c[3]}-{'x'.join(map(str, c[0]))}-s{c[1]}-d{c[2]}" for c in TILE_CASES]


def test_tile_cases_cover_every_class_and_split():
    geos = [pm.native_geometry(pm.Layer("t", *shape, stride=s, dilation=d)) for shape, s, d, _ in TILE_CASES]
    assert {g.fwd_tile for g in geos} == {"rect8x8", "rect8x16", "span64"}
    assert {g.dwp_tile for g in geos} == {"rect8x8", "span64"} and {g.dt_tile for g in geos} == {"span64", "span128"}
    assert any(g.fsplit > 1 for g in geos) and any(g.bsplit > 1 for g in geos)
    assert any(g.fpair and g.ntiles % 2 for g in geos) and any(g.fwd_tile == "span64" and not g.fpair for g in geos)
    assert any(g.ntiles == 1 for g in geos) and any(g.ntiles > 4 for g in geos)
    assert {g.dyws for g in geos} == {0, 1} and any(g.dyws and g.dwp_tile == "rect8x8" for g in geos)
    wide = [g for g in geos if g.dwide]  # dWp in 128 x 128 blocks: several tiles per split, one split; dy both ways
    assert any(g.splits < g.dwp_tiles for g in wide) and any(g.splits == 1 for g in wide)
    assert {g.dyws for g in wide} == {0, 1}
    # C % 4 == 0 (vector Wp loads, dWp rows stored 4 channels at a time): partials and dWp stored directly
    c4 = [g for g, (shape, *_) in zip(geos, TILE_CASES) if shape[1] % 4 == 0]
    assert {g.splits == 1 for g in c4} == {True, False} and {g.fwd_tile for g in c4} >= {"rect8x8", "span64"}


@pytest.mark.parametrize("shape,s,d,cls", TILE_CASES, ids=TILE_IDS)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_tile_classes(emu, shape, s, d, cls, cl):
    assert pm.native_geometry(pm.Layer("t", *shape, stride=s, dilation=d)).fwd_tile == cls
    c = _case(F32, cl, s, d, shape=shape)
    out = emu.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, d)
    assert_close(
        out,
        REF.forward_eval(c.x.double(), c.dw_weight.double(), c.pw_weight.double(), c.bias.double(), s, d),
        F32,
        "out",
    )
    o, y, m, v = emu.forward_train(c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, s, d, EPS, True)
    eo, ey, em, ev = REF.forward_train(
        c.x.double(),
        c.dw_weight.double(),
        c.pw_weight.double(),
        _d(c.bias),
        _d(c.bn_weight),
        _d(c.bn_bias),
        s,
        d,
        EPS,
        True,
    )
    for name, a, e in (("y", y, ey), ("mean", m, em), ("var", v, ev), ("out", o, eo)):
        assert_close(a, e, F32, name)
    g = torch.randn(o.shape, generator=torch.Generator().manual_seed(5))
    got = emu.backward_train(g, c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, y, m, v, s, d, EPS)
    exp = REF.backward_train(
        g.double(),
        c.x.double(),
        c.dw_weight.double(),
        c.pw_weight.double(),
        _d(c.bias),
        _d(c.bn_weight),
        _d(c.bn_bias),
        y.double(),
        m.double(),
        v.double(),
        s,
        d,
        EPS,
    )
    for name, a, e in zip(("dx", "d_dw", "d_pw", "dbias", "dgamma", "dbeta"), got, exp):
        assert_close(a, e, F32, name)
    got = emu.backward_eval(g, out, c.x, c.dw_weight, c.pw_weight, s, d)
    exp = REF.backward_eval(g.double(), out.double(), c.x.double(), c.dw_weight.double(), c.pw_weight.double(), s, d)
    for name, a, e in zip(("dx", "d_dw", "d_pw", "dbias"), got, exp):
        assert_close(a, e, F32, name)


def test_relu_propagates_nan_and_masks_like_threshold_backward(emu):
    c = _case(F32, False, 1, 1)
    x = c.x.clone()
    x[0, 0, 4, 4] = float("nan")
    out = emu.forward_eval(x, c.dw_weight, c.pw_weight, c.bias, 1, 1)
    exp = REF.forward_eval(x.double(), c.dw_weight.double(), c.pw_weight.double(), c.bias.double(), 1, 1)
    assert out.isnan().any() and torch.equal(out.isnan(), exp.isnan())
    g = torch.ones_like(out)
    dx, _, _, dbias = emu.backward_eval(g, out, c.x, c.dw_weight, c.pw_weight, 1, 1)
    _, _, _, edbias = REF.backward_eval(
        g.double(), out.double(), c.x.double(), c.dw_weight.double(), c.pw_weight.double(), 1, 1
    )
    assert_close(dbias, edbias, F32, "dbias with NaN pre-activations passed through")


def test_strided_grad_out(emu):
    """grad_out from autograd may be non-contiguous (e.g. expanded): read through its strides, no copy."""
    c = _case(F32, True, 2, 2)
    out = emu.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, 2, 2)
    g = torch.tensor(0.7).expand(out.shape)
    got = emu.backward_eval(g, out, c.x, c.dw_weight, c.pw_weight, 2, 2)
    exp = REF.backward_eval(g.double(), out.double(), c.x.double(), c.dw_weight.double(), c.pw_weight.double(), 2, 2)
    for name, a, e in zip(("dx", "d_dw", "d_pw", "dbias"), got, exp):
        assert_close(a, e, F32, name)


def test_strided_per_channel_vectors(emu):
    """[K] parameters that are views (strided) are accepted, like the reference backend accepts them."""
    c = _case(F32, False, 1, 2)
    k = c.pw_weight.shape[0]
    wide = lambda t: torch.stack([t, torch.full_like(t, 7.0)], 1)[:, 0]  # noqa: E731  (stride 2)
    got = emu.forward_train(
        c.x, c.dw_weight, c.pw_weight, wide(c.bias), wide(c.bn_weight), wide(c.bn_bias), 1, 2, EPS, True
    )
    exp = emu.forward_train(c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 1, 2, EPS, True)
    assert wide(c.bias).stride() == (2,) and k == c.bias.numel()
    assert all(torch.equal(a, b) for a, b in zip(got, exp))
    g = torch.ones_like(got[0])
    b1 = emu.backward_train(
        g,
        c.x,
        c.dw_weight,
        c.pw_weight,
        wide(c.bias),
        wide(c.bn_weight),
        wide(c.bn_bias),
        None,
        wide(exp[2]),
        wide(exp[3]),
        1,
        2,
        EPS,
    )
    b2 = emu.backward_train(
        g, c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, None, exp[2], exp[3], 1, 2, EPS
    )
    assert all(torch.equal(a, b) for a, b in zip(b1, b2))
    out = emu.forward_eval(c.x, c.dw_weight, c.pw_weight, wide(c.bias), 1, 2)
    assert torch.equal(out, emu.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, 1, 2))


SPLIT_CASES = [(F32, False, 2, 3, True), (F16, True, 2, 5, False), (BF16, True, 1, 2, True)]


@pytest.mark.parametrize(
    "dtype,cl,s,d,save_y",
    SPLIT_CASES,
    ids=[
        f"{str(dt).split('.')[-1]}-{'cl' if cl else 'nchw'}-s{s}-d{d}-{'saved' if sv else 'recompute'}"
        for dt, cl, s, d, sv in SPLIT_CASES
    ],
)
def test_split_passes_merged_over_processes(emu, monkeypatch, dtype, cl, s, d, save_y):
    """The synchronised block's split passes on the native kernels (the launcher's forward_stats / normalize /
    backward_sums / backward_convs stages), four processes simulated with batches 2, 0, 1, 2: the merged
    statistics, outputs and every gradient against the float64 reference on the whole batch (the statistics
    and backward from the y the kernels stored, as test_backward_train)."""
    from fused_dsconv import backends
    from fused_dsconv.testing import split_passes

    monkeypatch.setattr(backends, "_REGISTRY", [*backends._REGISTRY, emu])  # the ops reach it by name
    c = _case(dtype, cl, s, d, shape=(5, 5, 7, 9, 11))
    ho, wo = (9 - 1) // s + 1, (11 - 1) // s + 1
    g = torch.randn(5, 7, ho, wo, generator=torch.Generator().manual_seed(2)).to(dtype)
    got = split_passes(emu.name, c, [2, 0, 1, 2], g, EPS, save_y)
    y = torch.ops.fused_dsconv.forward_stats(c.x, c.dw_weight, c.pw_weight, c.bias, s, d, True, emu.name)[0]
    var, mean = torch.var_mean(y.double(), dim=(0, 2, 3), unbiased=False)
    assert got["count"].item() == 5 * ho * wo
    assert_close(got["mean"], mean, dtype, "merged mean")
    assert_close(got["var"], var, dtype, "merged var")
    eo = REF.forward_train(
        c.x.double(),
        c.dw_weight.double(),
        c.pw_weight.double(),
        _d(c.bias),
        _d(c.bn_weight),
        _d(c.bn_bias),
        s,
        d,
        EPS,
        False,
    )[0]
    exp = REF.backward_train(
        g.double(),
        c.x.double(),
        c.dw_weight.double(),
        c.pw_weight.double(),
        _d(c.bias),
        _d(c.bn_weight),
        _d(c.bn_bias),
        y.double(),
        mean,
        var,
        s,
        d,
        EPS,
    )
    for name, e in (
        ("out", eo),
        ("dx", exp[0]),
        ("d_dw", exp[1]),
        ("d_pw", exp[2]),
        ("d_gamma", exp[4]),
        ("d_beta", exp[5]),
    ):
        assert_close(got[name], e, dtype, name)
    for part in got["parts"]:
        if part["out"].numel():
            assert _layout_ok(part["out"], cl) and _layout_ok(part["dx"], cl)


def test_deterministic(emu):
    c = _case(F32, False, 1, 3)
    r1 = emu.forward_train(c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 1, 3, EPS, True)
    r2 = emu.forward_train(c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, 1, 3, EPS, True)
    assert all(torch.equal(a, b) for a, b in zip(r1, r2))
    g = torch.randn(r1[0].shape, generator=torch.Generator().manual_seed(4))
    b1 = emu.backward_train(
        g, c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, None, r1[2], r1[3], 1, 3, EPS
    )
    b2 = emu.backward_train(
        g, c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, None, r1[2], r1[3], 1, 3, EPS
    )
    assert all(torch.equal(a, b) for a, b in zip(b1, b2))  # fixed-order reductions, no atomics


def test_checks_name_the_argument(emu):
    c = _case(F32, False, 1, 1)
    ops = torch.ops.fused_dsconv_emu
    with pytest.raises(RuntimeError, match="pw_weight"):
        ops.forward_eval(c.x, c.dw_weight, c.pw_weight.half(), c.bias, 1, 1)
    with pytest.raises(RuntimeError, match="dw_weight"):
        ops.forward_eval(c.x, c.dw_weight[:, :, :2], c.pw_weight, c.bias, 1, 1)
    with pytest.raises(RuntimeError, match="bias"):
        ops.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias[:3], 1, 1)
    with pytest.raises(RuntimeError, match="stride"):
        ops.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, 3, 1)
    with pytest.raises(RuntimeError, match=r"dilation must be between 1 and 1048576 \(2\^20\), got 1048577"):
        ops.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, 1, 2**20 + 1)
    ops.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, 1, 2**20)  # the limit itself runs
    with pytest.raises(RuntimeError, match="x must"):
        ops.forward_eval(c.x.double(), c.dw_weight.double(), c.pw_weight.double(), c.bias, 1, 1)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        ops.forward_eval(c.x[:, :, ::2], c.dw_weight, c.pw_weight, c.bias, 1, 1)
    out = ops.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, 1, 1)
    with pytest.raises(RuntimeError, match="grad_out"):
        ops.backward_eval(out[:1], out, c.x, c.dw_weight, c.pw_weight, 1, 1)


def test_unavailable_reasons(emu):
    x = torch.zeros(1, 2, 3, 3)
    assert emu.unavailable(x) is None
    assert "float64" in emu.unavailable(x.double())
    cuda_backend = native.NativeBackend()
    assert "this backend runs cuda tensors only" in cuda_backend.unavailable(x)
    assert not cuda_backend._loaded  # a CPU tensor does not load (or JIT-build) the extension
    if cuda_backend.ops is None:
        why = cuda_backend._why_not
        assert "pip install --no-build-isolation" in why or "FUSED_DSCONV_NO_NATIVE" in why
