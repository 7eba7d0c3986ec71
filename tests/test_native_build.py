"""The real CUDA extension (fused_dsconv._C): when it is importable, every op of the family has a CUDA
kernel; in CI (env CI set, FUSED_DSCONV_NO_NATIVE != 1) it must be importable, since CI installs with
the native build."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

OPS = (
    "forward_eval",
    "forward_train",
    "backward_eval",
    "backward_train",
    "forward_stats",
    "forward_normalize",
    "backward_reduce",
    "backward_apply",
)


def _import_native():
    try:
        return importlib.import_module("fused_dsconv._C"), None
    except ImportError as e:
        return None, e


def test_native_extension_registers_cuda_kernels():
    mod, err = _import_native()
    if mod is None:
        if os.environ.get("CI") and os.environ.get("FUSED_DSCONV_NO_NATIVE") != "1":
            pytest.fail(f"CI installs the native build, but fused_dsconv._C does not import: {err}")
        pytest.skip(f"fused_dsconv._C not built here ({err})")
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_dsconv_native::{op}", "CUDA"), op
    assert hasattr(torch.ops.fused_dsconv_native, "kernel_binary_version")


def test_native_backend_explains_itself():
    """The reasons the native backend gives, for the real extension (or its absence) on this machine and for
    CUDA inputs it must refuse; CUDA inputs are FakeTensors, so this runs (and can fail) without a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fused_dsconv.backends import native

    b = native.NativeBackend()
    assert b.unavailable(torch.zeros(1, 1, 2, 2)) == "x is on cpu; this backend runs cuda tensors only"
    assert not b._loaded  # a CPU tensor never loads (or JIT-builds) the extension

    class Built:  # an extension with kernels for every GPU: only the input checks can refuse
        @staticmethod
        def kernel_binary_version(device_index):
            return 86

    ready = native.NativeBackend(Built())
    with FakeTensorMode():
        x = torch.empty(2, 3, 5, 5, device="cuda")
        assert ready.unavailable(x) is None
        why = ready.unavailable(x.double())
        assert why is not None and "float64" in why and "reference" in why, why
        assert "contiguous" in ready.unavailable(x[:, :, ::2])
        assert "not supported" in ready.unavailable(x.to(torch.int32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_native_matches_reference_on_gpu():
    """Only on a machine with a GPU: the CUDA build against the reference (fp32, both layouts)."""
    from fused_dsconv.backends import native
    from fused_dsconv.backends.reference import ReferenceBackend
    from fused_dsconv.testing import FlatCalls, assert_close, make_case

    b = FlatCalls(native.NativeBackend())
    if b.unavailable(torch.zeros(1, 1, 1, 1, device="cuda")):
        pytest.skip(b.unavailable(torch.zeros(1, 1, 1, 1, device="cuda")))
    ref = FlatCalls(ReferenceBackend())
    for cl in (False, True):
        for s, d in ((1, 1), (2, 3), (1, 5)):
            c = make_case(2, 24, 80, 17, 13, stride=s, dilation=d, channels_last=cl, device="cuda")
            o, y, m, v = b.forward_train(
                c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, s, d, 1e-5, True
            )
            eo, ey, em, ev = ref.forward_train(
                c.x.double(),
                c.dw_weight.double(),
                c.pw_weight.double(),
                c.bias.double(),
                c.bn_weight.double(),
                c.bn_bias.double(),
                s,
                d,
                1e-5,
                True,
            )
            for name, a, e in (("out", o, eo), ("y", y, ey), ("mean", m, em), ("var", v, ev)):
                assert_close(a.cpu(), e.cpu(), torch.float32, name)
            g = torch.randn_like(o)
            got = b.backward_train(
                g, c.x, c.dw_weight, c.pw_weight, c.bias, c.bn_weight, c.bn_bias, None, m, v, s, d, 1e-5
            )
            exp = ref.backward_train(
                g.double(),
                c.x.double(),
                c.dw_weight.double(),
                c.pw_weight.double(),
                c.bias.double(),
                c.bn_weight.double(),
                c.bn_bias.double(),
                y.double(),
                m.double(),
                v.double(),
                s,
                d,
                1e-5,
            )
            for name, a, e in zip(("dx", "d_dw", "d_pw", "dbias", "dgamma", "dbeta"), got, exp):
                assert_close(a.cpu(), e.cpu(), torch.float32, name)
