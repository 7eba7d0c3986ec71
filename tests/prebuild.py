"""Builds that dominate the suite's wall time (nvcc for the JIT and CMake extension builds, the
ThreadSanitizer/ASan build and ctest) start in background threads as soon as collection ends, and the
test that needs one waits for its result. The rest of the suite mostly keeps one core busy, so on the
2-core machine these builds run on the other core instead of after everything else.

A test module opts in with a module-level ``prebuild()`` (no arguments, returns what the test needs);
the test calls ``prebuild.result(__name__)``. Exceptions (pytest.skip / fail included) surface in the
test. Child processes go through ``run()`` so that the session can stop them when it ends early.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


def _yield_to_the_tests() -> None:
    """Background builds at nice 10 (set on the worker thread, so every compiler it starts inherits it).
    At equal priority the five or six compilers they run at once took most of both cores while the tests
    in the main thread, the rest of the suite's critical path, crawled (the emulator's 40 s build took
    116-242 s of wall time). Niced, a cold `pytest tests` took 418 s instead of 474 s (MEASURED, 2-core
    machine, 759 s of CPU in all); the tests that wait for the builds then wait at the end instead."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux
        pass


# Two builds at a time, longest first (conftest.py: a module's PREBUILD_ORDER): the single-threaded NVRTC
# compile of the report (sm_61) first, as queued last it was the suite's tail. All four at once put up to
# seven compilers on the two cores beside the tests.
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prebuild", initializer=_yield_to_the_tests)
# Compilers per build (cmake -j, ninja's MAX_JOBS): two builds at a time and the tests already keep both
# cores busy; more runnable compilers than cores only add switching and cache misses.
JOBS = os.environ.get("FUSED_DSCONV_TEST_JOBS", "1")
_jobs: dict[str, Future] = {}
_fns: dict[str, Callable] = {}
_procs: set[subprocess.Popen] = set()
_lock = threading.Lock()
_closed = False
_t0 = time.monotonic()
_spans: dict[str, tuple[float, float]] = {}  # name -> (start, end) in seconds since import


def _timed(name: str, fn: Callable) -> Callable:
    def run_it():
        start = time.monotonic() - _t0
        try:
            return fn()
        finally:
            _spans[name] = (start, time.monotonic() - _t0)

    return run_it


def start(name: str, fn: Callable) -> None:
    with _lock:
        _fns.setdefault(name, fn)
        if name not in _jobs and not _closed:
            _jobs[name] = _pool.submit(_timed(name, fn))


def result(name: str, fn: Callable | None = None):
    """The prebuild's result (started now if collection did not start it: a test run on its own)."""
    start(name, fn or _fns[name])
    return _jobs[name].result()


def run(cmd, **kw) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True, **kw), stoppable by stop_all()."""
    timeout = kw.pop("timeout", None)
    with _lock:
        if _closed:
            raise RuntimeError("the test session has ended")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        _procs.add(p)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise
    finally:
        with _lock:
            _procs.discard(p)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def timeline() -> list[str]:
    """One line per finished build: when it started and ran, in seconds from the session's start (the
    suite's wall time is bounded by how these overlap; tests/prebuild.py's JOBS and PREBUILD_ORDER tune it)."""
    return [f"{n}: {a:.0f}-{b:.0f} s ({b - a:.0f} s)" for n, (a, b) in sorted(_spans.items(), key=lambda kv: kv[1])]


def stop_all() -> None:
    """End of the session: kill what is still building (a -x stop, or a deselected test), then wait."""
    global _closed
    with _lock:
        _closed = True
        for p in _procs:
            p.kill()
    _pool.shutdown(wait=True, cancel_futures=True)
