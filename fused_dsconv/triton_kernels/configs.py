"""Autotune config spaces (per tuned kernel), their pruning, and how each dot runs (``dot_kind``).

Chosen from the ahead-of-time compile report (tools/report_triton.py: every config below compiles for
sm_75 / sm_80 / sm_86 / sm_89 without register spills), not from timings: no GPU was at hand. The tuner
times the candidates that survive pruning on the first call of each problem class (the ``key``: C, K,
per-image output size, a bucket of M, layout, stride, dot mode, dtypes) and keeps the fastest for the
process. Pruning keeps compile time down: a tile wider than the problem is dropped, so a class compiles at
most MAX_CANDIDATES configs.
"""

from __future__ import annotations

import os

import triton


#: True when these kernels were decorated under TRITON_INTERPRET=1 (they then take CPU tensors).
INTERPRETED = bool(triton.knobs.runtime.interpret)


#: Largest BLOCK_P of any config: pixel groups (the backward kernels' walks) are multiples of it, so a
#: tile never straddles two groups whatever config runs.
PIX_ALIGN = 128


#: At most this many configs are timed per problem class.
MAX_CANDIDATES = 4


#: How tl.dot runs in Triton 3.8, which decides what compiles without spills: "mma16" fp16 / bf16
#: operands on tensor cores (sm_80+); "tf32" float32 operands as TF32 on tensor cores (sm_80+); "fma32"
#: IEEE float32 on the FMA units (any GPU; also where TF32 is asked for below sm_80); "fma16" fp16
#: operands on sm_75, where Triton 3.8 emits no MMA instruction at all (tl.dot becomes FMA loops).
KINDS = ("mma16", "tf32", "fma32", "fma16")


def dot_kind(op_bytes, dot_mode=None, arch=None) -> str:
    """KINDS entry of a launch: operand size in bytes, DOT_MODE (None: a kernel without a dot, classed by
    its operand size), compute capability as 75 / 80 / ... (None: unknown, taken as sm_80+)."""
    if dot_mode is None:
        dot_mode = 1 if op_bytes == 2 else 0
    tc = arch is None or arch >= 80
    if dot_mode in (1, 2):
        return "mma16" if tc else "fma16"
    if dot_mode in (3, 4):
        return "tf32" if tc else "fma32"
    return "fma32"


#: config -> (the KINDS it is for, widest dsconv_bwd_dt K slice it is for or None). Derived from the
#: compile report: a config is in scope for a kind when every build of it for that kind, on every arch
#: the kind runs on, has no spills.
SCOPE: dict = {}


ALL = frozenset(KINDS)


MMA = frozenset(("mma16", "tf32"))


def _cfg(num_warps, num_stages, kinds=ALL, max_k_slice=None, **tiles):
    cfg = triton.Config(tiles, num_warps=num_warps, num_stages=num_stages)
    SCOPE[cfg] = (frozenset(kinds), max_k_slice)
    return cfg


#: dsconv_fwd: pixels x output channels x input-channel chunk. Wide K tiles first: each depthwise chunk
#: then feeds 128-256 output channels (K > BLOCK_K recomputes it per K tile). 8 warps for the wide tiles
#: (4 warps hold twice the accumulator per thread and spill). fp16 on sm_75 (FMA dot, operands in
#: registers) spills on every tile wider than 64 x 64.
_WIDE = ("mma16", "tf32", "fma32")


FWD_CONFIGS = [
    _cfg(8, 2, kinds=_WIDE, BLOCK_P=64, BLOCK_K=256, BLOCK_C=32),
    _cfg(8, 2, kinds=("fma32",), BLOCK_P=64, BLOCK_K=128, BLOCK_C=32),
    _cfg(8, 2, kinds=("mma16", "tf32"), BLOCK_P=64, BLOCK_K=128, BLOCK_C=16),
    _cfg(8, 2, kinds=_WIDE, BLOCK_P=128, BLOCK_K=64, BLOCK_C=32),
    _cfg(4, 2, kinds=("mma16", "tf32", "fma16"), BLOCK_P=64, BLOCK_K=64, BLOCK_C=16),
    _cfg(4, 2, BLOCK_P=32, BLOCK_K=32, BLOCK_C=16),
]


#: dsconv_bwd_dt: pixels x input-channel tile (BLOCK_K, the K slice, is the launcher's: it sizes dt's
#: partial buffer; the dy tile and the dWp accumulator grow with it).
DT_CONFIGS = [
    _cfg(8, 2, kinds=("mma16",), max_k_slice=128, BLOCK_P=64, BLOCK_C=32),
    _cfg(8, 2, kinds=("mma16", "tf32", "fma16"), BLOCK_P=32, BLOCK_C=32),
    _cfg(8, 2, BLOCK_P=32, BLOCK_C=16),
    _cfg(4, 2, kinds=("mma16", "fma16"), max_k_slice=128, BLOCK_P=32, BLOCK_C=16),
    # (TF32 reading a stored dy spills 4 bytes on sm_86 / sm_89; the wider configs cover it.)
    _cfg(4, 1, kinds=("mma16", "fma32", "fma16"), BLOCK_P=16, BLOCK_C=16),
]


