"""Ahead-of-time compile report of the Triton kernels: registers, shared memory, spills, occupancy.

No GPU needed: every kernel is compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda",
arch, 32))`` with the same constexprs and launch options the launchers use on a GPU
(``triton_kernels.config``), and the resulting PTX is assembled by the ptxas Triton ships, whose ``-v``
output gives registers and spill bytes. Shared memory is Triton's dynamic allocation
(``metadata.shared``). Occupancy is theoretical: resident warps per SM allowed by registers, shared
memory, warps and blocks per SM, over the SM's maximum warps.

    python tools/report_triton.py            # markdown table, every kernel x variant x arch
    rows() -> list[dict]                      # for tools/compile_report.py

The kernels are loaded as a private copy of fused_dsconv/triton_kernels.py decorated for compilation,
whatever TRITON_INTERPRET says (the interpreter's kernels cannot be compiled).
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS_FILE = ROOT / "fused_dsconv" / "triton_kernels.py"
ARCHS = (75, 80, 86, 89)

# Per-SM limits (CUDA C Programming Guide, "Compute capabilities" table): max resident warps, max resident
# blocks, shared memory per SM usable by blocks (bytes), shared memory the driver reserves per block.
SM_LIMITS = {
    75: dict(warps=32, blocks=16, smem=64 * 1024, reserved=0),
    80: dict(warps=64, blocks=32, smem=164 * 1024, reserved=1024),
    86: dict(warps=48, blocks=16, smem=100 * 1024, reserved=1024),
    89: dict(warps=48, blocks=24, smem=100 * 1024, reserved=1024),
}
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256

_TK = None


def kernels():
    """fused_dsconv/triton_kernels.py loaded for compilation (TRITON_INTERPRET off while it is decorated)."""
    global _TK
    if _TK is None:
        saved = os.environ.pop("TRITON_INTERPRET", None)
        try:
            name = "fused_dsconv._triton_kernels_aot"
            spec = importlib.util.spec_from_file_location(name, KERNELS_FILE)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        finally:
            if saved is not None:
                os.environ["TRITON_INTERPRET"] = saved
        _TK = mod
    return _TK


def _ptxas() -> str:
    import triton
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return str(path) if path.exists() else "ptxas"


def occupancy(arch: int, regs: int, shared: int, num_warps: int) -> float:
    lim = SM_LIMITS[arch]
    regs_per_warp = -(-max(regs, 1) * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    blocks = min(lim["blocks"], lim["warps"] // num_warps, (REGS_PER_SM // regs_per_warp) // num_warps)
    if shared:
        blocks = min(blocks, lim["smem"] // (shared + lim["reserved"]))
    return blocks * num_warps / lim["warps"]


def _tdt(dtype: str) -> str:
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype]


def variants():
    """(kernel name, variant label, signature pointer types, constexprs, num_warps, num_stages) per variant.

    Tile constexprs and launch options come from triton_kernels.config / *_config, the tables the
    launchers use on a GPU. Integer arguments are i32, as Triton types them for tensors below 2**31
    elements (a runtime value of 1 is specialised to a constexpr; "d1" variants compile that case).
    """
    import torch
    tk = kernels()
    out = []
    for dtype, c, k in (("float32", 128, 256), ("float16", 128, 256), ("bfloat16", 128, 256)):
        tdt = _tdt(dtype)
        cfg = tk.config(getattr(torch, dtype), c, k)
        mode = 0 if dtype == "float32" else 1
        tiles = dict(BLOCK_P=cfg.BLOCK_P, BLOCK_C=cfg.BLOCK_C, BLOCK_K=cfg.BLOCK_K)
        base = f"{dtype} P{cfg.BLOCK_P} C{cfg.BLOCK_C} K{cfg.BLOCK_K} w{cfg.num_warps}"
        act = {"x_ptr": tdt, "wd_ptr": tdt, "wp_ptr": tdt, "y_ptr": tdt, "g_ptr": tdt, "dt_ptr": "fp32",
               "bias_ptr": "fp32", "ws_ptr": "fp32", "coef_ptr": "fp32"}
        for stride in (1, 2):
            out.append(("dsconv_fwd_kernel", f"eval {base} s{stride}", act,
                        dict(STRIDE=stride, HAS_BIAS=True, RELU=True, STATS=False, DOT_MODE=mode, DEBUG=False,
                             DROP_BOUNDS=False, **tiles), cfg.num_warps, cfg.num_stages))
        out.append(("dsconv_fwd_kernel", f"train {base} s1", act,
                    dict(STRIDE=1, HAS_BIAS=True, RELU=False, STATS=True, DOT_MODE=mode, DEBUG=False,
                         DROP_BOUNDS=False, **tiles), cfg.num_warps, cfg.num_stages))
        if dtype == "float16":  # NCHW with dilation 1: dil, sxw, syw arrive as constexpr 1
            out.append(("dsconv_fwd_kernel", f"eval {base} s1 d1", act,
                        dict(STRIDE=1, HAS_BIAS=True, RELU=True, STATS=False, DOT_MODE=mode, DEBUG=False,
                             DROP_BOUNDS=False, dil=1, sxw=1, syw=1, **tiles), cfg.num_warps, cfg.num_stages))
        for kernel, which in (("dsconv_bwd_dt_kernel", "dt"), ("dsconv_bwd_dwp_kernel", "dwp")):
            bc = tk.config(getattr(torch, dtype), c, k, which)
            out.append((kernel, f"train {dtype} P{bc.BLOCK_P} C{bc.BLOCK_C} K{bc.BLOCK_K} w{bc.num_warps} "
                                f"st{bc.num_stages} s1", act,
                        dict(STRIDE=1, TRAIN=True, DOT_MODE=mode, DEBUG=False, BLOCK_P=bc.BLOCK_P,
                             BLOCK_C=bc.BLOCK_C, BLOCK_K=bc.BLOCK_K), bc.num_warps, bc.num_stages))
        dx = tk.dx_config()
        out.append(("dsconv_bwd_dx_kernel", f"{dtype} P{dx[0]} C{dx[1]} w8 s2",
                    {"dt_ptr": "fp32", "wd_ptr": tdt, "dx_ptr": tdt},
                    dict(STRIDE=2, BLOCK_P=dx[0], BLOCK_C=dx[1], DEBUG=False), 8, 1))
        bp, bk = tk.ew_config()
        out.append(("bn_relu_kernel", f"{dtype} P{bp} K{bk} w8", {"y_ptr": tdt, "out_ptr": tdt, "coef_ptr": "fp32"},
                    dict(BLOCK_P=bp, BLOCK_K=bk, DEBUG=False), 8, 1))
        out.append(("bn_bwd_reduce_kernel", f"train {dtype} P{bp} K{bk} w8",
                    {"g_ptr": tdt, "y_ptr": tdt, "coef_ptr": "fp32", "ws_ptr": "fp32"},
                    dict(TRAIN=True, BLOCK_P=bp, BLOCK_K=bk, DEBUG=False), 8, 1))
        if dtype == "float16":
            # The other specialisations the backend launches, so none first compiles on a user's GPU:
            # recompute-mode y (no bias, no ReLU, no statistics), eval backward at stride 2, debug asserts.
            out.append(("dsconv_fwd_kernel", f"y-only no-bias {base} s2", act,
                        dict(STRIDE=2, HAS_BIAS=False, RELU=False, STATS=False, DOT_MODE=mode, DEBUG=False,
                             DROP_BOUNDS=False, **tiles), cfg.num_warps, cfg.num_stages))
            out.append(("dsconv_fwd_kernel", f"eval DEBUG {base} s1", act,
                        dict(STRIDE=1, HAS_BIAS=True, RELU=True, STATS=False, DOT_MODE=mode, DEBUG=True,
                             DROP_BOUNDS=False, **tiles), cfg.num_warps, cfg.num_stages))
            for kernel, which in (("dsconv_bwd_dt_kernel", "dt"), ("dsconv_bwd_dwp_kernel", "dwp")):
                bc = tk.config(getattr(torch, dtype), c, k, which)
                out.append((kernel, f"eval {dtype} P{bc.BLOCK_P} C{bc.BLOCK_C} K{bc.BLOCK_K} w{bc.num_warps} "
                                    f"st{bc.num_stages} s2", act,
                            dict(STRIDE=2, TRAIN=False, DOT_MODE=mode, DEBUG=False, BLOCK_P=bc.BLOCK_P,
                                 BLOCK_C=bc.BLOCK_C, BLOCK_K=bc.BLOCK_K), bc.num_warps, bc.num_stages))
            out.append(("bn_bwd_reduce_kernel", f"eval {dtype} P{bp} K{bk} w8",
                        {"g_ptr": tdt, "y_ptr": tdt, "coef_ptr": "fp32", "ws_ptr": "fp32"},
                        dict(TRAIN=False, BLOCK_P=bp, BLOCK_K=bk, DEBUG=False), 8, 1))
    br, bn = tk.colsum_config()
    out.append(("colsum_kernel", f"R{br} N{bn} w4", {"ws_ptr": "fp32", "out_ptr": "fp32"},
                dict(BLOCK_R=br, BLOCK_N=bn), 4, 1))
    out.append(("bn_stats_kernel", "P64 T64 K32 w4", {"ws_ptr": "fp32", "mean_ptr": "fp32", "var_ptr": "fp32"},
                dict(BLOCK_P=64, BLOCK_T=64, BLOCK_K=32), 4, 1))
    return out


def compile_one(kernel: str, ptrs: dict, constexprs: dict, arch: int, num_warps: int, num_stages: int,
                maxnreg=None, div16=()) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn = getattr(kernels(), kernel)
    while not isinstance(fn, triton.runtime.JITFunction):  # unwrap triton.autotune
        fn = fn.fn
    sig = {a: ("constexpr" if a in constexprs else "*" + ptrs[a] if a in ptrs else "i32") for a in fn.arg_names}
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in fn.arg_names
             if a in div16 or (a in ptrs and a not in constexprs)}
    compiled = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages,
                                       # DEBUG's device asserts exist only in a debug build (TRITON_DEBUG=1)
                                       "debug": bool(constexprs.get("DEBUG", False)),
                                       **({"maxnreg": maxnreg} if maxnreg else {})})
    ptx = compiled.asm["ptx"]
    res = subprocess.run([_ptxas(), f"-arch=sm_{arch}", "-v", "-", "-o", os.devnull], input=ptx,
                         capture_output=True, text=True, check=True)
    log = res.stderr + res.stdout
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    shared = int(compiled.metadata.shared)
    return dict(registers=regs, shared_bytes=shared, spill_stores=int(spill.group(1)) if spill else 0,
                spill_loads=int(spill.group(2)) if spill else 0,
                occupancy=round(occupancy(arch, regs, shared, num_warps), 4))


def rows(archs=ARCHS, kernels_only=None, first_variant_only=False) -> list[dict]:
    """One row per kernel x variant x arch. bf16 variants are skipped on sm_75 (the backend refuses them)."""
    out, seen = [], set()
    for kernel, label, ptrs, constexprs, warps, stages in variants():
        if kernels_only is not None and kernel not in kernels_only:
            continue
        if first_variant_only and kernel in seen:
            continue
        seen.add(kernel)
        for arch in archs:
            if arch < 80 and "bfloat16" in label:
                continue
            r = compile_one(kernel, ptrs, constexprs, arch, warps, stages)
            out.append(dict(backend="triton", kernel=kernel, variant=label, arch=f"sm_{arch}", **r))
    return out


COLUMNS = ("backend", "kernel", "variant", "arch", "registers", "shared_bytes", "spill_stores", "spill_loads",
           "occupancy")


def markdown(rs) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rs:
        lines.append("| " + " | ".join(f"{r[c]:.0%}" if c == "occupancy" else str(r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    archs = tuple(int(a) for a in sys.argv[1:]) or ARCHS
    rs = rows(archs)
    print(markdown(rs))
    spills = sum(r["spill_stores"] + r["spill_loads"] for r in rs)
    print(f"\n{len(rs)} kernel builds, {spills} spill bytes in total")
    sys.exit(1 if spills else 0)
