"""Compile report of the native kernels (tools/report_cuda.py): every kernel variant compiles for sm_61
(NVRTC 12.x), sm_75 and sm_86 (nvcc) with 0 spill bytes and no stack frame (no local memory) and fits
sm_61's 48 KB static shared memory.

sm_75 and sm_86: where the installed extension (`pip install .`, before the tests) was built for that arch
from these sources with the shipped flags, its cubins are read (cuobjdump -res-usage, no compile: the
build the user runs is the one checked); else the report compiles the arch itself (about 150 CPU seconds
each, cached under build/). The suite's own CMake and JIT builds are fast builds (runtime-dilation kernels
only, tests/test_cmake_torch_ext.py), so they cannot stand in. sm_61 (no nvcc 13 build has it) is always
compiled, with NVRTC, in the background."""

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


def _installed_rows(arch: str) -> list[dict] | None:
    """The installed extension's rows for ``arch`` when it was built for it from these sources with the
    shipped flags (setup.py records a digest of both), else None."""
    import importlib.util

    from fused_dsconv import _build_config as cfg
    from fused_dsconv import _extension

    info = _extension.build_info()
    if info.get("digest") != cfg.build_digest(str(ROOT / "csrc"), cfg.compile_args(fast=False)):
        return None
    archs = {"sm_" + a.split("+")[0].replace(".", "") for a in info.get("archs", "").replace(" ", ";").split(";") if a}
    spec = importlib.util.find_spec(cfg.EXTENSION)
    if arch not in archs or spec is None or not spec.origin:
        return None
    rep = _report()
    try:
        return rep.library_rows(spec.origin, arch)
    except rep.ToolMissing:
        return None


PREBUILD_ORDER = 0  # one NVRTC thread for two minutes: first, or it is the suite's tail (tests/prebuild.py)


def prebuild():
    """Each arch's rows (or why not): sm_61's compiled with NVRTC, sm_75's and sm_86's read from the
    installed extension or else compiled, in the background (tests/prebuild.py)."""
    rep = _report()
    out = {}
    for arch in ARCHS:
        try:
            out[arch] = (arch != "sm_61" and _installed_rows(arch)) or rep.rows(archs=(arch,))
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


def test_an_installed_build_is_matched_by_its_sources_and_flags(tmp_path):
    """The digest setup.py records: the same sources anywhere give the same digest; a fast build's flags or
    an edited header another, so such a build's cubins never stand in for the shipped kernels."""
    import shutil

    from fused_dsconv import _build_config as cfg

    src = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc", src)
    full = cfg.compile_args(fast=False)
    digest = cfg.build_digest(str(src), full)
    assert digest == cfg.build_digest(str(ROOT / "csrc"), full)
    assert cfg.build_digest(str(src), cfg.compile_args(fast=True)) != digest
    assert cfg.FAST_DEFINE in cfg.compile_args(fast=True)["cxx"]  # the host-side planner agrees
    assert cfg.fast_build(cfg.compile_args(fast=True)) and not cfg.fast_build(full)
    plan = src / "kernels" / "plan.cuh"
    plan.write_text(plan.read_text() + "\n")
    assert cfg.build_digest(str(src), full) != digest


def test_res_usage_rows():
    rep = _report()
    dw = "_ZN3dsc16dsconv_dw_kernelIfLi1ELi2EEEvNS_7ProblemEPf"
    text = f"""
arch = sm_75
 Function {dw}:
  REG:40 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:416
 Function _ZN3dsc13colsum_kernelIfEEvNS_9ColsumJobIT_EES3_:
  REG:32 STACK:16 SHARED:0 LOCAL:0 CONSTANT[0]:416
arch = sm_75
 Function {dw}:
  REG:40 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:416
arch = sm_86
 Function {dw}:
  REG:99 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:416
"""
    rows = rep.parse_res_usage(text, "sm_75")
    assert [(r["kernel"], r["variant"]) for r in rows] == [
        ("colsum_kernel", "fp32"),
        ("dsconv_dw_kernel", "fp32 s=1 d=2"),
    ]
    colsum, dwk = rows
    assert (dwk["registers"], dwk["shared_bytes"], dwk["stack_bytes"], dwk["spill_stores"]) == (40, 1024, 0, 0)
    assert colsum["stack_bytes"] == 16 and colsum["spill_stores"] is None  # a stack frame: spills unknown
