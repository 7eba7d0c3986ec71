"""The simulation harness's library: build a host program for GPGPU-Sim (PTX rewritten around the
simulator's bugs), run it under gpusim, parse the simulator's log into per-kernel statistics, and cache
results by the hash of everything that determines them. The command line is run_cases.py; usage and
the simulator's set-up are in tools/sim/README.md."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SIM_DIR = Path(__file__).resolve().parent
ROOT = SIM_DIR.parents[1]

# Host programs: name -> (source, what decides the simulated kernels and their launches). The fused
# program's kernels and launch sequence are csrc/kernels/ (launch.cuh); the baseline's are its kernels and
# the chain in unfused_sim.cu. These, the config and the case make the cache key: editing the harness's
# checks or reference does not re-simulate anything (use --rerun after changing a host program's set-up).
HARNESS_FILES = ["sim_common.cuh", "ref_block.h", "ptx_fix.py"]
PROGRAMS = {
    "fused": ("fused_sim.cu", ["csrc/kernels"]),
    "unfused": ("unfused_sim.cu", ["tools/sim/baseline", "tools/sim/unfused_sim.cu"]),
}
DTYPES = {"f32": 0, "f16": 1, "bf16": 2}
NVCC_FLAGS = ["-O3", "-std=c++17", "-cudart", "shared", "-gencode", "arch=compute_75,code=compute_75"]

# The simulator's config, derived from gpusim's: one change, for a GPGPU-Sim crash (README.md).
CONFIG_PATCHES = {
    # shfl's latency must fit the SP pipeline (depth = the fp MAX latency, 13), else the simulator writes
    # past the pipeline array and crashes (gpgpu-sim_distribution PR 134). 32 -> 16 cycles.
    "-ptx_opcode_latency_int": ("4,13,4,5,145,32", "4,13,4,5,145,16"),
}


def nvcc_path() -> str:
    cuda = os.environ.get("CUDA_HOME") or os.environ.get("GPUSIM_CUDA") or "/usr/local/cuda"
    p = Path(cuda) / "bin" / "nvcc"
    if p.exists():
        return str(p)
    found = shutil.which("nvcc")
    if not found:
        raise SystemExit("nvcc not found: set CUDA_HOME to the CUDA toolkit (nvcc 12.x or 13.x)")
    return found


def files_of(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for rel in paths:
        p = ROOT / rel
        out += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return out


# C/C++ tokens for source_tokens: comments, literals (kept verbatim), line breaks, runs of word characters,
# single other characters.
_C_TOKEN = re.compile(
    r"""(?P<comment>//[^\n]*|/\*.*?\*/)|(?P<lit>"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')
                          |(?P<nl>\n)|(?P<ws>[ \t\r\f\v]+)|(?P<word>\w+)|(?P<other>.)""",
    re.S | re.X,
)
C_SUFFIXES = {".cu", ".cuh", ".h", ".hpp", ".cpp", ".cc", ".c"}


def source_tokens(text: str) -> str:
    """C/C++ source reduced to what the compiler reads, for hashing: comments dropped, whitespace removed
    except one space between two word characters (``unsigned int`` stays two tokens) and the line break
    that ends a preprocessor directive; adjacent string literals joined (a formatter may split a long
    one); each run of ``#include`` lines sorted (a formatter may sort them). So a reformatting or a comment
    edit keeps the hash, and a changed token changes it. (Operators a formatter never splits, such as
    ``a - -b`` against ``a--b``, would hash alike: nobody writes the former.) Hashing the generated PTX
    instead would miss the host-side launch logic (grids, splits), which decides the cycles too."""
    text = text.replace("\\\r\n", "").replace("\\\n", "")  # line continuations
    lines: list[list[str]] = [[]]  # a directive is one line; code between directives joins into one
    directive, at_bol, spaced = False, True, False
    for m in _C_TOKEN.finditer(text):
        kind, tok = m.lastgroup, m.group()
        if kind in ("comment", "ws"):
            spaced = True
            continue
        after_space, spaced = spaced, False
        if kind == "nl":
            if directive:
                lines.append([])
                directive = False
            at_bol = True
            continue
        if at_bol and tok == "#":
            if lines[-1]:
                lines.append([])
            directive = True
        at_bol = False
        cur = lines[-1]
        if directive and tok == "(" and after_space and len(cur) == 3 and cur[1] == "define":
            cur.append(" ")  # `#define F (x)` is an object-like macro, `#define F(x)` a function-like one
        if kind == "lit" and cur and cur[-1].startswith('"') and tok.startswith('"'):
            cur[-1] = cur[-1][:-1] + tok[1:]
            continue
        cur.append(tok)
    out: list[str] = []
    for toks in lines:
        s = ""
        for tok in toks:
            if s and (s[-1].isalnum() or s[-1] == "_") and (tok[0].isalnum() or tok[0] == "_"):
                s += " "
            s += tok
        out.append(s)
    # sort each run of #include lines
    i = 0
    while i < len(out):
        j = i
        while j < len(out) and out[j].startswith("#include"):
            j += 1
        if j > i + 1:
            out[i:j] = sorted(out[i:j])
        i = max(j, i + 1)
    return "\n".join(s for s in out if s)


def hash_files(files: list[Path], extra: str = "") -> str:
    """Hash of the files' paths and contents; C/C++ sources by their tokens (source_tokens), so formatting
    and comments never invalidate a build or a cached simulation."""
    h = hashlib.sha256(extra.encode())
    for f in files:
        data = f.read_bytes()
        if f.suffix in C_SUFFIXES:
            data = source_tokens(data.decode("utf-8", errors="surrogateescape")).encode("utf-8", "surrogateescape")
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + data + b"\0")
    return h.hexdigest()[:16]


def program_hash(program: str) -> str:
    """Hash of everything a program's binary is built from (names the binary)."""
    src, kernel_dirs = PROGRAMS[program]
    files = files_of([f"tools/sim/{src}"] + [f"tools/sim/{f}" for f in HARNESS_FILES] + kernel_dirs)
    return hash_files(files, nvcc_version())


def kernel_hash(program: str) -> str:
    """Hash of what decides the simulated kernels and launches of a program (part of the cache key)."""
    return hash_files(files_of(PROGRAMS[program][1]), nvcc_version())


def legacy_kernel_hash(program: str) -> str:
    """kernel_hash as it was before sources were hashed by their tokens (raw bytes): recognises results
    cached by older checkouts of the harness for today's sources (import_cache)."""
    h = hashlib.sha256(nvcc_version().encode())
    for f in files_of(PROGRAMS[program][1]):
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _cached_results(src: Path):
    """(where, result) for every result in `src`: a cache folder (one JSON file per result) or a file
    written by run_cases.py --json (its "results" list, e.g. the committed bench/data/sim_gtx1080ti.json)."""
    src = Path(src)
    if src.is_file():
        try:
            results = json.loads(src.read_text()).get("results", [])
        except (ValueError, AttributeError):
            results = []
        for i, d in enumerate(results if isinstance(results, list) else []):
            yield f"{src}[{i}]", d
        return
    for f in sorted(src.glob("*.json")):
        try:
            yield str(f), json.loads(f.read_text())
        except ValueError:
            continue


def import_cache(src: Path, cache: Path, config: str, config_hash: str, exe_for, log=print) -> int:
    """Copies into `cache` the PASS results in `src` (another checkout's cache folder, this one, or a
    run_cases.py --json file such as the committed data) for `config`: a result with a launch fingerprint
    as it is (its key says what it ran, so it is used only where today's launches and PTX are the same);
    one from before fingerprints when its kernel hash equals today's (or today's legacy byte hash),
    fingerprinted with today's program (``exe_for(impl, dtype)`` builds it). Returns how many were added."""
    today = {p: (kernel_hash(p), legacy_kernel_hash(p)) for p in PROGRAMS}
    n = 0
    for f, d in _cached_results(src):
        try:
            case = Case(**d["case"])
        except (KeyError, TypeError):
            continue
        if d.get("config") != config or d.get("verdict") != "PASS":
            continue
        fp = d.get("fingerprint")
        if fp is not None and d.get("config_hash") != config_hash:
            continue
        if fp is None:
            if d.get("kernel_hash") not in today.get(case.impl, ()):
                continue
            fp = launch_fingerprint(exe_for(case.impl, case.dtype), case)
        key = cache_key(case, config_hash, fp)
        dst = cache / f"{key}.json"
        if dst.exists():
            continue
        d.update(key=key, fingerprint=fp, config_hash=config_hash)
        dst.write_text(json.dumps(d, indent=1))
        log(f"[import] {case.ident()} from {f}")
        n += 1
    return n


_NVCC_VERSION: Optional[str] = None


def nvcc_version() -> str:
    global _NVCC_VERSION
    if _NVCC_VERSION is None:
        out = subprocess.run([nvcc_path(), "--version"], capture_output=True, text=True).stdout
        _NVCC_VERSION = out.strip().splitlines()[-1] if out.strip() else "unknown"
    return _NVCC_VERSION


# ---- build ------------------------------------------------------------------------------------
def build(program: str, dtype: str, out_dir: Path, log=print, dilations: tuple[int, ...] | None = None) -> Path:
    """Builds tools/sim/<program> for one storage dtype into out_dir (skipped when up to date): nvcc's own
    steps (from ``nvcc -dryrun``) with ptx_fix.py run on the PTX between cicc and fatbinary.

    ``dilations``: compile only these template dilations (csrc/kernels/plan.cuh DSC_KERNEL_DILATIONS; the
    others run the runtime-dilation kernels), for a check that lists a few cases' launches; None: all, as
    every simulation needs (a simulated kernel must be the shipped one)."""
    src, _ = PROGRAMS[program]
    out_dir = Path(out_dir).resolve()
    flags, tag = [f"-DSIM_DTYPE={DTYPES[dtype]}"], ""
    if dilations is not None:
        flags.append(f"-DDSC_KERNEL_DILATIONS={sum(1 << d for d in set(dilations))}")
        tag = "_d" + "".join(str(d) for d in sorted(set(dilations)))
    exe = out_dir / f"{program}_{dtype}{tag}_{program_hash(program)}"
    return build_source(SIM_DIR / src, exe, [ROOT / "csrc", SIM_DIR], flags, log)


def build_source(src: Path, exe: Path, includes: list[Path], flags: list[str], log=print) -> Path:
    """Builds one host program `src` into `exe` (skipped when it exists: name it by a hash of its inputs) with
    ptx_fix.py applied to its PTX; ``build`` for the harness's programs, also used by tools/sim/probes."""
    if exe.exists() and ptx_path(exe).exists():
        return exe
    # Built under names of this process's own and renamed at the end: a running simulation keeps its file, and
    # two run_cases started together do not write over each other's intermediate files.
    final, exe = exe, exe.with_name(f"{exe.name}.tmp{os.getpid()}")
    out_dir = exe.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    keep = out_dir / f"keep_{final.name}_{os.getpid()}"
    if keep.exists():
        shutil.rmtree(keep)
    keep.mkdir()
    cmd = [
        nvcc_path(),
        *NVCC_FLAGS,
        *[f"-I{d}" for d in includes],
        *flags,
        str(src),
        "-o",
        str(exe),
        "-dryrun",
        "--keep",
        "--keep-dir",
        str(keep),
    ]
    dry = subprocess.run(cmd, capture_output=True, text=True, cwd=keep)
    if dry.returncode != 0:
        raise RuntimeError(f"nvcc -dryrun failed:\n{dry.stderr}")
    steps = [ln[3:] for ln in dry.stderr.splitlines() if ln.startswith("#$ ")]
    ptx = None
    for s in steps:
        m = re.search(r"--image3=kind=ptx,sm=\d+,file=([^\"\s]+\.ptx)", s)
        if m:
            ptx = m.group(1)
    if ptx is None:
        raise RuntimeError("nvcc -dryrun shows no PTX image: cannot apply ptx_fix.py\n" + "\n".join(steps))
    script = ["set -e"]
    cicc_seen = False
    for s in steps:
        m = re.match(r"^([A-Za-z_][A-Za-z_0-9]*)=(.*)$", s)
        if m:  # nvcc's environment for its steps (PATH, CICC_PATH, ...), taken literally
            script.append(f"export {m.group(1)}={shlex.quote(m.group(2).strip())}")
            continue
        if s.startswith("rm "):
            s = "rm -f " + s[3:]  # nvcc's clean-up of files that --keep may not have made
        script.append(s)
        if re.search(r"(^|/|\")cicc\"?\s", s):
            cicc_seen = True
            script.append(
                f"{shlex.quote(sys.executable)} {shlex.quote(str(SIM_DIR / 'ptx_fix.py'))} {shlex.quote(ptx)}"
            )
    if not cicc_seen:
        raise RuntimeError("nvcc -dryrun shows no cicc step: cannot apply ptx_fix.py")
    t0 = time.time()
    r = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, cwd=keep)
    if r.returncode != 0 or not exe.exists():
        raise RuntimeError(f"building {src.name} ({' '.join(flags)}) failed:\n{r.stdout}\n{r.stderr}")
    shutil.copyfile(Path(keep, ptx), ptx_path(exe))  # what the simulator runs (ptx_fix applied): cache keys
    os.replace(ptx_path(exe), ptx_path(final))
    os.replace(exe, final)
    log(f"[build] {final.name} in {time.time() - t0:.0f}s; {r.stdout.strip()}")
    shutil.rmtree(keep, ignore_errors=True)
    return final


