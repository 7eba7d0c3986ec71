"""Which backend runs CUDA inputs, checked without a GPU.

The priority list and every backend's own ``unavailable`` run for real on FakeTensor CUDA inputs; only
the two answers that need hardware are stubbed: the GPU's compute capability, and what the native
extension's ``kernel_binary_version`` says (the compute capability of the kernel image the CUDA driver
would load for that GPU, -1 when the build has none). ``NativeBackend`` takes its ops namespace as a
constructor argument, so the stub replaces the extension, not the backend's logic.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fused_dsconv import JointBlock, _extension, backends
from fused_dsconv.backends.native import NativeBackend


class FakeNativeOps:
    """Stands in for torch.ops.fused_dsconv_native: select() consults only the arch query."""

    def __init__(self, binary_version: int):
        self.binary_version = binary_version
        self.queried: list[int] = []

    def kernel_binary_version(self, device_index: int) -> int:
        self.queried.append(device_index)
        return self.binary_version


@pytest.fixture
def gpu(monkeypatch):
    """gpu(capability, binary_version): pretend device cuda:0 has that capability and the native
    extension's kernels have that image; returns the native backend now in the priority list."""
    # Another test may have loaded the Triton kernels for the interpreter; a real GPU process has not.
    monkeypatch.delitem(sys.modules, "fused_dsconv.triton_kernels", raising=False)
    monkeypatch.delenv(backends.ENV_VAR, raising=False)

    def make(capability: tuple[int, int], binary_version: int, built_with_nvcc: str = "13.0") -> NativeBackend:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(_extension, "build_info", lambda: {"nvcc": built_with_nvcc})
        native = NativeBackend(FakeNativeOps(binary_version))
        monkeypatch.setattr(backends, "_REGISTRY", [native if b.name == "native" else b for b in backends._REGISTRY])
        return native

    return make


def cuda_input(dtype=torch.float32, channels_last=False, shape=(2, 8, 9, 11)):
    with FakeTensorMode():
        x = torch.empty(shape, dtype=dtype, device="cuda")
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def test_the_registered_native_backend_is_first_and_targets_cuda():
    assert backends.names()[0] == "native"
    assert backends.get("native").device_type == "cuda"


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("capability", [(8, 6), (7, 5), (8, 9)], ids=lambda c: f"sm_{c[0]}{c[1]}")
def test_native_is_picked_on_a_gpu_it_was_built_for(gpu, capability, dtype, channels_last):
    native = gpu(capability, binary_version=10 * capability[0] + capability[1])
    x = cuda_input(dtype, channels_last)
    assert backends.select(x) is native
    assert backends.explain(x)["native"] is None
    assert native.ops.queried == [0]


def test_pascal_with_a_cuda12_build_runs_native(gpu):
    native = gpu((6, 1), binary_version=61, built_with_nvcc="12.6")
    x = cuda_input()
    assert backends.select(x) is native
    assert "compute capability >= 7.0" in backends.explain(x)["triton"]  # the reason native matters on sm_61


def test_pascal_with_a_cuda13_build_falls_back_to_reference_and_says_why(gpu):
    gpu((6, 1), binary_version=-1, built_with_nvcc="13.0")
    x = cuda_input()
    assert backends.select(x).name == "reference"
    why = backends.explain(x)
    print(why)
    assert "no kernel image for this GPU (sm_61)" in why["native"]
    assert "nvcc 13.0 cannot compile for sm_61" in why["native"] and "CUDA 12.x" in why["native"]
    assert "compute capability >= 7.0" in why["triton"]
    with pytest.raises(RuntimeError, match="backend 'native' was requested but cannot run this input: .*sm_61"):
        backends.select(x, "native")


def test_a_gpu_missing_from_the_build_falls_to_triton_with_the_rebuild_hint(gpu):
    gpu((9, 0), binary_version=-1)
    x = cuda_input()
    assert backends.select(x).name == "triton"
    assert "TORCH_CUDA_ARCH_LIST including 9.0" in backends.explain(x)["native"]


def test_float64_on_cuda_runs_the_reference(gpu):
    gpu((8, 6), binary_version=86)
    x = cuda_input(torch.float64)
    assert backends.select(x).name == "reference"
    why = backends.explain(x)
    assert "float64" in why["native"] and "float64" in why["triton"]


def test_cpu_inputs_never_reach_the_extension(gpu):
    native = gpu((8, 6), binary_version=86)
    assert "runs cuda tensors only" in native.unavailable(torch.zeros(1, 2, 3, 3))
    assert native.ops.queried == []


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_joint_block_on_cuda_runs_native(gpu, train):
    """The module path: JointBlock selects per call and hands the name to the op (whose backward reuses
    it). Under FakeTensorMode the op's fake kernel runs in place of the CUDA one, so this checks routing
    and shapes, not numbers (the emulator tests do), and stops at forward: autograd's engine wants a
    real device for CUDA tensors."""
    gpu((8, 6), binary_version=86)
    with FakeTensorMode(allow_non_fake_inputs=True):
        with torch.device("cuda"):  # parameters born on the (fake) GPU; .to() cannot swap fakes in
            block = JointBlock(8, 16, stride=2, dilation=3).train(train)
        out = block(torch.randn(2, 8, 9, 11, device="cuda").contiguous(memory_format=torch.channels_last))
    assert block.last_backend == "native"
    assert out.shape == (2, 16, 5, 6) and out.device.type == "cuda"
    assert out.is_contiguous(memory_format=torch.channels_last)
