"""The measured choice behind ``JointBlock(backend="auto")``: time every candidate once, run the fastest.

Nothing can know in advance which backend is fastest on the user's device, so, as cuDNN's benchmark
mode and Triton's autotune do, the first call of a block on a new *problem* (mode, shape, dtype,
layout, device; ``Problem``) times every candidate that can run it: each variant of each capable
backend (``Backend.variants``) and the block's own unfused layers as PyTorch runs them. The fastest
median wins and is kept in memory and on disk (``cache_path()``, ``fused_dsconv/tune_cache.py``), so later
calls, later processes and ``fused-dsconv tune`` (``fused_dsconv/tune_cli.py``) reuse it. Design notes and the measured CPU numbers: docs/tuning.md.

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

import contextlib
import datetime
import os
import statistics
import time
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from . import backends
from .contract import output_size
from .tune_cache import (
    CACHE_FILE,
    GENERATION,
    MEMORY,
    UNFUSED,
    Decision,
    Problem,
    cache_path,
    clear_memory,
    cpu_model,
    disk_lookup,
    environment,
    store,
)

ENV_VAR = "FUSED_DSCONV_TUNE"
MIN_ROUNDS, MAX_ROUNDS, MIN_SECONDS = 5, 30, 0.1

# A timer maps (problem, candidates) to each candidate's median seconds, or the exception it raised.
Timer = Callable[["Problem", list], dict]


# -- controls -----------------------------------------------------------------------------------
_OPTIONS: dict = {}  # set by options(): enabled, refresh, timer


@contextlib.contextmanager
def options(
    *, enabled: Optional[bool] = None, refresh: Optional[bool] = None, timer: Optional[Timer] = None
) -> Iterator[None]:
    """Within the block: ``enabled`` overrides $FUSED_DSCONV_TUNE; ``refresh`` re-measures problems whose
    choice came from the cache file (choices measured in this process are kept); ``timer`` replaces the
    measurement (tests inject timings with it)."""
    saved = dict(_OPTIONS)
    _OPTIONS.update({k: v for k, v in (("enabled", enabled), ("refresh", refresh), ("timer", timer)) if v is not None})
    GENERATION[0] += 1
    try:
        yield
    finally:
        _OPTIONS.clear()
        _OPTIONS.update(saved)
        GENERATION[0] += 1


def setting_off() -> Optional[str]:
    """Why measuring is off by setting ($FUSED_DSCONV_TUNE, deterministic mode), or None."""
    if torch.are_deterministic_algorithms_enabled():
        return "deterministic algorithms are on: the choice must not depend on timing"
    if "enabled" in _OPTIONS:
        return None if _OPTIONS["enabled"] else "turned off by fused_dsconv.tune.options(enabled=False)"
    value = os.environ.get(ENV_VAR, "1").strip() or "1"
    if value not in ("0", "1"):
        raise ValueError(
            f"environment variable {ENV_VAR}={value!r} must be 0 (first capable backend) or 1 "
            "(measure and keep the fastest, the default)"
        )
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
    return Problem(
        mode,
        *x.shape[:2],
        pw.out_channels,
        *x.shape[2:],
        dw.stride[0],
        dw.dilation[0],
        _dtype_name(x.dtype),
        _dtype_name(dw.weight.dtype),
        _dtype_name(amp) if amp else "none",
        layout_of(x),
        str(x.device),
        bool(block.recompute),
        dw.bias is not None or pw.bias is not None,
        bool(bn.affine),
        sync,
    )


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
    timed = [
        (results[n], i, n) for i, n in enumerate(order) if n in results and not isinstance(results[n], BaseException)
    ]
    return min(timed)[2] if timed else None


def failure_reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"raised {type(e).__name__}: {text[:300]}"


# -- measuring ----------------------------------------------------------------------------------
def synchronizer(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _synthetic(problem: Problem, block_type: type):
    """A fresh block (of ``block_type``: JointBlock) and input tensors of ``problem``'s shape; no global RNG is
    consumed."""
    dev = torch.device(problem.device)
    gen = torch.Generator(device=dev).manual_seed(0)
    pdt, dt = getattr(torch, problem.param_dtype), getattr(torch, problem.dtype)
    block = block_type(
        problem.c,
        problem.k,
        problem.stride,
        problem.dilation,
        bias=problem.bias,
        affine=problem.affine,
        recompute=problem.recompute,
        device="meta",
        dtype=pdt,
    )
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
    ho, wo = output_size(problem.h, problem.stride), output_size(problem.w, problem.stride)
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


def time_interleaved(
    fns: dict,
    sync: Callable[[], None],
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
    min_seconds: float = MIN_SECONDS,
) -> tuple[dict, dict]:
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
        order = order[rounds % len(order) :] + order[: rounds % len(order)]  # no candidate always runs first
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


def measure(problem: Problem, names: list[str], block_type: type) -> dict:
    """Each candidate's median seconds per call on ``problem`` (or the exception it raised)."""
    # Identity saved-tensor hooks: hooks the caller installed (memory probes, activation checkpointing)
    # must not see the tuner's tensors.
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        block, x, g = _synthetic(problem, block_type)
        fns = {name: _step(block, name, x, g, problem) for name in names}
        samples, failed = time_interleaved(fns, synchronizer(torch.device(problem.device)))
    return {**failed, **{n: statistics.median(t) for n, t in samples.items()}}


