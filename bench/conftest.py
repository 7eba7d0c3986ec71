"""pytest configuration of the benchmark suite: ``pytest bench/ --benchmark-only``.

Benchmark files are named ``bench_*.py`` and collected by the hook below, so ``pytest tests/`` never
runs them and this directory holds no ``test_*.py`` for ``pytest bench/`` to confuse with the unit tests.

Options (also settable by environment):
  --paper-size          batch 32 at the paper's resolutions, more rounds, torch.compile for every case
                        (same as FUSED_DSCONV_BENCH_FULL=1). Default ("CI size"): batch 2 at the paper's
                        resolutions, 5 timed rounds on CPU; torch.compile on CPU only for one block case;
                        the classifier for two configurations.
  --bench-device DEV    cpu / cuda (default: cuda if available).
  --bench-batch N       override the batch size.
  --bench-rounds N      override the timed rounds.
  --bench-scale F       override the input-side scale (1.0 = the paper's resolutions).
  --bench-threads N     CPU intra-op threads (default 1: stable medians on a shared machine, see benchlib).
  --bench-summary PATH  also write the memory summary (markdown) to PATH.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Inductor on CPU looks for the CUDA toolkit through CUDA_HOME (tests/conftest.py does the same).
if os.path.isdir("/usr/local/cuda") and "CUDA_HOME" not in os.environ:
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
ROOT = Path(__file__).resolve().parent.parent
try:  # the installed package (native extension included) when there is one, else this checkout
    import fused_dsconv  # noqa: F401,E402
except ImportError:
    sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402

MEMORY_ROWS: list[dict] = []  # filled by the benchmarks, printed at the end


def pytest_addoption(parser):
    g = parser.getgroup("fused_dsconv benchmarks")
    g.addoption("--paper-size", action="store_true", default=False,
                help=f"batch 32, more rounds, compile every case (or {benchlib.FULL_ENV}=1)")
    g.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda if available)")
    g.addoption("--bench-batch", type=int, default=None, help="override the batch size")
    g.addoption("--bench-rounds", type=int, default=None, help="override the number of timed rounds")
    g.addoption("--bench-scale", type=float, default=None, help="input-side scale (1.0 = paper resolution)")
    g.addoption("--bench-threads", type=int, default=None, help="CPU threads while timing (default 1)")
    g.addoption("--bench-summary", default=None, help="write the markdown memory summary here")


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def settings(request) -> benchlib.Settings:
    import torch
    c = request.config
    s = benchlib.make_settings(c.getoption("--paper-size") or benchlib.env_full(), c.getoption("--bench-device"),
                               c.getoption("--bench-batch"), c.getoption("--bench-rounds"),
                               c.getoption("--bench-scale"), c.getoption("--bench-threads"))
    if s.device.type == "cpu":
        torch.set_num_threads(s.threads)
    return s


@pytest.fixture(scope="session")
def env_info(settings) -> dict:
    return benchlib.environment(settings.device)


@pytest.fixture(scope="session")
def memory_rows() -> list[dict]:
    return MEMORY_ROWS


@pytest.fixture(autouse=True)
def _seed():
    import torch
    torch.manual_seed(0)


def memory_markdown(rows: list[dict]) -> str:
    """Measured memory: saved-activation bytes of one training forward, fused/unfused ratios."""
    if not rows:
        return ""
    out = []
    blocks = [r for r in rows if r["kind"] == "block"]
    if blocks:
        out += ["MEASURED saved-activation bytes of one training forward (fused_dsconv.memory; the saved set is",
                "the op's autograd contract, identical for every backend):", "",
                "| case | shape | batch | unfused KiB | fused KiB | recompute KiB | fused/unfused | recompute/unfused |"
                + (" CUDA peak MiB unfused / fused / recompute |" if blocks[0].get("peak_unfused") is not None else ""),
                "|---|---|---|---|---|---|---|---|" + ("---|" if blocks[0].get("peak_unfused") is not None else "")]
        for r in blocks:
            line = (f"| {r['case']} | {r['shape']} | {r['batch']} | {r['unfused'] / 1024:.0f} | {r['fused'] / 1024:.0f} | "
                    f"{r['recompute'] / 1024:.0f} | {r['fused'] / r['unfused']:.3f} | {r['recompute'] / r['unfused']:.3f} |")
            if r.get("peak_unfused") is not None:
                line += (f" {r['peak_unfused'] / 2**20:.1f} / {r['peak_fused'] / 2**20:.1f} / "
                         f"{r['peak_recompute'] / 2**20:.1f} |")
            out.append(line)
        tot = {k: sum(r[k] for r in blocks) for k in ("unfused", "fused", "recompute")}
        out += ["", f"All block cases together: fused/unfused {tot['fused'] / tot['unfused']:.3f}, "
                    f"recompute/unfused {tot['recompute'] / tot['unfused']:.3f}", ""]
    models = [r for r in rows if r["kind"] == "classifier"]
    if models:
        out += ["MEASURED saved-activation bytes per sample of the whole classifier's training forward at its",
                "resolution (slope between batch 1 and 2), and the DERIVED largest batch for an 11 GiB GPU:", "",
                "| config | resolution | params | unfused MiB/sample | fused MiB/sample | recompute MiB/sample | "
                "fused/unfused | recompute/unfused | max batch unfused / fused / recompute (11 GiB, derived) |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in models:
            ps = r["per_sample"]
            mb = r["max_batch"]
            out.append(f"| {r['config']} | {r['resolution']} | {r['params']} | {ps['unfused'] / 2**20:.2f} | "
                       f"{ps['fused'] / 2**20:.2f} | {ps['recompute'] / 2**20:.2f} | "
                       f"{ps['fused'] / ps['unfused']:.3f} | {ps['recompute'] / ps['unfused']:.3f} | "
                       f"{mb['unfused']} / {mb['fused']} / {mb['recompute']} |")
        out += ["", "Derivation: max batch = floor((11 GiB - 1 GiB workspace margin - 16 B x params [fp32 weights,",
                "grads, Adam exp_avg, exp_avg_sq] - fixed saved bytes) / (saved bytes per sample + 2 x the largest",
                "activation per sample [gradient buffers live at the backward peak])). An estimate, not a measurement.", ""]
    return "\n".join(out)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    text = memory_markdown(MEMORY_ROWS)
    if not text:
        return
    terminalreporter.section("fused_dsconv memory summary")
    terminalreporter.write_line(text)
    path = config.getoption("--bench-summary")
    if path:
        Path(path).write_text(text + "\n")
        terminalreporter.write_line(f"(written to {path})")
