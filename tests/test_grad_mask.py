"""Gradients nobody asked for cost nothing: the backward ops' ``output_mask`` (from ``ctx.needs_input_grad``).

For every backend that runs here (the reference; the native kernels through the CPU emulator build; Triton
in its interpreter): a backward with a frozen dw_weight, a frozen pw_weight, x without gradient (and the
corners: only one wanted, none) gives exactly the full backward's bits for what is wanted and empty tensors
for the rest; and the work is skipped: the emulator counts launches per kernel, the Triton launchers are
counted through their two launch functions, the reference's aten convolutions are seen by a dispatch mode.
"""

from __future__ import annotations

import importlib
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fused_dsconv import testing
from fused_dsconv.backends import OpParams, get, native

OPS = torch.ops.fused_dsconv
REF = get("reference")
EPS = 1e-5
ALL = (True, True, True)
MASKS = {
    "frozen-dw": (True, False, True),
    "frozen-pw": (True, True, False),
    "x-no-grad": (False, True, True),
    "only-pw": (False, False, True),
    "only-x": (True, False, False),
    "only-dw": (False, True, False),
    "none": (False, False, False),
}
# (N, C, K, H, W), stride, dilation: span tiles in the native dWp (a small map: dsconv_dw runs first), and
# rectangular 8x8 ones (a wide map, Wo = 120) at stride 2, both with dWp partials (several tiles); and one
# span tile, where dsconv_bwd_dwp stores dWp itself (no partials: colsum only for dWd).
SHAPES = {"span": ((2, 4, 6, 9, 10), 1, 2), "rect-s2": ((1, 3, 5, 7, 240), 2, 1), "span-1tile": ((1, 3, 5, 6, 7), 1, 2)}


def _case(shape):
    (n, c, k, h, w), s, d = SHAPES[shape]
    return testing.make_case(n, c, k, h, w, stride=s, dilation=d), s, d


def _backward(backend, c, s, d, train, mask):
    """backward_train (from a saved y) or backward_eval of ``backend`` with ``output_mask=mask``."""
    p = OpParams(s, d, EPS, output_mask=mask)
    if train:
        out, y, mean, var = backend.forward_train(c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, p)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        return backend.backward_train(g, c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, y, mean, var, p)
    out = backend.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, p)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return backend.backward_eval(g, out, c.x, c.dw_weight, c.pw_weight, p)


def _assert_masked_equal(got, full, mask, inputs):
    for i, (want, inp) in enumerate(zip(mask, inputs)):
        if want:
            assert torch.equal(got[i], full[i]), f"gradient {i} differs from the full backward's"
        else:
            assert got[i].numel() == 0 and got[i].dtype == inp.dtype and got[i].device == inp.device
    for a, b in zip(got[3:], full[3:]):  # bias and BN gradients: always computed, the same bits
        assert torch.equal(a, b)


