"""Compile report of the native CUDA kernels: registers, shared memory, spills, theoretical occupancy.

Compiles csrc/kernels/instantiate_all.cuh (every kernel variant the launcher can launch, no torch):
  * sm_61 with NVRTC 12.x from PyPI (`pip install nvidia-cuda-nvrtc-cu12`), loaded with ctypes, ptxas -v;
  * sm_75 and sm_86 with nvcc (CUDA_HOME or /usr/local/cuda) -cubin -Xptxas -v;
or reads a built library's cubins (library_rows: cuobjdump -res-usage), e.g. the installed extension's.
nvcc gets the extension's device flags (fused_dsconv/_build_config.compile_args() and torch's
COMMON_NVCC_FLAGS when torch is importable), so the spills reported are the shipped build's. Results are
cached by a hash of the sources and those flags under build/.

    python tools/report_cuda.py            # markdown table
rows() -> list[dict] with keys backend, kernel, variant, arch, registers, shared_bytes, stack_bytes,
spill_stores, spill_loads, occupancy (theoretical active warps / max warps per SM).
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
TU = '#include "kernels/instantiate_all.cuh"\n'
THREADS = 256  # every kernel launches 256-thread blocks (csrc/kernels/fused.cuh: kThreads)

# Per-SM limits (CUDA occupancy calculator): regs, max warps, max blocks, smem per SM, smem per block,
# per-block reserved smem, smem allocation unit.
LIMITS = {
    "sm_61": dict(regs=65536, warps=64, blocks=32, smem=98304, smem_block=49152, reserved=0, unit=256),
    "sm_75": dict(regs=65536, warps=32, blocks=16, smem=65536, smem_block=49152, reserved=0, unit=256),
    "sm_86": dict(regs=65536, warps=48, blocks=16, smem=102400, smem_block=49152, reserved=1024, unit=128),
}


class ToolMissing(RuntimeError):
    pass


def occupancy(arch: str, registers: int, shared_bytes: int, threads: int = THREADS) -> float:
    lim = LIMITS[arch]
    warps = -(-threads // 32)
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (lim["regs"] // regs_per_warp) // warps
    smem = -(-shared_bytes // lim["unit"]) * lim["unit"] + lim["reserved"]
    by_smem = lim["smem"] // smem if smem else lim["blocks"]
    blocks = min(by_regs, by_smem, lim["blocks"], lim["warps"] // warps)
    return round(blocks * warps / lim["warps"], 4)


def _extension_nvcc_flags() -> list[str]:
    """The extension's nvcc flags (what setup.py, the JIT build and CMake pass) that change device code."""
    spec = importlib.util.spec_from_file_location("_build_config", ROOT / "fused_dsconv" / "_build_config.py")
    cfg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cfg)
    flags = [f for f in cfg.compile_args(fast=False)["nvcc"] if f != "-Xptxas=-v"]
    try:
        from torch.utils.cpp_extension import COMMON_NVCC_FLAGS
    except ImportError:  # a torch-free checkout: the torch defines only touch the fp16/bf16 operator overloads
        COMMON_NVCC_FLAGS = []
    return flags + [f for f in COMMON_NVCC_FLAGS if f not in flags]


def _sources_hash() -> str:
    h = hashlib.sha256(" ".join(_extension_nvcc_flags()).encode())
    for f in sorted((CSRC / "kernels").glob("*")):
        h.update(f.name.encode() + f.read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def _nvidia_glob(pattern: str) -> list[str]:
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    return sorted(
        p for base in (spec.submodule_search_locations if spec else []) for p in glob.glob(os.path.join(base, pattern))
    )


def _nvrtc_lib():
    cands = _nvidia_glob("cuda_nvrtc/lib/libnvrtc.so.12*")
    if not cands:
        raise ToolMissing("NVRTC 12.x not found: pip install nvidia-cuda-nvrtc-cu12==12.9.86 (sm_61 needs CUDA <= 12)")
    return ctypes.CDLL(cands[0])


def _cuda12_include() -> str:
    cands = _nvidia_glob("cuda_runtime/include/cuda_fp16.h")
    if not cands:
        raise ToolMissing("CUDA 12 headers (cuda_fp16.h) not found: pip install nvidia-cuda-runtime-cu12==12.9.79")
    return os.path.dirname(cands[0])


def ptxas_log_sm61() -> str:
    lib = _nvrtc_lib()
    inc = _cuda12_include()
    prog = ctypes.c_void_p()
    src = TU.encode()
    chk = lambda r, what: None if r == 0 else (_ for _ in ()).throw(RuntimeError(f"nvrtc {what} failed: {r}"))  # noqa
    chk(lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"instantiate_all.cu", 0, None, None), "create")
    opts = [
        b"--gpu-architecture=sm_61",
        b"-std=c++17",
        b"--ptxas-options=-v",
        b"-default-device",
        f"-I{CSRC}".encode(),
        f"-I{inc}".encode(),
    ]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    res = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    log = buf.value.decode(errors="replace")
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    if res != 0:
        raise RuntimeError(f"NVRTC sm_61 compile failed ({res}):\n{log}")
    return log