def ptx_path(exe: Path) -> Path:
    """The PTX a built program carries (after ptx_fix.py), saved beside it by build_source."""
    return exe.with_name(exe.name + ".ptx")


# ---- the simulator ------------------------------------------------------------------------------
def gpusim_dir(arg: Optional[str] = None) -> Path:
    """The gpusim tool folder (the one holding `run` and `setup`): --gpusim, else $GPUSIM_TOOL."""
    d = arg or os.environ.get("GPUSIM_TOOL")
    if not d:
        raise SystemExit(
            "where is gpusim? pass --gpusim DIR or set GPUSIM_TOOL=DIR (the folder holding gpusim's "
            "`setup` and `run`; tools/sim/README.md says how to get it)"
        )
    p = Path(d).resolve()
    if not (p / "run").exists():
        raise SystemExit(f"{p} has no `run` script: GPUSIM_TOOL / --gpusim must name gpusim's tool folder")
    return p


def gpusim_home() -> Path:
    return Path(os.environ.get("GPUSIM_HOME", Path.home() / ".cache" / "gpusim"))


def prepare_config(name: str, out_dir: Path) -> tuple[Path, str]:
    """Copies gpusim's config `name` from $GPUSIM_HOME/configs, applies CONFIG_PATCHES; returns (dir, hash)."""
    src = gpusim_home() / "configs" / name
    if not (src / "gpgpusim.config").exists():
        raise SystemExit(f"no gpusim config {src}/gpgpusim.config: run gpusim's setup (tools/sim/README.md)")
    text = (src / "gpgpusim.config").read_text()
    for opt, (old, new) in CONFIG_PATCHES.items():
        pat = re.compile(rf"^{re.escape(opt)}\s+{re.escape(old)}\b", re.M)
        if not pat.search(text):
            raise SystemExit(f"config {name}: expected `{opt} {old}` to patch (see simlib.CONFIG_PATCHES)")
        text = pat.sub(f"{opt} {new}", text)
    files = {"gpgpusim.config": text}
    for f in src.iterdir():
        if f.name != "gpgpusim.config" and f.is_file():
            files[f.name] = f.read_text()
    h = hashlib.sha256("".join(k + v for k, v in sorted(files.items())).encode()).hexdigest()[:16]
    d = out_dir / f"config_{name}_{h}"
    if not d.exists():
        d.mkdir(parents=True)
        for k, v in files.items():
            (d / k).write_text(v)
    return d, h


