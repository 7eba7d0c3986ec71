"""bench/triton_model.py: the Triton kernels' counted SASS through the cost model (no GPU, no compile)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import cost_model as cm  # noqa: E402
import triton_model as tm  # noqa: E402

P = cm.Params(cpi=0.0, t0=0.0, lat=0.0, err_lo=1.0, err_hi=1.0)


def _row(launch=0, kernel="dsconv_fwd_kernel", grid=(56, 1, 1), warps=4, **per_program):
    return dict(
        launch=launch,
        kernel=kernel,
        dtype="float16",
        config=None,
        grid=list(grid),
        num_warps=warps,
        registers=64,
        shared_bytes=0,
        per_program={"warp_insn": 1000.0, **per_program},
    )


def test_a_launch_becomes_a_profile_of_its_whole_grid():
    r = _row(global_load_bytes=3200.0, global_store_bytes=640.0, shared_wavefronts=10.0, ldg=5.0, mma_macs=6400.0)
    k = tm.profile(r)
    assert k.warp_insn == 56 * 1000 and k.block == 128 and k.blocks == 56
    assert k.l2_bytes == 56 * 3840 and k.gwrite_txn == 56 * 20
    assert k.lsu_insn == 56 * (3840 / 32 + 10) and k.gload_insn == 56 * 5
    assert k.tensor_cycles == 56 * 6400 / 64
    assert tm.profile(dict(r, dtype="float32-tf32")).tensor_cycles == 56 * 6400 / 32  # TF32: half fp16's rate
    assert k.name == "triton dsconv_fwd_kernel"  # no CUDA kernel's calibration factor applies to it


def test_tensor_cores_bound_a_launch_whose_mma_cycles_exceed_its_issue():
    dev = cm.DEVICES["RTX 3060"]
    few = cm.kernel_time(dev, tm.profile(_row(mma_macs=64.0 * 100)), P, calibrated_band=False)
    many = cm.kernel_time(dev, tm.profile(_row(mma_macs=64.0 * 1e6)), P, calibrated_band=False)
    assert few.bound != "tensor" and many.bound == "tensor"
    # two blocks on the busiest SM, 1e6 tensor cycles each, four sub-partitions
    assert many.terms["tensor"] == pytest.approx(2 * 1e6 / 4)


def test_each_launch_runs_the_config_the_model_puts_fastest():
    dev = cm.DEVICES["RTX 3060"]
    slow = _row(launch=0, warp_insn=50_000.0)
    fast = dict(_row(launch=0, warp_insn=20_000.0), config={"BLOCK_P": 64})
    other = _row(launch=1, kernel="bn_relu_kernel", warp_insn=100.0)
    res = tm.block_time(dev, [slow, fast, other], P, (32, 16, 16, 8, 8, 1, 3), "eval", "f16")
    assert [r["config"] for r, _ in res["kernels"]] == [{"BLOCK_P": 64}, None]
    busy = sum(t.us[0] for _, t in res["kernels"])
    assert res["total_us"][0] == pytest.approx(busy + 2 * dev.launch_us[0])


def test_committed_counts_cover_every_block_mode_and_dtype():
    """bench/data/triton_sm86.json is what the README's Triton rows come from: the nine blocks at batch 32 on
    the RTX 3060's launch plan, fp16 and TF32, eval and training, every launch with positive counts."""
    data = json.loads((ROOT / "bench" / "data" / "triton_sm86.json").read_text())
    keys = {(r["gpu"], r["block"], r["dtype"], r["mode"]) for r in data["rows"]}
    want = {("RTX 3060", f"b{i}", d, m) for i in range(1, 10) for d in tm.DTYPES for m in ("eval", "step")}
    assert want <= keys
    for r in data["rows"]:
        assert r["batch"] == 32 and r["arch"] == "sm_86"
        assert r["per_program"]["warp_insn"] > 0 and math.prod(r["grid"]) > 0
        if r["kernel"] == "dsconv_fwd_kernel":
            assert r["per_program"]["mma_macs"] > 0  # fp16 and TF32 both run the pointwise GEMM on tensor cores
