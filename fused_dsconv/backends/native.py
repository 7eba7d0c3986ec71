"""The native CUDA extension backend (``fused_dsconv._C``, ops ``torch.ops.fused_dsconv_native.*``).

The kernels live in torch-free headers under ``csrc/kernels/``; ``csrc/native_cuda.cpp`` launches
them on the current CUDA stream. The same Python class also drives the CPU emulator build of those
kernels (``load_emulator()``: ops ``torch.ops.fused_dsconv_emu.*``), which is how the kernels and
this glue are tested on machines without a GPU. Design notes: ``docs/cuda.md``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import torch

from .base import Backend

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BUILD_HINT = (
    "build it with `pip install --no-build-isolation .` on a machine with a CUDA toolkit "
    "(nvcc on PATH, CUDA_HOME set; TORCH_CUDA_ARCH_LIST picks the GPU architectures)"
)


def _load_native():
    """Load fused_dsconv._C (ahead-of-time build, else the just-in-time build of fused_dsconv/_extension.py),
    which registers torch.ops.fused_dsconv_native. Returns (ops, None) or (None, why)."""
    from .. import _extension

    if _extension.load() is None:
        why = _extension.status()
        if "pip install" not in why and "FUSED_DSCONV_NO_NATIVE" not in why:
            why = f"{why}; {_BUILD_HINT}"
        return None, f"native extension unavailable: {why}"
    return torch.ops.fused_dsconv_native, None


def _toolkit_problem(major: int, minor: int) -> Optional[str]:
    """Why no rebuild with the toolkit the extension was built with could cover sm_<major><minor>."""
    from .. import _build_config, _extension

    nvcc = _extension.build_info().get("nvcc", "")
    if not nvcc.replace(".", "").isdigit():
        return None
    return _build_config.arch_problem(f"{major}.{minor}", tuple(map(int, nvcc.split(".")[:2])), from_env=False)


class NativeBackend(Backend):
    """Calls the native op family. ``ops_namespace=None`` means the CUDA extension (loaded lazily);
    pass ``torch.ops.fused_dsconv_emu`` with ``device_type="cpu"`` to run the emulator build."""

    name = "native"

    def __init__(self, ops_namespace=None, device_type: str = "cuda", name: Optional[str] = None):
        self._ops = ops_namespace
        self._why_not = None
        self._loaded = ops_namespace is not None
        self.device_type = device_type
        if name is not None:
            self.name = name
        self._arch_ok: dict[int, Optional[str]] = {}

    def build_description(self) -> str:
        """One line for `fused-dsconv info`: how the extension was found, or why not."""
        if self.device_type != "cuda":
            return f"CPU emulator build ({self.name})"
        from .. import _extension

        return _extension.status()

    @property
    def ops(self):
        if not self._loaded:
            self._ops, self._why_not = _load_native()
            self._loaded = True
        return self._ops

    def _arch_reason(self, device: torch.device) -> Optional[str]:
        idx = device.index if device.index is not None else torch.cuda.current_device()
        if idx not in self._arch_ok:
            version = int(self.ops.kernel_binary_version(idx))
            if version < 0:
                major, minor = torch.cuda.get_device_capability(idx)
                self._arch_ok[idx] = f"fused_dsconv._C has no kernel image for this GPU (sm_{major}{minor}); " + (
                    _toolkit_problem(major, minor)
                    or f"rebuild with TORCH_CUDA_ARCH_LIST including {major}.{minor}; {_BUILD_HINT}"
                )
            else:
                self._arch_ok[idx] = None
        return self._arch_ok[idx]

    def unavailable(self, x):
        # Input checks first: a CPU tensor must never trigger loading (or JIT-building) the extension.
        if x.device.type != self.device_type:
            return f"x is on {x.device.type}; this backend runs {self.device_type} tensors only"
        if x.dtype not in _DTYPES:
            return f"dtype {x.dtype} is not supported (float32, float16, bfloat16; float64 runs on the reference)"
        if x.dim() != 4 or not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            return "x must be a 4-D tensor contiguous in NCHW or channels_last"
        if self.ops is None:
            return self._why_not
        if self.device_type == "cuda":
            return self._arch_reason(x.device)
        return None

    def not_timed(self, x):
        if self.device_type != "cuda":
            return "the CPU emulator of the CUDA kernels runs them one thread at a time, a correctness tool"
        return None

    def forward_eval(self, x, dw_weight, pw_weight, bias, p):
        return self.ops.forward_eval(x, dw_weight, pw_weight, bias, p.stride, p.dilation)

    def forward_train(self, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, p):
        return tuple(
            self.ops.forward_train(
                x, dw_weight, pw_weight, bias, bn_weight, bn_bias, p.stride, p.dilation, float(p.eps), bool(p.save_y)
            )
        )

    def backward_eval(self, grad_out, out, x, dw_weight, pw_weight, p):
        return tuple(
            self.ops.backward_eval(grad_out, out, x, dw_weight, pw_weight, p.stride, p.dilation, list(p.output_mask))
        )

    def backward_train(self, grad_out, x, dw_weight, pw_weight, bias, bn_weight, bn_bias, y, mean, var, p):
        return tuple(
            self.ops.backward_train(
                grad_out,
                x,
                dw_weight,
                pw_weight,
                bias,
                bn_weight,
                bn_bias,
                y,
                mean,
                var,
                p.stride,
                p.dilation,
                float(p.eps),
                list(p.output_mask),
            )
        )

    # -- the split passes (synchronised batch norm): the launcher's stages, csrc/kernels/launch.cuh --
    def forward_stats(self, x, dw_weight, pw_weight, bias, p):
        return tuple(self.ops.forward_stats(x, dw_weight, pw_weight, bias, p.stride, p.dilation, bool(p.save_y)))

    def forward_normalize(self, x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, p):
        return self.ops.forward_normalize(
            x, dw_weight, pw_weight, bias, y, mean, var, bn_weight, bn_bias, p.stride, p.dilation, float(p.eps)
        )

    def backward_reduce(self, grad_out, y, mean, var, bn_weight, bn_bias, p):
        return tuple(self.ops.backward_reduce(grad_out, y, mean, var, bn_weight, bn_bias, float(p.eps)))

    def backward_apply(
        self, grad_out, x, dw_weight, pw_weight, y, mean, var, bn_weight, bn_bias, mean_dz, mean_dz_yhat, p
    ):
        return tuple(
            self.ops.backward_apply(
                grad_out,
                x,
                dw_weight,
                pw_weight,
                y,
                mean,
                var,
                bn_weight,
                bn_bias,
                mean_dz,
                mean_dz_yhat,
                p.stride,
                p.dilation,
                float(p.eps),
                list(p.output_mask),
            )
        )


# ---- the CPU emulator build (tests, and anyone checking the kernels without a GPU) ----


def _csrc() -> Optional[Path]:
    """The kernel sources: shipped inside the installed package (fused_dsconv/_csrc) or a checkout's csrc/."""
    from .. import _extension

    d = _extension.csrc_dir()
    return d if d is not None and (d / "emu" / "emu_ext.cpp").is_file() else None


