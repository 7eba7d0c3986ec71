"""The measured choice behind ``JointBlock(backend="auto")``: time every candidate once, run the fastest.

Nothing can know in advance which backend is fastest on the user's device, so, as cuDNN's benchmark
mode and Triton's autotune do, the first call of a block on a new *problem* (mode, shape, dtype,
layout, device; ``Problem``) times every candidate that can run it: each variant of each capable
backend (``Backend.variants``) and the block's own unfused layers as PyTorch runs them. The fastest
median wins and is kept in memory and on disk (``cache_path()``), so later calls, later processes and
``fused-dsconv tune`` reuse it. Design notes and the measured CPU numbers: docs/tuning.md.

Rules:
- Candidates run on synthetic tensors of the problem's shape (a private generator, fresh parameters):
  tuning never touches the module's parameters or running statistics, the global RNG, or autograd
  hooks the caller has installed (saved-tensor hooks see none of the tuner's tensors).
- Each candidate runs once untimed (first-call costs: allocation, cuDNN's own search, Triton's
  compile), then all candidates are timed in interleaved rounds (so load from other processes hits
  them alike), synchronised on CUDA, until each has ``MIN_ROUNDS`` rounds and ``MIN_SECONDS`` of
  samples (at most ``MAX_ROUNDS``); the median decides, ties go to the earlier candidate (priority
  order, unfused last). A candidate that raises (out of memory, say) is skipped with its reason.
- Memory mode: with ``recompute=True`` a block that computes gradients only considers candidates
  that save just the input, so never the unfused layers.
- ``FUSED_DSCONV_TUNE=0`` turns measuring off (the first capable backend, by priority), ``=1`` (the
  default, CPU and CUDA) on. A forced backend (``JointBlock(backend=...)``, ``FUSED_DSCONV_BACKEND``)
  is never tuned. Deterministic mode (``torch.use_deterministic_algorithms(True)``) turns measuring
  off too: which path a run takes must not depend on timing noise.
- torch.compile never measures inside a trace: a traced block uses the choice its last eager call
  made for the same mode, dtype, layout and device (``tune_model`` makes one before compiling), else
  the priority order.
- Tensor subclasses (fake, meta, distributed tensors) and CUDA graph capture are not measured either.

The cache file is JSON, one section per *environment* (device name, driver and toolkit, torch, this
package's version and a hash of its sources, Triton, CPU threads), so a driver, torch or code update
measures afresh. It is merged under a file lock and written atomically (temporary file, then
``os.replace``); a corrupted file is ignored with a warning and rebuilt.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import torch
from torch import Tensor

from . import backends

ENV_VAR = "FUSED_DSCONV_TUNE"
UNFUSED = "unfused"
CACHE_FILE = "tuning.json"
CACHE_FORMAT = 1
MAX_ENVIRONMENTS = 8  # sections kept in the cache file (the most recently written)
MIN_ROUNDS, MAX_ROUNDS, MIN_SECONDS = 5, 30, 0.1

# A timer maps (problem, candidates) to each candidate's median seconds, or the exception it raised.
Timer = Callable[["Problem", list], dict]


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
        return (f"{self.mode} n{self.n} c{self.c} k{self.k} {self.h}x{self.w} s{self.stride} d{self.dilation} "
                f"{self.dtype} params={self.param_dtype} amp={self.amp} {self.layout} {self.device} "
                f"recompute={int(self.recompute)} bias={int(self.bias)} affine={int(self.affine)}"
                + (" sync=1" if self.sync else ""))

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
        return {"choice": self.choice, "times_ms": {k: v * 1e3 for k, v in self.times.items()},
                "skipped": self.skipped, "measured_at": self.measured_at}

    @classmethod
    def from_json(cls, d: dict) -> "Decision":
        times = {str(k): float(v) / 1e3 for k, v in d["times_ms"].items()}
        skipped = {str(k): str(v) for k, v in d.get("skipped", {}).items()}
        if not isinstance(d["choice"], str):
            raise TypeError("choice must be a string")
        return cls(d["choice"], times, skipped, "cache", str(d.get("measured_at", "")))


# -- controls -----------------------------------------------------------------------------------
_OPTIONS: dict = {}  # set by options(): enabled, refresh, timer
_GENERATION = [0]  # bumped whenever remembered choices may no longer apply: blocks' own shortcuts then miss


@contextlib.contextmanager
def options(*, enabled: Optional[bool] = None, refresh: Optional[bool] = None,
            timer: Optional[Timer] = None) -> Iterator[None]:
    """Within the block: ``enabled`` overrides $FUSED_DSCONV_TUNE; ``refresh`` re-measures problems whose
    choice came from the cache file (choices measured in this process are kept); ``timer`` replaces the
    measurement (tests inject timings with it)."""
    saved = dict(_OPTIONS)
    _OPTIONS.update({k: v for k, v in (("enabled", enabled), ("refresh", refresh), ("timer", timer))
                     if v is not None})
    _GENERATION[0] += 1
    try:
        yield
    finally:
        _OPTIONS.clear()
        _OPTIONS.update(saved)
        _GENERATION[0] += 1


def setting_off() -> Optional[str]:
    """Why measuring is off by setting ($FUSED_DSCONV_TUNE, deterministic mode), or None."""
    if torch.are_deterministic_algorithms_enabled():
        return "deterministic algorithms are on: the choice must not depend on timing"
    if "enabled" in _OPTIONS:
        return None if _OPTIONS["enabled"] else "turned off by fused_dsconv.tune.options(enabled=False)"
    value = os.environ.get(ENV_VAR, "1").strip() or "1"
    if value not in ("0", "1"):
        raise ValueError(f"environment variable {ENV_VAR}={value!r} must be 0 (first capable backend) or 1 "
                         "(measure and keep the fastest, the default)")
    return f"{ENV_VAR}=0" if value == "0" else None


def input_off(x: Tensor) -> Optional[str]:
    """Why inputs like ``x`` are not measured (tensor subclasses, other devices, CUDA graph capture), or None."""
    if type(x) is not Tensor and not isinstance(x, torch.nn.Parameter):
        return f"x is a {type(x).__name__}, not a plain tensor"
    if x.device.type not in ("cpu", "cuda"):
        return f"x is on {x.device.type}"
    if x.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return "a CUDA graph is being captured"
    return None


# -- the problem and its candidates -------------------------------------------------------------
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast casts to on this device type, or None when autocast is off."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def layout_of(x: Tensor) -> str:
    return "channels_last" if backends.memory_format_of(x) == torch.channels_last else "nchw"


def mode_of(block, x: Tensor, use_batch_stats: bool) -> str:
    grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in block.parameters()))
    return ("train" if use_batch_stats else "eval") + ("_fwd_bwd" if grad else "_fwd")


def problem_of(block, x: Tensor, mode: str, sync: bool = False) -> Problem:
    """The problem of ``block`` running ``x`` (already in the compute dtype) in ``mode`` (``sync``: with its
    statistics merged over processes)."""
    amp = autocast_dtype(x.device.type)
    dw, pw, bn = block.dw, block.pw, block.bn
    return Problem(mode, *x.shape[:2], pw.out_channels, *x.shape[2:], dw.stride[0], dw.dilation[0],
                   _dtype_name(x.dtype), _dtype_name(dw.weight.dtype), _dtype_name(amp) if amp else "none",
                   layout_of(x), str(x.device), bool(block.recompute), dw.bias is not None or pw.bias is not None,
                   bool(bn.affine), sync)


def candidates(problem: Problem, x: Tensor) -> tuple[list[str], dict[str, str]]:
    """(choice strings in priority order, unfused last; {backend or candidate: why it is not one})."""
    names, left_out = [], {}
    for name in backends.names():
        b = backends.get(name)
        why = b.unavailable(x) or b.not_timed(x)
        if why is not None:
            left_out[name] = why
            continue
        names += [backends.choice_name(name, v) for v in b.variants(problem)]
    if problem.recompute and problem.grad:
        left_out[UNFUSED] = "recompute=True: the unfused layers save their intermediate activations for backward"
    elif problem.sync:
        left_out[UNFUSED] = "synchronised statistics: the unfused layers' BatchNorm2d would use this process's only"
    else:
        names.append(UNFUSED)
    return names, left_out


def fastest(results: dict, order: list[str]) -> Optional[str]:
    """The candidate with the smallest time (ties: the earliest in ``order``); None if none has a time."""
    timed = [(results[n], i, n) for i, n in enumerate(order)
             if n in results and not isinstance(results[n], BaseException)]
    return min(timed)[2] if timed else None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"raised {type(e).__name__}: {text[:300]}"


# -- measuring ----------------------------------------------------------------------------------
def _synchronize(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _synthetic(problem: Problem):
    """A fresh block and input tensors of ``problem``'s shape; no global RNG is consumed."""
    from .block import JointBlock

    dev = torch.device(problem.device)
    gen = torch.Generator(device=dev).manual_seed(0)
    pdt, dt = getattr(torch, problem.param_dtype), getattr(torch, problem.dtype)
    block = JointBlock(problem.c, problem.k, problem.stride, problem.dilation, bias=problem.bias,
                       affine=problem.affine, recompute=problem.recompute, device="meta", dtype=pdt)
    block = block.to_empty(device=dev)
    with torch.no_grad():
        for p in block.parameters():  # weights ~ N(0, 1/fan-in), BN weight ~ 1: a realistic value range
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.normal_(1.0 if p.dim() == 1 else 0.0, (1.0 / fan_in) ** 0.5 if p.dim() > 1 else 0.1, generator=gen)
        block[2].reset_running_stats()
    block.train(problem.mode.startswith("train"))
    mf = torch.channels_last if problem.layout == "channels_last" else torch.contiguous_format
    x = torch.randn(problem.n, problem.c, problem.h, problem.w, generator=gen, device=dev, dtype=dt)
    x = x.contiguous(memory_format=mf).requires_grad_(problem.grad)
    ho, wo = (problem.h - 1) // problem.stride + 1, (problem.w - 1) // problem.stride + 1
    g = torch.randn(problem.n, problem.k, ho, wo, generator=gen, device=dev, dtype=dt).contiguous(memory_format=mf)
    return block, x, g