#: dsconv_bwd_dx: input pixels x channels (no dot: kinds by operand size). ptxas caps the small 4-warp
#: tiles at 64-96 registers for 16-bit data and spills a few bytes there; on sm_75 (fma16) the 8-warp
#: tiles spill 68 bytes with channels_last 16-bit data (the stride-class walk keeps more live).
DX_CONFIGS = [
    _cfg(8, 1, kinds=("mma16", "fma32"), BLOCK_P=128, BLOCK_C=16),
    _cfg(8, 1, kinds=("mma16", "fma32"), BLOCK_P=64, BLOCK_C=32),
    _cfg(4, 1, kinds=("fma32", "fma16"), BLOCK_P=64, BLOCK_C=16),
    _cfg(4, 1, kinds=("fma32",), BLOCK_P=32, BLOCK_C=16),
]


#: Tests and debugging: kernel name -> the one config to run (bypasses timing); see triton_launch.
FORCED: dict[str, triton.Config] = {}


#: Under the interpreter, or with FUSED_DSCONV_TRITON_AUTOTUNE=0: the config a class runs untimed.
AUTOTUNE = os.environ.get("FUSED_DSCONV_TRITON_AUTOTUNE", "1") != "0"


def _p2(v: int) -> int:
    return triton.next_power_of_2(max(1, int(v)))


def _wide(cfg: triton.Config, dims: dict) -> bool:
    """A tile wider than the problem in some dimension (beyond the smallest such tile of the space)."""
    return any(cfg.kwargs.get(name, 0) > lim for name, lim in dims.items())


def in_scope(cfg, kind=None, k_slice=None) -> bool:
    """Whether ``cfg`` is meant for this dot kind (KINDS; None: any) and K slice (see ``SCOPE``)."""
    kinds, max_k = SCOPE.get(cfg, (ALL, None))
    return (kind is None or kind in kinds) and (k_slice is None or max_k is None or k_slice <= max_k)


def candidates(configs, limits: dict, kind=None, k_slice=None) -> list:
    """The configs worth timing for a problem: those for its dot kind and K slice (``SCOPE``) no wider
    than it (``limits``: {constexpr: widest useful value}); if the problem is narrower than every such
    tile, the narrowest; at most MAX_CANDIDATES."""
    configs = [c for c in configs if in_scope(c, kind, k_slice)]
    keep = [c for c in configs if not _wide(c, limits)]
    if not keep:
        narrow = min(tuple(c.kwargs.get(k, 0) for k in limits) for c in configs)
        keep = [c for c in configs if tuple(c.kwargs.get(k, 0) for k in limits) == narrow]
    return keep[:MAX_CANDIDATES]


def _pruner(name: str, limits):
    """early_config_prune for kernel ``name`` (``limits(args)``: see ``candidates``); a single config when
    forced, when autotuning is off, or under the interpreter (timing it would be meaningless)."""

    def prune(configs, nargs, **kwargs):
        if name in FORCED:
            return [FORCED[name]]
        x = nargs.get("x_ptr")  # BLOCK_K among the launch's kwargs: dsconv_bwd_dt's K slice
        kind = dot_kind(x.element_size(), kwargs.get("DOT_MODE"), _arch()) if x is not None else None
        keep = candidates(configs, limits({**nargs, **kwargs}), kind, kwargs.get("BLOCK_K"))
        return keep[:1] if INTERPRETED or not AUTOTUNE else keep

    return prune


def _arch():
    """The current GPU's compute capability as 75 / 80 / ... (None under the interpreter)."""
    if INTERPRETED:
        return None
    return triton.runtime.driver.active.get_current_target().arch


#: kernel name -> limits function (filled in next to each tuned kernel).
LIMITS: dict = {}


def _bench(kernel_call, quantiles):
    """The tuner's timer: triton's on a GPU. Under the interpreter a single candidate is ever timed
    (the pruner keeps one), so no timing is taken; the call still runs, as the tuner expects."""
    if INTERPRETED:
        kernel_call()
        return [0.0 for _ in quantiles]
    from triton.testing import do_bench

    return do_bench(kernel_call, quantiles=quantiles)


def _tuned(name, configs, key, limits):
    LIMITS[name] = limits
    return triton.autotune(
        configs=configs, key=key, do_bench=_bench, prune_configs_by={"early_config_prune": _pruner(name, limits)}
    )
