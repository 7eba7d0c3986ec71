"""The CUDA emulator's own semantics (csrc/emu/emu.h): barriers, the poison a missing barrier reads,
warp shuffles, threads that return early, deadlock detection and exceptions, in the fiber build the
extension uses. Compiled with g++ as a torch-free program (tests/emu/fiber_check.cpp)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.build]  # compiles a program with g++

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_fiber_emulator_semantics(tmp_path):
    exe = tmp_path / "fiber_check"
    cc = subprocess.run(
        [
            "g++",
            "-std=c++20",
            "-O2",
            f"-I{ROOT / 'csrc'}",
            str(ROOT / "tests" / "emu" / "fiber_check.cpp"),
            "-o",
            str(exe),
            "-pthread",
        ],
        capture_output=True,
        text=True,
    )
    assert cc.returncode == 0, cc.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and len(lines) == 6 and all(ln.startswith("PASS") for ln in lines), (
        run.stdout + run.stderr
    )
