"""The simulation harness (tools/sim) and the cost model v2 (bench/cost_model.py), without the simulator:
the PTX rewrites around GPGPU-Sim's bugs, the log parser, the case syntax, the host programs' nvcc build
and --dry launch lists (so that they cannot rot), and the model's arithmetic and calibration."""

import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "sim"))
sys.path.insert(0, str(ROOT / "bench"))
import cost_model as cm  # noqa: E402
import line_stats  # noqa: E402
import ptx_fix  # noqa: E402
import run_cases  # noqa: E402
import simlib  # noqa: E402

PTX = """
.visible .entry k(
.param .u64 k_param_0
)
{
.reg .pred %p<3>;
.reg .b32 %r<9>;
.reg .f32 %f<9>;
.reg .b64 %rd<4>;
ld.param.u64 %rd1, [k_param_0];
shfl.sync.bfly.b32 %r2|%p1, %r1, 16, 31, -1;
cvt.rn.f32.s64 %f1, %rd1;
@%p2 cvt.rz.f64.u64 %fd1, %rd2;
{ mov.b32 %f2, {0,%rs3};}
@p ld.global.L2::128B.u32 %r3, [%rd3];
ld.global.nc.L2::128B.v4.f32 {%f3, %f4, %f5, %f6}, [%rd3];
ret;
}
"""


def test_ptx_fix_rewrites_the_four_forms():
    out, counts = ptx_fix.fix_ptx(PTX)
    assert counts == {"shfl_pred": 1, "cvt_int64_float": 2, "bf16_mov": 1, "l2_hint": 2}
    assert "@p ld.global.u32 %r3, [%rd3];" in out and "ld.global.nc.v4.f32 {%f3" in out and "L2::" not in out
    assert "shfl.sync.bfly.b32 %r2, %r1, 16, 31, -1;" in out and "|%p1" not in out
    assert "cvt.rn.f32.s64" not in out and "cvt.rz.f64.u64" not in out
    # hi * 2^32 + lo in float64, signedness kept, one final rounding with the original mode
    assert "shr.s64 %simfix_t, %rd1, 32;" in out and "cvt.rn.f32.f64 %f1, %simfix_a;" in out
    assert "@%p2 shr.u64 %simfix_t, %rd2, 32;" in out and "@%p2 mov.f64 %fd1, %simfix_a;" in out
    assert "shl.b32 %simfix_lo, %simfix_lo, 16; mov.b32 %f2, %simfix_lo;" in out
    assert out.count(".reg .f64 %simfix_a") == 1  # scratch registers declared once, inside the function
    assert out.index(".reg .f64 %simfix_a") > out.index("{")


def test_ptx_fix_refuses_a_read_predicate():
    bad = PTX.replace("ret;", "@%p1 bra $L1;\n$L1:\nret;")
    with pytest.raises(ValueError, match="shfl predicate is read"):
        ptx_fix.fix_ptx(bad)


LOG = """GPGPU-Sim PTX: Kernel '_ZN3dsc1aEv' : regs=40, lmem=0, smem=128, cmem=8
GPGPU-Sim PTX: Kernel '_ZN3dsc1bEv' : regs=20, lmem=0, smem=0, cmem=8
[sim] launch 0 grid=(4,2,1) block=256
GPGPU-Sim uArch: CTA/core = 3, limited by: regs
kernel_name = _ZN3dsc1aEv
gpu_sim_cycle = 9000
gpu_sim_insn = 3200
gpgpu_n_tot_w_icount = 100
gpgpu_n_shmem_insn = 64
L2_total_cache_accesses = 10
Stall:300	W0_Idle:20	W0_Scoreboard:100	W1:0	W32:50
single_issue_nums: WS0:40	WS1:30	
dual_issue_nums: WS0:2	WS1:0	
[sim] launch 1 grid=(1,1,1) block=128 (128x1)
kernel_name = _ZN3dsc1bEv
gpu_sim_cycle = 6000
gpu_sim_insn = 640
gpgpu_n_tot_w_icount = 120
gpgpu_n_shmem_insn = 64
L2_total_cache_accesses = 15
Stall:310	W0_Idle:50	W0_Scoreboard:100	W1:0	W32:60
single_issue_nums: WS0:45	WS1:35	
dual_issue_nums: WS0:2	WS1:1	
fused: 3 outputs checked -> PASS
"""


def test_parse_log_differences_running_totals_per_kernel():
    r = simlib.parse_log(LOG)
    assert r["verdict"] == "PASS" and not r["deadlock"]
    a, b = r["kernels"]
    assert (a["cycles"], a["warp_insn"], a["shmem_thread_insn"], a["l2_accesses"]) == (9000, 100, 64, 10)
    assert (b["cycles"], b["warp_insn"], b["shmem_thread_insn"], b["l2_accesses"]) == (6000, 20, 0, 5)
    assert a["grid"] == [4, 2, 1] and b["grid"] == [1, 1, 1] and b["block"] == 128
    assert (a["regs"], a["smem"], a["ctas_per_sm"]) == (40, 128, "3 (regs)")
    assert a["name"] in ("a", "_ZN3dsc1aEv")  # demangled when c++filt exists
    # scheduler cycles by outcome: running totals over the run, differenced per kernel
    assert [
        a[k] for k in ("sched_stall", "sched_idle", "sched_scoreboard", "sched_single_issue", "sched_dual_issue")
    ] == [300, 20, 100, 70, 2]
    assert [
        b[k] for k in ("sched_stall", "sched_idle", "sched_scoreboard", "sched_single_issue", "sched_dual_issue")
    ] == [10, 30, 0, 10, 1]
    assert simlib.parse_log(LOG.replace("-> PASS", "-> FAIL"))["verdict"] == "FAIL"


def test_a_launch_line_glued_to_a_simulator_line_keeps_each_kernels_grid():
    # The simulator ends some rows without a newline; the program's next launch line then shares the row.
    glued = LOG.replace("[sim] launch 1 grid", "dram[0]:      -nan      -nan [sim] launch 1 grid")
    a, b = simlib.parse_log(glued)["kernels"]
    assert a["grid"] == [4, 2, 1] and a["block"] == 256
    assert b["grid"] == [1, 1, 1] and b["block"] == 128


def test_case_syntax_and_preset():
    cases = run_cases.parse_cases(run_cases.PRESETS["issue11"], batch=1, dilation=3, rho=1.0)
    assert len(cases) == 14 and {c.impl for c in cases} == {"fused", "unfused"}
    b3 = [c for c in cases if c.label == "b3" and c.mode == "eval"]
    assert [(c.n, c.c, c.k, c.h, c.stride, c.dil) for c in b3] == [(1, 128, 128, 56, 1, 3)] * 2
    (c,) = run_cases.parse_cases(["fused:step:2x8x12x9x11s2:f16:nhwc"], 1, 3, 1.0)
    assert (c.n, c.c, c.k, c.h, c.w, c.stride, c.dil, c.dtype, c.layout) == (2, 8, 12, 9, 11, 2, 3, "f16", "nhwc")
    (c,) = run_cases.parse_cases(["fused:step:b5@8#2+plan32"], 1, 3, 1.0)
    assert (c.n, c.c, c.k, c.h, c.w, c.plan, c.plan_hw, c.label) == (2, 256, 256, 8, 8, 32, 28, "b5")
    assert c.args()[6:10] == ["--plan-batch", "32", "--plan-hw", "28"] and c.ident().endswith("_plan32x28")
    (plain,) = run_cases.parse_cases(["fused:step:b5@8#2"], 1, 3, 1.0)
    assert plain.ident() != c.ident() and "--plan-batch" not in plain.args()
    bads = [
        "fused:eval",
        "fast:eval:b1",
        "fused:infer:b1",
        "fused:eval:b10",
        "unfused:eval:b1:f16",
        "unfused:step:b5+plan32",
    ]
    for bad in bads:
        with pytest.raises(SystemExit):
            run_cases.parse_cases([bad], 1, 3, 1.0)