# ---- the simulator's log ------------------------------------------------------------------------
# Counters printed after every kernel. gpu_sim_* are per kernel; the others are running totals, turned
# into per-kernel values by differencing.
PER_KERNEL = {"gpu_sim_cycle": "cycles", "gpu_sim_insn": "thread_insn"}
CUMULATIVE = {
    "gpgpu_n_tot_w_icount": "warp_insn",
    "gpgpu_n_load_insn": "load_thread_insn",
    "gpgpu_n_store_insn": "store_thread_insn",
    "gpgpu_n_shmem_insn": "shmem_thread_insn",
    "gpgpu_n_mem_read_global": "gmem_read_txn",
    "gpgpu_n_mem_write_global": "gmem_write_txn",
    "gpgpu_n_shmem_bkconflict": "shmem_bank_conflicts",
    "L2_total_cache_accesses": "l2_accesses",
    "L2_total_cache_misses": "l2_misses",
    "total dram reads": "dram_reads",
    "total dram writes": "dram_writes",
}

# What each warp scheduler did per cycle (summed over schedulers and SMs): no instruction to issue (idle),
# none past the scoreboard (scoreboard: waiting on a result or a load), one ready but its pipeline
# register full (stall: the operand collectors or the execution unit are busy); cycles that issued are
# sched_single_issue + sched_dual_issue. gpgpu-sim's own gpu_reg_bank_conflict_stalls is never counted.
SCHED_CYCLES = ("sched_stall", "sched_idle", "sched_scoreboard")


