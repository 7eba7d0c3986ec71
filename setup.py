"""Build script. Metadata lives in pyproject.toml; this file only decides about the native extension.

- ``pip install --no-build-isolation .`` with torch and a CUDA toolkit importable: builds the CUDA
  extension ``fused_dsconv._C`` from csrc/ against that torch, for ``TORCH_CUDA_ARCH_LIST`` (else
  the visible GPUs, else a default list), with ``MAX_JOBS`` parallel compiles.
- ``pip install .`` (isolated: no torch at build time), or no toolkit, or ``FUSED_DSCONV_NO_NATIVE=1``:
  installs the pure-Python package; the CUDA sources ship inside it and are compiled just in time on
  first use on a CUDA machine (see fused_dsconv/_extension.py). Never fails for lack of nvcc.
"""

import importlib.util
import json
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
_spec = importlib.util.spec_from_file_location("_build_config", os.path.join(ROOT, "fused_dsconv", "_build_config.py"))
cfg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cfg)


def say(msg):
    print(f"fused_dsconv build: {msg}", file=sys.stderr)


class BuildPyWithSources(build_py):
    """Ship csrc/ inside the package (as fused_dsconv/_csrc) for the just-in-time build."""

    def run(self):
        super().run()
        if os.path.isdir(CSRC):
            dst = os.path.join(self.build_lib, "fused_dsconv", "_csrc")
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(CSRC, dst, ignore=shutil.ignore_patterns("build*", "*.o", "*.so"))


def native_build():
    """(ext_modules, cmdclass additions) for the CUDA extension, or ([], {}) with the reason printed."""
    if os.environ.get(cfg.SKIP_ENV) == "1":
        say(f"{cfg.SKIP_ENV}=1: skipping the native extension")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        say(
            "torch is not importable at build time (isolated build): no native extension now; the CUDA "
            "sources ship with the package and compile on first use on a CUDA machine. For an ahead-of-time "
            "build: pip install --no-build-isolation ."
        )
        return [], {}
    cuda = cfg.nvcc_version(cpp_extension.CUDA_HOME)
    if cuda is None:
        say(
            f"no CUDA toolkit found (CUDA_HOME={cpp_extension.CUDA_HOME!r}; set CUDA_HOME to the toolkit root "
            "that holds bin/nvcc and lib64/libcudart.so): no native extension, falling back at run time"
        )
        return [], {}
    if torch.version.cuda is None:
        say(f"torch {torch.__version__} is a CPU-only build: no native extension")
        return [], {}
    sources = cfg.sources(CSRC)
    if not sources:
        say("no CUDA sources in csrc/: no native extension")
        return [], {}
    archs, problem = cfg.build_archs(cuda)  # printed below: the user's list, the visible GPUs', or the default
    if problem:
        raise SystemExit(f"fused_dsconv build: {problem}")  # nvcc would fail too, minutes later
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    flags = cfg.compile_args(debug=os.environ.get("FUSED_DSCONV_DEBUG") == "1")
    say(
        f"building {cfg.EXTENSION}: torch {torch.__version__} (CUDA {torch.version.cuda}), nvcc "
        f"{cuda[0]}.{cuda[1]} at {cpp_extension.CUDA_HOME}, archs {archs}, MAX_JOBS={os.environ.get('MAX_JOBS', 'auto')}, "
        f"{len(sources)} sources"
    )
    fast = cfg.fast_build(flags)
    if fast:
        say(f"WARNING: {cfg.FAST_BUILD_ENV}=1: a fast build, runtime-dilation kernels only (slower kernels)")
    if cuda[0] != int(torch.version.cuda.split(".")[0]):
        say(f"WARNING: nvcc {cuda[0]}.{cuda[1]} and torch's CUDA {torch.version.cuda} differ in major version")
    digest = cfg.build_digest(CSRC, flags)  # now: the build appends torch's own defines to these lists
    ext = cpp_extension.CUDAExtension(
        cfg.EXTENSION, [os.path.relpath(s, ROOT) for s in sources], include_dirs=[CSRC], extra_compile_args=flags
    )

    class BuildExt(cpp_extension.BuildExtension):
        def run(self):
            super().run()
            info = {
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "nvcc": f"{cuda[0]}.{cuda[1]}",
                "archs": archs,
                # the compile report takes this build's rows when it was built from the sources it checks
                "digest": digest,
                "fast_build": fast,
            }
            path = os.path.join(ROOT if self.inplace else self.build_lib, "fused_dsconv", "_build_info.json")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(info, f)

    return [ext], {"build_ext": BuildExt.with_options(use_ninja=True)}


ext_modules, cmdclass = native_build()
setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithSources, **cmdclass})
