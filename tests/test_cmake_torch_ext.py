"""The CMake build of the CUDA extension (CMakeLists.txt, -DFUSED_DSCONV_TORCH_EXT=ON) configures, builds
and yields a library equivalent to setup.py's fused_dsconv._C: it registers every op of the family with
CUDA kernels for the four conv ops and imports as a Python module; ptxas reports 0 spill bytes. Later
native test executables hang off this CMake project, so CI must build it: in CI (env CI set,
FUSED_DSCONV_NO_NATIVE != 1) a missing cmake >= 3.26 or nvcc fails.

To keep the suite's time down it is a fast build (FUSED_DSCONV_FAST_BUILD=1: the runtime-dilation kernels
only, about a third of the device code; tests/test_emu_kernels.py runs that build's plans) for one arch,
sm_75. Every kernel variant's registers and spills, for sm_75 and sm_86, are the compile report's
(tests/test_native_report.py), read from the full build that `pip install .` made."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import prebuild as background
import pytest
import torch

pytestmark = [pytest.mark.build]  # configures and builds with CMake

ROOT = Path(__file__).resolve().parents[1]
ARCH_LIST = "7.5"
OPS = ("forward_eval", "forward_train", "backward_eval", "backward_train", "kernel_binary_version")
CUDA_OPS = OPS[:4]  # kernel_binary_version is one function for every dispatch key
FAST = "FUSED_DSCONV_FAST_BUILD"  # fused_dsconv/_build_config.py FAST_BUILD_ENV

# Runs in a fresh interpreter: the installed fused_dsconv._C, once imported by other tests, has already
# registered the same fused_dsconv_native namespace in this one, which would hide (or clash with) ours.
CHECK = """
import importlib.util, sys, torch
path = sys.argv[1]
torch.ops.load_library(path)
spec = importlib.util.spec_from_file_location("_C", path)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
ns = torch.ops.fused_dsconv_native
for op in sys.argv[2].split(","):
    print(op, hasattr(ns, op), torch._C._dispatch_has_kernel_for_dispatch_key("fused_dsconv_native::" + op, "CUDA"))
"""


def _unavailable(reason: str):
    if os.environ.get("CI") and os.environ.get("FUSED_DSCONV_NO_NATIVE") != "1":
        pytest.fail(f"CI must build the CMake extension target, but: {reason}")
    pytest.skip(reason)


def _tool(name: str) -> str | None:
    """The venv's cmake or ninja (pip install "cmake>=3.28" ninja, as CI does) even when the venv's bin/ is
    not on PATH, else PATH's."""
    venv = Path(sys.executable).parent / name
    return str(venv) if venv.exists() else shutil.which(name)


def _cmake_version(cmake: str) -> tuple[int, ...]:
    out = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0,)


def _generator() -> list[str]:
    """Ninja where there is one: it prints each compile's output whole (the ptxas -v lines of parallel
    compiles do not interleave)."""
    ninja = _tool("ninja")
    return ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []


def _cuda_home() -> Path | None:
    for d in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if d and (Path(d) / "bin" / "nvcc").exists():
            return Path(d)
    nvcc = shutil.which("nvcc")
    return Path(nvcc).resolve().parents[1] if nvcc else None


def _hash() -> str:
    """Everything the library is built from: the CMake file, the flags it reads, csrc/ outside the
    torch-free emulator, the torch it is built against, and the generator (a build folder keeps its own)."""
    h = hashlib.sha256(torch.__version__.encode() + " ".join(_generator()).encode() + FAST.encode())
    csrc = [f for f in (ROOT / "csrc").rglob("*") if f.is_file() and "emu" not in f.relative_to(ROOT / "csrc").parts]
    files = [ROOT / "CMakeLists.txt", ROOT / "fused_dsconv" / "_build_config.py", *csrc]
    for f in sorted(files):
        h.update(str(f.relative_to(ROOT)).encode() + f.read_bytes())
    return h.hexdigest()[:12]


