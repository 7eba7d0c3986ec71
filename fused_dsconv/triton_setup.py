"""What every Triton launch needs before it launches: the kernels module as it is imported now, the dot
mode, strides and layouts, pixel groups, the small kernels' configs, and the autotuned kernels' machinery
(forcing a config, launching and reporting a tuned kernel). The launchers are ``fused_dsconv/triton_launch.py``.

Everything that reaches the kernels goes through ``kernels()`` and ``arch_of()`` here, looked up at call
time, so a test can re-import the kernels under ``TRITON_INTERPRET=1`` and the compile report
(tools/report_triton.py) can stand recorders in for them.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

import torch
import triton

from .contract import is_channels_last

KERNELS_MODULE = "fused_dsconv.triton_kernels"
VERBOSE = os.environ.get("FUSED_DSCONV_TRITON_VERBOSE", "0") not in ("", "0")


def kernels():
    """The kernels module as it is imported now (compiled, or interpreted under TRITON_INTERPRET=1)."""
    return importlib.import_module(KERNELS_MODULE)


# ----------------------------------------------------------------------------------------------
# Dot precision
# ----------------------------------------------------------------------------------------------


def conv_tf32_enabled() -> bool:
    """Whether PyTorch lets cuDNN convolutions use TF32: ``torch.backends.cudnn.conv.fp32_precision``
    (torch >= 2.9, which the legacy ``torch.backends.cudnn.allow_tf32`` sets too), else ``allow_tf32``."""
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return conv.fp32_precision == "tf32"
    return bool(cudnn.allow_tf32)


def dot_mode(x: torch.Tensor) -> int:
    """DOT_MODE (kernels module docstring) for inputs like ``x``: TF32 for float32 exactly when PyTorch's
    convolutions use it (and the GPU has TF32 tensor cores, sm_80+), IEEE otherwise."""
    interp = kernels().INTERPRETED
    if x.dtype == torch.float32:
        if not conv_tf32_enabled():
            return 0
        if interp:
            return 4
        return 3 if torch.cuda.get_device_capability(x.device)[0] >= 8 else 0
    if x.dtype == torch.bfloat16 and interp:
        return 2
    return 1


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def span(t: torch.Tensor) -> int:
    """Elements from t's first to one past its last addressable element (the bound DEBUG asserts)."""
    if t.numel() == 0:
        return 0
    return 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()))


def strides(t: torch.Tensor):
    return tuple(t.stride())


def dense(t):
    """``t`` as the dense row-major array a kernel indexes without strides; no copy when it already is one."""
    return None if t is None else t.contiguous()


def layout(t: torch.Tensor) -> int:
    return int(is_channels_last(t))


def plane_vec(plane: int, *tensors) -> int:
    """VEC of the kernels' ``_pixels``: the largest of 8, 4, 2 dividing the plane size (H W of the pixels
    indexed) when every tensor has dense planes -- offset n sn + h W + w, so NCHW-contiguous, not
    channels_last -- else 1 (general strides). Pixels then sit contiguously in aligned groups of VEC and
    the kernels' loads and stores along pixels vectorise."""
    for t in tensors:
        _, _, h, w = t.shape
        if (w > 1 and t.stride(3) != 1) or (h > 1 and t.stride(2) != w):
            return 1
    return next((v for v in (8, 4, 2) if plane % v == 0), 1)


def m_class(m: int) -> int:
    """Autotuner key for the pixel count: its power-of-two bucket (a new batch size of the same class
    reuses the choice; a last, smaller batch may tune once more)."""
    return max(1, m).bit_length()


def check_pixels(count: int, what: str) -> None:
    # Pixel indices are int32 inside the kernels (offsets are int64), and a group's end, start + group
    # size, must fit too: 2**30 pixels would be >= 4 GiB per channel of fp32 activations, far beyond any
    # joint block, but say so rather than wrap around.
    if 2 * count + 4 * kernels().PIX_ALIGN >= 2**31:
        raise ValueError(
            f"fused_dsconv triton backend: {what} = {count} pixels exceeds the int32 pixel index "
            f"(at most {2**30 - 2 * kernels().PIX_ALIGN})"
        )


def pix_groups(total: int, programs_per_group: int, device: torch.device) -> tuple[int, int]:
    """(pixels per group, groups) for the kernels whose programs walk a group of pixel tiles.

    Groups are multiples of PIX_ALIGN (so of every config's BLOCK_P) and few enough that the partials
    they write stay small: about 4 programs per SM in all. Under the interpreter: PIX_ALIGN pixels,
    which with the interpreter's 32-pixel tiles walks 4 tiles and, on the test shapes, leaves a tail.
    """
    align = kernels().PIX_ALIGN
    if kernels().INTERPRETED or device.type != "cuda":
        per = align
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        groups = max(1, min(triton.cdiv(total, align), triton.cdiv(4 * sms, max(1, programs_per_group))))
        per = triton.cdiv(triton.cdiv(total, groups), align) * align
    return per, max(1, triton.cdiv(total, per))