def test_cache_key_follows_the_fingerprint_case_and_config_not_labels():
    c1 = simlib.Case("fused", "eval", 1, 8, 8, 8, 8, 1, 3, label="x")
    c2 = simlib.Case("fused", "eval", 1, 8, 8, 8, 8, 1, 3, label="y")
    c3 = simlib.Case("fused", "eval", 1, 8, 8, 8, 8, 1, 2)
    assert simlib.cache_key(c1, "cfg", "fp") == simlib.cache_key(c2, "cfg", "fp") != simlib.cache_key(c3, "cfg", "fp")
    assert simlib.cache_key(c1, "cfg", "fp") != simlib.cache_key(c1, "other-config", "fp")
    assert simlib.cache_key(c1, "cfg", "fp") != simlib.cache_key(c1, "cfg", "fp2")


KERNELS_PTX = """//
// Generated by NVIDIA NVVM Compiler
.version 8.8
.target sm_75
.shared .align 4 .b8 buf[16];
.func (.reg .f32 %r) helper(.reg .f32 %a)
{
\tmov.f32 %r, %a;
\tret;
}
.visible .entry _Z3onev(
\t.param .u64 p
)
.maxntid 256, 1, 1
{
\t{ // begin inline asm
\t.reg .pred %p;
\t}
\tret;
}
.entry _Z3twoi(.param .u32 q)
{
\tret; // two
}
"""


def test_ptx_entries_split_kernels_from_the_rest(tmp_path):
    exe = tmp_path / "prog"
    simlib.ptx_path(exe).write_text(KERNELS_PTX)
    entries, rest = simlib.ptx_entries(exe)
    assert set(entries) == {"_Z3onev", "_Z3twoi"}
    assert entries["_Z3onev"].rstrip().endswith("ret;\n}") and ".reg .pred %p" in entries["_Z3onev"]
    assert "_Z3twoi" not in rest and "helper" in rest and ".shared" in rest
    assert "//" not in rest + "".join(entries.values())  # comments never change a fingerprint


SRC = """#include "b.cuh"
#include <cstdio>
#define TWICE(x) \\
  ((x) + (x))
// a comment
template <typename T> __global__ void k(const T* __restrict__ a, unsigned int n, std::vector<std::vector<int>> v) {
  /* block
     comment */ if (n > 1) { printf("n=%d " "done\\n", n); a[0] = a[1] + 'x'; }
}
"""
# What a formatter may make of SRC: other line breaks and indentation, spaces around operators, `> >`,
# comments moved and edited, a long string split, the includes sorted.
SRC_REFORMATTED = """#include <cstdio>

#include   "b.cuh"
#   define TWICE(x) ((x) + (x))

template <typename T>
__global__ void k(const T *__restrict__ a,
                  unsigned int n, std::vector<std::vector<int> > v)
{  // edited comment
    if (n>1) {
        printf("n=%d "
               "done\\n", n);
        a[0] = a[1]+'x';
    }
}  /* trailing */
"""


def test_source_hash_ignores_formatting_and_comments_not_tokens(tmp_path, monkeypatch):
    assert simlib.source_tokens(SRC) == simlib.source_tokens(SRC_REFORMATTED)
    monkeypatch.setattr(simlib, "ROOT", tmp_path)  # hash_files names files relative to the repository root

    def h(text: str, name: str = "k.cuh") -> str:
        (tmp_path / name).write_text(text)
        return simlib.hash_files([tmp_path / name])

    base = h(SRC)
    assert h(SRC_REFORMATTED) == base
    changed = [
        SRC.replace("n > 1", "n > 2"),
        SRC.replace("n > 1", "n >= 1"),
        SRC.replace("unsigned int n", "unsignedint n"),
        SRC.replace('"done', '"Done'),
        SRC.replace("'x'", "'y'"),
        SRC.replace("((x) + (x))", "((x) + (x))\nint y;"),
        SRC.replace("#define TWICE(x) \\\n", "#define TWICE(x)\n"),
    ]
    for text in changed:
        assert text != SRC and h(text) != base, text
    # a directive ends at its line break: code moved into or out of it changes the hash
    assert h("#define A 1\nint b;") != h("#define A 1 int b;\n")
    assert h("#define F(x) x\n") != h("#define F (x) x\n") == h("#define  F  (x)  x\n")
    # other files are hashed as they are
    assert h("x = 1\n", "k.py") != h("x  =  1\n", "k.py")


def test_a_simulation_runs_in_a_niced_session_of_its_own_and_a_timeout_ends_all_of_it(tmp_path):
    """run_case starts the simulator in a session of its own whose autogroup is niced (plain nice does not
    rank processes across sessions under autogroup scheduling), and a timeout (or stop_all on Ctrl-C) ends
    the whole session: the wrapper script and what it started, not only the wrapper. A stand-in for the
    simulator's `run` script records its session, autogroup and a grandchild, then hangs."""
    tool = tmp_path / "tool"
    tool.mkdir()
    info = tmp_path / "info"
    (tool / "run").write_text(
        "#!/bin/bash\n"
        f'sleep 30 >/dev/null 2>&1 & echo "$$ $(ps -o sid= -p $$) $! $(cat /proc/self/autogroup 2>/dev/null)" > {info}\n'
        "wait\n"
    )
    case = simlib.Case("fused", "eval", 1, 4, 4, 8, 8, 1, 1)
    r = simlib.run_case(case, tmp_path / "exe", tmp_path, tmp_path / "run", tool, nice=17, timeout=3)
    assert r["rc"] == -1 and r["verdict"] != "PASS"
    pid, sid, grandchild, *group = info.read_text().split()
    assert sid != str(os.getsid(0)), "the simulation shares the caller's session"
    if Path("/proc/self/autogroup").exists():
        assert group[-2:] == ["nice", "17"], group
    time.sleep(0.2)
    for p in (pid, grandchild):
        assert not Path(f"/proc/{p}").exists() or "Z" in Path(f"/proc/{p}/stat").read_text().split()[2], (
            f"process {p} outlived the timeout"
        )
    assert not simlib._running


