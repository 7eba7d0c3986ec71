"""Finding the native extension: a stale or missing build becomes a reason, never a crash."""

import importlib

import pytest

from fused_dsconv import _extension


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(_extension, "_state", {})
    return monkeypatch


def failing_import(monkeypatch, error):
    original = importlib.import_module

    def fake(name, *args):
        if name == "fused_dsconv._C":
            raise error
        return original(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)


def test_abi_mismatch_is_reported_with_the_fix(fresh):
    failing_import(fresh, ImportError("_C.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev"))
    assert _extension.load() is None
    reason = _extension.status()
    assert "does not load with torch" in reason and "undefined symbol" in reason
    assert "pip install --no-build-isolation --force-reinstall --no-deps ." in reason


def test_missing_build_without_gpu_explains_itself(fresh):
    failing_import(fresh, ModuleNotFoundError("fused_dsconv._C"))
    assert _extension.load() is None
    assert "not built ahead of time" in _extension.status()


def test_disabled_by_environment(fresh):
    fresh.setenv("FUSED_DSCONV_NO_NATIVE", "1")
    assert _extension.load() is None and "FUSED_DSCONV_NO_NATIVE=1" in _extension.status()


def test_a_fast_build_says_so(fresh):
    """An extension built with FUSED_DSCONV_FAST_BUILD=1 (runtime-dilation kernels only) works but is
    slower: its status says so, a full build's does not."""
    module = object()
    original = importlib.import_module
    fresh.setattr(
        importlib, "import_module", lambda name, *a: module if name == "fused_dsconv._C" else original(name, *a)
    )
    for fast in (False, True):
        fresh.setattr(_extension, "_state", {})
        fresh.setattr(_extension, "build_info", lambda: {"torch": None, "archs": "8.6", "fast_build": fast})
        assert _extension.load() is module
        assert ("a fast build (FUSED_DSCONV_FAST_BUILD=1)" in _extension.status()) == fast, _extension.status()


# ---- architectures a toolkit cannot build: said before compiling, with the toolkit that would work ----

from fused_dsconv import _build_config as cfg  # noqa: E402


@pytest.mark.parametrize("cuda", [(12, 6), (13, 0)])
def test_default_arch_lists_build_with_their_toolkit(cuda, monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    archs, problem = cfg.build_archs(cuda, visible=[])
    assert archs == cfg.default_arch_list(cuda) and problem is None


def test_cuda13_refuses_pascal_in_the_arch_list(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "6.1;8.6+PTX")
    archs, problem = cfg.build_archs((13, 0), visible=[(8, 6)])
    assert archs == "6.1;8.6+PTX"  # the user's list wins over the visible GPUs
    assert "nvcc 13.0 cannot compile for sm_61 (TORCH_CUDA_ARCH_LIST='6.1;8.6+PTX')" in problem
    assert "drop sm_61 from TORCH_CUDA_ARCH_LIST" in problem and "CUDA 12.x" in problem
    assert cfg.build_archs((12, 6), visible=[])[1] is None


def test_visible_gpus_set_the_arch_list(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert cfg.build_archs((13, 0), visible=[(8, 6), (7, 5), (8, 6)]) == ("7.5;8.6", None)
    archs, problem = cfg.build_archs((13, 0), visible=[(6, 1)])
    assert archs == "6.1" and "(this GPU)" in problem and "TORCH_CUDA_ARCH_LIST" not in problem


def test_pascal_with_cuda13_skips_the_doomed_jit_build(fresh):
    """A GTX 10xx user with torch cu126 but a CUDA 13 nvcc: no minutes-long failing compile, one clear line."""
    import torch

    failing_import(fresh, ModuleNotFoundError("fused_dsconv._C"))
    fresh.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    fresh.delenv("FUSED_DSCONV_NO_JIT", raising=False)
    fresh.setattr(torch.cuda, "is_available", lambda: True)
    fresh.setattr(torch.cuda, "device_count", lambda: 1)
    fresh.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))
    fresh.setattr(cfg, "nvcc_version", lambda cuda_home: (13, 0))
    fresh.setattr(_extension, "csrc_dir", lambda: _extension._PKG)  # sources present, as in an install

    def no_build(*args, **kwargs):
        raise AssertionError("the JIT build must not start")

    fresh.setattr(_extension, "jit_build", no_build)
    assert _extension.load() is None
    reason = _extension.status()
    assert "nvcc 13.0 cannot compile for sm_61 (this GPU)" in reason and "CUDA 12.x" in reason
