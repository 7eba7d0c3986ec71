"""Shared pieces of the benchmark suite: settings, cases, implementations, environment, memory.

Kept free of pytest so ``bench/report.py`` and the tests can import it.
"""

from __future__ import annotations

import copy
import os
import platform
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from fused_dsconv import backends
from fused_dsconv.tune import cpu_model
from fused_dsconv.contract import output_size, walk_blocks
from fused_dsconv.models import BASE_RESOLUTION, TABLE1, JointNet

FULL_ENV = "FUSED_DSCONV_BENCH_FULL"
ALPHAS = (1.0, 0.75)
RHOS = (1.0, 0.857)
DILATIONS = (1, 3)
MODES = ("eval", "train_fwd", "train_fwd_bwd")
LAYOUTS = ("nchw", "channels_last")
# torch.compile on CPU costs ~5-30 s per case and mode on 2 cores (measured here: 4-32 s per mode for one block),
# 35 min or more for all 216 block cases: by default only this representative case is compiled.
CPU_COMPILE_CASE = "a100_r100_d3_b3"
# "auto" at CI size: this block case (each auto case first measures its candidates), and the classifier.
AUTO_BLOCK_CASE = CPU_COMPILE_CASE
# On CUDA, CI size compiles the nine blocks of this configuration (27 compiles); --paper-size compiles all 216.
CUDA_COMPILE_CONFIG = "a100_r100_d3"
# The classifier at CI size: the paper's best configuration and the smallest one; --paper-size runs all eight.
CI_MODEL_CONFIGS = ("a100_r100_d3", "a075_r086_d3")

# The classifier's GPU memory budget for the "largest batch that fits" estimate (GTX 1080 Ti: 11 GiB).
BUDGET_BYTES = 11 * 2**30
WORKSPACE_MARGIN_BYTES = 2**30  # CUDA context + cuDNN/cuBLAS workspace + allocator slack (assumed)


@dataclass(frozen=True)
class Settings:
    full: bool
    device: torch.device
    batch: int
    model_batch: int
    rounds: int
    warmup: int
    model_rounds: int
    scale: float  # input side = round(224 * rho * scale)
    threads: int  # CPU intra-op threads during timing

    @property
    def label(self) -> str:
        return ("paper-size" if self.full else "ci-size") + (
            f" (resolution x{self.scale:g})" if self.scale != 1 else ""
        )


def make_settings(
    full: bool,
    device: Optional[str] = None,
    batch: Optional[int] = None,
    rounds: Optional[int] = None,
    scale: Optional[float] = None,
    threads: Optional[int] = None,
) -> Settings:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    if full:
        b, mb, r, w, mr = 32, 32, (30 if cuda else 10), 3, (20 if cuda else 5)
    else:
        b, mb, r, w, mr = 2, 2, (20 if cuda else 5), (3 if cuda else 1), (10 if cuda else 3)
    # The paper's resolutions at both sizes (at batch 2 and one thread the CI-size suite takes ~1.5-3 min on a
    # shared 2-core CPU); --bench-scale shrinks the input side for quicker smoke runs.
    sc = scale if scale is not None else 1.0
    # One CPU thread by default: on a shared 2-core machine two OpenMP threads stall at every barrier whenever
    # another process holds a core (measured here: one block's forward+backward, median 7 ms and IQR 1 ms with one
    # thread vs median 50-76 ms and IQR 60-130 ms with two, under load from other jobs).
    th = threads or (1 if dev.type == "cpu" else torch.get_num_threads())
    return Settings(full, dev, batch or b, batch or mb, rounds or r, w, rounds or mr, sc, th)


def env_full() -> bool:
    return os.environ.get(FULL_ENV, "").strip() not in ("", "0", "false", "False", "no")


@dataclass(frozen=True)
class BlockCase:
    """One JointBlock shape of the paper's classifier."""

    alpha: float
    rho: float
    dilation: int
    index: int  # 1..9
    c: int
    k: int
    stride: int
    h: int  # input side

    @property
    def config(self) -> str:
        return f"a{int(round(self.alpha * 100)):03d}_r{int(round(self.rho * 100)):03d}_d{self.dilation}"

    @property
    def id(self) -> str:
        return f"{self.config}_b{self.index}"

    @property
    def shape(self) -> str:
        return f"{self.c}->{self.k} s{self.stride} d{self.dilation} {self.h}x{self.h}"

    @property
    def ho(self) -> int:
        return output_size(self.h, self.stride)