def _step(block, choice: str, x: Tensor, g: Tensor, problem: Problem) -> Callable[[], None]:
    dt = x.device.type
    amp = problem.amp != "none"

    def autocast():
        if amp:
            return torch.autocast(dt, dtype=getattr(torch, problem.amp))
        return torch.autocast(dt, enabled=False) if torch.amp.is_autocast_available(dt) else contextlib.nullcontext()

    params = list(block.parameters())
    if problem.grad:
        def fn():
            block.backend = choice
            with torch.enable_grad(), autocast():
                out = block.forward(x)
            torch.autograd.grad(out, [x, *params], g.to(out.dtype))
    else:
        def fn():
            block.backend = choice
            with torch.no_grad(), autocast():
                block.forward(x)
    return fn


def time_interleaved(fns: dict, sync: Callable[[], None], min_rounds: int = MIN_ROUNDS,
                     max_rounds: int = MAX_ROUNDS, min_seconds: float = MIN_SECONDS) -> tuple[dict, dict]:
    """Time each callable once per round, in rotating order, until every one has ``min_rounds`` rounds and
    ``min_seconds`` of samples (at most ``max_rounds``). Each callable first runs once untimed (first-call
    costs are not its speed). Returns ({name: [seconds per round]}, {name: exception} for those that raised)."""
    fns, failed = dict(fns), {}
    for name in list(fns):
        try:
            fns[name]()
            sync()
        except Exception as e:  # noqa: BLE001 (any failure disqualifies the candidate, with its reason)
            failed[name] = e
            del fns[name]
    samples: dict[str, list[float]] = {n: [] for n in fns}
    rounds = 0
    while fns and rounds < max_rounds and (rounds < min_rounds or min(sum(samples[n]) for n in fns) < min_seconds):
        order = list(fns)
        order = order[rounds % len(order):] + order[:rounds % len(order)]  # no candidate always runs first
        for name in order:
            try:
                sync()
                t0 = time.perf_counter()
                fns[name]()
                sync()
                samples[name].append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001
                failed[name] = e
                del fns[name], samples[name]
        rounds += 1
    return samples, failed