# -DDSC_TILE_GRID_Y=3: tiles past grid.y spill into grid.z (csrc/kernels/launch.cuh); CUDA's limit of
# 65535 is out of reach of emulated problems, so the emulator build lowers it and every test problem with
# more than 3 pixel tiles runs the split (and the early return of surplus blocks) against the reference.
# -O1: the one-file build took 39 CPU s at -O2 and takes 26, and the emulator tests run as fast (the
# fiber switches and the tensor glue dominate them, not the kernels' arithmetic; MEASURED, 221 tests:
# 21.4 vs 22.2 CPU s).
_EMU_CFLAGS = ["-std=c++20", "-O1", "-DDSC_TILE_GRID_Y=3"]


def _emu_sources_hash(csrc: Path) -> str:
    h = hashlib.sha256(" ".join(_EMU_CFLAGS).encode())
    for sub in ("kernels", "emu", "binding"):
        for f in sorted((csrc / sub).glob("*")):
            if f.is_file():
                h.update(f.name.encode())
                h.update(f.read_bytes())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:16]


def load_emulator(build_dir: Optional[str] = None, verbose: bool = False) -> NativeBackend:
    """JIT-build (cached) the CPU emulator extension from the kernel sources and return a backend over its ops.

    Needs g++ with C++20. The build directory defaults to ``$FUSED_DSCONV_EMU_BUILD``, else
    ``build/emu-<hash of the sources>`` in a source checkout, else ``_extension.cache_root()``
    (``$FUSED_DSCONV_CACHE``, default ``~/.cache/fused_dsconv``) / ``emu-<hash>``.
    """
    if not hasattr(torch.ops.fused_dsconv_emu, "forward_eval"):
        from torch.utils.cpp_extension import load

        csrc = _csrc()
        if csrc is None:
            raise RuntimeError("the emulator needs the csrc/ sources (a checkout, or an install that ships them)")
        tag = f"emu-{_emu_sources_hash(csrc)}"
        if build_dir or os.environ.get("FUSED_DSCONV_EMU_BUILD"):
            build = Path(build_dir or os.environ["FUSED_DSCONV_EMU_BUILD"])
        elif (csrc.parent / "setup.py").is_file():
            build = csrc.parent / "build" / tag
        else:
            from .. import _extension

            build = _extension.cache_root() / tag
        build.mkdir(parents=True, exist_ok=True)
        load(
            name="fused_dsconv_emu_ext",
            sources=[str(csrc / "emu" / "emu_ext.cpp")],
            extra_include_paths=[str(csrc)],
            extra_cflags=_EMU_CFLAGS,
            build_directory=str(build),
            is_python_module=False,
            verbose=verbose,
        )
    return NativeBackend(torch.ops.fused_dsconv_emu, device_type="cpu", name="native-emu")


def emulator_launch_counts(reset: bool = True) -> dict[str, int]:
    """Kernel launches of the emulator build since the last reset, by kernel name ("dsconv_bwd_dwp_kernel": 2);
    ``reset`` starts counting afresh. Needs ``load_emulator()`` first."""
    counts = {}
    for line in torch.ops.fused_dsconv_emu.launch_counts(reset).splitlines():
        name, n = line.rsplit(" ", 1)
        counts[name] = int(n)
    return counts
