"""`pip install .` must work without torch or nvcc at build time (pip's isolated build)."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from torch.utils.cpp_extension import CUDA_HOME

from fused_dsconv import _build_config as cfg

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.build
def test_isolated_wheel_builds_without_torch_and_ships_the_sources(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(tmp_path), "-v"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "torch is not importable at build time (isolated build)" in proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("fused_dsconv-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fused_dsconv/block.py" in names and "fused_dsconv/_build_config.py" in names
    assert not any(n.endswith(".so") for n in names)  # nothing native without torch
    shipped = {n for n in names if n.startswith("fused_dsconv/_csrc/")}
    expected = {
        f"fused_dsconv/_csrc/{p.relative_to(ROOT / 'csrc').as_posix()}"
        for p in (ROOT / "csrc").rglob("*")
        if p.is_file() and p.suffix in (".cu", ".cpp", ".h", ".cuh")
    }
    assert expected <= shipped, sorted(expected - shipped)[:5]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fused-dsconv = fused_dsconv.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_ahead_of_time_build_refuses_archs_the_toolkit_cannot_compile():
    """TORCH_CUDA_ARCH_LIST=6.1 with nvcc 13: stop at once with the fix, not after a failing nvcc run."""
    cuda = cfg.nvcc_version(CUDA_HOME)
    if cuda is None or cuda < (13, 0):
        pytest.skip(f"needs a CUDA 13 toolkit (found {cuda} at CUDA_HOME={CUDA_HOME})")
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": "6.1;8.6", "CUDA_HOME": CUDA_HOME}
    env.pop("FUSED_DSCONV_NO_NATIVE", None)
    proc = subprocess.run(
        [sys.executable, "setup.py", "--version"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert f"fused_dsconv build: nvcc {cuda[0]}.{cuda[1]} cannot compile for sm_61" in proc.stderr, proc.stderr[-2000:]