def measure(problem: Problem, names: list[str]) -> dict:
    """Each candidate's median seconds per call on ``problem`` (or the exception it raised)."""
    # Identity saved-tensor hooks: hooks the caller installed (memory probes, activation checkpointing)
    # must not see the tuner's tensors.
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        block, x, g = _synthetic(problem)
        fns = {name: _step(block, name, x, g, problem) for name in names}
        samples, failed = time_interleaved(fns, _synchronize(torch.device(problem.device)))
    return {**failed, **{n: statistics.median(t) for n, t in samples.items()}}


# -- memory and disk cache ----------------------------------------------------------------------
_MEMORY: dict[tuple[str, str], Decision] = {}
_ENV: dict[tuple, tuple[str, dict]] = {}
_DISK: dict[str, tuple[float, dict]] = {}  # path -> (mtime, parsed file)
_WARNED: set = set()


def clear_memory() -> None:
    """Forget every choice made in this process (the cache file stays)."""
    _GENERATION[0] += 1
    _MEMORY.clear()
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
        from . import __version__, _extension

        env = {"torch": torch.__version__, "fused_dsconv": __version__, "sources": _sources_hash(),
               "python": platform.python_version()}
        try:  # the installed version, without importing triton (seconds)
            env["triton"] = importlib.metadata.version("triton")
        except importlib.metadata.PackageNotFoundError:
            env["triton"] = None
        if dev.type == "cuda":
            props = torch.cuda.get_device_properties(dev)
            driver = getattr(torch._C, "_cuda_getDriverVersion", lambda: None)()
            env.update(device=props.name, capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                       driver=driver, native=_extension.status())
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
        _warn_once(f"corrupt {path} {hashlib.sha256(text.encode()).hexdigest()}",
                   f"fused_dsconv: ignoring the tuning cache {path}: {str(e)[:200]}; it will be rebuilt")
        return {"format": CACHE_FORMAT, "environments": {}}