@pytest.mark.build  # nvcc builds both host programs: 18 CPU s
@pytest.mark.skipif(
    shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists(),
    reason="needs nvcc to build the simulation host programs",
)
def test_host_programs_build_and_list_their_launches(tmp_path):
    """CI builds both host programs as the simulator gets them (PTX through ptx_fix.py) and lists launches
    natively (--dry): the same kernel sequence at any batch, grids growing with it. Every case below has
    dilation 3, so only that template dilation is compiled (28 -> 13 CPU s for the fused program)."""
    for impl in ("fused", "unfused"):
        exe = simlib.build(impl, "f32", tmp_path, log=lambda m: None, dilations=(3,))
        one = simlib.dry_launches(exe, simlib.Case(impl, "step", 1, 32, 64, 28, 28, 2, 3))
        big = simlib.dry_launches(exe, simlib.Case(impl, "step", 8, 32, 64, 28, 28, 2, 3))
        assert len(one) == len(big) >= 8
        assert sum(math.prod(g) for g in big) > sum(math.prod(g) for g in one)
        ev = simlib.dry_launches(exe, simlib.Case(impl, "eval", 1, 32, 64, 28, 28, 2, 3))
        assert 1 <= len(ev) < len(one)
        if impl == "fused":  # a plan probe of batch 32 at batch 1: paired forward tiles, no input-channel split
            b5 = simlib.Case(impl, "step", 1, 256, 256, 16, 16, 1, 3)
            plain_list = simlib.dry_launch_list(exe, b5)
            probe_list = simlib.dry_launch_list(exe, simlib.Case(**{**b5.__dict__, "plan": 32}))
            names, probe = ([n for n, *_ in lst] for lst in (plain_list, probe_list))
            assert any("fwd_reduce" in n for n in names) and not any("fwd_reduce" in n for n in probe)
            assert len(probe) == len(names) - 1 and set(probe) - set(names)  # the paired variant
            # dx: its 4 input tiles in one group per channel chunk, as batch 32's blocks loop over 4 tiles
            (plain_dx,), (probe_dx,) = ([g for n, g, *_ in lst if "bwd_dx" in n] for lst in (plain_list, probe_list))
            assert plain_dx == (32, 4, 1) and probe_dx == (32, 1, 1)
            # dilation 2, outside this build's template dilations: the runtime-dilation kernels, no span tiles
            d2 = [n for n, *_ in simlib.dry_launch_list(exe, simlib.Case(impl, "step", 1, 32, 64, 28, 28, 2, 2))]
            assert not any("dsconv_dw_kernel" in n for n in d2), d2
            assert "_ZN3dsc20dsconv_bwd_dx_kernelIfLi2ELi0EEEvNS_7ProblemEPf" in d2, d2  # <float, S = 2, D = 0>
        _fingerprints_follow_what_a_case_launches(exe, impl)


def _fingerprints_follow_what_a_case_launches(exe, impl):
    """The cache key's fingerprint: the same on every dry run; an edit to the PTX of a kernel a case does
    not launch keeps it, an edit to one it launches changes it (an edited copy of the saved PTX stands for
    a rebuild)."""
    step, ev = (simlib.Case(impl, m, 1, 32, 64, 28, 28, 2, 3) for m in ("step", "eval"))
    fp = {c.mode: simlib.launch_fingerprint(exe, c) for c in (step, ev)}
    assert fp["step"] != fp["eval"] and simlib.launch_fingerprint(exe, ev) == fp["eval"]
    in_step, in_eval = ({n for n, *_ in simlib.dry_launch_list(exe, c)} for c in (step, ev))
    entries, _ = simlib.ptx_entries(exe)
    plain = re.sub(r"//[^\n]*", "", simlib.ptx_path(exe).read_text())
    for i, (name, changes_eval) in enumerate(((sorted(in_step - in_eval)[0], False), (sorted(in_eval)[0], True))):
        copy = exe.with_name(f"{exe.name}_edit{i}")
        shutil.copy(exe, copy)
        simlib.ptx_path(copy).write_text(plain.replace(entries[name], entries[name][:-1] + "\tmembar.gl;\n}"))
        edited = {c.mode: simlib.launch_fingerprint(copy, c) for c in (step, ev)}
        assert edited["step"] != fp["step"], name
        assert (edited["eval"] != fp["eval"]) == changes_eval, name


# ---- cost model v2 -------------------------------------------------------------------------------
def _kernel(**kw):
    base = dict(
        name="k",
        grid=(56, 1, 1),
        block=256,
        regs=32,
        smem=0,
        warp_insn=56 * 8 * 1000.0,
        lsu_insn=56 * 100.0,
        smem_wavefronts=0.0,
        l2_bytes=1e5,
        gload_insn=56 * 50.0,
        mangled="k",
    )
    base.update(kw)
    return cm.KernelProfile(**base)


def test_kernel_time_terms_and_wave_quantisation():
    dev, p = cm.SIM_DEVICE, cm.Params(cpi=0.0, t0=0.0, lat=0.0, err_lo=1.0, err_hi=1.0)
    k = _kernel()
    t = cm.kernel_time(dev, k, p, calibrated_band=False)
    assert t.bound == "issue" and t.cycles[1] == pytest.approx(2 * 8 * 1000 / 4)  # 2 blocks per SM
    k57 = _kernel(grid=(57, 1, 1), warp_insn=57 * 8 * 1000.0)  # one more block: a third wave on one SM
    assert cm.kernel_time(dev, k57, p, calibrated_band=False).cycles[1] == pytest.approx(3 * 8 * 1000 / 4)
    big_l2 = _kernel(l2_bytes=1e9)
    tb = cm.kernel_time(dev, big_l2, p, calibrated_band=False)
    assert tb.bound == "l2" and tb.cycles[1] == pytest.approx(1e9 / (1100e9 / 1582e6))
    # few warps: one 32-thread block per SM cannot use 4 schedulers
    lone = _kernel(grid=(28, 1, 1), block=32, warp_insn=28 * 1000.0)
    assert cm.kernel_time(dev, lone, p, calibrated_band=False).cycles[1] == pytest.approx(1000 / (4 * 0.25))


def test_occupancy_limits():
    dev = cm.DEVICES["GTX 1080 Ti"]
    assert cm.occupancy(dev, _kernel(regs=32)) == 8  # 2048 threads / 256
    assert cm.occupancy(dev, _kernel(regs=64)) == 4  # 65536 registers / (64 x 256)
    assert cm.occupancy(dev, _kernel(regs=32, smem=40000)) == 2  # 96 KB / 40000 B
    assert cm.occupancy(cm.DEVICES["RTX 3060"], _kernel(regs=32)) == 6  # 1536 threads


def test_calibration_recovers_its_own_parameters():
    truth = cm.Params(cpi=4.0, t0=1000.0, lat=400.0, err_lo=1.0, err_hi=1.0)
    ks = []
    for i, (blocks, insn, loads) in enumerate([(28, 2e4, 1e2), (200, 5e5, 4e3), (7, 3e4, 5e2), (112, 1e5, 1e4)]):
        k = _kernel(name=f"k{i}", grid=(blocks, 1, 1), warp_insn=insn * blocks / 28, gload_insn=loads)
        model = cm.kernel_time(cm.SIM_DEVICE, k, truth, calibrated_band=False).cycles[1]
        ks.append(cm.replace(k, sim_cycles=int(round(model)) + cm.LAUNCH_LATENCY_SIM))
    p, rows = cm.calibrate(ks)
    assert (p.cpi, p.t0, p.lat) == (4.0, 1000.0, 400.0)
    assert all(r["ratio"] == pytest.approx(1.0, abs=1e-3) for r in rows)
    assert (p.err_lo, p.err_hi) == (p.small_lo, p.small_hi) == cm.MIN_BAND  # a perfect fit: the minimum band
    assert len(rows) == 4


