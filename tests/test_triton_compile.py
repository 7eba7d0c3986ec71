"""Ahead-of-time compile of every Triton kernel for a GPU that is not here: no register spills.

The first recorded launch of each kernel (float16, the classifier's b3 layer, the first config of each
autotuned kernel's space), sm_86 only, to keep it to about half a minute; ``python tools/report_triton.py``
compiles every launch of every mode and every config of every space for sm_75, sm_80, sm_86 and sm_89.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.build]  # compiles the Triton kernels for a GPU

triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent
MODES = (("float16", False, ("b3",)),)


def _report():
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    import report_triton

    return report_triton


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
    reason="TRITON_INTERPRET is set for the whole process: triton.language was decorated for the "
    "interpreter and cannot be compiled",
)
def test_every_kernel_compiles_without_spills():
    report = _report()
    launched = {v[0] for v in report.variants(archs=(86,), modes=MODES, debug_variant=False)}
    # Every kernel of the module is launched by some primitive (none is dead), and each compiles.
    assert launched == {name for name in dir(report.kernels()) if name.endswith("_kernel")}
    rows = report.rows(archs=(86,), modes=MODES, first_variant_only=True)
    assert {r["kernel"] for r in rows} == launched
    print("\n" + report.markdown(rows))
    for r in rows:
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{r['kernel']} ({r['variant']}) spills: {r}"
        assert 0 < r["occupancy"] <= 1 and r["registers"] <= 255


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
    reason="TRITON_INTERPRET is set for the whole process: triton.language was decorated for the "
    "interpreter and cannot be compiled",
)
@pytest.mark.parametrize("arch,mode", [(86, ("float32", False, ("b3",))), (80, ("float16", False, ("b4",)))])
def test_dt_kernel_configs_nearest_the_register_limit_compile_without_spills(arch, mode):
    """Every config of dsconv_bwd_dt (the kernel nearest 255 registers) for two launches where an operand
    order once made it spill (float32 b3 P16 C16 on sm_86, float16 b4 K256 P32 C32 on sm_80), which the
    first-config test above does not compile."""
    rows = _report().rows(archs=(arch,), modes=(mode,), kernels_only=["dsconv_bwd_dt_kernel"])
    assert len(rows) >= 4
    for r in rows:
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{r['variant']} spills: {r}"