def _build() -> tuple[Path, str, float | None]:
    """(the built _C*.so, the build log, seconds spent building or None when cached)."""
    cmake = _tool("cmake")
    if cmake is None:
        _unavailable('no cmake on PATH (pip install "cmake>=3.28")')
    if _cmake_version(cmake) < (3, 26):
        _unavailable(f'{cmake} is older than 3.26, which C++20 CUDA needs (pip install "cmake>=3.28")')
    cuda = _cuda_home()
    if cuda is None:
        _unavailable("no CUDA toolkit (set CUDA_HOME to the root that holds bin/nvcc)")
    if torch.version.cuda is None:
        _unavailable(f"torch {torch.__version__} is a CPU-only build")

    build = ROOT / "build" / f"cmake-ext-{_hash()}"
    for old in build.parent.glob("cmake-ext-*"):  # builds of older sources
        if old != build:
            shutil.rmtree(old, ignore_errors=True)
    log_path = build / "build.log"
    libs = sorted(build.glob("_C*.so"))
    if libs and log_path.exists():
        return libs[0], log_path.read_text(), None

    t0 = time.perf_counter()
    env = {**os.environ, FAST: "1"}  # CMake takes the flags from _build_config.compile_args() at configure time
    run = lambda *cmd: background.run(cmd, cwd=ROOT, env=env)  # noqa: E731
    cfg = run(
        cmake,
        "-S",
        str(ROOT),
        "-B",
        str(build),
        *_generator(),
        "-DFUSED_DSCONV_TORCH_EXT=ON",
        f"-DTORCH_CUDA_ARCH_LIST={ARCH_LIST}",
        f"-DCMAKE_CUDA_COMPILER={cuda / 'bin' / 'nvcc'}",
        f"-DCUDA_TOOLKIT_ROOT_DIR={cuda}",
        f"-DPython3_EXECUTABLE={sys.executable}",
    )
    assert cfg.returncode == 0, cfg.stdout[-8000:] + cfg.stderr[-8000:]
    bld = run(cmake, "--build", str(build), "--target", "fused_dsconv_C", "-j", background.JOBS)
    log = bld.stdout + bld.stderr
    assert bld.returncode == 0, log[-12000:]
    log_path.write_text(log)
    libs = sorted(build.glob("_C*.so"))
    assert len(libs) == 1, f"expected one _C*.so in {build}: {libs}"
    return libs[0], log, time.perf_counter() - t0


def prebuild():
    """The build, started in the background when collection ends (tests/prebuild.py)."""
    return _build()


def test_cmake_builds_the_extension():
    lib, log, seconds = background.result(__name__, prebuild)
    print(
        f"\nCMake extension {lib.relative_to(ROOT)}: "
        + (f"built in {seconds:.0f} s" if seconds is not None else "cached build of these sources")
    )

    # -Xptxas=-v from _build_config.compile_args(): every kernel compiled, only for the arch asked for,
    # without spilling. Parallel compiles may interleave lines, so count instead of pairing them up.
    entries = re.findall(r"Compiling entry function '(\w+)' for '(sm_\d+)'", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert entries, "no ptxas -v output in the build log:\n" + log[-4000:]
    assert {arch for _, arch in entries} == {"sm_75"}
    # the fast build took: no compile-time dilation, so no span tiles' dsconv_dw (dt's span tiles stay)
    names = {name for name, _ in entries}
    assert not any("dsconv_dw_kernel" in n for n in names), "a full build, not a fast one"
    assert any("dsconv_bwd_dt_kernel" in n for n in names) and any("dsconv_fwd_kernel" in n for n in names)
    assert len(spills) >= len(entries)
    spilling = [s for s in spills if s != ("0", "0")]
    assert not spilling, f"{len(spilling)} functions spill: {spilling[:10]}"
    print(f"ptxas: {len(entries)} entry functions for sm_75 (a fast build), 0 spill bytes")

    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", CHECK, str(lib), ",".join(OPS)], capture_output=True, text=True, cwd=lib.parent
    )
    assert res.returncode == 0, res.stdout + res.stderr
    found = {
        op: (has == "True", cuda == "True")
        for op, has, cuda in (
            line.split() for line in res.stdout.splitlines() if line.split() and line.split()[0] in OPS
        )
    }
    assert set(found) == set(OPS), res.stdout + res.stderr
    assert all(has for has, _ in found.values()), found
    assert all(found[op][1] for op in CUDA_OPS), found
    print(
        f"ops registered: {', '.join(OPS)}; CUDA kernels: {', '.join(CUDA_OPS)}; load check "
        f"{time.perf_counter() - t0:.1f} s"
    )
