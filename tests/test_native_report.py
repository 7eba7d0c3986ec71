"""Compile report of the native kernels (tools/report_cuda.py): every kernel variant compiles for sm_61
(NVRTC 12.x), sm_75 and sm_86 (nvcc) with 0 spill bytes and no stack frame (no local memory) and fits
sm_61's 48 KB static shared memory.

The suite builds the extension with nvcc twice anyway, with the report's flags and ptxas -v: CMake for
sm_75 (tests/test_cmake_torch_ext.py) and the JIT build for sm_86 (tests/test_extension_jit.py). Their logs
give those two archs' rows, so the kernels are not compiled a third and fourth time (about 180 s of CPU
on the 2-core CI machine); the report compiles an arch itself only where that log is not available."""

from __future__ import annotations

import sys
from pathlib import Path

import prebuild as background
import pytest

pytestmark = [pytest.mark.build]  # compiles the kernels with nvcc and NVRTC

ROOT = Path(__file__).resolve().parents[1]


def _report():
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    import report_cuda

    return report_cuda


ARCHS = ("sm_61", "sm_75", "sm_86")


def _build_log(arch: str) -> str | None:
    """The ptxas -v log of the suite's own extension build for ``arch``, or None (no such build, a skipped
    or failed one: then the build's own test says why)."""
    import test_cmake_torch_ext as cmake_build
    import test_extension_jit as jit_build

    module = {"sm_75": cmake_build, "sm_86": jit_build}.get(arch)
    if module is None or (arch == "sm_86" and not jit_build._toolkit()):
        return None
    try:
        return module.build_log()
    except (Exception, pytest.skip.Exception, pytest.fail.Exception):
        return None


PREBUILD_ORDER = 0  # one NVRTC thread for two minutes: first, or it is the suite's tail (tests/prebuild.py)


def prebuild():
    """sm_61's rows (or why not), compiled in the background (tests/prebuild.py)."""
    rep = _report()
    try:
        return rep.rows(archs=("sm_61",))
    except rep.ToolMissing as e:
        return e


@pytest.mark.parametrize("arch", ARCHS)
def test_no_spills_and_fits(arch):
    rep = _report()
    log = None if arch == "sm_61" else _build_log(arch)
    if log is not None:
        rows = rep.parse_ptxas(log, arch)
    elif arch == "sm_61":
        rows = background.result(__name__, prebuild)
    else:
        try:
            rows = rep.rows(archs=(arch,))
        except rep.ToolMissing as e:
            rows = e
    if isinstance(rows, Exception):
        pytest.skip(str(rows))
    kernels = {r["kernel"] for r in rows}
    assert kernels == {
        "dsconv_dw_kernel",
        "dsconv_fwd_kernel",
        "dsconv_fwd_reduce_kernel",
        "bn_stats_kernel",
        "bn_relu_kernel",
        "bn_bwd_reduce_kernel",
        "bn_bwd_finalize_kernel",
        "bn_bwd_dy_kernel",
        "dsconv_bwd_dt_kernel",
        "dsconv_bwd_dwp_kernel",
        "dsconv_bwd_dx_kernel",
        "colsum_kernel",
    }
    # Per dtype and stride: dsconv_fwd 2 rect tiles x 5 dilations + span x 4 template dilations, single and in
    # pairs, dsconv_bwd_dwp 8x8 x 5 + span x 4, dsconv_bwd_dx x 5, dsconv_dw x 4 (span tiles only); per dtype:
    # 3 dsconv_fwd_reduce tiles, 2 dt tiles, the wide dsconv_bwd_dwp, bn_relu, bn_bwd_reduce, bn_bwd_dy, colsum;
    # 2 plain.
    assert len(rows) == 3 * (2 * (18 + 9 + 5 + 4) + 10) + 2
    assert sum(r["variant"].endswith(" pairs") for r in rows) == 3 * 2 * 4
    assert sorted(r["variant"] for r in rows if r["variant"].endswith(" wide")) == [
        "bf16 span64 wide",
        "fp16 span64 wide",
        "fp32 span64 wide",
    ]
    for r in rows:
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack_bytes"] == 0, r
        assert r["shared_bytes"] <= 48 * 1024, r
        assert 0 < r["occupancy"] <= 1, r
        assert set(r) == {
            "backend",
            "kernel",
            "variant",
            "arch",
            "registers",
            "shared_bytes",
            "stack_bytes",
            "spill_stores",
            "spill_loads",
            "occupancy",
        }