# -- deciding -----------------------------------------------------------------------------------
def decide(problem: Problem, x: Tensor, block_type: type) -> Decision:
    """The choice for ``problem`` (``x``: an input of it, in the compute dtype, for the capability checks):
    from memory, else the cache file, else measured now (and stored)."""
    env_id, env = environment(problem.device)
    key = (env_id, problem.key)
    refresh = _OPTIONS.get("refresh", False)
    hit = MEMORY.get(key)
    if hit is not None and not (refresh and hit.source == "cache"):
        return hit
    names, left_out = candidates(problem, x)
    if not refresh:
        hit = disk_lookup(env_id, problem)
        if hit is not None and hit.choice in names:
            MEMORY[key] = hit
            return hit
    if len(names) <= 1:
        choice = names[0] if names else backends.select(x).name  # select raises, naming every reason
        decision = Decision(choice, {}, left_out, "only candidate")
        MEMORY[key] = decision
        return decision
    timer = _OPTIONS.get("timer")
    results = timer(problem, names) if timer is not None else measure(problem, names, block_type)
    failed = {n: failure_reason(r) for n, r in results.items() if isinstance(r, BaseException)}
    choice = fastest(results, names)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if choice is None:  # nothing ran: the priority order, whose own call will raise the real error
        decision = Decision(names[0], {}, {**left_out, **failed}, "untimed: every candidate failed", now)
        MEMORY[key] = decision
        return decision
    times = {n: float(r) for n, r in results.items() if n not in failed}
    decision = Decision(choice, times, {**left_out, **failed}, "measured", now)
    MEMORY[key] = decision
    store(env_id, env, problem.key, decision)
    return decision


def choose(
    block, x: Tensor, use_batch_stats: bool, validate: Callable[[], object] = lambda: None, sync: bool = False
) -> str:
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
        choice = block.tuned_choices.get(slot) if setting_off() is None else None
        return choice if choice is not None else backends.select(x).name
    if setting_off() is not None or input_off(x) is not None:
        if block.last_tuning is not None:
            block.last_tuning = None
        return backends.select(x).name
    # The block's shortcut to its recent decisions: a cheap key per call instead of the Problem's text key.
    fast = (
        GENERATION[0],
        mode,
        tuple(x.shape),
        x.dtype,
        x.device,
        slot,
        autocast_dtype(x.device.type),
        torch.get_num_threads(),
        block.recompute,
        block.dw.weight.dtype,
        sync,
    )
    hit = block.tuning_shortcuts.get(fast)
    if hit is None:
        validate()
        problem = problem_of(block, x, mode, sync)
        hit = (problem, decide(problem, x, type(block)))
        if len(block.tuning_shortcuts) >= 64:  # many shapes (e.g. variable image sizes): keep it bounded
            block.tuning_shortcuts.clear()
        block.tuning_shortcuts[fast] = hit
    block.tuned_choices[slot] = hit[1].choice
    if block.last_tuning is not hit:  # nn.Module.__setattr__ costs microseconds: only on a change
        block.last_tuning = hit
    return hit[1].choice


def tune_model(
    model: torch.nn.Module, x: Tensor, *, train: bool = False, refresh: bool = False
) -> list[tuple[str, Optional[Problem], Optional[Decision]]]:
    """Make every auto JointBlock of ``model`` choose for input ``x`` (one eager forward, with gradients if
    ``train``): measured now, or read from the cache (``refresh`` re-measures those). Call it before
    ``torch.compile`` so the compiled graph gets measured choices. The model's running statistics and mode
    are left as they were. Returns (block name, problem, decision) per JointBlock; (name, None, None) for
    blocks that did not measure (a forced backend, SyncBatchNorm)."""
    # The blocks are the modules that consult the tuner (JointBlock, which keeps ``last_tuning``): asked by
    # attribute, since importing JointBlock here would make this module and block.py import each other.
    blocks = [(n, m) for n, m in model.named_modules() if hasattr(m, "last_tuning")]
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


__all__ = [
    "CACHE_FILE",
    "ENV_VAR",
    "UNFUSED",
    "Decision",
    "Problem",
    "cache_path",
    "choose",
    "clear_memory",
    "cpu_model",
    "decide",
    "environment",
    "measure",
    "options",
    "store",
    "time_interleaved",
    "tune_model",
]