def _nvcc() -> str:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    nvcc = os.path.join(home, "bin", "nvcc")
    if not os.path.exists(nvcc):
        nvcc = shutil.which("nvcc") or ""
    if not nvcc:
        raise ToolMissing("nvcc not found (set CUDA_HOME)")
    return nvcc


def ptxas_log_nvcc(arch: str) -> str:
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "instantiate_all.cu"
        src.write_text(TU)
        cmd = [
            _nvcc(),
            "-cubin",
            f"-arch={arch}",
            *_extension_nvcc_flags(),
            "-Xptxas",
            "-v",
            f"-I{CSRC}",
            str(src),
            "-o",
            str(Path(d) / "k.cubin"),
        ]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"nvcc {arch} failed:\n{p.stderr}")
        return p.stderr + p.stdout


def _demangle(names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    p = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return dict(zip(names, p.stdout.splitlines()))


_DT = {"float": "fp32", "__half": "fp16", "__nv_bfloat16": "bf16"}


_TILES = {
    "128, 8, 8, false": "rect8x8",
    "64, 8, 16, false": "rect8x16",
    "128, 8, 8, true": "span64",
    "64, 8, 16, true": "span128",
}  # csrc/kernels/problem.cuh TileShape<BK, TH, TW, SPAN>


def _template_args(s: str) -> list[str]:
    """Top-level template arguments of 'a, b<c, d>, e' -> ['a', 'b<c, d>', 'e']."""
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += ch == "<"
        depth -= ch == ">"
        cur += ch
    return out + [cur.strip()] if cur.strip() else out


def _kernel_variant(demangled: str) -> tuple[str, str]:
    """(kernel, variant) from a demangled entry, e.g. 'void dsc::dsconv_fwd_kernel<float, dsc::TileShape<128, 8,
    8, false>, 1, 3>(dsc::Problem, float*)' -> ('dsconv_fwd_kernel', 'fp32 rect8x8 s=1 d=3')."""
    m = re.match(r"void dsc::(\w+)(?:<(.*)>)?\(", demangled)
    if not m:
        return demangled, ""
    kernel, targs = m.group(1), m.group(2)
    if not targs:
        return kernel, "-"
    parts = _template_args(targs)
    if parts[0] not in _DT:  # the dtype-free kernels (template only for linkage)
        return kernel, "-"
    v = [_DT[parts[0]]]
    rest = parts[1:]
    if rest and rest[0].startswith("dsc::TileShape<"):
        v.append(_TILES.get(rest[0][len("dsc::TileShape<") : -1], rest[0]))
        rest = rest[1:]
    # the last flag: dsconv_fwd_kernel's PAIR (two span tiles per block), dsconv_bwd_dwp_kernel's WIDE (128 x 128
    # blocks of dWp; its stride and dilation are placeholders, t coming from dsconv_dw)
    flag = len(rest) == 3 and rest[2] == "true"
    if len(rest) == 3 and rest[2] in ("true", "false"):
        rest = rest[:2]
    if flag and kernel == "dsconv_bwd_dwp_kernel":
        v.append("wide")
    elif len(rest) == 2:  # stride, dilation
        v += [f"s={rest[0]}", "d=runtime" if rest[1] == "0" else f"d={rest[1]}"]
    if flag and kernel != "dsconv_bwd_dwp_kernel":
        v.append("pairs")
    return kernel, " ".join(v)


def parse_ptxas(log: str, arch: str) -> list[dict]:
    """Rows from ptxas -v output (the report's own compile; an extension build's log, where a kernel appears
    once per translation unit that launches it, also parses: each is kept once)."""
    cur = None
    entries, seen = [], set()
    func = None  # the function whose "Function properties" the next stack / spill line describes
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for '(sm_\d+)'", line)
        if m:
            cur = {"mangled": m.group(1), "arch": m.group(2)}
            if m.group(2) == arch and m.group(1) not in seen:
                seen.add(m.group(1))
                entries.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            func = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            stack, st, ld = map(int, m.groups())
            if func in (None, cur["mangled"]):
                cur["stack_bytes"], cur["spill_stores"], cur["spill_loads"] = stack, st, ld
            else:  # a device function the kernel calls (printed after it): its spills are the kernel's too
                cur["spill_stores"] = cur.get("spill_stores", 0) + st
                cur["spill_loads"] = cur.get("spill_loads", 0) + ld
            func = None
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["registers"] = int(m.group(1))
            sm = re.search(r"(\d+) bytes smem", line)
            cur["shared_bytes"] = int(sm.group(1)) if sm else 0
    keys = ("registers", "shared_bytes", "stack_bytes", "spill_stores", "spill_loads")
    return _rows(arch, {e["mangled"]: tuple(e.get(k, 0) for k in keys) for e in entries})


def _rows(arch: str, usage: dict[str, tuple]) -> list[dict]:
    """Report rows from {mangled kernel name: (registers, shared, stack, spill stores, spill loads)}."""
    dem = _demangle(list(usage))
    rows = []
    for mangled, (regs, smem, stack, st, ld) in usage.items():
        kernel, variant = _kernel_variant(dem.get(mangled, mangled))
        rows.append(
            dict(
                backend="cuda",
                kernel=kernel,
                variant=variant,
                arch=arch,
                registers=regs,
                shared_bytes=smem,
                stack_bytes=stack,
                spill_stores=st,
                spill_loads=ld,
                occupancy=occupancy(arch, regs, smem),
            )
        )
    return sorted(rows, key=lambda r: (r["kernel"], r["variant"]))


def cuobjdump() -> str:
    """cuobjdump: the toolkit's, else the copy Triton ships with its NVIDIA backend."""
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    cands = [os.path.join(home, "bin", "cuobjdump"), shutil.which("cuobjdump")]
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        cands.append(os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "cuobjdump"))
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
    raise ToolMissing("cuobjdump not found (CUDA toolkit or Triton)")