def _disk_lookup(env_id: str, problem: Problem) -> Optional[Decision]:
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
        _warn_once(f"write {path}", f"fused_dsconv: cannot write the tuning cache {path} ({e}); choices are kept "
                                    "in memory for this process only")


# -- deciding -----------------------------------------------------------------------------------
def decide(problem: Problem, x: Tensor) -> Decision:
    """The choice for ``problem`` (``x``: an input of it, in the compute dtype, for the capability checks):
    from memory, else the cache file, else measured now (and stored)."""
    env_id, env = environment(problem.device)
    key = (env_id, problem.key)
    refresh = _OPTIONS.get("refresh", False)
    hit = _MEMORY.get(key)
    if hit is not None and not (refresh and hit.source == "cache"):
        return hit
    names, left_out = candidates(problem, x)
    if not refresh:
        hit = _disk_lookup(env_id, problem)
        if hit is not None and hit.choice in names:
            _MEMORY[key] = hit
            return hit
    if len(names) <= 1:
        choice = names[0] if names else backends.select(x).name  # select raises, naming every reason
        decision = Decision(choice, {}, left_out, "only candidate")
        _MEMORY[key] = decision
        return decision
    timer = _OPTIONS.get("timer") or measure
    results = timer(problem, names)
    failed = {n: _reason(r) for n, r in results.items() if isinstance(r, BaseException)}
    choice = fastest(results, names)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if choice is None:  # nothing ran: the priority order, whose own call will raise the real error
        decision = Decision(names[0], {}, {**left_out, **failed}, "untimed: every candidate failed", now)
        _MEMORY[key] = decision
        return decision
    times = {n: float(r) for n, r in results.items() if n not in failed}
    decision = Decision(choice, times, {**left_out, **failed}, "measured", now)
    _MEMORY[key] = decision
    store(env_id, env, problem.key, decision)
    return decision


