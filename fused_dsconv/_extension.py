"""Finding the native extension at run time: the ahead-of-time build, else a just-in-time build.

``load()`` returns the extension module or None, and ``status()`` says which and why in words a
user can act on. It never raises: an extension that does not load (torch upgraded, ABI changed,
no toolkit) turns into a reason, and the op falls back to the next backend.

Just-in-time: a plain ``pip install .`` builds in isolation, without torch, so it ships the
sources instead. On first use on a CUDA machine with a toolkit (``CUDA_HOME`` or nvcc on PATH),
they are compiled against the installed torch into ``cache_root()`` (``$FUSED_DSCONV_CACHE``, default
``$XDG_CACHE_HOME/fused_dsconv`` or ``~/.cache/fused_dsconv``), once per torch/CUDA version and source
hash; the build is announced.
``FUSED_DSCONV_NO_JIT=1`` turns that off, ``FUSED_DSCONV_NO_NATIVE=1`` turns off the extension.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

from . import _build_config as cfg

_PKG = Path(__file__).resolve().parent
_state: dict = {}
REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps ."


def cache_root() -> Path:
    """Where fused_dsconv keeps what it builds and measures (JIT builds, the tuning cache):
    ``$FUSED_DSCONV_CACHE``, else ``$XDG_CACHE_HOME/fused_dsconv``, else ``~/.cache/fused_dsconv``."""
    if os.environ.get("FUSED_DSCONV_CACHE"):
        return Path(os.environ["FUSED_DSCONV_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fused_dsconv"


FAST_NOTE = f"a fast build ({cfg.FAST_BUILD_ENV}=1): runtime-dilation kernels only, slower"


def csrc_dir() -> Optional[Path]:
    """The shipped sources: inside the installed package, or csrc/ of a source checkout."""
    for d in (_PKG / "_csrc", _PKG.parent / "csrc"):
        if d.is_dir() and cfg.sources(str(d)):
            return d
    return None


def build_info() -> dict:
    """What setup.py recorded about the ahead-of-time build (torch version, CUDA, archs)."""
    f = _PKG / "_build_info.json"
    return json.loads(f.read_text()) if f.exists() else {}


def load():
    if "module" not in _state:
        _state["module"], _state["reason"], _state["how"] = _load()
    return _state["module"]


def status() -> str:
    load()
    return _state["how"] if _state["module"] is not None else _state["reason"]


def _load():
    if os.environ.get(cfg.SKIP_ENV) == "1":
        return None, f"disabled by {cfg.SKIP_ENV}=1", ""
    import torch

    info = build_info()
    try:
        module = importlib.import_module(cfg.EXTENSION)
        how = f"{cfg.EXTENSION} (ahead of time, torch {info.get('torch', '?')}, archs {info.get('archs', '?')})"
        if info.get("fast_build"):
            how += f"; {FAST_NOTE}"
        if info.get("torch") and info["torch"] != torch.__version__:
            how += f"; WARNING: built for torch {info['torch']} but torch {torch.__version__} is running"
        return module, "", how
    except ModuleNotFoundError:
        aot_reason = "not built ahead of time (installed without torch/nvcc at build time)"
    except (ImportError, OSError) as e:
        # Most often an undefined symbol: the extension was built against another torch.
        built = f" for torch {info['torch']}" if info.get("torch") else ""
        return (
            None,
            (
                f"{cfg.EXTENSION} was built{built} but does not load with torch {torch.__version__} "
                f"({str(e).splitlines()[0][:200]}); rebuild it: {REBUILD}"
            ),
            "",
        )
    return _jit(aot_reason)


def _jit(aot_reason: str):
    import torch

    if os.environ.get("FUSED_DSCONV_NO_JIT") == "1":
        return None, f"{aot_reason}; just-in-time build disabled by FUSED_DSCONV_NO_JIT=1", ""
    if not torch.cuda.is_available():
        return None, f"{aot_reason}; no CUDA device, so no just-in-time build", ""
    from torch.utils import cpp_extension

    src = csrc_dir()
    if src is None:
        return None, f"{aot_reason}; and the CUDA sources are not shipped with this install", ""
    cuda = cfg.nvcc_version(cpp_extension.CUDA_HOME)
    if cuda is None:
        return (
            None,
            (
                f"{aot_reason}; no CUDA toolkit found for a just-in-time build (set CUDA_HOME), "
                f"or install with: {REBUILD}"
            ),
            "",
        )
    archs, problem = cfg.build_archs(cuda)
    if problem:
        return None, f"{aot_reason}; no just-in-time build: {problem}", ""
    try:
        how = "just-in-time build of the shipped sources"
        if cfg.fast_build(cfg.compile_args()):
            how += f"; {FAST_NOTE}"
        return jit_build(src, archs=archs), "", how
    except Exception as e:  # a failed compile must not take the fallback backends down with it
        return None, f"{aot_reason}; the just-in-time build failed: {str(e).splitlines()[0][:300]}", ""


def jit_build(src: Path, build_root: Optional[Path] = None, verbose: bool = False, archs: Optional[str] = None):
    """Compile ``src`` for ``archs`` (TORCH_CUDA_ARCH_LIST syntax; default: the environment's, else the
    current GPU's) against the running torch (cached) and import it; registers the native ops."""
    import torch
    from torch.utils import cpp_extension

    files = cfg.sources(str(src))
    flags = cfg.compile_args()
    digest = cfg.build_digest(str(src), flags)  # a fast build (FUSED_DSCONV_FAST_BUILD=1) gets its own folder
    tag = f"torch{torch.__version__}-cu{torch.version.cuda}-{digest[:12]}".replace("+", "_")
    root = build_root or cache_root()
    build_dir = root / tag
    build_dir.mkdir(parents=True, exist_ok=True)
    if archs:  # else torch's own choice: TORCH_CUDA_ARCH_LIST, or the visible GPUs
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    print(
        f"fused_dsconv: compiling the native CUDA extension for arch {os.environ.get('TORCH_CUDA_ARCH_LIST')} "
        f"into {build_dir} (first use only; a few minutes)...",
        file=sys.stderr,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cpp_extension.load(
            name="fused_dsconv_jit_" + digest[:8],
            sources=files,
            extra_include_paths=[str(src)],
            extra_cflags=flags["cxx"],
            extra_cuda_cflags=flags["nvcc"],
            build_directory=str(build_dir),
            verbose=verbose,
            is_python_module=False,
        )
