"""ThreadSanitizer over the emulated kernels, driven through CMake/ctest (CMakeLists.txt):
* emu_tsan: the real launcher + kernels on small problems under -fsanitize=thread: no report, the
  forward results match naive loops (so poisoned shared memory was never read), and every barrier
  of csrc/kernels/ ran;
* emu_tsan_drop_<id>, one per DSC_SYNC(<id>): the same program with that one barrier skipped; ctest
  passes only if TSan reports the data race, so the harness is not blind to any barrier of any kernel;
* emu_asan: the same program under AddressSanitizer + UBSan (out-of-bounds global accesses)."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import prebuild as background
import pytest

pytestmark = [pytest.mark.build]  # builds the ThreadSanitizer programs

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "csrc" / "kernels"


def _hash() -> str:
    h = hashlib.sha256()
    for f in sorted([ROOT / "CMakeLists.txt", *KERNELS.glob("*"), *(ROOT / "csrc" / "emu").glob("*")]):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def _barriers() -> dict[str, list[int]]:
    """Where the DSC_SYNC ids are: the kernel whose body holds them, or the device function ('helper:
    NAME') a kernel calls; and a check that there is no raw __syncthreads."""
    out: dict[str, list[int]] = {}
    for f in sorted(KERNELS.glob("*.cuh")):
        src = re.sub(r"//[^\n]*", "", f.read_text())  # comments may name barriers; code counts
        if f.name != "common.cuh":  # which defines DSC_SYNC
            assert "__syncthreads" not in src, f"{f.name}: a raw __syncthreads; use DSC_SYNC(id)"
        # A body runs from its signature to the next kernel or device function (or the end of the file).
        heads = [(m.start(), m.group(1)) for m in re.finditer(r"DSC_GLOBAL\s+void\s+\w+\([^)]*\)\s+(\w+)", src)]
        heads += [(m.start(), "helper:" + m.group(1)) for m in re.finditer(r"DSC_DEVICE\s+[\w:<>]+\s+(\w+)\(", src)]
        heads.sort()
        for (pos, name), nxt in zip(heads, [h for h, _ in heads[1:]] + [len(src)]):
            ids = [int(i) for i in re.findall(r"DSC_SYNC\((\d+)\)", src[pos:nxt])]
            if ids:
                out.setdefault(name, []).extend(ids)
    return out


def test_barrier_ids_are_unique_and_every_kernel_is_listed():
    b = _barriers()
    ids = [i for v in b.values() for i in v]
    assert len(ids) == len(set(ids)), b
    # Every kernel with shared memory synchronises; the epilogue helper is shared by the forward and its
    # split-reduce kernel (whose only barriers are the epilogue's); dsconv_bwd_dwp_kernel is one of its two
    # bodies, by tile class.
    assert {
        "dsconv_fwd_kernel",
        "helper:fwd_epilogue",
        "dsconv_bwd_dt_kernel",
        "helper:dwp_tiles",
        "helper:dwp_wide",
        "dsconv_bwd_dx_kernel",
        "bn_stats_kernel",
        "bn_bwd_reduce_kernel",
        "bn_bwd_finalize_kernel",
        "colsum_kernel",
    } == set(b), b


PREBUILD_ORDER = 2  # the shortest of the background builds (tests/prebuild.py): after the extension builds


def prebuild():
    """Configure, build and ctest (started in the background when collection ends: tests/prebuild.py).
    Returns the build directory and the three processes' results, or None without cmake/ctest."""
    if shutil.which("cmake") is None or shutil.which("ctest") is None:
        return None
    build = ROOT / "build" / f"cmake-tsan-{_hash()}"
    for old in build.parent.glob("cmake-tsan-*"):  # builds of older sources
        if old != build:
            shutil.rmtree(old, ignore_errors=True)
    run = lambda *cmd: background.run(cmd, cwd=ROOT)  # noqa: E731
    cfg = run("cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=RelWithDebInfo")
    if cfg.returncode != 0:
        return build, cfg, None, None
    # Both programs at once (emu_tsan, emu_asan): this build starts last and is the suite's tail, where it
    # ran alone on one of the two cores (CI at f96f5f8: 344-479 s, the other builds done at 416 s); niced,
    # the second compiler takes only what the tests leave.
    bld = run("cmake", "--build", str(build), "-j", "2")
    if bld.returncode != 0:
        return build, cfg, bld, None
    # -V: every test's output, each line prefixed with its test number ("2: barriers run: ..."), so the clean
    # run's barrier list is read from here rather than from a second run of the program (9 s).
    return build, cfg, bld, run("ctest", "--test-dir", str(build), "-V", "--timeout", "900", "-j", "2")


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ctest") is None, reason="needs cmake/ctest")
def test_tsan_ctest():
    build, cfg, bld, test = background.result(__name__, prebuild)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    if bld.returncode != 0 and "fsanitize" in (bld.stdout + bld.stderr) and "unrecognized" in bld.stderr:
        pytest.skip("this compiler has no ThreadSanitizer")
    assert bld.returncode == 0, bld.stdout + bld.stderr
    print("\n".join(ln for ln in test.stdout.splitlines() if re.match(r"\s*\d+/\d+ Test", ln)))
    assert test.returncode == 0, test.stdout[-8000:] + test.stderr
    assert "100% tests passed" in test.stdout
    barriers = _barriers()
    ids = sorted(i for v in barriers.values() for i in v)
    for name in ("emu_tsan", "emu_asan", *(f"emu_tsan_drop_{i}" for i in ids)):
        assert re.search(rf"Test\s+#\d+: {name} \.+\s+Passed", test.stdout), name
    # Every barrier ran in the clean run, so each drop test above removed a barrier that matters there.
    number = re.search(r"Start\s+(\d+): emu_tsan$", test.stdout, re.M)
    assert number, test.stdout[-4000:]
    ran = re.search(rf"^{number.group(1)}: barriers run:([\d ]*)$", test.stdout, re.M)
    assert ran and sorted(int(i) for i in ran.group(1).split()) == ids, (ran and ran.group(0), barriers)
