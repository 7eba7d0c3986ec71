"""The just-in-time path of an isolated `pip install .`: first use compiles the shipped CUDA sources.

Runs in a subprocess: the ahead-of-time extension (when CI built it) already owns the
fused_dsconv_native op namespace in this process. There, the AOT import is made to fail as in an
isolated install, and a GPU is pretended (the compile needs nvcc, not a device). A fast build
(FUSED_DSCONV_FAST_BUILD=1, runtime-dilation kernels only) for one arch: the path is what is tested here;
every kernel variant's compile is the compile report's (tests/test_native_report.py).
"""

import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import prebuild as background
import pytest

pytestmark = [pytest.mark.build]  # JIT-builds the CUDA extension

# One arch, another than the CMake build's (sm_75).
ARCH = "8.6"

SCRIPT = textwrap.dedent("""
    import importlib, torch
    original = importlib.import_module
    def no_aot(name, *args):
        if name == "fused_dsconv._C":
            raise ModuleNotFoundError(name)
        return original(name, *args)
    importlib.import_module = no_aot
    torch.cuda.is_available = lambda: True
    from fused_dsconv import _extension
    assert _extension.load() is not None, _extension.status()
    print("STATUS:", _extension.status())
    for op in ("forward_eval", "forward_train", "backward_eval", "backward_train"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_dsconv_native::{op}", "CUDA"), op
""")


def _toolkit() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None and shutil.which(os.path.join(CUDA_HOME, "bin", "nvcc")) is not None


def prebuild():
    """The first use, in a subprocess with an empty cache (started in the background: tests/prebuild.py)."""
    if not _toolkit():
        return None
    cache = Path(tempfile.mkdtemp(prefix="fused_dsconv_jit_"))
    env = {
        **os.environ,
        "FUSED_DSCONV_CACHE": str(cache),
        "TORCH_CUDA_ARCH_LIST": ARCH,
        "MAX_JOBS": background.JOBS,
        "FUSED_DSCONV_FAST_BUILD": "1",
    }
    env.pop("FUSED_DSCONV_NO_JIT", None)
    return background.run([sys.executable, "-c", SCRIPT], env=env, timeout=1500), cache


def test_first_use_compiles_the_shipped_sources():
    if not _toolkit():
        pytest.fail("this test needs the CUDA toolkit (set CUDA_HOME); CI has it") if os.environ.get(
            "CI"
        ) else pytest.skip("no CUDA toolkit here (set CUDA_HOME)")
    proc, cache = background.result(__name__, prebuild)
    try:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "just-in-time build of the shipped sources; a fast build" in proc.stdout
        assert "compiling the native CUDA extension" in proc.stderr  # announced to the user
        assert any(cache.rglob("*.so")), "nothing cached"
    finally:
        shutil.rmtree(cache, ignore_errors=True)