def choose(block, x: Tensor, use_batch_stats: bool, validate: Callable[[], object] = lambda: None,
           sync: bool = False) -> str:
    """The choice string for ``block`` (backend "auto") running ``x`` (in the compute dtype): measured,
    cached, or, when measuring is off, the first capable backend. ``validate`` raises for an input the block
    must reject; it runs whenever this block meets a new kind of input (validity depends only on what the
    block's shortcut key holds: shape, dtypes, device, mode), never on a repeat.

    ``sync`` (statistics merged over processes): the unfused layers are no candidate. The candidates are timed
    on this process's batch without the collectives, which are the same whichever backend runs the passes,
    and never inside one: processes measure independently (they may choose differently, which changes
    nothing but speed)."""
    mode = mode_of(block, x, use_batch_stats)
    slot = f"{mode} {x.dtype} {layout_of(x)} {x.device.type}" + (" sync" if sync else "")
    if torch.compiler.is_compiling():  # never measure inside a trace: the eager choice, else the priority order
        choice = block._tuned.get(slot) if setting_off() is None else None
        return choice if choice is not None else backends.select(x).name
    if setting_off() is not None or input_off(x) is not None:
        if block.last_tuning is not None:
            block.last_tuning = None
        return backends.select(x).name
    # The block's shortcut to its recent decisions: a cheap key per call instead of the Problem's text key.
    fast = (_GENERATION[0], mode, tuple(x.shape), x.dtype, x.device, slot, autocast_dtype(x.device.type),
            torch.get_num_threads(), block.recompute, block.dw.weight.dtype, sync)
    hit = block._recent.get(fast)
    if hit is None:
        validate()
        problem = problem_of(block, x, mode, sync)
        hit = (problem, decide(problem, x))
        if len(block._recent) >= 64:  # many shapes (e.g. variable image sizes): keep it bounded
            block._recent.clear()
        block._recent[fast] = hit
    block._tuned[slot] = hit[1].choice
    if block.last_tuning is not hit:  # nn.Module.__setattr__ costs microseconds: only on a change
        block.last_tuning = hit
    return hit[1].choice


# -- whole models and the command line -------------------------------------------------------------
def tune_model(model: torch.nn.Module, x: Tensor, *, train: bool = False, refresh: bool = False
               ) -> list[tuple[str, Optional[Problem], Optional[Decision]]]:
    """Make every auto JointBlock of ``model`` choose for input ``x`` (one eager forward, with gradients if
    ``train``): measured now, or read from the cache (``refresh`` re-measures those). Call it before
    ``torch.compile`` so the compiled graph gets measured choices. The model's running statistics and mode
    are left as they were. Returns (block name, problem, decision) per JointBlock; (name, None, None) for
    blocks that did not measure (a forced backend, SyncBatchNorm)."""
    from .block import JointBlock

    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, JointBlock)]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    was_training = model.training
    for _, b in blocks:
        b.last_tuning = None
    try:
        model.train(train)
        with options(enabled=True, refresh=refresh), torch.set_grad_enabled(train):
            model(x)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
    return [(n, *(b.last_tuning or (None, None))) for n, b in blocks]


def report(rows: list[tuple[str, Optional[Problem], Optional[Decision]]]) -> list[str]:
    """Per block: each candidate's median, the winner and its speed-up over unfused (one line each)."""
    cands: list[str] = []
    for _, _, d in rows:
        for c in (d.times if d else {}):
            if c not in cands:
                cands.append(c)
    cands.sort(key=lambda c: (c == UNFUSED,))  # unfused last, the backends in priority order
    head = f"{'block':<12}{'shape':<26}" + "".join(f"{c + ' ms':>14}" for c in cands) + \
        f"{'winner':>14}{'vs unfused':>12}  source"
    lines = [head]
    notes: dict[str, str] = {}
    for name, problem, d in rows:
        if d is None:
            lines.append(f"{name:<12}{'-':<26}  not measured (forced backend, or not a plain BatchNorm2d)")
            continue
        cells = []
        for c in cands:
            if c in d.times:
                cells.append(f"{d.times[c] * 1e3:>14.3f}")
            else:
                cells.append(f"{'failed' if c in d.skipped else '-':>14}")
        sp = d.speedup_over_unfused()
        src = d.source + (f" ({d.measured_at})" if d.source == "cache" and d.measured_at else "")
        lines.append(f"{name:<12}{problem.shape:<26}" + "".join(cells) + f"{d.choice:>14}"
                     f"{(f'{sp:.2f}x' if sp else 'n/a'):>12}  {src}")
        notes.update(d.skipped)
    for c, why in notes.items():
        lines.append(f"  {c}: {why}")
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="jointnet_a100_d3", help="registry name (see fused-dsconv models)")
    p.add_argument("--batch", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--train", action="store_true", help="tune training (forward + backward, batch statistics); "
                                                          "default: inference")
    p.add_argument("--rho", type=float, default=1.0, help="resolution multiplier: input side round(224*rho)")
    p.add_argument("--recompute", action="store_true", help="blocks save only their input (memory mode)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and input")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (part of the cache key)")
    p.add_argument("--force", action="store_true", help="measure again even where the cache file has a choice")
    p.add_argument("--compare", type=int, default=0, metavar="ROUNDS",
                   help="then time whole steps of the tuned model against its plain-layer twin, ROUNDS interleaved "
                        "rounds (training: forward, cross-entropy, backward, Adam)")


