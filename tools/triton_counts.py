"""Executed SASS instructions of the Triton kernels, per launch, on an arch no machine here has.

A GPU executes SASS; no simulator here runs Triton's kernels (GPGPU-Sim has no driver API, and its PTX
mode has no `mma.sync`). What this counts instead, per launch the launchers make for a block of the
classifier (recorded on `meta` tensors as tools/report_triton.py records them):

1. the static SASS of the launch's specialisation (`triton.compile` for the arch, `nvdisasm -g`): every
   instruction with the kernel source line it came from (Triton compiles with line info) and the loops
   (a backward branch closes one);
2. how often each source line runs in one program (one CUDA block): the same kernel, same arguments and
   config, run in Triton's interpreter for a few sampled programs, with a line tracer;
3. per program, each instruction runs once per warp times the trip count of its innermost SASS loop. A
   SASS loop's closing branch carries the line of the source `for` it comes from; the tracer counts that
   loop's iterations (its line's runs less its entries). Loops the compiler unrolled are not SASS loops:
   their copies sit in the enclosing one. Instructions outside every loop run once, unless no sampled
   program ran their line.

Control flow in these kernels does not depend on tensor values (masks, not branches, handle edges), so the
interpreter's trip counts are the GPU's; the line tracer sees a program's loops as the source has them, so
this is exact up to the compiler moving code across a loop boundary (hoisting, software pipelining). The
check that it holds: the tensor-core instructions counted must do exactly the multiply-adds of the launch's
GEMM (tests/test_triton_counts.py). Sampling programs goes through the interpreter's GridExecutor internals
(triton 3.8, the version torch 2.14.1 pins).

    python tools/triton_counts.py --blocks b3 --dtypes float16 --modes eval        # each launch's totals
    python tools/triton_counts.py --out bench/data/triton_sm86.json                # every block, the model's input
"""

from __future__ import annotations

import argparse
import ast
import collections
import functools
import inspect
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "sim"))
import report_triton as R  # noqa: E402

MODES = {"eval": ("eval",), "step": ("train", "backward")}


def hmma_macs(op: str) -> int:
    """Multiply-adds of one warp's HMMA: HMMA.16816 is m16 n8 k16, HMMA.1688 m16 n8 k8, HMMA.1684 m16 n8 k4."""
    m = re.match(r"HMMA\.(16)(8)(\d+)", op)
    if not m:
        raise ValueError(f"unknown tensor-core shape {op!r}")
    return 16 * 8 * int(m.group(3))


# ---- SASS --------------------------------------------------------------------------------------------


def _nvdisasm() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    return str(path) if path.exists() else "nvdisasm"