def parse_res_usage(text: str, arch: str) -> list[dict]:
    """Rows from `cuobjdump -res-usage` of a built library (its cubins for ``arch``; a kernel that several
    translation units launch is kept once). cuobjdump gives registers, shared memory, the stack frame and
    local memory, not ptxas's spill counts; spill slots live in local memory, so a kernel with neither a
    stack frame nor local memory spills 0 bytes, and one with either gets None (unknown) for its spills."""
    found, cur_arch, func = {}, None, None
    for line in text.splitlines():
        m = re.match(r"arch = (sm_\d+)", line)
        if m:
            cur_arch = m.group(1)
            continue
        m = re.match(r"\s*Function (\w+):", line)
        if m:
            func = m.group(1)
            continue
        m = re.match(r"\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and func and cur_arch == arch:
            found.setdefault(func, tuple(map(int, m.groups())))
        func = None
    usage = {}
    for mangled, (regs, stack, smem, local) in found.items():
        spills = 0 if stack == 0 and local == 0 else None
        usage[mangled] = (regs, smem, stack, spills, spills)
    return _rows(arch, usage)


def library_rows(lib: str, arch: str) -> list[dict]:
    """Rows of a built library's kernels for ``arch`` (an installed fused_dsconv._C): no compile."""
    p = subprocess.run([cuobjdump(), "-res-usage", str(lib)], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"cuobjdump -res-usage {lib} failed:\n{p.stderr}")
    return parse_res_usage(p.stdout, arch)


def rows(archs=("sm_61", "sm_75", "sm_86"), use_cache: bool = True) -> list[dict]:
    """Report rows for every kernel variant and arch. Raises ToolMissing when a compiler is absent."""
    cache = ROOT / "build" / f"report-cuda-{_sources_hash()}.json"
    data = json.loads(cache.read_text()) if use_cache and cache.exists() else {}
    for arch in archs:
        if arch not in data:
            log = ptxas_log_sm61() if arch == "sm_61" else ptxas_log_nvcc(arch)
            data[arch] = parse_ptxas(log, arch)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(data))
    return [r for arch in archs for r in data[arch]]


def markdown(rs: list[dict]) -> str:
    head = (
        "| kernel | variant | arch | registers | shared bytes | stack bytes | spill stores | spill loads | occupancy |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rs:
        lines.append(
            f"| {r['kernel']} | {r['variant']} | {r['arch']} | {r['registers']} | {r['shared_bytes']} | "
            f"{r['stack_bytes']} | {r['spill_stores']} | {r['spill_loads']} | {r['occupancy']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(rows(use_cache="--no-cache" not in sys.argv)))
