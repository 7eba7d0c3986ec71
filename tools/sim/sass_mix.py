"""SASS / PTX instruction ratios of the simulated kernels, per kernel and GPU architecture.

The simulator executes PTX (compute_75, what the simulation build embeds); a GPU executes SASS. For every
kernel of a host program this compiles the same source to PTX and to SASS (sm_75, sm_86: nvcc -cubin,
disassembled with cuobjdump -sass) and compares the instruction counts of the loop bodies: the innermost
loops (a backward branch closes a loop) of the PTX and of the SASS, summed, or the whole kernel when
either has no loop. bench/cost_model.py multiplies the simulator's executed (PTX) warp-instruction counts
by these ratios to estimate SASS counts for sm_75 / sm_86 / sm_89 GPUs.

Needs nvcc and cuobjdump + nvdisasm (CUDA toolkit, or the copies in the `triton` wheel; $CUOBJDUMP
overrides). Usage: python tools/sim/sass_mix.py [--archs sm_75 sm_86] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import simlib  # noqa: E402


def cuobjdump() -> tuple[str, dict]:
    """cuobjdump and an environment in which it finds nvdisasm."""
    env = dict(os.environ)
    cand = [os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump")]
    try:
        import triton  # its wheel carries cuobjdump and nvdisasm

        tb = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
        cand.append(str(tb / "cuobjdump"))
        env["PATH"] = f"{tb}:{env.get('PATH', '')}"
    except ImportError:
        pass
    for c in cand:
        if c and Path(c).exists():
            return c, env
    raise SystemExit("no cuobjdump: install the CUDA toolkit's, or the `triton` wheel, or set CUOBJDUMP")


def _loops(addrs: list, targets: dict) -> list[tuple[int, int]]:
    """(start index, end index) of each loop: a branch at i to an earlier index t closes loop [t, i]."""
    out = []
    for i, t in targets.items():
        if t is not None and t <= i:
            out.append((t, i))
    return out


def _innermost(loops: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [l for l in loops if not any(o != l and l[0] <= o[0] and o[1] <= l[1] for o in loops)]


def sass_functions(text: str) -> dict[str, list[str]]:
    funcs, cur = {}, None
    for ln in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", ln)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", ln)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2).strip()))
    return funcs


def sass_counts(insts: list) -> dict:
    addrs = [a for a, _ in insts]
    index = {a: i for i, a in enumerate(addrs)}
    targets = {}
    for i, (_, op) in enumerate(insts):
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", op)
        if m:
            targets[i] = index.get(int(m.group(1), 16))
    inner = _innermost(_loops(addrs, targets))

    loop_n = sum(sum(1 for _, op in insts[a : b + 1] if not op.startswith("NOP")) for a, b in inner)
    return {"total": len([op for _, op in insts if not op.startswith("NOP")]), "loop": loop_n, "loops": len(inner)}


def ptx_functions(text: str) -> dict[str, list[str]]:
    funcs, cur, depth = {}, None, 0
    for ln in text.splitlines():
        m = re.match(r"\s*(?:\.visible\s+|\.weak\s+)?\.entry\s+(\w+)", ln)
        if m:
            cur, depth = funcs.setdefault(m.group(1), []), 0
            continue
        if cur is None:
            continue
        s = ln.split("//")[0].strip()
        if not s:
            continue
        depth += s.count("{") - s.count("}")
        if depth <= 0 and "}" in s:
            cur = None
            continue
        cur.append(s)
    return funcs


def ptx_counts(lines: list[str]) -> dict:
    labels, insts = {}, []
    for s in lines:
        m = re.match(r"^(\$?\w+):$", s)
        if m:
            labels[m.group(1)] = len(insts)
            continue
        if s.startswith(".") or s in ("{", "}"):
            continue
        insts.append(s)
    targets = {}
    for i, s in enumerate(insts):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$?\w+)\s*;", s)
        if m:
            targets[i] = labels.get(m.group(1))
    inner = _innermost(_loops(list(range(len(insts))), targets))
    loop_n = sum(b - a + 1 for a, b in inner)
    return {"total": len(insts), "loop": loop_n, "loops": len(inner)}


def build_text(src: Path, dtype_flag: str, kind: str, arch: str, tmp: Path) -> str:
    out = tmp / f"{src.stem}_{arch}.{kind}"
    cmd = [
        simlib.nvcc_path(),
        "-O3",
        "-std=c++17",
        f"-I{simlib.ROOT / 'csrc'}",
        f"-I{simlib.SIM_DIR}",
        dtype_flag,
        str(src),
        "-o",
        str(out),
    ]
    cmd += ["-ptx", f"-arch=compute_{arch[3:]}"] if kind == "ptx" else ["-cubin", f"-arch={arch}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"nvcc failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    if kind == "ptx":
        return out.read_text()
    tool, env = cuobjdump()
    r = subprocess.run([tool, "-sass", str(out)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed: {r.stderr[-2000:]}")
    return r.stdout


def ratios(archs: list[str], programs=("fused", "unfused")) -> dict:
    """{arch: {mangled kernel name: {ptx, sass, basis, ratio}}}."""
    out: dict = {a: {} for a in archs}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for prog in programs:
            src = simlib.SIM_DIR / simlib.PROGRAMS[prog][0]
            ptx = ptx_functions(build_text(src, "-DSIM_DTYPE=0", "ptx", "sm_75", tmp))
            pc = {k: ptx_counts(v) for k, v in ptx.items()}
            for arch in archs:
                sass = sass_functions(build_text(src, "-DSIM_DTYPE=0", "cubin", arch, tmp))
                for name, insts in sass.items():
                    if name not in pc:
                        continue
                    sc, p = sass_counts(insts), pc[name]
                    use_loop = sc["loops"] == p["loops"] > 0 and p["loop"] > 0  # same loop structure, else unmatched
                    basis = "innermost loop bodies" if use_loop else "whole kernel"
                    r = sc["loop"] / p["loop"] if use_loop else sc["total"] / max(1, p["total"])
                    out[arch][name] = {"ptx": p, "sass": sc, "basis": basis, "ratio": round(r, 4)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["sm_75", "sm_86"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    res = ratios(a.archs)
    text = json.dumps({"kernel_hash": {p: simlib.kernel_hash(p) for p in simlib.PROGRAMS}, "ratios": res}, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    else:
        print(text)
    for arch, d in res.items():
        for k, v in sorted(d.items()):
            print(f"{arch} {k[:60]:60s} {v['basis']:22s} {v['ratio']:.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