def demangle(names: list[str]) -> list[str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return names
    r = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    out = r.stdout.splitlines()
    return out if len(out) == len(names) else names


def short_name(demangled: str) -> str:
    """'void dsc::fwd_kernel<float, 3>(dsc::Problem, float*)' -> 'fwd_kernel<float, 3>'."""
    s = re.sub(r"^void\s+", "", demangled)
    s = s.split("(")[0]
    return re.sub(r"^(\w+::)+", "", s)


def parse_log(text: str) -> dict:
    """Per-kernel statistics (in launch order) and the program's own lines from a gpusim sim.log."""
    kernels: list[dict] = []
    cur: Optional[dict] = None
    totals = {v: 0 for v in [*CUMULATIVE.values(), *SCHED_CYCLES, "sched_single_issue", "sched_dual_issue"]}
    # The program's launch lines, by their launch number, found anywhere in a line: the simulator ends some of
    # its own lines without a newline, so a launch line can follow one on the same line (a "dram[0]: ..." row),
    # and reading only lines that start with it shifted every later grid onto the wrong kernel.
    launches = {
        int(m.group(1)): m for m in re.finditer(r"\[sim\] launch (\d+) grid=\((\d+),(\d+),(\d+)\) block=(\d+)", text)
    }
    regs: dict[str, int] = {}
    smem: dict[str, int] = {}
    occ_by_name: dict[str, str] = {}
    pending_occ: Optional[str] = None  # printed when a kernel is first placed on the SMs
    for ln in text.splitlines():
        m = re.match(r"^GPGPU-Sim PTX: Kernel '(\S+)' : regs=(\d+), lmem=\d+, smem=(\d+)", ln)
        if m:
            regs[m.group(1)], smem[m.group(1)] = int(m.group(2)), int(m.group(3))
            continue
        m = re.match(r"^GPGPU-Sim uArch: CTA/core = (\d+), limited by: (.*)$", ln)
        if m:
            pending_occ = f"{m.group(1)} ({m.group(2).strip()})"
            continue
        m = re.match(r"^Stall:(\d+)\s+W0_Idle:(\d+)\s+W0_Scoreboard:(\d+)", ln)
        if m and cur is not None:  # scheduler-cycle distribution, running totals over all SMs
            for key, val in zip(SCHED_CYCLES, m.groups()):
                if key not in cur:
                    cur[key] = int(val) - totals[key]
                    totals[key] = int(val)
            continue
        m = re.match(r"^(single|dual)_issue_nums:\s*(.*)$", ln)
        if m and cur is not None:
            key = f"sched_{m.group(1)}_issue"
            if key not in cur:
                total = sum(int(v) for v in re.findall(r"WS\d+:(\d+)", m.group(2)))
                cur[key] = total - totals[key]
                totals[key] = total
            continue
        m = re.match(r"^kernel_name = (\S+)", ln)
        if m:
            cur = {"mangled": m.group(1)}
            if pending_occ is not None:
                occ_by_name[cur["mangled"]] = pending_occ
                pending_occ = None
            cur["ctas_per_sm"] = occ_by_name.get(cur["mangled"])
            kernels.append(cur)
            continue
        if cur is None:
            continue
        m = re.match(r"^\s*([A-Za-z_0-9 ]+?)\s*=\s*(-?[0-9.]+)\s*$", ln)
        if not m:
            continue
        key, val = m.group(1), m.group(2)
        if key in PER_KERNEL and PER_KERNEL[key] not in cur:
            cur[PER_KERNEL[key]] = int(float(val))
        elif key in CUMULATIVE and CUMULATIVE[key] not in cur:
            total = int(float(val))
            cur[CUMULATIVE[key]] = total - totals[CUMULATIVE[key]]
            totals[CUMULATIVE[key]] = total
    for k, name in zip(kernels, demangle([k["mangled"] for k in kernels])):
        k["name"] = short_name(name)
        k["regs"] = regs.get(k["mangled"])
        k["smem"] = smem.get(k["mangled"])
    for i, k in enumerate(kernels):
        m = launches.get(i)
        if m:
            k["grid"] = [int(m.group(j)) for j in (2, 3, 4)]
            k["block"] = int(m.group(5))
    checks = [ln for ln in text.splitlines() if ln.startswith("[check]")]
    verdict = "?"
    for ln in text.splitlines():
        m = re.search(r"outputs checked -> (PASS|FAIL)$", ln)
        if m:
            verdict = m.group(1)
        elif "outputs not checked" in ln:
            verdict = "UNCHECKED"
    return {"kernels": kernels, "checks": checks, "verdict": verdict, "deadlock": "deadlock detected" in text}


# ---- cases ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    impl: str  # fused | unfused
    mode: str  # eval | train | step | bwd
    n: int
    c: int
    k: int
    h: int
    w: int
    stride: int
    dil: int
    dtype: str = "f32"
    layout: str = "nchw"
    label: str = ""  # e.g. b3 (not part of the key)
    # > 0: a plan probe (fused only): the kernel variants and splits the launcher picks at this batch and an
    # input of plan_hw x plan_hw (the block's own), run on this shape (fused_sim.cu --plan-batch), so that
    # the cost model scales a block's work of that batch
    plan: int = 0
    plan_hw: int = 0

    def args(self) -> list[str]:
        return [
            "--mode",
            self.mode,
            "--dtype",
            self.dtype,
            "--layout",
            self.layout,
            *(["--plan-batch", str(self.plan), "--plan-hw", str(self.plan_hw or self.h)] if self.plan else []),
            *map(str, (self.n, self.c, self.k, self.h, self.w, self.stride, self.dil)),
        ]

    def shape(self) -> str:
        plan = f" plan of batch {self.plan} at {self.plan_hw or self.h}x{self.plan_hw or self.w}" if self.plan else ""
        return f"N{self.n} {self.c}->{self.k} {self.h}x{self.w} s{self.stride} d{self.dil}{plan}"

    def ident(self) -> str:
        return (
            f"{self.impl}_{self.mode}_{self.dtype}_{self.layout}_"
            f"{self.n}x{self.c}x{self.k}x{self.h}x{self.w}_s{self.stride}_d{self.dil}"
        ) + (f"_plan{self.plan}x{self.plan_hw or self.h}" if self.plan else "")


def cache_key(case: Case, config_hash: str, fingerprint: str) -> str:
    """A result's file name in the cache: the case, its launch fingerprint and the simulator config."""
    return hashlib.sha256(f"{case.ident()}|{fingerprint}|{config_hash}".encode()).hexdigest()[:20]


@functools.lru_cache(maxsize=None)
def ptx_entries(exe: Path) -> tuple[dict[str, str], str]:
    """A program's PTX, comments dropped, split into its kernels (.entry name -> its text) and the rest
    (header, declarations, .func bodies, which any kernel may use)."""
    text = re.sub(r"//[^\n]*", "", ptx_path(exe).read_text())  # comments: the simulator never reads them
    entries: dict[str, str] = {}
    rest, pos = [], 0
    for m in re.finditer(r"^[ \t]*(?:\.visible[ \t]+|\.weak[ \t]+)*\.entry[ \t]+([\w$]+)", text, re.M):
        if m.start() < pos:
            continue  # inside the previous kernel's text
        open_ = text.index("{", text.index(")", m.end()))  # the parameter list holds no braces
        depth, i = 0, open_
        while True:
            c = text[i]
            depth += c == "{"
            depth -= c == "}"
            i += 1
            if depth == 0:
                break
        rest.append(text[pos : m.start()])
        entries[m.group(1)] = text[m.start() : i]
        pos = i
    rest.append(text[pos:])
    return entries, "".join(rest)


@functools.lru_cache(maxsize=None)
def _stub_symbols(exe: Path) -> tuple[dict[int, list[str]], int]:
    """Host symbols of a program by address (nm), and the address of sim::dry_anchor."""
    out = subprocess.run(["nm", "--defined-only", str(exe)], capture_output=True, text=True, check=True).stdout
    by_addr: dict[int, list[str]] = {}
    anchor = None
    for ln in out.splitlines():
        parts = ln.split()
        if len(parts) != 3 or parts[1] not in "tTwW":
            continue
        addr = int(parts[0], 16)
        by_addr.setdefault(addr, []).append(parts[2])
        if parts[2] == "_ZN3sim10dry_anchorEv":
            anchor = addr
    if anchor is None:
        raise RuntimeError(f"{exe.name}: no sim::dry_anchor symbol (built before launch fingerprints?)")
    return by_addr, anchor


def dry_launch_list(exe: Path, case: Case) -> list[tuple[str, tuple[int, int, int], int, str]]:
    """A case's launches in order, from the host program's --dry run (natively, no simulator): (kernel's
    PTX entry name, grid, block, hash of the argument bytes) each."""
    r = subprocess.run([str(exe), *case.args(), "--dry"], capture_output=True, text=True)
    pat = r"\[sim\] launch \d+ grid=\((\d+),(\d+),(\d+)\) block=(\d+)[^\n]*\n\[sim\] dry stub=(-?\d+) args=([0-9a-f]+)"
    launches = re.findall(pat, r.stdout)
    if r.returncode != 0 or not launches or len(launches) != r.stdout.count("[sim] launch "):
        raise RuntimeError(f"{exe.name} --dry listed no launches: {r.stdout[-2000:]} {r.stderr[-2000:]}")
    by_addr, anchor = _stub_symbols(exe)
    entries, _ = ptx_entries(exe)
    out = []
    for gx, gy, gz, block, stub, args in launches:
        # a host stub of internal linkage mangles as _ZN3dscL16name...: the PTX entry has no L marker
        names = [re.sub(r"L(?=\d)", "", n) for n in by_addr.get(anchor + int(stub), [])]
        name = next((n for n in names if n in entries), None)
        if name is None:
            raise RuntimeError(f"{exe.name}: launch of stub {by_addr.get(anchor + int(stub))} has no PTX entry")
        out.append((name, (int(gx), int(gy), int(gz)), int(block), args))
    return out


def launch_fingerprint(exe: Path, case: Case) -> str:
    """What decides a case's simulated cycles, hashed: for every launch in order (dry_launch_list), the
    kernel's PTX, grid, block and argument bytes, plus the PTX outside the kernels. A change to a kernel the
    case does not launch, or to a launcher path it does not take, keeps the fingerprint, so its cached
    result stays valid; any change to what it runs changes it."""
    entries, rest = ptx_entries(exe)
    h = hashlib.sha256(rest.encode())
    for name, grid, block, args in dry_launch_list(exe, case):
        body = hashlib.sha256(entries[name].encode()).hexdigest()
        h.update(f"{name}|{grid}|{block}|{args}|{body}\n".encode())
    return h.hexdigest()[:20]


def dry_launches(exe: Path, case: Case) -> list[list[int]]:
    """The launch grids of a case, in launch order (dry_launch_list)."""
    return [list(grid) for _, grid, _, _ in dry_launch_list(exe, case)]


_running: set = set()  # simulations in flight (run_case), each the leader of its own session


def _stop(proc: subprocess.Popen) -> None:
    """Ends a simulation and everything it started (the wrapper script, the simulator): its session's
    process group, which Ctrl-C in the terminal no longer reaches (_own_autogroup)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all() -> None:
    """Ends every simulation still running (run_cases.py calls it on Ctrl-C and at exit)."""
    for proc in list(_running):
        _stop(proc)


def _own_autogroup(nice: int) -> None:
    """In the simulation's child, before exec: a session of its own, niced as a whole.

    With the kernel's autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled, on by default on
    desktop and many server kernels) CPU time is shared fairly between sessions first, and `nice` only
    ranks processes within one: a niced simulation started from a detached session (setsid, nohup from
    another shell) took a whole core from a test run beside it, MEASURED on the 2-core machine (top:
    simulation 94 %, pytest 50 %). Setting the new session's autogroup nice makes it yield. Best effort:
    without autogroups the file is absent and plain `nice` already ranks it."""
    try:
        os.setsid()
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass


@contextlib.contextmanager
def case_lock(run_dir: Path):
    """Held while a case simulates in ``run_dir``: another run_cases process given the same case waits here
    (and then finds the result in the cache) instead of wiping the folder the running simulation writes its
    log to, which left that simulation's result parsed from the newcomer's log."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{run_dir.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_case(
    case: Case, exe: Path, config_dir: Path, run_dir: Path, tool: Path, nice: int = 10, timeout: Optional[float] = None
) -> dict:
    """Runs one case under gpusim (niced) and returns its parsed result."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cmd = [
        "nice",
        "-n",
        str(nice),
        "bash",
        str(tool / "run"),
        "--config",
        str(config_dir),
        str(run_dir),
        str(exe),
        *case.args(),
    ]
    t0 = time.time()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=lambda: _own_autogroup(nice)
    )
    _running.add(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        _stop(proc)
        out, _ = proc.communicate()
        rc, out = -1, f"timeout after {timeout}s\n" + (out or "")
    finally:
        _running.discard(proc)
    wall = time.time() - t0
    log = run_dir / "sim.log"
    res = (
        parse_log(log.read_text(errors="replace"))
        if log.exists()
        else {"kernels": [], "checks": [], "verdict": "?", "deadlock": False}
    )
    if rc != 0 and res["verdict"] == "PASS":
        res["verdict"] = "FAIL"
    if res["deadlock"]:
        res["verdict"] = "DEADLOCK"
    res.update(rc=rc, wall_s=round(wall, 1), run_output_tail=out[-3000:] if res["verdict"] != "PASS" else "")
    # Keep the log small on disk: the full sim.log is 100s of kB per kernel.
    return res
