"""How the native extension is built: sources, flags, arch list. Torch-free at import (torch is imported
only inside build_archs, when asked for the visible GPUs), so that setup.py (ahead of time, loaded by path)
and the just-in-time build (``_extension.py``) share it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import subprocess
from typing import Optional

EXTENSION = "fused_dsconv._C"
SKIP_ENV = "FUSED_DSCONV_NO_NATIVE"  # "1": build and load no native extension at all
# "1": a fast build, only the runtime-dilation kernels (csrc/kernels/plan.cuh: kernel_dilation): the same
# results, slower kernels, about a third of the device code to compile. For the test suite's build checks
# and quick iteration; a wheel or an install for real use never wants it.
FAST_BUILD_ENV = "FUSED_DSCONV_FAST_BUILD"
FAST_DEFINE = "-DDSC_FAST_BUILD"
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


# The oldest architecture each toolkit major can still compile for.
MIN_ARCH = {13: (7, 5), 12: (5, 0)}
PASCAL_FIX = (
    "install a CUDA 12.x toolkit (12.6 matches torch's cu126 wheels, the last with sm_61 kernels), "
    "point CUDA_HOME at it and build again (README: Pascal)"
)


def build_archs(cuda: tuple[int, int], visible: Optional[list[tuple[int, int]]] = None) -> tuple[str, Optional[str]]:
    """The TORCH_CUDA_ARCH_LIST to build for (the user's, else the visible GPUs', else the default list)
    and why nvcc ``cuda`` cannot build it (None when it can). Shared by setup.py and the JIT build.
    ``visible``: compute capabilities of the GPUs; None asks torch (imported only then, so that setup.py
    can load this file without torch)."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return env, arch_problem(env, cuda)
    if visible is None:
        import torch

        visible = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    if visible:
        archs = ";".join(sorted({f"{major}.{minor}" for major, minor in visible}))
        return archs, arch_problem(archs, cuda, from_env=False)
    return default_arch_list(cuda), None


def arch_problem(arch_list: str, cuda: tuple[int, int], from_env: bool = True) -> Optional[str]:
    """Why nvcc ``cuda`` cannot build ``arch_list`` (TORCH_CUDA_ARCH_LIST syntax: "6.1;8.6+PTX"), or None.
    ``from_env``: the list came from TORCH_CUDA_ARCH_LIST (else from the visible GPU).

    Said before compiling: nvcc's own answer ("Unsupported gpu architecture 'compute_61'") comes
    minutes into a build, buried in a log, and does not say which toolkit would work."""
    oldest = MIN_ARCH.get(cuda[0], MIN_ARCH[13] if cuda[0] > 13 else (0, 0))
    too_old = [a for a in re.findall(r"(\d+)\.(\d+)", arch_list) if (int(a[0]), int(a[1])) < oldest]
    if not too_old:
        return None
    names = ", ".join(f"sm_{a}{b}" for a, b in too_old)
    where = f"TORCH_CUDA_ARCH_LIST={arch_list!r}" if from_env else "this GPU"
    drop = f"drop {names} from TORCH_CUDA_ARCH_LIST, or " if from_env else ""
    return (
        f"nvcc {cuda[0]}.{cuda[1]} cannot compile for {names} ({where}): CUDA {cuda[0]} supports "
        f"sm_{oldest[0]}{oldest[1]} and newer; {drop}{PASCAL_FIX}"
    )


def compile_args(debug: bool = False, fast: Optional[bool] = None) -> dict[str, list[str]]:
    """Flags of the C++ and nvcc compiles; ``fast`` (default: FUSED_DSCONV_FAST_BUILD=1 in the environment)
    defines DSC_FAST_BUILD for both, since the host-side planner and the device dispatch must agree."""
    opt = ["-O0", "-g"] if debug else ["-O3"]
    if fast is None:
        fast = os.environ.get(FAST_BUILD_ENV) == "1"
    defs = [FAST_DEFINE] if fast else []
    return {
        "cxx": opt + ["-std=c++20"] + defs,
        # -Xptxas -v puts registers / spills of every kernel in the build log; --use_fast_math is
        # deliberately absent (rsqrt and the statistics must match the reference's IEEE results).
        "nvcc": opt + ["-std=c++20", "-lineinfo", "-Xptxas=-v", "--expt-relaxed-constexpr"] + defs,
    }


def fast_build(flags: dict[str, list[str]]) -> bool:
    """Whether compile_args() made these flags for a fast build."""
    return FAST_DEFINE in flags["nvcc"]


def build_digest(csrc: str, flags: dict[str, list[str]]) -> str:
    """What a build of the extension is made of: the sources and headers under ``csrc`` and the flags.
    Names the just-in-time build's cache folder and is recorded with the ahead-of-time build, so that the
    compile report knows whether an installed extension was built from the sources it checks."""
    digest = hashlib.sha256(repr(sorted(flags.items())).encode())
    root = os.path.abspath(csrc)
    files = {
        f for ext in ("cpp", "cu", "h", "cuh") for f in glob.glob(os.path.join(csrc, "**", f"*.{ext}"), recursive=True)
    }
    for f in sorted(files, key=lambda f: os.path.relpath(f, root)):
        digest.update(os.path.relpath(f, root).encode())
        with open(f, "rb") as fh:
            digest.update(fh.read())
    return digest.hexdigest()[:16]