# ---- reference --------------------------------------------------------------------------------------
class _AtenConvs(TorchDispatchMode):
    """Records the aten convolutions run underneath: ("conv", None) and ("conv_backward", output_mask)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            self.calls.append(("conv", None))
        elif func is torch.ops.aten.convolution_backward.default:
            self.calls.append(("conv_backward", tuple(args[-1])))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mask", list(MASKS.values()), ids=list(MASKS))
def test_reference_masked_gradients_are_the_full_ones(mask, train):
    c, s, d = _case("span")
    full = _backward(REF, c, s, d, train, ALL)
    got = _backward(REF, c, s, d, train, mask)
    _assert_masked_equal(got, full, mask, (c.x, c.dw_weight, c.pw_weight))


@pytest.mark.parametrize(
    "mask, expected",
    [
        # the depthwise output t is rebuilt (one aten.convolution) only for the pointwise weight's gradient
        (ALL, [("conv", None), ("conv_backward", (True, True, True)), ("conv_backward", (True, True, False))]),
        (MASKS["frozen-pw"], [("conv_backward", (True, False, True)), ("conv_backward", (True, True, False))]),
        (
            MASKS["frozen-dw"],
            [("conv", None), ("conv_backward", (True, True, True)), ("conv_backward", (True, False, False))],
        ),
        (MASKS["only-pw"], [("conv", None), ("conv_backward", (False, True, True))]),
        (MASKS["none"], [("conv_backward", (False, False, True))]),  # the bias gradient alone
    ],
    ids=["all", "frozen-pw", "frozen-dw", "only-pw", "none"],
)
def test_reference_computes_only_what_is_wanted(mask, expected):
    c, s, d = _case("span")
    p = OpParams(s, d, output_mask=mask)
    out = REF.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, p)
    with _AtenConvs() as seen:
        REF.backward_eval(torch.ones_like(out), out, c.x, c.dw_weight, c.pw_weight, p)
    assert seen.calls == expected


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("frozen", ["x", "dw_weight", "pw_weight"])
def test_autograd_passes_needs_input_grad_as_the_mask(monkeypatch, frozen, train):
    """Through the registered op and its autograd formula: the backend gets needs_input_grad of (x, dw, pw) as
    output_mask, and the gradients that reach the leaves are the bits of a backward that wanted all three."""
    c, s, d = _case("span")
    names = ("x", "dw_weight", "pw_weight")
    seen = []
    method = "backward_train" if train else "backward_eval"
    original = getattr(REF, method)

    def spy(*args):
        seen.append(args[-1].output_mask)
        return original(*args)

    def grads(requires):
        leaves = {n: getattr(c, n).detach().clone().requires_grad_(requires[n]) for n in names}
        if train:
            out = OPS.forward_train(
                leaves["x"],
                leaves["dw_weight"],
                leaves["pw_weight"],
                c.bias,
                c.bn_weight,
                c.bn_bias,
                s,
                d,
                EPS,
                True,
                "reference",
            )[0]
        else:
            out = OPS.forward_eval(leaves["x"], leaves["dw_weight"], leaves["pw_weight"], c.bias, s, d, "reference")
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        return {n: t.grad for n, t in leaves.items()}

    full = grads(dict.fromkeys(names, True))
    monkeypatch.setattr(REF, method, spy)
    part = grads({n: n != frozen for n in names})
    assert seen == [tuple(n != frozen for n in names)]
    for n in names:
        assert part[n] is None if n == frozen else torch.equal(part[n], full[n])


def test_output_mask_is_checked():
    c, s, d = _case("span")
    out = OPS.forward_eval(c.x, c.dw_weight, c.pw_weight, c.bias, s, d, "reference")
    with pytest.raises(ValueError, match="output_mask must be three bools"):
        OPS.backward_eval(torch.ones_like(out), out, c.x, c.dw_weight, c.pw_weight, s, d, "reference", [True, False])


# ---- the native kernels through the CPU emulator ----------------------------------------------------
@pytest.fixture(scope="module")
def emu():
    return native.load_emulator()


@pytest.mark.build
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_emulated_kernels_skip_unwanted_gradients(emu, shape, train):
    c, s, d = _case(shape)
    native.emulator_launch_counts(reset=True)
    full = _backward(emu, c, s, d, train, ALL)
    launched = native.emulator_launch_counts(reset=True)
    assert all(launched[k] == 1 for k in ("dsconv_bwd_dt_kernel", "dsconv_bwd_dwp_kernel", "dsconv_bwd_dx_kernel"))
    span = shape.startswith("span")
    assert launched.get("dsconv_dw_kernel", 0) == (2 if span else 0)  # forward's and backward's
    assert launched.get("colsum_kernel", 0) == 1
    for name, mask in MASKS.items():
        got = _backward(emu, c, s, d, train, mask)
        _assert_masked_equal(got, full, mask, (c.x, c.dw_weight, c.pw_weight))
        n = Counter(native.emulator_launch_counts(reset=True))
        fwd_dw = 1 if span else 0  # the forward this helper runs first launches dsconv_dw too
        want_dt = mask[0] or mask[1]
        assert n["dsconv_bwd_dt_kernel"] == n["dsconv_bwd_dx_kernel"] == int(want_dt), name
        assert n["dsconv_bwd_dwp_kernel"] == int(mask[2]), name
        assert n["dsconv_dw_kernel"] == fwd_dw + (fwd_dw if mask[2] else 0), name
        assert n["colsum_kernel"] == int(mask[1] or (mask[2] and shape != "span-1tile")), name
        assert n["bn_bwd_reduce_kernel"] == n["bn_bwd_finalize_kernel"] == 1, name


# ---- Triton in its interpreter -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_triton_skips_unwanted_gradients(triton_interpreter, monkeypatch, train):
    lc = importlib.import_module("fused_dsconv.triton_launch_backward")
    tb = get("triton")
    c, s, d = _case("span")
    launched = []
    tuned, colsum = lc.launch_tuned, lc.launch_colsum

    def count_tuned(name, *a, **k):
        launched.append(name)
        return tuned(name, *a, **k)

    def count_colsum(ws2d):
        launched.append(f"colsum[{ws2d.shape[1]}]")
        return colsum(ws2d)

    monkeypatch.setattr(lc, "launch_tuned", count_tuned)
    monkeypatch.setattr(lc, "launch_colsum", count_colsum)
    full = _backward(tb, c, s, d, train, ALL)
    cols_pw, cols_dw = f"colsum[{c.pw_weight.numel()}]", f"colsum[{c.dw_weight.numel()}]"
    for name, mask in MASKS.items():
        launched.clear()
        got = _backward(tb, c, s, d, train, mask)
        _assert_masked_equal(got, full, mask, (c.x, c.dw_weight, c.pw_weight))
        n = Counter(launched)
        assert n["dsconv_bwd_dt"] == int(any(mask)), name  # dt and the dWp partials: one kernel
        assert n["dsconv_bwd_dx"] == int(mask[0] or mask[1]), name
        assert n[cols_pw] == int(mask[2]) and n[cols_dw] == int(mask[1]), name
