"""Bytes saved for backward per joint block: the fused op (through the autograd layer and the
NativeBackend glue over the emulator build) versus nn.Sequential(dw conv, pw conv, BN, ReLU).

Expected (activation-shaped tensors, storage dtype; parameters and per-channel stats are extra):
  unfused: x [N,C,H,W] + t [N,C,Ho,Wo] + y [N,K,Ho,Wo] + out [N,K,Ho,Wo]
  fused, save_y=True : x + y          -> saves t + out  = (C + K) * N * Ho * Wo elements
  fused, recompute   : x              -> saves t + y + out = (C + 2K) * N * Ho * Wo elements
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fused_dsconv import backends, ops
from fused_dsconv.backends import native
from fused_dsconv.testing import assert_close, make_case

pytestmark = [pytest.mark.build]  # builds the CPU emulator extension first


@pytest.fixture(scope="module")
def emu_registered():
    emu = native.load_emulator()
    saved = list(backends._REGISTRY)
    backends._REGISTRY.append(emu)
    try:
        yield emu
    finally:
        backends._REGISTRY[:] = saved


def _saved_bytes(fn):
    seen = {}

    def pack(t):
        if t.numel() and t.untyped_storage().data_ptr() not in seen:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


N, C, K, H, W, S, D = 2, 6, 10, 9, 9, 1, 2


def _leaves(case):
    return [
        t.clone().requires_grad_(True) if t is not None else None
        for t in (case.x, case.dw_weight, case.pw_weight, case.bias, case.bn_weight, case.bn_bias)
    ]


@pytest.mark.parametrize("save_y", [True, False], ids=["save_y", "recompute"])
def test_saved_bytes_vs_unfused(emu_registered, save_y):
    case = make_case(N, C, K, H, W, stride=S, dilation=D)
    x, dw, pw, b, g, beta = _leaves(case)
    (out, _, _, _), fused = _saved_bytes(
        lambda: ops.forward_train(x, dw, pw, b, g, beta, S, D, 1e-5, save_y, backend="native-emu")
    )

    seq = nn.Sequential(
        nn.Conv2d(C, C, 3, S, D, D, groups=C, bias=False), nn.Conv2d(C, K, 1, bias=True), nn.BatchNorm2d(K), nn.ReLU()
    )
    xs = case.x.clone().requires_grad_(True)
    _, unfused = _saved_bytes(lambda: seq(xs))

    ho, wo = (H - 1) // S + 1, (W - 1) // S + 1
    e = case.x.element_size()
    params = (dw.numel() + pw.numel() + 3 * K) * 4 + 2 * K * 4  # weights, bias/gamma/beta, mean/var
    act = N * C * H * W + N * K * ho * wo * (1 if save_y else 0)
    assert fused == act * e + params, (fused, act * e + params)
    saved_elems = N * ho * wo * (C + K + (0 if save_y else K))
    print(
        f"saved bytes per block: fused {fused}, unfused {unfused}, difference {unfused - fused} "
        f"(activations alone: {saved_elems * e})"
    )
    # Unfused keeps x, t, y, out plus its own parameter/statistic tensors.
    assert unfused - fused >= saved_elems * e - params

    # And the gradients through the autograd layer match the reference backend.
    out.backward(torch.ones_like(out) * 0.3 + torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    grads = [t.grad for t in (x, dw, pw, b, g, beta)]
    x2, dw2, pw2, b2, g2, beta2 = _leaves(case)
    out2, _, _, _ = ops.forward_train(x2, dw2, pw2, b2, g2, beta2, S, D, 1e-5, save_y, backend="reference")
    out2.backward(torch.ones_like(out2) * 0.3 + torch.linspace(-1, 1, out2.numel()).reshape(out2.shape))
    assert_close(out.detach(), out2.detach(), torch.float32, "out")
    for name, a, t in zip(("x", "dw", "pw", "bias", "gamma", "beta"), grads, (x2, dw2, pw2, b2, g2, beta2)):
        assert_close(a, t.grad, torch.float32, f"grad {name}")