def sass(fn, sig, consts, attrs, options, arch: int) -> tuple[str, object]:
    """nvdisasm -g text of the launch's cubin, and the compiled kernel (its metadata)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    compiled = triton.compile(
        ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", arch, 32), options=options.__dict__
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        res = subprocess.run([_nvdisasm(), "-g", "-c", f.name], capture_output=True, text=True, check=True)
    return res.stdout, compiled


_LINE = re.compile(r'\s*//## File "([^"]+)", line (\d+)')
_LABEL = re.compile(r"^(\.L_x_\d+):")
_INSN = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def parse(text: str) -> list[dict]:
    """Instructions in order: {op, line: (file name, line) or None, target: index of a branch target}."""
    insts, labels, line = [], {}, None
    for ln in text.splitlines():
        m = _LINE.match(ln)
        if m:
            line = (Path(m.group(1)).name, int(m.group(2)))
            continue
        m = _LABEL.match(ln)
        if m:
            labels[m.group(1)] = len(insts)
            continue
        m = _INSN.match(ln)
        if m:
            t = re.search(r"`\((\.L_x_\d+)\)", m.group(4))
            insts.append(dict(op=m.group(3), args=m.group(4), line=line, target=t.group(1) if t else None))
    for i in insts:
        i["target"] = labels.get(i["target"]) if i["target"] else None
    return insts


def loops(insts: list[dict]) -> list[tuple[int, int]]:
    """[start, end] index ranges closed by a backward branch, outermost first (not the trap after the last
    EXIT, a branch to itself)."""
    out = [(i["target"], j) for j, i in enumerate(insts) if i["target"] is not None and i["target"] < j]
    return sorted(set(out), key=lambda se: (se[0], -se[1]))


# ---- the interpreter's line counts ---------------------------------------------------------------------


def _interpreted(name: str):
    from triton.runtime.interpreter import InterpretedFunction

    fn = getattr(R.kernels(interpret=True), name)
    while not isinstance(fn, InterpretedFunction):
        fn = fn.fn
    return fn


def _host(a):
    """A CPU stand-in for a meta tensor: zeros over a storage as large as the meta tensor's, viewed with its
    shape, strides and offset (a workspace view may be a window of a larger buffer). Control flow in the
    kernels does not depend on values."""
    import torch

    if not isinstance(a, torch.Tensor):
        return a
    elems = -(-a.untyped_storage().nbytes() // a.element_size())
    return torch.zeros(max(elems, 1), dtype=a.dtype).as_strided(a.shape, a.stride(), a.storage_offset())


def sample_programs(grid: tuple[int, int, int], n: int) -> list[tuple[int, int, int]]:
    """``n`` programs spread evenly over the grid (x fastest), the first and the last among them."""
    total = grid[0] * grid[1] * grid[2]
    picks = sorted({round(i * (total - 1) / (n - 1)) for i in range(n)}) if n > 1 else [0]
    return [(p % grid[0], (p // grid[0]) % grid[1], p // (grid[0] * grid[1])) for p in picks]


def line_counts(name: str, args, kwargs, cfg, grid, samples: int):
    """Mean runs per program of each (file, line), mean iterations per program of each `for` line, the
    full grid, and [(runs, iterations)] of each sampled program."""
    from triton.runtime import interpreter as interp

    kw = dict(kwargs)
    if cfg is not None:
        kw.update(cfg.kwargs)
    for o in ("num_warps", "num_stages"):
        kw.pop(o, None)
    host_args = [_host(a) for a in args]
    kernel_dir = str(R.KERNELS_DIR)
    fors = for_loops()
    per_program, per_iterations, full = [], [], []
    last: dict = {}  # frame -> its previous line

    def tracer(frame, event, arg):
        if not frame.f_code.co_filename.startswith(kernel_dir):
            return None
        if event == "line":
            line = (Path(frame.f_code.co_filename).name, frame.f_lineno)
            counts[line] += 1
            end = fors.get(line)
            if end is not None:  # a `for` line runs once per iteration and once more per entry
                prev = last.get(frame)
                entered = prev is None or not (line[1] <= prev <= end)
                iterations[line] += 0 if entered else 1
            last[frame] = frame.f_lineno
        return tracer

    def run_sampled(self, *args_dev, **kwargs_dev):  # GridExecutor.__call__ on sampled programs only
        nonlocal counts, iterations
        spec = inspect.getfullargspec(self.fn)
        kwargs_dev = {k: v for k, v in kwargs_dev.items() if k in spec.args}
        args_hst, kwargs_hst = self._init_args_hst(args_dev, kwargs_dev)
        scope = interp._patch_lang(self.fn)
        try:
            a = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
            a = {k: v if k in self.constexprs else interp._implicit_cvt(v) for k, v in a.items()}
            g = tuple(self.grid(a) if callable(self.grid) else self.grid)
            g = g + (1,) * (3 - len(g))
            full.append(g)
            interp.interpreter_builder.set_grid_dim(*g)
            for pid in sample_programs(g, samples):
                counts, iterations = collections.Counter(), collections.Counter()
                interp.interpreter_builder.set_grid_idx(*pid)
                sys.settrace(tracer)
                try:
                    self.fn(**a)
                finally:
                    sys.settrace(None)
                    last.clear()
                per_program.append(counts)
                per_iterations.append(iterations)
        finally:
            scope.restore()

    counts, iterations = collections.Counter(), collections.Counter()
    saved = interp.GridExecutor.__call__
    interp.GridExecutor.__call__ = run_sampled
    try:
        _interpreted(name)[grid](*host_args, **kw)
    finally:
        interp.GridExecutor.__call__ = saved
    total = math.prod(full[0])
    return _mean(per_program, total), _mean(per_iterations, total), full[0], list(zip(per_program, per_iterations))


def _mean(counters: list, total: int) -> dict:
    """Per-program mean over the grid: the last sample stands for the last program (a tail tile group), the
    others for the rest, evenly."""
    if len(counters) == 1:
        return dict(counters[0])
    w = [(total - 1) / (len(counters) - 1)] * (len(counters) - 1) + [1.0]
    keys = set().union(*counters)
    return {k: sum(wi * c[k] for wi, c in zip(w, counters)) / total for k in keys}


# ---- executed counts ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def for_loops() -> dict:
    """{(file name, line of a `for`): last line of its body} over the kernel sources."""
    out = {}
    for path in R.KERNELS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.For):
                out[(path.name, node.lineno)] = node.end_lineno
    return out


def multiplicities(insts: list[dict], runs: dict, iterations: dict, fors: dict | None = None) -> list[float]:
    """Times each instruction runs per warp and program: the iterations per program of the source loop of
    its innermost SASS loop (1 outside every loop)."""
    fors = for_loops() if fors is None else fors
    lps = loops(insts)
    inner_of = {}  # instruction index -> its innermost loop
    for lp in lps:  # outermost first: inner loops overwrite
        for j in range(lp[0], lp[1] + 1):
            inner_of[j] = lp
    trips = {}
    for lp in lps:
        header = insts[lp[1]]["line"]
        if header not in fors:
            raise ValueError(f"a SASS loop closes at {header}, not at a `for` of the kernel sources")
        trips[lp] = iterations.get(header, 0.0)
    out = []
    for j, i in enumerate(insts):
        if j in inner_of:
            out.append(trips[inner_of[j]])
        else:
            out.append(0.0 if i["line"] in _traced_but_idle(runs, i["line"]) else 1.0)
    return out


def _traced_but_idle(runs: dict, line) -> set:
    """{line} when the tracer saw the line's file run but never this line (code on a branch not taken)."""
    if line is None or line in runs or not any(f == line[0] for f, _ in runs):
        return set()
    return {line}


