"""How the native extension is built: sources, flags, arch list. Torch-free and import-free, so that
setup.py (ahead of time, loaded by path) and the just-in-time build (``_extension.py``) share it.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
from typing import Optional

EXTENSION = "fused_dsconv._C"
SKIP_ENV = "FUSED_DSCONV_NO_NATIVE"      # "1": build and load no native extension at all
# Archs when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible at build time. CUDA 13 dropped
# everything below sm_75; Pascal (sm_61, GTX 10xx) needs a CUDA 12.x toolkit and torch cu126 wheels.
DEFAULT_ARCHS_CUDA12 = "6.1;7.0;7.5;8.0;8.6;8.9;9.0+PTX"
DEFAULT_ARCHS_CUDA13 = "7.5;8.0;8.6;8.9;9.0;12.0+PTX"


def sources(csrc: str) -> list[str]:
    """Launchers and bindings: the .cpp / .cu files at the top of csrc/ (kernel headers, the CPU
    emulator and native tests live in subfolders and are included or built separately)."""
    return sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "*.cu")))


def nvcc_version(cuda_home: Optional[str]) -> Optional[tuple[int, int]]:
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else None
    if not nvcc or not os.path.exists(nvcc):
        return None
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def default_arch_list(cuda: tuple[int, int]) -> str:
    return DEFAULT_ARCHS_CUDA13 if cuda >= (13, 0) else DEFAULT_ARCHS_CUDA12


def compile_args(debug: bool = False) -> dict[str, list[str]]:
    opt = ["-O0", "-g"] if debug else ["-O3"]
    return {
        "cxx": opt + ["-std=c++20"],
        # -Xptxas -v puts registers / spills of every kernel in the build log; --use_fast_math is
        # deliberately absent (rsqrt and the statistics must match the reference's IEEE results).
        "nvcc": opt + ["-std=c++20", "-lineinfo", "-Xptxas=-v", "--expt-relaxed-constexpr"],
    }