def run_tune(args, out=print) -> int:
    from .models import create_model
    from .train import pick_device

    if args.batch < 1:
        raise SystemExit(f"error: --batch must be >= 1, got {args.batch}")
    device = pick_device(args.device, args.threads)
    why = setting_off()
    if why is not None and "deterministic" in why:
        raise SystemExit(f"error: nothing to tune: {why}")
    try:
        model = create_model(args.model, num_classes=10, rho=args.rho, recompute=args.recompute)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    dtype = getattr(torch, args.dtype)
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device=device, dtype=dtype, memory_format=mf)
    x = torch.randn(args.batch, 3, model.resolution, model.resolution, device=device, dtype=dtype)
    x = x.contiguous(memory_format=mf)
    ident, env = environment(str(x.device))
    t0 = time.perf_counter()
    try:
        rows = tune_model(model, x, train=args.train, refresh=args.force)
    except ValueError as e:  # e.g. batch 1 in training: one value per channel in the last block
        raise SystemExit(f"error: {e}") from None
    mode = "training (forward + backward)" if args.train else "inference"
    out(f"{args.model}, batch {args.batch}, {model.resolution}x{model.resolution}, {mode}, {args.dtype}, "
        f"{'channels_last' if args.channels_last else 'NCHW'}{', recompute' if args.recompute else ''}")
    threads = f", {env['threads']} thread{'s' if env.get('threads', 1) > 1 else ''}" if "threads" in env else ""
    out(f"device: {env['device']}{threads}; torch {env['torch']}; medians per call, measured "
        f"(interleaved rounds after one untimed call each)")
    for line in report(rows):
        out(line)
    out(f"{time.perf_counter() - t0:.1f} s; choices cached in {cache_path()} (environment {ident})")
    if args.compare > 0:
        for line in compare_plain(model, x, train=args.train, rounds=args.compare):
            out(line)
    return 0


def compare_plain(model, x: Tensor, *, train: bool, rounds: int) -> list[str]:
    """Whole steps of ``model`` (a JointNet, tuned) and of its twin with plain PyTorch layers, timed in
    interleaved rounds (so load from other processes hits both alike); lines for the report."""
    import torch.nn.functional as F

    from .train import unfused_twin

    y = torch.randint(0, model.num_classes, (x.shape[0],), generator=torch.Generator().manual_seed(0)).to(x.device)
    fns = {}
    for name, net in (("auto", model), ("plain layers", unfused_twin(model))):
        net.train(train)
        if train:
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)

            def fn(net=net, opt=opt):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), y).backward()
                opt.step()
        else:
            def fn(net=net):
                with torch.no_grad():
                    net(x)
        fns[name] = fn
    samples, failed = time_interleaved(fns, _synchronize(x.device), min_rounds=rounds, max_rounds=rounds,
                                       min_seconds=0.0)
    what = "training step (forward, cross-entropy, backward, Adam)" if train else "inference forward"
    lines = [f"whole model, one {what}, {rounds} interleaved rounds after one untimed step each (MEASURED):"]
    for name, t in samples.items():
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
        lines.append(f"  {name:<14} median {statistics.median(t) * 1e3:9.2f} ms  (IQR {(q[2] - q[0]) * 1e3:.2f} ms)")
    for name, e in failed.items():
        lines.append(f"  {name:<14} {_reason(e)}")
    if len(samples) == 2:
        a, p = samples["auto"], samples["plain layers"]
        lines.append(f"  auto / plain layers: {statistics.median(a) / statistics.median(p):.3f} (medians); "
                     f"{statistics.median([u / v for u, v in zip(a, p)]):.3f} (median of per-round ratios)")
    return lines