def _width(op: str) -> int:
    """Bytes per lane of a memory instruction (.128 / .64 / .U16 ...; 4 by default)."""
    for tag, b in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if tag in op:
            return b
    return 4


def classify(op: str) -> str:
    base = op.split(".")[0]
    if base == "HMMA":
        return "hmma"
    if base in ("FFMA", "FMUL", "FADD", "HFMA2", "HMUL2", "HADD2", "DFMA"):
        return "fma"
    if base in ("LDG", "LDGSTS", "STG", "LDS", "LDSM", "STS", "RED", "ATOM", "ATOMG", "LDL", "STL"):
        return base.lower()
    if base in ("BAR", "SHFL"):
        return base.lower()
    return "other"


def executed(insts: list[dict], mult: list[float], num_warps: int) -> dict:
    """Warp instructions per program by class, global bytes, shared-memory wavefronts, tensor-core MACs."""
    c = collections.Counter()
    for i, m in zip(insts, mult):
        if m == 0:
            continue
        op, k = i["op"], classify(i["op"])
        n = m * num_warps
        c["warp_insn"] += n
        c[k] += n
        if k == "hmma":
            c["mma_macs"] += n * hmma_macs(op)
        elif k == "fma":
            c["fma_lanes"] += n * 32 * (2 if op.startswith(("HFMA2", "HMUL2", "HADD2")) else 1)
        if k in ("ldg", "ldgsts"):
            c["global_load_bytes"] += n * 32 * _width(op)
        if k in ("stg", "red", "atom", "atomg"):
            c["global_store_bytes"] += n * 32 * _width(op)
        if k in ("lds", "sts", "ldgsts"):
            c["shared_wavefronts"] += n * max(1, 32 * _width(op) // 128)
        if k == "ldsm":  # ldmatrix: .x4 moves four 8x8 16-bit matrices (512 B) per warp
            c["shared_wavefronts"] += n * {"": 1, "2": 2, "4": 4}[re.search(r"88\.?(\d?)", op).group(1)]
    return dict(c)


# ---- launches of a block ------------------------------------------------------------------------------


def block_layer(label: str, batch: int, channels_last: bool = False) -> tuple:
    """(N, C, K, H, W, stride, channels_last) of the classifier's block ``label`` at ``batch``."""
    import run_cases

    n, c, k, h, w, s, _ = run_cases.block_shapes(batch, 3)[label]
    return (n, c, k, h, w, s, channels_last)


def launches(layer: tuple, dtype: str, tf32: bool, mode: str, arch: int, sms: int) -> list:
    log: list = []
    with R._recording(arch, log, sms) as launch:
        R._primitives(launch, layer, dtype, tf32, ops=MODES[mode])
    return log


def count_block(layer: tuple, dtype: str, tf32: bool, mode: str, arch=86, sms=28, samples=2, log=None) -> list:
    """One row per launch and config the autotuner would time for it, the launches planned for a GPU of
    ``sms`` multiprocessors: the launch's grid, warps, registers, shared memory and executed counts per
    program (mean over the sampled programs; the spread of warp_insn alongside)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    backend = make_backend(GPUTarget("cuda", arch, 32))
    rows = []
    for index, (name, args, kwargs, grid) in enumerate(launches(layer, dtype, tf32, mode, arch, sms)):
        for cfg in R.configs(name, args, kwargs, arch, pruned=True):
            options, sig, consts, attrs = R.specialise(name, args, kwargs, cfg, backend)
            text, compiled = sass(R._jit(getattr(R.kernels(), name)), sig, consts, attrs, options, arch)
            insts = parse(text)
            runs, iters, full, per_program = line_counts(name, args, kwargs, cfg, grid, samples)
            per = [executed(insts, multiplicities(insts, *p), options.num_warps)["warp_insn"] for p in per_program]
            rows.append(
                dict(
                    launch=index,
                    kernel=name,
                    config=None
                    if cfg is None
                    else {**cfg.kwargs, "num_warps": cfg.num_warps, "stages": cfg.num_stages},
                    grid=list(full),
                    num_warps=options.num_warps,
                    registers=int(re.search(r"SHI_REGISTERS=(\d+)", text).group(1)),
                    shared_bytes=int(compiled.metadata.shared),
                    static_insn=len(insts),
                    per_program=executed(insts, multiplicities(insts, runs, iters), options.num_warps),
                    warp_insn_spread=[min(per), max(per)],
                )
            )
            if log:
                log(
                    f"{name} {rows[-1]['config']} grid {full}: {rows[-1]['per_program'].get('warp_insn', 0):.0f} warp insn/program"
                )
    return rows


#: the GPUs whose launches are counted (the launchers size pixel groups by the multiprocessors), sm_86 SASS for
#: both (bench/cost_model.py reads the RTX 4090's sm_89 as sm_86 too)
GPUS = {"RTX 3060": 28, "RTX 4090": 128}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", nargs="+", default=[f"b{i}" for i in range(1, 10)])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dtypes", nargs="+", default=["float16", "float32-tf32"], help="DTYPE[-tf32]")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--gpus", nargs="+", default=list(GPUS), choices=list(GPUS))
    ap.add_argument("--arch", type=int, default=86)
    ap.add_argument("--samples", type=int, default=2, help="programs run in the interpreter per launch")
    ap.add_argument("--out", help="write the rows (JSON) here")
    a = ap.parse_args(argv)
    t0, out = time.time(), []
    for gpu in a.gpus:
        for block in a.blocks:
            for dt in a.dtypes:
                for mode in a.modes:
                    dtype, tf32 = dt.split("-")[0], dt.endswith("-tf32")
                    layer = block_layer(block, a.batch)
                    rows = count_block(layer, dtype, tf32, mode, a.arch, GPUS[gpu], a.samples)
                    for r in rows:
                        out.append(
                            dict(gpu=gpu, block=block, batch=a.batch, dtype=dt, mode=mode, arch=f"sm_{a.arch}", **r)
                        )
                        programs = r["grid"][0] * r["grid"][1] * r["grid"][2]
                        pp = {k: v * programs for k, v in r["per_program"].items()}
                        print(
                            f"[{time.time() - t0:.0f}s] {gpu} {block} {dt} {mode} {r['kernel']} {r['config'] or ''} "
                            f"grid {r['grid']} w{r['num_warps']} regs {r['registers']}: "
                            f"{pp.get('warp_insn', 0) / 1e6:.2f} M warp insn, {pp.get('mma_macs', 0) / 1e9:.3f} G MMA MACs",
                            file=sys.stderr,
                            flush=True,
                        )
    if a.out:
        Path(a.out).write_text(json.dumps({"rows": out}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