def test_sensitivity_rows_are_the_calibrations_near_the_best_fit():
    """--sensitivity lists every grid point within its margin of the best fit error, best first, each with the
    low-end ratios its own refitted calibration gives; the first row is calibrate()'s choice."""
    truth = cm.Params(cpi=4.0, t0=1000.0, lat=0.0, err_lo=1.0, err_hi=1.0)
    ks = []
    for i, off in enumerate([1.0, 1.2, 0.9, 1.1]):
        k = _kernel(name=f"k{i}", grid=(28 * (i + 1), 1, 1), warp_insn=2e4 * (i + 1))
        model = cm.kernel_time(cm.SIM_DEVICE, k, truth, calibrated_band=False).cycles[1]
        ks.append(cm.replace(k, sim_cycles=int(round(model * off)) + cm.LAUNCH_LATENCY_SIM))
    fits = cm.fit_errors(ks)
    assert [e for e, _ in fits] == sorted(e for e, _ in fits)
    best, _ = cm.calibrate(ks)
    assert (fits[0][1].cpi, fits[0][1].t0, fits[0][1].lat) == (best.cpi, best.t0, best.lat)
    fixed, _ = cm.calibrate(ks, fixed=fits[1][1])
    assert (fixed.cpi, fixed.t0) == (fits[1][1].cpi, fits[1][1].t0) and not fits[1][1].factors

    def run(impl, block, warp_insn):
        k = cm.replace(ks[0], name="k0", warp_insn=warp_insn, sim_cycles=0)
        return cm.LayerRun(impl, block, "eval", (32, 8, 8, 8, 8, 1, 1), [k], False)

    runs = [run("fused", "b1", 1e6), run("unfused", "b1", 2e6), run("fused", "b2", 1e6), run("unfused", "b2", 1e6)]
    r = cm.low_end_ratios(runs, best, {})
    assert r[("b2", "eval")] == pytest.approx(1.0) and r[("b1", "eval")] > r[("sum", "eval")] > 1.0
    near = [e for e, _ in fits if e <= fits[0][0] * 1.5]
    text = cm.sensitivity_markdown(ks, runs, {}, within=0.5)
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(near) + 1 and rows[0].startswith(f"| {fits[0][0]:.1f} | {best.cpi:g} | {best.t0:g} |")
    assert "factors from throughput-bound launches" in rows[-1]
    assert all(row.endswith(f"| b2 {1.0:.2f}x |") for row in rows)  # the lowest block under every fit


def test_throughput_factors_come_from_the_launches_off_the_latency_chain():
    """calibrate(throughput_factors=True): a kernel's factor is the geometric mean of simulated / model over its
    launches that the model does not put on the latency chain (the committed data: the SGEMM has both kinds)."""
    sim = json.loads((ROOT / "bench" / "data" / "sim_gtx1080ti.json").read_text())
    profiles = [cm.profile_from_sim(k) for r in sim["results"] if r["verdict"] == "PASS" for k in r["kernels"]]
    fixed = cm.Params(cpi=4.0, t0=1500.0, lat=0.0, overlap=0.0)
    p_all, rows = cm.calibrate(profiles, fixed=fixed)
    p_busy, _ = cm.calibrate(profiles, fixed=fixed, throughput_factors=True)
    raw = [(r["sim_busy"] / (r["model"] / r["factor"]), r["bound"]) for r in rows if r["kernel"].startswith("sgemm_")]
    busy = [x for x, b in raw if b != "chain"]
    assert len(busy) >= cm.FAMILY_MIN and len(busy) < len(raw)
    assert p_busy.factors["sgemm_kernel"] == pytest.approx(math.prod(busy) ** (1 / len(busy)))
    assert p_all.factors["sgemm_kernel"] == pytest.approx(math.prod(x for x, _ in raw) ** (1 / len(raw)))
    assert p_busy.factors["sgemm_kernel"] != pytest.approx(p_all.factors["sgemm_kernel"], rel=0.02)


def test_error_band_per_kernel():
    """A kernel with enough calibration launches gets its own error envelope; one with fewer gets its size
    class's band widened to cover its launches; template arguments do not split a kernel."""
    truth = cm.Params(cpi=4.0, t0=1000.0, lat=0.0, err_lo=1.0, err_hi=1.0)
    ks = []
    for i, (name, off) in enumerate(
        [
            ("gemm<1>", 1.0),
            ("gemm<2>", 1.3),
            ("gemm<1>", 0.95),
            ("tail", 3.0),
            ("tail", 1.0),
            ("other", 1.0),
            ("other", 1.0),
            ("other", 1.0),
        ]
    ):
        k = _kernel(name=name, grid=(28 * (i + 1), 1, 1), warp_insn=2e4 * (i + 1))
        model = cm.kernel_time(cm.SIM_DEVICE, k, truth, calibrated_band=False).cycles[1]
        ks.append(cm.replace(k, sim_cycles=int(round(model * off)) + cm.LAUNCH_LATENCY_SIM))
    p, rows = cm.calibrate(ks)
    assert set(p.bands) == {"gemm", "tail", "other"} and p.bands["gemm"][2] == 3

    def ratios(fam):
        return [r["ratio"] for r in rows if cm.family(r["kernel"]) == fam]

    g = ratios("gemm")
    # a kernel with >= FAMILY_MIN launches gets its own factor: its residuals are centred on 1 (geometric mean)
    assert set(p.factors) == {"gemm", "other"} and math.prod(g) == pytest.approx(1.0)
    assert p.factors["gemm"] == pytest.approx(
        math.prod(r["sim_busy"] / (r["model"] / r["factor"]) for r in rows if cm.family(r["kernel"]) == "gemm")
        ** (1 / 3)
    )
    k = _kernel(name="gemm<9>", grid=(28, 1, 1), warp_insn=2e4)
    raw = cm.kernel_time(cm.SIM_DEVICE, k, p, calibrated_band=False).cycles
    band = cm.kernel_band(p, "gemm", raw[1] >= cm.BIG_KERNEL)
    assert cm.kernel_time(cm.SIM_DEVICE, k, p).cycles == pytest.approx(
        (raw[0] * p.factors["gemm"] * band[0], raw[1] * p.factors["gemm"] * band[1])
    )
    assert cm.kernel_band(p, "gemm<7>", True) == (min(min(g), cm.MIN_BAND[0]), max(max(g), cm.MIN_BAND[1]))
    o = ratios("other")
    assert cm.kernel_band(p, "other", True) == (min(min(o), cm.MIN_BAND[0]), max(max(o), cm.MIN_BAND[1]))
    tl = ratios("tail")  # two launches: the size class's band, widened to cover them
    assert cm.kernel_band(p, "tail", False) == (min(min(tl), p.small_lo), max(max(tl), p.small_hi))
    assert max(tl) / min(tl) > 2.5  # the tail's outlier is in its band
    assert cm.kernel_band(p, "never_calibrated", True) == (p.err_lo, p.err_hi)
    assert "| `gemm` | 3 |" in cm.calibration_markdown(rows, p)


def _sim_kernel(name: str, grid: list, **counts) -> dict:
    """A simulated launch of kernel `name` (256 threads, 9000 cycles); counts not given are 0."""
    base = {"load_thread_insn": 0, "store_thread_insn": 0, "shmem_thread_insn": 0, "l2_accesses": 0}
    return {"name": name, "mangled": name, "grid": grid, "block": 256, "regs": 32, "smem": 0, "cycles": 9000,
            **base, **counts}  # fmt: skip


def _b0_case(impl: str, mode: str) -> dict:
    """A simulated case of the toy block b0 (1 x 8 -> 8, 8x8, stride 1, dilation 3, fp32 NCHW)."""
    return {
        "impl": impl,
        "mode": mode,
        "n": 1,
        "c": 8,
        "k": 8,
        "h": 8,
        "w": 8,
        "stride": 1,
        "dil": 3,
        "dtype": "f32",
        "layout": "nchw",
        "label": "b0",
    }


