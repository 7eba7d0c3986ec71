"""Compile report of the native kernels (tools/report_cuda.py): every kernel variant compiles for sm_61
(NVRTC 12.x), sm_75 and sm_86 (nvcc) with 0 spill bytes and no stack frame (no local memory) and fits
sm_61's 48 KB static shared memory."""

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


def prebuild():
    """Every arch's rows (or why not), compiled one after another in the background (tests/prebuild.py)."""
    rep = _report()
    out = {}
    for arch in ARCHS:
        try:
            out[arch] = rep.rows(archs=(arch,))
        except rep.ToolMissing as e:
            out[arch] = e
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_no_spills_and_fits(arch):
    rows = background.result(__name__, prebuild)[arch]
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
        "dsconv_bwd_dt_kernel",
        "dsconv_bwd_dwp_kernel",
        "dsconv_bwd_dx_kernel",
        "colsum_kernel",
    }
    # Per dtype and stride: dsconv_fwd 2 rect tiles x 5 dilations + span x 4 template dilations, dsconv_bwd_dwp
    # 8x8 x 5 + span x 4, dsconv_bwd_dx x 5, dsconv_dw x 4 (span tiles only); per dtype: 3 dsconv_fwd_reduce
    # tiles, 2 dt tiles, bn_relu, bn_bwd_reduce, colsum; 2 plain.
    assert len(rows) == 3 * (2 * (14 + 9 + 5 + 4) + 8) + 2
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
