"""tools/triton_counts.py: executed SASS counts of the Triton kernels from static SASS x interpreter trips.

The listing tests pin the counting rules on a hand-written nvdisasm listing; the compile test holds the
whole method to arithmetic it cannot fake: the tensor-core instructions counted over a launch's grid must
do the forward's pointwise GEMM, N x P x K x C multiply-adds, exactly where the tiles divide the problem.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

triton = pytest.importorskip("triton")
import triton_counts as T  # noqa: E402

LISTING = """
        .global         k
k:
	//## File "/src/forward.py", line 5
        /*0000*/                   S2R R0, SR_CTAID.X ;
	//## File "/src/forward.py", line 7
        /*0010*/                   LDG.E.128 R4, [R2.64] ;
.L_x_0:
	//## File "/src/forward.py", line 11
        /*0020*/                   STS.128 [R1], R4 ;
.L_x_1:
	//## File "/src/tiles.py", line 3
        /*0030*/                   HMMA.16816.F32 R8, R4, R6, R8 ;
        /*0040*/                   LDSM.16.MT88.4 R4, [R1] ;
	//## File "/src/forward.py", line 12
        /*0050*/              @P0 BRA `(.L_x_1) ;
	//## File "/src/forward.py", line 9
        /*0060*/              @P1 BRA `(.L_x_0) ;
	//## File "/src/forward.py", line 15
        /*0070*/                   STG.E [R2.64], R8 ;
	//## File "/src/forward.py", line 16
        /*0080*/                   EXIT ;
.L_x_2:
        /*0090*/                   BRA `(.L_x_2);
"""
# forward.py: `for` at line 9 (body to 13) holding a `for` at line 12 (body to 13); line 15 on a branch
# the sampled programs did not take.
FORS = {("forward.py", 9): 13, ("forward.py", 12): 13}
RUNS = {("forward.py", 5): 1, ("forward.py", 7): 1, ("forward.py", 9): 4, ("forward.py", 11): 3}
RUNS.update({("forward.py", 12): 9, ("tiles.py", 3): 6, ("forward.py", 16): 1})
ITERATIONS = {("forward.py", 9): 3, ("forward.py", 12): 6}


def test_listing_parses_into_instructions_lines_and_loops():
    insts = T.parse(LISTING)
    assert [i["op"] for i in insts][:3] == ["S2R", "LDG.E.128", "STS.128"]
    assert insts[3]["line"] == ("tiles.py", 3) and insts[5]["line"] == ("forward.py", 12)
    # the inner loop [3, 5] inside the outer [2, 6]; the trap after EXIT is no loop
    assert T.loops(insts) == [(2, 6), (3, 5)]


def test_each_instruction_runs_the_trips_of_its_innermost_loop():
    insts = T.parse(LISTING)
    mult = T.multiplicities(insts, RUNS, ITERATIONS, FORS)
    # outside: once; outer loop: 3 iterations; inner loop: 6 in all; line 15 never ran: 0; the trap: no line
    assert mult == [1, 1, 3, 6, 6, 6, 3, 0, 1, 1]
    c = T.executed(insts, mult, num_warps=4)
    assert c["hmma"] == 6 * 4 and c["mma_macs"] == 6 * 4 * 16 * 8 * 16
    assert c["global_load_bytes"] == 4 * 32 * 16 and "global_store_bytes" not in c
    # STS.128 x 3 trips (4 wavefronts each) and LDSM .x4 x 6 (4 each), per warp
    assert c["shared_wavefronts"] == 4 * (3 * 4 + 6 * 4)


def test_a_loop_that_closes_outside_any_source_for_is_an_error():
    insts = T.parse(LISTING)
    with pytest.raises(ValueError, match="not at a `for`"):
        T.multiplicities(insts, RUNS, ITERATIONS, {("forward.py", 9): 13})


def test_sampled_programs_cover_the_grid_ends():
    assert T.sample_programs((5, 1, 1), 3) == [(0, 0, 0), (2, 0, 0), (4, 0, 0)]
    picks = T.sample_programs((4, 3, 2), 4)
    assert picks[0] == (0, 0, 0) and picks[-1] == (3, 2, 1) and len(set(picks)) == len(picks)


@pytest.mark.build  # compiles the Triton kernels for sm_86
@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
    reason="TRITON_INTERPRET is set for the whole process: the kernels cannot be compiled in it",
)
@pytest.mark.parametrize("dtype,tf32", [("float16", False), ("float32", True)])
def test_counted_tensor_core_instructions_do_the_forward_gemm(dtype, tf32):
    n, c, k, h = 2, 32, 64, 8  # 128 pixels
    rows = T.count_block((n, c, k, h, h, 1, False), dtype, tf32, "eval", arch=86, sms=28, samples=3)
    fwd = [r for r in rows if r["kernel"] == "dsconv_fwd_kernel"]
    assert fwd, rows
    exact = 0
    for r in fwd:
        cfg, programs = r["config"], math.prod(r["grid"])
        macs = r["per_program"]["mma_macs"] * programs
        need = n * h * h * k * c
        assert r["warp_insn_spread"][0] > 0
        if (n * h * h) % cfg["BLOCK_P"] == 0 and k % cfg["BLOCK_K"] == 0 and c % cfg["BLOCK_C"] == 0:
            assert macs == need, (cfg, macs, need)
            exact += 1
        else:  # padded tiles multiply zeros too
            assert macs >= need, (cfg, macs, need)
    assert exact >= 2


def test_a_recorded_grid_is_the_launchers_grid_at_the_launch():
    """A launcher's grid lambda reads its function's variables when called; the recorder calls it later, after
    the launcher rebound them for its next launch (dt's grid once read dx's pixel groups and its sampled
    programs wrote past the workspace). So the recorder evaluates it at the launch, per config."""
    real = T.R.kernels().dsconv_bwd_dt_kernel
    log: list = []
    rec = T.R._Recorder("dsconv_bwd_dt_kernel", real, log)
    groups = 7
    rec[lambda meta: (meta["BLOCK_C"] * groups,)](*[None] * len(rec.arg_names), BLOCK_K=64)
    groups = 99  # noqa: F841 (what the launcher does next)
    frozen = log[0][3]
    for cfg in real.configs:
        assert frozen({**cfg.kwargs, "BLOCK_K": 64}) == (cfg.kwargs["BLOCK_C"] * 7,)