def test_layer_runs_scale_counts_with_output_pixels(tmp_path):
    k = {
        "name": "fwd",
        "mangled": "fwd",
        "grid": [28, 1, 1],
        "block": 256,
        "regs": 32,
        "smem": 0,
        "cycles": 9000,
        "warp_insn": 28000,
        "load_thread_insn": 320,
        "store_thread_insn": 0,
        "shmem_thread_insn": 0,
        "l2_accesses": 10,
    }
    sim = {
        "results": [
            {
                "verdict": "PASS",
                "kernels": [k],
                "case": _b0_case("fused", "eval"),
            }
        ]
    }
    grids = {
        "blocks": {"b0": [1, 8, 8, 8, 8, 1, 3]},
        "grids": {"fused|eval|b0|4": [[112, 1, 1]]},
        "kernels": {"fused|eval|b0|4": ["fwd"]},
    }
    (one,) = cm.layer_runs(sim, grids, 1)
    assert one.simulated and one.kernels[0].warp_insn == 28000 and cm.sim_total_us(one) is not None
    (four,) = cm.layer_runs(sim, grids, 4)
    assert not four.simulated and four.kernels[0].warp_insn == 112000 and four.kernels[0].grid == (112, 1, 1)
    assert four.kernels[0].gload_insn == 40 and cm.sim_total_us(four) is None
    t1 = cm.layer_time(cm.DEVICES["GTX 1080 Ti"], one, cm.Params(), {})
    t4 = cm.layer_time(cm.DEVICES["GTX 1080 Ti"], four, cm.Params(), {})
    assert t1["total_us"][0] <= t1["total_us"][1] and t4["busy_us"][1] > t1["busy_us"][1]
    f16 = cm.layer_time(cm.DEVICES["GTX 1080 Ti"], four, cm.Params(), {}, "f16")
    assert f16["total_us"][1] >= t4["total_us"][1] * 0.5  # an estimate range, never a free speed-up


def test_a_case_folder_is_simulated_by_one_process_at_a_time(tmp_path):
    """Two run_cases processes given the same case: the second waits for the first's lock (and then reads
    the cached result) instead of wiping the folder the first simulation is writing its log into."""
    import threading

    run_dir, events = tmp_path / "runs" / "fused_step_b1", []

    def second():
        with simlib.case_lock(run_dir):
            events.append("second in")

    with simlib.case_lock(run_dir):
        t = threading.Thread(target=second)
        t.start()
        t.join(0.3)
        assert t.is_alive() and events == []
        events.append("first out")
    t.join(5)
    assert events == ["first out", "second in"]
    with simlib.case_lock(tmp_path / "runs" / "another"):  # other cases do not wait
        with simlib.case_lock(run_dir):
            pass


def test_half_a_step_makes_no_layer_run_but_calibrates():
    """A training forward or a backward simulated alone (a long step split over two cores) is neither an eval
    nor a step row of the tables; its kernels still join the calibration (main reads every PASSed kernel)."""
    sim = {
        "results": [
            {"verdict": "PASS", "kernels": [_sim_kernel(n, [28, 1, 1], warp_insn=2800)], "case": _b0_case("fused", m)}
            for n, m in (("fwd", "train"), ("dx", "bwd"), ("fwd", "eval"))
        ]
    }
    grids = {"blocks": {"b0": [1, 8, 8, 8, 8, 1, 3]}}
    assert [(r.mode, [k.name for k in r.kernels]) for r in cm.layer_runs(sim, grids, 1)] == [("eval", ["fwd"])]


def test_committed_model_data_is_consistent():
    """bench/data holds what the README's MODEL table is computed from: every simulated result PASSed,
    and the launch grids list every block for both implementations."""
    sim = json.loads((ROOT / "bench" / "data" / "sim_gtx1080ti.json").read_text())
    assert sim["results"] and all(r["verdict"] == "PASS" for r in sim["results"])
    grids = json.loads((ROOT / "bench" / "data" / "launch_grids.json").read_text())
    for impl in ("fused", "unfused"):
        for b in range(1, 10):
            assert grids["grids"][f"{impl}|step|b{b}|32"]
    # every launch list names its kernels, one per grid (bench/cost_model.py aligns launches by them)
    assert grids["grids"].keys() == grids["kernels"].keys()
    assert all(len(grids["kernels"][key]) == len(g) for key, g in grids["grids"].items())


def test_probe_scaling_follows_the_work_not_the_grid():
    def kern(name, grid, insn):
        return _sim_kernel(name, grid, warp_insn=insn)

    case = _b0_case("fused", "step")
    sim = {
        "results": [
            {
                "verdict": "PASS",
                "case": case,
                "kernels": [
                    kern("tiles", [4, 1, 1], 400),
                    kern("per_channel", [8, 1, 1], 800),
                    kern("dsconv_bwd_dwp_kernel<float>", [2, 1, 2], 200),
                    kern("colsum_kernel<float>", [8, 1, 1], 80),
                ],
            }
        ]
    }
    # the block at 16 x 16 (4x the pixels): the tile kernel gets 2x the blocks here (each loops over twice
    # the pixels), the per-channel one none (it loops over 4x the pixels); the dWp kernel 3 splits instead of
    # 2, so colsum, which reads one partial per split, does 1.5x the work on the same grid
    grids = {
        "blocks": {"b0": [1, 8, 8, 16, 16, 1, 3]},
        "grids": {"fused|step|b0|1": [[8, 1, 1], [8, 1, 1], [2, 1, 3], [8, 1, 1]]},
        "kernels": {
            "fused|step|b0|1": ["tiles", "per_channel", "dsconv_bwd_dwp_kernel<float>", "colsum_kernel<float>"]
        },
    }
    (run,) = cm.layer_runs(sim, grids, 1)
    assert not run.simulated and run.sim_shape == (1, 8, 8, 8, 8, 1, 3)
    assert [k.warp_insn for k in run.kernels] == [1600, 3200, 800, 120]
    assert [k.grid for k in run.kernels] == [(8, 1, 1), (8, 1, 1), (2, 1, 3), (8, 1, 1)]
    other = dict(case, c=16, label="b0")  # another block's channels never stand in for this one
    assert (
        cm.layer_runs(
            {"results": [{"verdict": "PASS", "case": other, "kernels": sim["results"][0]["kernels"]}]}, grids, 1
        )
        == []
    )


def test_a_split_the_target_does_not_need_drops_its_combine_kernel():
    def kern(name, grid, insn):
        return {
            "name": name,
            "mangled": name,
            "grid": grid,
            "block": 256,
            "regs": 32,
            "smem": 0,
            "cycles": 9000,
            "warp_insn": insn,
            "load_thread_insn": 0,
            "store_thread_insn": 0,
            "shmem_thread_insn": 0,
            "l2_accesses": 0,
        }

    case = _b0_case("fused", "eval")
    # batch 1: the reduction axis split 3 ways (12 blocks) and combined; batch 4: 4 x 4 blocks, no split
    ks = [
        kern("dsconv_fwd_kernel<float, 1>", [12, 1, 1], 1200),
        kern("dsconv_fwd_reduce_kernel<float>", [4, 1, 1], 40),
        kern("bn_relu", [2, 1, 1], 20),
    ]
    sim = {"results": [{"verdict": "PASS", "case": case, "kernels": ks}]}
    grids = {
        "blocks": {"b0": [1, 8, 8, 8, 8, 1, 3]},
        "grids": {"fused|eval|b0|4": [[4, 4, 1], [8, 1, 1]]},
        "kernels": {"fused|eval|b0|4": ["dsconv_fwd_kernel<float, 1>", "bn_relu"]},
    }
    (run,) = cm.layer_runs(sim, grids, 4)
    assert [cm.family(k.name) for k in run.kernels] == ["dsconv_fwd_kernel", "bn_relu"]
    # the split kernel scales with the pixels (4x), not its blocks (16 / 12); so does every other kernel
    assert [k.warp_insn for k in run.kernels] == [4800, 80] and run.kernels[0].grid == (4, 4, 1)
    # a launch list that still does not match is not guessed at
    grids["grids"]["fused|eval|b0|4"] = [[4, 4, 1]]
    grids["kernels"]["fused|eval|b0|4"] = ["dsconv_fwd_kernel<float, 1>"]
    assert cm.layer_runs(sim, grids, 4) == []
    # nor one whose names and grids disagree
    grids["kernels"]["fused|eval|b0|4"] = ["dsconv_fwd_kernel<float, 1>", "bn_relu"]
    assert cm.layer_runs(sim, grids, 4) == []


