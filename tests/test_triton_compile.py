"""Ahead-of-time compile of every Triton kernel for a GPU that is not here: no register spills.

One variant per kernel, sm_86 only, to keep it to about a minute; ``python tools/report_triton.py``
compiles every variant for sm_75, sm_80, sm_86 and sm_89.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent


def _report():
    spec = importlib.util.spec_from_file_location("report_triton", ROOT / "tools" / "report_triton.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                    reason="TRITON_INTERPRET is set for the whole process: triton.language was decorated for the "
                           "interpreter and cannot be compiled")
def test_every_kernel_compiles_without_spills():
    report = _report()
    rows = report.rows(archs=(86,), first_variant_only=True)
    kernels = {v[0] for v in report.variants()}
    assert {r["kernel"] for r in rows} == kernels
    print("\n" + report.markdown(rows))
    for r in rows:
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{r['kernel']} ({r['variant']}) spills: {r}"
        assert 0 < r["occupancy"] <= 1 and r["registers"] <= 255
