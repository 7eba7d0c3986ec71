import importlib
import os
import sys

import pytest
import torch

# Inductor (torch.compile on CPU) and the JIT extension builds look for the CUDA toolkit through
# CUDA_HOME; where nvcc on PATH is not inside the toolkit root, torch's guess from PATH is wrong.
if os.path.isdir("/usr/local/cuda") and "CUDA_HOME" not in os.environ:
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
# Measured backend choice (fused_dsconv/tune.py) would make which path a test runs depend on timing and
# write the user's cache: off by default here; tests/test_tune.py turns it on with injected timings.
os.environ.setdefault("FUSED_DSCONV_TUNE", "0")
# One intra-op thread, as the training, export and distributed tests and the benchmarks already run: the test
# tensors are tiny, and on a shared 2-core machine a second OpenMP thread waits at every parallel region's
# barrier while the other core is busy (a 3x5x9x11 float64 channels_last conv2d: 74 ms a call with two
# threads; the fast loop took 155 s wall with two, 20 s with one, MEASURED with simulations on both cores).
torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Tests that wait for a background build (tests/prebuild.py) run last, so the rest of the suite runs
    while they build."""
    items.sort(key=lambda item: callable(getattr(getattr(item, "module", None), "prebuild", None)))  # stable


def pytest_collection_finish(session):
    """Start the selected modules' background builds (tests/prebuild.py) before the first test runs."""
    if session.config.option.collectonly:
        return
    import prebuild

    modules = {}
    for item in session.items:
        if callable(getattr(item.module, "prebuild", None)):
            modules.setdefault(item.module.__name__, item.module)
    # Longest first (a module's PREBUILD_ORDER, default 1), so that the last build to start is a short one.
    for name, module in sorted(modules.items(), key=lambda m: getattr(m[1], "PREBUILD_ORDER", 1)):
        prebuild.start(name, module.prebuild)


def pytest_terminal_summary(terminalreporter):
    if "prebuild" in sys.modules and (lines := sys.modules["prebuild"].timeline()):
        terminalreporter.write_line(f"background builds (-j {sys.modules['prebuild'].JOBS}): " + "; ".join(lines))


def pytest_sessionfinish(session):
    if "prebuild" in sys.modules:
        sys.modules["prebuild"].stop_all()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


TRITON_KERNELS = "fused_dsconv.triton_kernels"


@pytest.fixture(scope="module")
def triton_interpreter():
    """TRITON_INTERPRET=1 and the kernels' bound assertions for the requesting module; yields the kernels module.

    float32 GEMMs run in IEEE fp32 for the module (TF32 off for PyTorch's convolutions, which the Triton
    backend follows): the float32 tolerance row is the spec; TF32 tests turn it on themselves.

    The kernels are decorated as interpreter kernels when their module is imported, so a copy compiled for
    a GPU earlier in this process is dropped and re-imported; everything is restored afterwards, so later
    modules still see the CPU as "not Triton's". Fails loudly if the interpreter did not take.
    """
    pytest.importorskip("triton")
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    was_loaded = sys.modules.get(TRITON_KERNELS)
    if was_loaded is not None and not was_loaded.INTERPRETED:
        del sys.modules[TRITON_KERNELS]
    tk = importlib.import_module(TRITON_KERNELS)
    if not tk.INTERPRETED:
        pytest.fail(
            f"{TRITON_KERNELS} is not running in the Triton interpreter "
            "(TRITON_INTERPRET=1 must be set before the kernels are decorated)"
        )
    prev_debug = tk.set_debug(True)
    from fused_dsconv.testing import conv_tf32

    with conv_tf32(False):
        yield tk
    tk.set_debug(prev_debug)
    if old is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = old
    if was_loaded is None or not was_loaded.INTERPRETED:
        sys.modules.pop(TRITON_KERNELS, None)  # later GPU users re-import compiled kernels
        if was_loaded is not None:
            sys.modules[TRITON_KERNELS] = was_loaded