def test_tile_kernels_writes_scale_with_the_tiles_they_write():
    """A GEMM-like kernel writes one tile per block (a partial where the reduction is split): its writes follow
    the tile elements written, everything else the pixels; a kernel that is not a tile writer keeps the pixel law."""

    def kern(name, grid, writes, reads):
        return _sim_kernel(
            name, grid, warp_insn=1000, gmem_read_txn=reads, gmem_write_txn=writes, l2_accesses=reads + writes
        )

    case = _b0_case("unfused", "step")
    # batch 1: a split-K GEMM (4 partial 128x128 tiles), dWp (2 splits), an elementwise pass; batch 8: the
    # GEMM unsplit in 64x32 tiles (16 blocks), dWp 3 splits, the pass 8x the blocks
    ks = [
        kern("sgemm_kernel<128, 128, false, false>", [1, 1, 4], 400, 100),
        kern("dsconv_bwd_dwp_kernel<float, dsc::TileShape<128, 8, 8, true>, 1, 3>", [1, 1, 2], 200, 100),
        kern("relu_kernel", [2, 1, 1], 50, 50),
    ]
    sim = {"results": [{"verdict": "PASS", "case": case, "kernels": ks}]}
    names = ["sgemm_kernel<64, 32, false, false>", *(k["name"] for k in ks[1:])]
    grids = {
        "blocks": {"b0": [1, 8, 8, 8, 8, 1, 3]},
        "grids": {"unfused|step|b0|8": [[2, 1, 8], [1, 1, 3], [16, 1, 1]]},
        "kernels": {"unfused|step|b0|8": names},
    }
    (run,) = cm.layer_runs(sim, grids, 8)
    gemm, dwp, relu = run.kernels
    # GEMM: 4 x 16384 elements -> 16 x 2048: half the writes; reads and instructions 8x the pixels
    assert gemm.gwrite_txn == 200 and gemm.lsu_insn == 800 + 200 and gemm.warp_insn == 8000
    assert gemm.l2_bytes == 32 * (800 + 200)
    assert dwp.gwrite_txn == 300 and dwp.lsu_insn == 800 + 300  # 3 partials where 2 were
    assert relu.gwrite_txn == 400 and relu.lsu_insn == 800  # not a tile writer: the pixels
    # a paired dsconv_fwd block writes two tiles
    assert (
        cm.tile_elements_written("dsconv_fwd_kernel<float, dsc::TileShape<128, 8, 8, true>, 1, 3, true>", (3, 1, 1))
        == 6 * cm.DSC_TILE
    )
    assert (
        cm.tile_elements_written("dsconv_fwd_kernel<float, dsc::TileShape<128, 8, 8, true>, 1, 3>", (3, 1, 1))
        == 3 * cm.DSC_TILE
    )
    # dWp: 128 x 64 blocks, or 128 x 128 where WIDE (the last template argument)
    dwp = "dsconv_bwd_dwp_kernel<float, dsc::TileShape<128, 8, 8, true>, 1, "
    assert cm.tile_elements_written(dwp + "0, true>", (4, 4, 7)) == 2 * 112 * cm.DSC_TILE
    assert cm.tile_elements_written(dwp + "3, false>", (4, 8, 7)) == 224 * cm.DSC_TILE
    assert cm.tile_elements_written(dwp + "3>", (4, 8, 7)) == 224 * cm.DSC_TILE


def test_launches_align_by_kernel_name_where_the_target_lists_its_kernels():
    def kern(name, grid, insn):
        return {"name": name, "mangled": name, "grid": grid, "block": 256, "regs": 32, "smem": 0, "cycles": 9000,
                "warp_insn": insn, "l2_accesses": 0}  # fmt: skip

    case = _b0_case("unfused", "step")
    # batch 1: two split-K GEMMs, each with its combine kernel; batch 4: only the second still splits, and
    # the first GEMM runs another tile shape (half the pixels per block)
    ks = [
        kern("sgemm_kernel<64, 64>", [2, 1, 4], 800),
        kern("splitk_reduce_kernel", [1, 1, 1], 10),
        kern("sgemm_kernel<64, 32>", [2, 1, 4], 400),
        kern("splitk_reduce_kernel", [1, 1, 1], 10),
        kern("relu_kernel", [4, 1, 1], 40),
    ]
    sim = {"results": [{"verdict": "PASS", "case": case, "kernels": ks}]}
    key = "unfused|step|b0|4"
    names = ["sgemm_kernel<64, 32>", "sgemm_kernel<64, 32>", "splitk_reduce_kernel", "relu_kernel"]
    grids = {
        "blocks": {"b0": [1, 8, 8, 8, 8, 1, 3]},
        "grids": {key: [[16, 1, 1], [2, 1, 8], [4, 1, 1], [16, 1, 1]]},
        "kernels": {key: names},
    }
    (run,) = cm.layer_runs(sim, grids, 4)
    assert [k.name for k in run.kernels] == [
        "sgemm_kernel<64, 64>",
        "sgemm_kernel<64, 32>",
        "splitk_reduce_kernel",
        "relu_kernel",
    ]
    # every GEMM and elementwise kernel with the pixels (4x), whatever its tile and split-K; the combine kernel
    # that stays with the partials its GEMM writes (8 -> 16 blocks: 2x); the grids are the target's
    assert [k.warp_insn for k in run.kernels] == [3200, 1600, 20, 160]
    assert [k.grid for k in run.kernels] == [(16, 1, 1), (2, 1, 8), (4, 1, 1), (16, 1, 1)]
    # without the target's names no launch list is matched
    assert cm.layer_runs(sim, {**grids, "kernels": {}}, 4) == []
    # a target kernel of a family the simulated case never ran is not stood in for by another
    grids["kernels"][key] = ["dsconv_fwd_kernel<float>", *names[1:]]
    assert cm.layer_runs(sim, grids, 4) == []
    assert cm.align_launches(["a<1>", "splitk_reduce_kernel", "b"], ["a<2>", "b"]) == [(0, 0), (2, 1)]
    assert cm.align_launches(["a", "b"], ["a"]) is None  # a simulated kernel the target lacks: not a combine
    assert cm.align_launches(["a"], ["a", "a"]) is None


