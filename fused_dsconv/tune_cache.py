"""What the tuner decides and where it keeps it: ``Problem`` (what a choice is measured for), ``Decision``
(its outcome), the in-process memory, and the cache file, one section per environment (device, driver,
toolkit, torch, this package's version and sources, Triton, CPU threads), merged under a file lock and
written atomically (a temporary file, then ``os.replace``); a corrupted file is ignored with a warning and
rebuilt. The measuring and deciding are ``fused_dsconv.tune``."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch


UNFUSED = "unfused"


CACHE_FILE = "tuning.json"


CACHE_FORMAT = 1


MAX_ENVIRONMENTS = 8  # sections kept in the cache file (the most recently written)


@dataclass(frozen=True)
class Problem:
    """What a choice is measured for: one JointBlock configuration on one kind of input."""

    mode: str  # eval_fwd, eval_fwd_bwd, train_fwd, train_fwd_bwd (train: batch statistics)
    n: int
    c: int
    k: int
    h: int
    w: int
    stride: int
    dilation: int
    dtype: str  # the dtype the block computes in (x's, or autocast's)
    param_dtype: str
    amp: str  # autocast dtype, or "none"
    layout: str  # nchw or channels_last
    device: str
    recompute: bool
    bias: bool
    affine: bool
    sync: bool = False  # training statistics merged over processes (JointBlock(sync_bn=True) under torch.distributed)

    @property
    def grad(self) -> bool:
        return self.mode.endswith("_fwd_bwd")

    @property
    def key(self) -> str:
        """Stable text key (the cache file's)."""
        return (
            f"{self.mode} n{self.n} c{self.c} k{self.k} {self.h}x{self.w} s{self.stride} d{self.dilation} "
            f"{self.dtype} params={self.param_dtype} amp={self.amp} {self.layout} {self.device} "
            f"recompute={int(self.recompute)} bias={int(self.bias)} affine={int(self.affine)}"
            + (" sync=1" if self.sync else "")
        )

    @property
    def shape(self) -> str:
        return f"{self.c}->{self.k} s{self.stride} d{self.dilation} {self.h}x{self.w}"


@dataclass
class Decision:
    """The outcome for one problem: the choice, every timed candidate's median, what was left out and why."""

    choice: str
    times: dict = field(default_factory=dict)  # candidate -> median seconds
    skipped: dict = field(default_factory=dict)  # candidate or backend -> why it was not timed or failed
    source: str = "measured"  # measured (in this process), cache (from the file), only candidate, untimed
    measured_at: str = ""

    def speedup_over_unfused(self) -> Optional[float]:
        """Unfused median / winner median (1.0 when unfused wins), or None if unfused was not timed."""
        if UNFUSED not in self.times or self.choice not in self.times or self.times[self.choice] <= 0:
            return None
        return self.times[UNFUSED] / self.times[self.choice]

    def to_json(self) -> dict:
        return {
            "choice": self.choice,
            "times_ms": {k: v * 1e3 for k, v in self.times.items()},
            "skipped": self.skipped,
            "measured_at": self.measured_at,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Decision":
        times = {str(k): float(v) / 1e3 for k, v in d["times_ms"].items()}
        skipped = {str(k): str(v) for k, v in d.get("skipped", {}).items()}
        if not isinstance(d["choice"], str):
            raise TypeError("choice must be a string")
        return cls(d["choice"], times, skipped, "cache", str(d.get("measured_at", "")))


GENERATION = [0]  # bumped whenever remembered choices may no longer apply: blocks' own shortcuts then miss


MEMORY: dict[tuple[str, str], Decision] = {}


_ENV: dict[tuple, tuple[str, dict]] = {}


_DISK: dict[str, tuple[float, dict]] = {}  # path -> (mtime, parsed file)


_WARNED: set = set()


def clear_memory() -> None:
    """Forget every choice made in this process (the cache file stays)."""
    GENERATION[0] += 1
    MEMORY.clear()
    _ENV.clear()
    _DISK.clear()


def cache_path() -> Path:
    from ._extension import cache_root

    return cache_root() / CACHE_FILE


def _sources_hash() -> str:
    """The package's Python sources and the native build record: a code change measures afresh."""
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(pkg.rglob("*.py")) + sorted(pkg.glob("_build_info.json")):
        if "data" not in f.relative_to(pkg).parts[:-1]:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cpu_model() -> str:
    """The CPU's model name (part of a CPU measurement's environment)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> tuple[str, dict]:
    """(id, description) of what a measurement on ``device`` depends on besides the problem."""
    dev = torch.device(device)
    threads = torch.get_num_threads()
    key = (device, threads)
    if key not in _ENV:
        from . import _extension
        from ._version import __version__

        env = {
            "torch": torch.__version__,
            "fused_dsconv": __version__,
            "sources": _sources_hash(),
            "python": platform.python_version(),
        }
        try:  # the installed version, without importing triton (seconds)
            env["triton"] = importlib.metadata.version("triton")
        except importlib.metadata.PackageNotFoundError:
            env["triton"] = None
        if dev.type == "cuda":
            props = torch.cuda.get_device_properties(dev)
            driver = getattr(torch._C, "_cuda_getDriverVersion", lambda: None)()
            env.update(
                device=props.name,
                capability=f"{props.major}.{props.minor}",
                cuda=torch.version.cuda,
                driver=driver,
                native=_extension.status(),
            )
        else:
            env.update(device=cpu_model(), cpu_capability=torch.backends.cpu.get_cpu_capability(), threads=threads)
        ident = hashlib.sha256(json.dumps(env, sort_keys=True, default=str).encode()).hexdigest()[:16]
        _ENV[key] = (ident, env)
    return _ENV[key]


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=3)


def _read(path: Path) -> dict:
    """The cache file's contents, or an empty cache when it is missing or unusable (with a warning)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {"format": CACHE_FORMAT, "environments": {}}
    except OSError as e:
        _warn_once(f"read {path}", f"fused_dsconv: cannot read the tuning cache {path} ({e}); measuring afresh")
        return {"format": CACHE_FORMAT, "environments": {}}
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("environments"), dict):
            raise ValueError("not a tuning cache (no 'environments' table)")
        if data.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, this version reads {CACHE_FORMAT}")
        return data
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        _warn_once(
            f"corrupt {path} {hashlib.sha256(text.encode()).hexdigest()}",
            f"fused_dsconv: ignoring the tuning cache {path}: {str(e)[:200]}; it will be rebuilt",
        )
        return {"format": CACHE_FORMAT, "environments": {}}


def disk_lookup(env_id: str, problem: Problem) -> Optional[Decision]:
    path = cache_path()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    cached = _DISK.get(str(path))
    if cached is None or cached[0] != mtime:
        cached = (mtime, _read(path))
        _DISK[str(path)] = cached
    entry = cached[1]["environments"].get(env_id, {}).get("decisions", {}).get(problem.key)
    if entry is None:
        return None
    try:
        return Decision.from_json(entry)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None  # an entry this version cannot read: measure again (and overwrite it)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic replace still keeps the file whole; a race may drop an entry
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _atomic_write(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def store(env_id: str, env: dict, problem_key: str, decision: Decision) -> None:
    """Merge one decision into the cache file (under the lock; other processes' entries are kept)."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            data = _read(path)
            section = data["environments"].setdefault(env_id, {"env": env, "decisions": {}})
            section.setdefault("decisions", {})[problem_key] = decision.to_json()
            section["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            stale = sorted(data["environments"], key=lambda e: str(data["environments"][e].get("updated", "")))
            for old in stale[:-MAX_ENVIRONMENTS]:
                del data["environments"][old]
            _atomic_write(path, data)
    except OSError as e:
        _warn_once(
            f"write {path}",
            f"fused_dsconv: cannot write the tuning cache {path} ({e}); choices are kept "
            "in memory for this process only",
        )