def block_cases(scale: float = 1.0) -> list[BlockCase]:
    """The 72 block shapes; ``scale`` < 1 shrinks the input side (same channels, strides, dilations)."""
    cases = []
    for alpha in ALPHAS:
        for rho in RHOS:
            for d in DILATIONS:
                side = int(round(BASE_RESOLUTION * rho * scale))
                for i, b in enumerate(walk_blocks(TABLE1, side, alpha)):
                    cases.append(BlockCase(alpha, rho, d, i + 1, b.c, b.k, b.stride, b.side))
    return cases


def at_scale(case: BlockCase, scale: float) -> BlockCase:
    """The same block (id, channels, stride, dilation) at input side scaled by ``scale``."""
    if scale == 1.0:
        return case
    return next(c for c in block_cases(scale) if c.id == case.id)


def model_configs() -> list[tuple[float, float, int]]:
    return [(a, r, d) for a in ALPHAS for r in RHOS for d in DILATIONS]


def config_id(alpha: float, rho: float, d: int) -> str:
    return f"a{int(round(alpha * 100)):03d}_r{int(round(rho * 100)):03d}_d{d}"


# -- implementations --------------------------------------------------------------------------------
def impl_names() -> list[str]:
    """Baselines first, then auto (the measured choice), then every registered backend of ours in each layout
    (picked up automatically)."""
    ours = [f"{name}-{layout}" for name in backends.names() for layout in LAYOUTS]
    return ["eager-nchw", "eager-channels_last", "compile-nchw", "auto-nchw", "auto-channels_last", *ours]


def split_impl(impl: str) -> tuple[str, str]:
    name, layout = impl.rsplit("-", 1)
    return name, layout


def impl_unavailable(name, x, device, full, case_id):
    """Why implementation ``name`` ("eager", "compile" or a backend) cannot run ``x`` here, or None."""
    if name == "compile":
        return compile_unavailable(device, full, case_id)
    if name == "auto":
        return auto_unavailable(full, case_id)
    if name != "eager":
        return backend_unavailable(name, x)
    return None


def case_unavailable(params: dict, settings: "Settings") -> Optional[str]:
    """Why a parametrised benchmark case (its pytest params) cannot run with these settings, or None: the same
    decisions the benchmarks make at run time, taken at collection with a small probe input."""
    name, layout = split_impl(params["impl"])
    if "cfg" in params:  # bench_classifier
        why = classifier_config_unavailable(config_id(*params["cfg"]), settings.full)
        if why is not None:
            return why
        case_id = "classifier"
    else:
        case_id = params["case"].id
    probe = to_layout(torch.empty(1, 2, 2, 2, device=settings.device), layout)
    return impl_unavailable(name, probe, settings.device, settings.full, case_id)


def classifier_config_unavailable(cid: str, full: bool) -> Optional[str]:
    if not full and cid not in CI_MODEL_CONFIGS:
        return (
            f"CI size runs the classifier for {', '.join(CI_MODEL_CONFIGS)} only; --paper-size / "
            f"{FULL_ENV}=1 runs all eight configurations"
        )
    return None


def compile_unavailable(device: torch.device, full: bool, case_id: str) -> Optional[str]:
    """Why torch.compile is not benchmarked here, or None (``case_id`` "classifier" for the whole model)."""
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        if cap < (7, 0):
            return (
                f"torch.compile needs Triton, which supports CUDA capability >= 7.0 only; this GPU is "
                f"sm_{cap[0]}{cap[1]}"
            )
        if not full and case_id != "classifier" and not case_id.startswith(CUDA_COMPILE_CONFIG + "_"):
            return (
                f"CI size compiles the blocks of {CUDA_COMPILE_CONFIG} only (each case and mode is a fresh "
                f"inductor compile); --paper-size / {FULL_ENV}=1 compiles every case"
            )
        return None
    if not full and case_id == "classifier":
        return f"inductor on CPU compiles the classifier for minutes on 2 cores: only with --paper-size / {FULL_ENV}=1"
    if not full and case_id != CPU_COMPILE_CASE:
        return (
            f"inductor on CPU compiles each case for ~5-30 s on 2 cores (all cases: 35 min or more): only "
            f"{CPU_COMPILE_CASE} is compiled by default; --paper-size / {FULL_ENV}=1 compiles every case"
        )
    return None