def ew_opts() -> dict:
    return {} if kernels().INTERPRETED else {"num_warps": 8, "num_stages": 1}


def ew_config():
    """(BLOCK_P, BLOCK_K) of the elementwise / reduction tiles (bn_relu, bn_bwd_reduce)."""
    return (32, 16) if kernels().INTERPRETED else (64, 64)


def colsum_config():
    """(BLOCK_R, BLOCK_N) of colsum_kernel."""
    return (16, 32) if kernels().INTERPRETED else (32, 128)


def reduce_config():
    """(BLOCK_T, BLOCK_K) of bn_stats / bn_bwd_finalize (a few hundred partial rows at most)."""
    return (16, 16) if kernels().INTERPRETED else (32, 64)


#: Widest K slice of dsconv_bwd_dt per dot kind (``triton_kernels.KINDS``; see ``k_slice``).
K_SLICE_CAP = {"mma16": 256, "tf32": 128, "fma32": 128, "fma16": 128}


def arch_of(x: torch.Tensor):
    """x's GPU as 75 / 80 / ... (None for CPU tensors: the interpreter, taken as sm_80+)."""
    if x.device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(x.device)
    return 10 * major + minor


def kind_of(x: torch.Tensor, mode=None) -> str:
    """The dot kind (``triton_kernels.KINDS``) of a launch on inputs like ``x``: its DOT_MODE (None: a kernel
    without a dot), operand size and GPU."""
    return kernels().dot_kind(x.element_size(), mode, arch_of(x))


#: dsconv_bwd_dt reads a stored dy (bn_bwd_dy) from this many input channels on. Its programs own C tiles
#: of at most 32, and each rebuilt dy from dout and y (two loads, scalar ones where NCHW planes are odd, and
#: the BN arithmetic per element): from 4 C tiles on, one pass that stores dy and vector loads of it cost
#: less than the rebuilds (bench/triton_model.py); below, storing it is extra traffic.
DY_STORE_MIN_C = 128


def dy_stored(c: int) -> bool:
    """Whether the backward stores dy once for dsconv_bwd_dt (``DY_STORE_MIN_C``)."""
    return c >= DY_STORE_MIN_C


def k_slice(k: int, kind: str) -> int:
    """BLOCK_K of dsconv_bwd_dt: the output channels one program holds (dy tile and dWp accumulator).
    All of K up to 256 for 16-bit tensor-core operands, 128 otherwise (float32 operands take twice the
    registers; FMA dots hold their operands in registers): wider layers run K / BLOCK_K slices whose dt
    partials dsconv_bwd_dx adds. The caps are where the compile report shows no spills."""
    return min(K_SLICE_CAP[kind], max(16, triton.next_power_of_2(k)))


# ----------------------------------------------------------------------------------------------
# Autotuned launches: forcing a config, and what was chosen
# ----------------------------------------------------------------------------------------------

TUNED = ("dsconv_fwd", "dsconv_bwd_dt", "dsconv_bwd_dx")


def tuned_kernel(name: str):
    """The ``triton.autotune`` object of a tuned kernel (``name`` in TUNED)."""
    return getattr(kernels(), name + "_kernel")


def configs(name: str) -> list:
    """The config space of a tuned kernel."""
    return list(tuned_kernel(name).configs)


@contextlib.contextmanager
def forced_config(name: str, config):
    """Run ``config`` for every launch of kernel ``name`` inside the block, untimed (tests, debugging).
    The tuner's choices for that kernel are dropped on entry and exit (they were made for other configs)."""
    tk = kernels()
    if name not in TUNED:
        raise ValueError(f"forced_config: name must be one of {TUNED}, got {name!r}")
    kern = tuned_kernel(name)
    prev = tk.FORCED.get(name)
    tk.FORCED[name] = config
    kern.cache.clear()
    try:
        yield
    finally:
        if prev is None:
            tk.FORCED.pop(name, None)
        else:
            tk.FORCED[name] = prev
        kern.cache.clear()


def config_str(cfg) -> str:
    tiles = " ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    return f"{tiles} num_warps={cfg.num_warps} num_stages={cfg.num_stages}"


def launch_tuned(name: str, grid, *args, **kwargs):
    """Launch a tuned kernel; returns the config that ran. Prints new choices when VERBOSE."""
    kern = tuned_kernel(name)
    before = len(kern.cache)
    kern[grid](*args, **kwargs)
    cfg = kern.best_config
    if VERBOSE and len(kern.cache) > before:
        key = {
            k: kwargs.get(k, args[kern.arg_names.index(k)] if kern.arg_names.index(k) < len(args) else None)
            for k in kern.keys
        }
        timed = getattr(kern, "configs_timings", None)
        note = f" (fastest of {len(timed)}, tuned in {getattr(kern, 'bench_time', 0.0):.2f} s)" if timed else ""
        print(f"fused_dsconv triton: {name} {key} -> {config_str(cfg)}{note}", file=sys.stderr)
    return cfg
