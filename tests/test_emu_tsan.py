"""ThreadSanitizer over the emulated kernels, driven through CMake/ctest (CMakeLists.txt):
  * emu_tsan: the real launcher + kernels on small problems under -fsanitize=thread: no report, and the
    forward results match naive loops (so poisoned shared memory was never read);
  * emu_tsan_planted_barrier: the same with one forward barrier dropped: ctest passes only if TSan
    reports the data race, which shows the harness is not blind to a missing __syncthreads;
  * emu_asan: the same program under AddressSanitizer + UBSan (out-of-bounds global accesses)."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hash() -> str:
    h = hashlib.sha256()
    for f in sorted([ROOT / "CMakeLists.txt", *(ROOT / "csrc" / "kernels").glob("*"), *(ROOT / "csrc" / "emu").glob("*")]):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ctest") is None, reason="needs cmake/ctest")
def test_tsan_ctest():
    build = ROOT / "build" / f"cmake-tsan-{_hash()}"
    for old in build.parent.glob("cmake-tsan-*"):  # builds of older sources
        if old != build:
            shutil.rmtree(old, ignore_errors=True)
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)  # noqa: E731
    cfg = run("cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=RelWithDebInfo")
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = run("cmake", "--build", str(build), "-j", "2")
    if bld.returncode != 0 and "fsanitize" in (bld.stdout + bld.stderr) and "unrecognized" in bld.stderr:
        pytest.skip("this compiler has no ThreadSanitizer")
    assert bld.returncode == 0, bld.stdout + bld.stderr
    test = run("ctest", "--test-dir", str(build), "--output-on-failure", "--timeout", "900")
    print(test.stdout[-4000:])
    assert test.returncode == 0, test.stdout[-8000:] + test.stderr
    assert "100% tests passed" in test.stdout
    for name in ("emu_tsan", "emu_tsan_planted_barrier", "emu_asan"):
        assert name in test.stdout