def auto_unavailable(full: bool, case_id: str) -> Optional[str]:
    """Why "auto" is not benchmarked for this case, or None (the classifier: every configuration that runs)."""
    if not full and case_id not in ("classifier", AUTO_BLOCK_CASE):
        return (
            f"CI size benchmarks auto (which first measures every candidate) for the classifier and "
            f"{AUTO_BLOCK_CASE} only; --paper-size / {FULL_ENV}=1 for every block case"
        )
    return None


def tuning_summary(blocks) -> list[dict]:
    """Per JointBlock (name, module): the tuner's measured medians, winner and speed-up over unfused."""
    rows = []
    for name, block in blocks:
        problem, d = block.last_tuning or (None, None)
        if d is None:
            rows.append({"block": name, "winner": block.last_backend, "source": "not measured"})
            continue
        rows.append(
            {
                "block": name,
                "shape": problem.shape,
                "mode": problem.mode,
                "winner": d.choice,
                "MEASURED_median_ms": {k: v * 1e3 for k, v in d.times.items()},
                "speedup_vs_unfused": d.speedup_over_unfused(),
                "source": d.source,
                "not_timed": d.skipped,
            }
        )
    return rows


def first_capable(device: torch.device) -> str:
    """The backend "auto" takes without measuring (what the memory rows measure: the fused op's saving)."""
    return backends.select(torch.empty(1, 1, 1, 1, device=device)).name


def backend_unavailable(name: str, x: torch.Tensor) -> Optional[str]:
    """Why backend ``name`` is not benchmarked on inputs like ``x``, or None."""
    why = backends.explain(x).get(name, f"backend {name!r} is not registered")
    if why is not None:
        return why
    if name == "triton" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "TRITON_INTERPRET=1: the Triton interpreter is a correctness tool, not a performance mode"
    return None


def implementation_kind(impl: str, device: torch.device) -> str:
    """What the timed code is, in words (goes into extra_info so no one mistakes the fallback for a kernel)."""
    name, layout = split_impl(impl)
    if name == "eager":
        return f"unfused eager PyTorch Sequential(dw, pw, bn, ReLU), {layout}"
    if name == "compile":
        return f"torch.compile (inductor, default mode) of the unfused Sequential, {layout}"
    if name == "auto":
        return (
            f"JointBlock backend='auto' ({layout}): per block the fastest of every capable backend and the "
            "unfused layers, measured in this run before the timed rounds (extra_info 'tuning')"
        )
    if name == "reference":
        return f"fused_dsconv backend 'reference' ({layout}): the plain-PyTorch fallback, NOT a fused kernel"
    return f"fused_dsconv backend {name!r} ({layout})"


def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


def randomise_bn(module: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BN affine parameters and running statistics (no identity BN, no zero-filled tensors)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                k = m.num_features
                m.weight.copy_(torch.rand(k, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(k, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(k, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(k, generator=gen) + 0.5)


def unfused_classifier(model: JointNet) -> nn.Module:
    """A copy of ``model`` whose joint blocks are ``Sequential(dw, pw, bn, ReLU)`` (same weights)."""
    m = copy.deepcopy(model)
    m.blocks = nn.Sequential(*(b.to_unfused() for b in model.blocks))
    return m


# -- environment ------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    info = {
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "os_cpu_count": os.cpu_count(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        info.update(
            device=torch.cuda.get_device_name(device),
            capability=f"sm_{cap[0]}{cap[1]}",
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info.update(
            device=f"CPU ({cpu_model()}, {os.cpu_count()} cores, timed on {torch.get_num_threads()} "
            f"thread{'s' if torch.get_num_threads() > 1 else ''})",
            capability=None,
        )
    return info


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# -- memory ---------------------------------------------------------------------------------------
def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak allocated bytes above the pre-call level while ``fn`` runs (CUDA only, else None)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def largest_batch(
    per_sample_bytes: float,
    fixed_bytes: float,
    params: int,
    budget: int = BUDGET_BYTES,
    margin: int = WORKSPACE_MARGIN_BYTES,
) -> int:
    """Derived estimate: floor((budget - margin - 16 B x params - fixed) / per-sample bytes).

    16 B per parameter = fp32 weights + grads + Adam exp_avg + exp_avg_sq.
    """
    room = budget - margin - 16 * params - fixed_bytes
    return max(0, int(room // per_sample_bytes)) if per_sample_bytes > 0 else 0