def test_a_split_the_simulated_case_did_not_make_borrows_its_own_combine_kernel():
    def kern(name, grid, insn, writes=0):
        return _sim_kernel(name, grid, warp_insn=insn, gmem_write_txn=writes)

    case = _b0_case("unfused", "step")
    # batch 1: the forward GEMM splits K in 2 (128 x 128 tiles), the weight-gradient GEMM does not; batch 4:
    # the forward GEMM no longer splits, the weight-gradient GEMM splits in 4 with 64 x 32 tiles
    ks = [
        kern("sgemm_kernel<128, 128>", [1, 1, 2], 800),
        kern("splitk_reduce_kernel", [1, 1, 1], 100, writes=40),
        kern("sgemm_kernel<64, 64>", [1, 1, 1], 400),
        kern("relu_kernel", [4, 1, 1], 40),
    ]
    sim = {"results": [{"verdict": "PASS", "case": case, "kernels": ks}]}
    key = "unfused|step|b0|4"
    names = ["sgemm_kernel<128, 128>", "sgemm_kernel<64, 32>", "splitk_reduce_kernel", "relu_kernel"]
    grids = {
        "blocks": {"b0": [1, 8, 8, 8, 8, 1, 3]},
        "grids": {key: [[1, 1, 1], [2, 2, 4], [3, 1, 1], [16, 1, 1]]},
        "kernels": {key: names},
    }
    (run,) = cm.layer_runs(sim, grids, 4)
    assert [k.name for k in run.kernels] == [
        "sgemm_kernel<128, 128>",
        "sgemm_kernel<64, 64>",
        "splitk_reduce_kernel",
        "relu_kernel",
    ]
    lent = run.kernels[2]
    # the case's combine kernel read 2 x 128 x 128 partials and wrote 128 x 128 outputs; the target's reads
    # 16 x 64 x 32 x 4 = 2 x 128 x 128 partials (1x) and writes 4 x 64 x 32 outputs (1/2)
    assert lent.warp_insn == 100
    assert lent.gwrite_txn == 20
    assert lent.grid == (3, 1, 1) and lent.sim_cycles is None
    assert [k.warp_insn for k in run.kernels][::3] == [3200, 160]  # the others with the pixels
    # a case without a combine kernel of its own has none to lend: the block is left out
    sim["results"][0]["kernels"] = [ks[0], ks[2], ks[3]]
    grids["kernels"][key] = ["sgemm_kernel<128, 128>", "sgemm_kernel<64, 32>", "splitk_reduce_kernel", "relu_kernel"]
    assert cm.layer_runs(sim, grids, 4) == []
    # only a split's combine kernel may be missing from the simulated launches, and only after its GEMM
    assert cm.align_launches(["a", "b"], ["a", "splitk_reduce_kernel", "b"]) == [(0, 0), (None, 1), (1, 2)]
    assert cm.align_launches(["a", "b"], ["a", "c", "b"]) is None


