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
  --bench-out DIR       where the full benchmark tables and the memory summary go (default: bench-results);
                        the terminal gets a short summary. --bench-tables=terminal prints the tables there too.

Cases that cannot run on this device (a CUDA backend on a CPU, torch.compile of every case at CI size, ...)
are not collected; the summary gives one line per reason with the number of cases.
"""

from __future__ import annotations

import collections
import io
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
NOT_COLLECTED: dict[str, list[str]] = collections.defaultdict(list)  # reason -> implementation of each case


def pytest_addoption(parser):
    g = parser.getgroup("fused_dsconv benchmarks")
    g.addoption(
        "--paper-size",
        action="store_true",
        default=False,
        help=f"batch 32, more rounds, compile every case (or {benchlib.FULL_ENV}=1)",
    )
    g.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda if available)")
    g.addoption("--bench-batch", type=int, default=None, help="override the batch size")
    g.addoption("--bench-rounds", type=int, default=None, help="override the number of timed rounds")
    g.addoption("--bench-scale", type=float, default=None, help="input-side scale (1.0 = paper resolution)")
    g.addoption("--bench-threads", type=int, default=None, help="CPU threads while timing (default 1)")
    g.addoption("--bench-summary", default=None, help="write the markdown memory summary here")
    g.addoption("--bench-out", default="bench-results", help="directory for the full tables (default bench-results)")
    g.addoption(
        "--bench-tables",
        choices=("file", "terminal"),
        default="file",
        help="file (default): tables to --bench-out, a short summary in the terminal; terminal: both",
    )


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _settings(config) -> benchlib.Settings:
    return benchlib.make_settings(
        config.getoption("--paper-size") or benchlib.env_full(),
        config.getoption("--bench-device"),
        config.getoption("--bench-batch"),
        config.getoption("--bench-rounds"),
        config.getoption("--bench-scale"),
        config.getoption("--bench-threads"),
    )


@pytest.fixture(scope="session")
def settings(request) -> benchlib.Settings:
    import torch

    s = _settings(request.config)
    if s.device.type == "cpu":
        torch.set_num_threads(s.threads)
    return s


@pytest.hookimpl(trylast=True)  # after -k / -m, so the counts are of the cases this run asked for
def pytest_collection_modifyitems(config, items):
    """Drop the cases that cannot run here (the benchmarks' own skips stay as a safety net)."""
    settings = _settings(config)
    keep, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        why = benchlib.case_unavailable(params, settings) if "impl" in params else None
        if why is None:
            keep.append(item)
        else:
            NOT_COLLECTED[why].append(benchlib.split_impl(params["impl"])[0])
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_sessionstart(session):
    """Send pytest-benchmark's tables (one wide table per case group: hundreds of lines) to a file."""
    config = session.config
    bs = getattr(config, "_benchmarksession", None)
    if bs is None:
        return
    show = bs.display

    def display(tr):
        buf = io.StringIO()
        show(_TextReporter(buf))
        text = buf.getvalue()
        if not text.strip():
            return
        path = _out_dir(config) / "benchmarks.txt"
        path.write_text(text)
        if config.getoption("--bench-tables") == "terminal":
            show(tr)
        groups = len(bs.groups or [])
        count = sum(len(b) for _, b in bs.groups or [])
        tr.write_line(f"benchmark tables ({count} benchmarks in {groups} groups, times per round): {path}")
        for line in ratio_summary([b for _, benches in bs.groups or [] for b in benches]):
            tr.write_line(line)

    bs.display = display


def ratio_summary(benches: list[dict], baseline: str = "eager-nchw") -> list[str]:
    """Per kind and mode, each implementation's median time over the baseline's in the same case, as a
    geometric mean over the cases both ran (one line each)."""
    import math

    by_case: dict = collections.defaultdict(dict)
    for b in benches:
        info = b.get("extra_info", {})
        if "impl" in info and "mode" in info:
            by_case[(info.get("kind", "?"), info["mode"], info.get("case", b.get("group")))][info["impl"]] = b["median"]
    ratios: dict = collections.defaultdict(list)
    for (kind, mode, _), times in by_case.items():
        for impl, t in times.items():
            if impl != baseline and baseline in times and times[baseline] > 0 and t > 0:
                ratios[(kind, mode)].append((impl, t / times[baseline]))
    lines = []
    for (kind, mode), rs in sorted(ratios.items()):
        per_impl: dict = collections.defaultdict(list)
        for impl, r in rs:
            per_impl[impl].append(r)
        parts = [f"{impl} {math.exp(sum(map(math.log, v)) / len(v)):.2f}x ({len(v)})" for impl, v in per_impl.items()]
        lines.append(f"  {kind} {mode}, median time / {baseline} (geometric mean over cases): {'; '.join(parts)}")
    return lines


class _TextReporter:
    """The part of pytest's terminal reporter that pytest-benchmark's table writer uses, into a text buffer."""

    def __init__(self, buf):
        self.buf = buf

    def write_line(self, line="", **markup):
        self.buf.write(f"{line}\n")

    def write(self, text="", **markup):
        self.buf.write(text)

    def rewrite(self, line="", **markup):  # progress messages
        pass

    def ensure_newline(self):
        pass

    def section(self, title, sep="-", **markup):
        self.buf.write(f"{sep * 8} {title} {sep * 8}\n")


def _out_dir(config) -> Path:
    path = Path(config.getoption("--bench-out"))
    path.mkdir(parents=True, exist_ok=True)
    return path


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
        out += [
            "MEASURED saved-activation bytes of one training forward (fused_dsconv.saved_activations; the saved set is",
            "the op's autograd contract, identical for every backend):",
            "",
            "| case | shape | batch | unfused KiB | fused KiB | recompute KiB | fused/unfused | recompute/unfused |"
            + (" CUDA peak MiB unfused / fused / recompute |" if blocks[0].get("peak_unfused") is not None else ""),
            "|---|---|---|---|---|---|---|---|" + ("---|" if blocks[0].get("peak_unfused") is not None else ""),
        ]
        for r in blocks:
            line = (
                f"| {r['case']} | {r['shape']} | {r['batch']} | {r['unfused'] / 1024:.0f} | {r['fused'] / 1024:.0f} | "
                f"{r['recompute'] / 1024:.0f} | {r['fused'] / r['unfused']:.3f} | {r['recompute'] / r['unfused']:.3f} |"
            )
            if r.get("peak_unfused") is not None:
                line += (
                    f" {r['peak_unfused'] / 2**20:.1f} / {r['peak_fused'] / 2**20:.1f} / "
                    f"{r['peak_recompute'] / 2**20:.1f} |"
                )
            out.append(line)
        tot = {k: sum(r[k] for r in blocks) for k in ("unfused", "fused", "recompute")}
        out += [
            "",
            f"All block cases together: fused/unfused {tot['fused'] / tot['unfused']:.3f}, "
            f"recompute/unfused {tot['recompute'] / tot['unfused']:.3f}",
            "",
        ]
    models = [r for r in rows if r["kind"] == "classifier"]
    if models:
        out += [
            "MEASURED saved-activation bytes per sample of the whole classifier's training forward at its",
            "resolution (slope between batch 1 and 2), and the DERIVED largest batch for an 11 GiB GPU:",
            "",
            "| config | resolution | params | unfused MiB/sample | fused MiB/sample | recompute MiB/sample | "
            "fused/unfused | recompute/unfused | max batch unfused / fused / recompute (11 GiB, derived) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in models:
            ps = r["per_sample"]
            mb = r["max_batch"]
            out.append(
                f"| {r['config']} | {r['resolution']} | {r['params']} | {ps['unfused'] / 2**20:.2f} | "
                f"{ps['fused'] / 2**20:.2f} | {ps['recompute'] / 2**20:.2f} | "
                f"{ps['fused'] / ps['unfused']:.3f} | {ps['recompute'] / ps['unfused']:.3f} | "
                f"{mb['unfused']} / {mb['fused']} / {mb['recompute']} |"
            )
        out += [
            "",
            "Derivation: max batch = floor((11 GiB - 1 GiB workspace margin - 16 B x params [fp32 weights,",
            "grads, Adam exp_avg, exp_avg_sq] - fixed saved bytes) / (saved bytes per sample + 2 x the largest",
            "activation per sample [gradient buffers live at the backward peak])). An estimate, not a measurement.",
            "",
        ]
    return "\n".join(out)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    text = memory_markdown(MEMORY_ROWS)
    if not (text or NOT_COLLECTED):
        return
    tr.section("fused_dsconv benchmarks")
    if NOT_COLLECTED:
        tr.write_line(f"{sum(map(len, NOT_COLLECTED.values()))} cases cannot run here and were not collected:")
        for why, impls in sorted(NOT_COLLECTED.items(), key=lambda kv: -len(kv[1])):
            tr.write_line(f"  {len(impls):5d} ({', '.join(dict.fromkeys(impls))}): {why}")
    if not text:
        return
    paths = [_out_dir(config) / "memory.md"] + (
        [Path(config.getoption("--bench-summary"))] if config.getoption("--bench-summary") else []
    )
    for path in paths:
        path.write_text(text + "\n")
    totals = [line for line in text.splitlines() if line.startswith("All block cases together")]
    tr.write_line(
        f"memory summary (MEASURED saved activations): {', '.join(map(str, paths))}"
        + (f"; {totals[0][0].lower()}{totals[0][1:]}" if totals else "")
    )