def test_a_second_simulated_size_separates_a_blocks_fixed_cost_from_its_cost_per_pixel():
    def kern(name, grid, insn, l2):
        return _sim_kernel(name, grid, warp_insn=insn, l2_accesses=l2)

    def case(hw):
        return {**_b0_case("unfused", "step"), "h": hw, "w": hw}

    # a statistics kernel, one block per channel (4 blocks at every size): 1,000 warp instructions per block
    # however many pixels, 1 per pixel; its L2 traffic is all per pixel. A tile kernel whose grid follows the
    # pixels (nothing separates a fixed part there). A kernel the smaller size runs as another variant. A
    # kernel the launcher cuts differently with the size (one 64-pixel tile, its input channels split 8 ways
    # at 16 pixels and 2 at 64, not at all at the target): its counts would fit a x blocks + b x pixels, but
    # the fit reads the split as a fixed cost per block (here 164 x 4 + 8 x 256 = 2,704 against 2,960 for
    # 100 per block + 10 per padded pixel): the pixel law.
    def run(hw, tile_insn):
        px = hw * hw
        split = 8 if hw == 4 else 2
        return [
            kern("stats_kernel", [4, 1, 1], 4 * 1000 + px, 2 * px),
            kern("tile_kernel", [px // 16, 1, 1], tile_insn, px),
            kern("other_kernel<8>" if hw == 8 else "other_kernel<4>", [1, 1, 1], 100 + px, px),
            kern("split_kernel", [split, 1, 1], 100 * split + 10 * 64, px),
        ]

    sim = {
        "results": [
            {"verdict": "PASS", "case": case(8), "kernels": run(8, 640)},
            {"verdict": "PASS", "case": case(4), "kernels": run(4, 160)},
        ]
    }
    key = "unfused|step|b0|4"
    grids = {
        "blocks": {"b0": [1, 8, 8, 8, 8, 1, 3]},
        "grids": {key: [[4, 1, 1], [16, 1, 1], [1, 1, 1], [4, 1, 1]]},
        "kernels": {key: ["stats_kernel", "tile_kernel", "other_kernel<8>", "split_kernel"]},
    }
    (big,) = cm.layer_runs(sim, grids, 4)  # 256 pixels, from the 64-pixel case and its 16-pixel twin
    stats, tile, other, split = big.kernels
    assert stats.warp_insn == pytest.approx(4 * 1000 + 256)  # not (4,000 + 64) x 4
    assert stats.l2_bytes == pytest.approx(32 * 2 * 256)
    assert tile.warp_insn == pytest.approx(640 * 4)  # blocks in proportion to pixels: the pixel law
    assert other.warp_insn == pytest.approx((100 + 64) * 4)  # no twin of its variant: the pixel law
    assert split.warp_insn == pytest.approx((200 + 640) * 4)  # re-cut with the size: the pixel law
    # without the second size, the pixel law for every kernel
    (alone,) = cm.layer_runs({"results": sim["results"][:1]}, grids, 4)
    assert alone.kernels[0].warp_insn == pytest.approx((4000 + 64) * 4)


def test_a_tile_looping_kernel_keeps_its_fixed_cost_per_block_on_the_targets_grid():
    # dsconv_bwd_dx's blocks loop over tiles (the plan probe gives them all of the probe's, one group per
    # channel chunk: the same grid at both sizes) and the target cuts its tiles into 16 groups: a block's
    # set-up and final reduction (1,000 warp instructions) are paid per block, its tiles per pixel (2 each).
    # Another kernel cut the same way at both sizes but on another grid at the target keeps the pixel law.
    def run(hw):
        px = hw * hw
        return [
            _sim_kernel("dsconv_bwd_dx_kernel<float, 2, 3>", [4, 1, 1], warp_insn=4 * 1000 + 2 * px),
            _sim_kernel("other_kernel", [4, 1, 1], warp_insn=4 * 1000 + 2 * px),
        ]

    case = lambda hw: {**_b0_case("fused", "step"), "h": hw, "w": hw}  # noqa: E731
    sim = {
        "results": [
            {"verdict": "PASS", "case": case(8), "kernels": run(8)},
            {"verdict": "PASS", "case": case(4), "kernels": run(4)},
        ]
    }
    key = "fused|step|b0|4"
    grids = {
        "blocks": {"b0": [1, 8, 8, 8, 8, 1, 3]},
        "grids": {key: [[4, 16, 1], [4, 16, 1]]},
        "kernels": {key: ["dsconv_bwd_dx_kernel<float, 2, 3>", "other_kernel"]},
    }
    (big,) = cm.layer_runs(sim, grids, 4)  # 256 pixels
    dx, other = big.kernels
    assert dx.warp_insn == pytest.approx(64 * 1000 + 2 * 256)  # not (4,000 + 128) x 4
    assert other.warp_insn == pytest.approx((4000 + 128) * 4)
    # one simulated size alone cannot separate the parts: the pixel law
    (alone,) = cm.layer_runs({"results": sim["results"][:1]}, grids, 4)
    assert alone.kernels[0].warp_insn == pytest.approx((4000 + 128) * 4)


def test_a_plan_probe_stands_for_the_batch_whose_plan_it_ran():
    # The launcher cuts batch 1 differently (a split and its combine kernel); the plan probe of batch 4 runs
    # batch 4's variant on the same small shape: it, not the larger plain case, is scaled to batch 4, and it
    # is never used for another batch.
    plain = {"verdict": "PASS", "case": {**_b0_case("fused", "step"), "n": 2}}
    plain["kernels"] = [
        _sim_kernel("k<split>", [4, 1, 1], warp_insn=900),
        _sim_kernel("splitk_reduce_kernel", [1, 1, 1]),
    ]
    probe = {"verdict": "PASS", "case": {**_b0_case("fused", "step"), "plan": 4, "plan_hw": 8}}
    probe["kernels"] = [_sim_kernel("k<whole>", [1, 1, 1], warp_insn=300)]
    sim = {"results": [plain, probe]}
    grids = {
        "blocks": {"b0": [1, 8, 8, 8, 8, 1, 3]},
        "grids": {"fused|step|b0|4": [[4, 1, 1]], "fused|step|b0|2": [[4, 1, 1], [1, 1, 1]]},
        "kernels": {"fused|step|b0|4": ["k<whole>"], "fused|step|b0|2": ["k<split>", "splitk_reduce_kernel"]},
    }
    (four,) = cm.layer_runs(sim, grids, 4)
    assert four.sim_shape[0] == 1 and [k.name for k in four.kernels] == ["k<whole>"]
    assert four.kernels[0].warp_insn == pytest.approx(300 * 4)
    (two,) = cm.layer_runs(sim, grids, 2)  # the plain case is the target itself; the probe is not batch 2's
    assert two.simulated and two.kernels[0].name == "k<split>"
    assert cm.layer_runs({"results": [probe]}, grids, 1) == []  # its shape is batch 1's, its kernels are not
    # nor the plan of another input size (the launcher plans batch 4 of a 16 x 16 input otherwise)
    other = {**probe, "case": {**probe["case"], "plan_hw": 16}}
    (four,) = cm.layer_runs({"results": [plain, other]}, grids, 4)
    assert four.kernels[0].name == "k<split>"


def test_import_cache_takes_results_valid_for_todays_sources(tmp_path, monkeypatch):
    monkeypatch.setattr(simlib, "nvcc_version", lambda: "nvcc-test")
    monkeypatch.setattr(simlib, "launch_fingerprint", lambda exe, case: f"fp-of-{exe}")
    src, dst = tmp_path / "other", tmp_path / "mine"
    src.mkdir()
    dst.mkdir()
    case = simlib.Case("fused", "eval", 1, 8, 8, 8, 8, 1, 3)

    def entry(name, kernel_hash, **kw):
        d = {
            "case": {**case.__dict__},
            "kernel_hash": kernel_hash,
            "config": "GTX1080Ti",
            "verdict": "PASS",
            "key": "old",
            "kernels": [],
            **kw,
        }
        (src / f"{name}.json").write_text(json.dumps(d))

    entry("legacy", simlib.legacy_kernel_hash("fused"))  # cached by a byte-hashing checkout, same sources
    entry("stale", "0123456789abcdef")  # other kernel sources, no fingerprint: cannot be checked
    entry("other_cfg", simlib.kernel_hash("fused"), config="SM6_TITANX")
    entry("failed", simlib.kernel_hash("fused"), verdict="FAIL")
    entry("fingerprinted", "0123456789abcdef", fingerprint="fp-elsewhere", config_hash="cfg")  # taken as is
    entry("fp_other_cfg", "0123456789abcdef", fingerprint="fp-x", config_hash="patched-differently")
    built = []
    exe_for = lambda impl, dtype: built.append((impl, dtype)) or f"{impl}-{dtype}"  # noqa: E731
    assert simlib.import_cache(src, dst, "GTX1080Ti", "cfg", exe_for, log=lambda m: None) == 2
    assert built == [("fused", "f32")]  # only the legacy result needed today's program
    got = {json.loads(f.read_text())["fingerprint"]: f for f in dst.glob("*.json")}
    assert set(got) == {"fp-of-fused-f32", "fp-elsewhere"}
    for fp, f in got.items():
        d = json.loads(f.read_text())
        assert f.stem == d["key"] == simlib.cache_key(case, "cfg", fp) and d["config_hash"] == "cfg"
    assert simlib.import_cache(src, dst, "GTX1080Ti", "cfg", exe_for, log=lambda m: None) == 0  # already there

    # a run_cases.py --json file (the committed data) seeds a fresh cache the same way
    results = [json.loads(f.read_text()) for f in sorted(src.glob("*.json"))]
    data = tmp_path / "sim.json"
    data.write_text(json.dumps({"config": "GTX1080Ti", "results": results}))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert simlib.import_cache(data, fresh, "GTX1080Ti", "cfg", exe_for, log=lambda m: None) == 2
    assert {json.loads(f.read_text())["fingerprint"] for f in fresh.glob("*.json")} == set(got)
    assert sorted(f.name for f in fresh.glob("*.json")) == sorted(f.name for f in dst.glob("*.json"))


def test_line_stats_profiles_one_kernel_by_opcode_and_loop_level(tmp_path, capsys):
    """tools/sim/line_stats.py: a kernel's lines of gpgpu_inst_stats.txt, by opcode and by execution count; lines
    of another kernel, or of another PTX file, never count."""
    ptx = "\n".join(
        [
            ".visible .entry _Z3fooPf(",  # 1
            "{",
            "mov.u32 %r1, %tid.x;",  # 3: once per thread
            "fma.rn.f32 %f1, %f2, %f3, %f1;",  # 4: in the loop
            "fma.rn.f32 %f4, %f2, %f3, %f4;",  # 5
            "@%p1 bra $L1;",  # 6
            "}",
            ".visible .entry _Z3barPf(",  # 8
            "{",
            "add.s64 %rd1, %rd2, 8;",  # 10
            "}",
        ]
    )
    (tmp_path / "prog.1.sm_75.ptx").write_text(ptx)
    (tmp_path / "gpgpu_inst_stats.txt").write_text(
        "kernel line : count latency\n"
        "prog.1.sm_75.ptx 3 : 64 0\nprog.1.sm_75.ptx 4 : 640 0\nprog.1.sm_75.ptx 5 : 640 0\n"
        "prog.1.sm_75.ptx 6 : 640 0\nprog.1.sm_75.ptx 10 : 999 0\nother.ptx 4 : 5 0\n"
    )
    assert line_stats.kernel_ranges(ptx) == {"_Z3fooPf": (1, 7), "_Z3barPf": (8, 11)}
    assert line_stats.opcode("  @%p1 bra $L1;") == "bra"
    counts = line_stats.line_counts((tmp_path / "gpgpu_inst_stats.txt").read_text(), "prog.1.sm_75.ptx")
    prof = line_stats.profile(ptx, counts, 1, 7)
    assert prof["total"] == 64 + 3 * 640
    assert prof["by_opcode"] == {"fma.rn.f32": 1280, "bra": 640, "mov.u32": 64}
    assert prof["by_count"] == {640: 3, 64: 1}
    assert line_stats.main([str(tmp_path), "foo"]) == 0
    out = capsys.readouterr().out
    assert "_Z3fooPf: 1,984 thread instructions" in out and "add.s64" not in out
    assert line_stats.main([str(tmp_path), "nothing"]) == 1
