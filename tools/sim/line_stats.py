#!/usr/bin/env python3
"""Where a simulated kernel's instructions go, from GPGPU-Sim's per-PTX-line counts.

The GTX1080Ti config turns on `-enable_ptx_file_line_stats`: a run folder kept by `run_cases.py --keep-runs`
holds `gpgpu_inst_stats.txt` (thread instructions executed per PTX line, summed over every launch of the run)
beside the PTX the simulator loaded. This prints, for each kernel whose name contains a pattern, its thread
instructions by opcode and grouped by execution count: lines run the same number of times belong to the
same loop level (e.g. once per thread per chunk of a GEMM's reduction), which is how the docs count the
overhead per chunk. Usage:

    python tools/sim/line_stats.py build/sim/runs/<case> dsconv_bwd_dt [--top 20]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

_ENTRY = re.compile(r"^\.(?:visible|weak)\s+\.entry\s+(\S+?)\(")
_STAT = re.compile(r"^(\S+) (\d+) : (\d+)")


def kernel_ranges(ptx: str) -> dict[str, tuple[int, int]]:
    """Mangled kernel name -> (first, last) line numbers (1-based, inclusive) of its body in the PTX."""
    starts = [(i + 1, m.group(1)) for i, line in enumerate(ptx.split("\n")) if (m := _ENTRY.match(line))]
    total = ptx.count("\n") + 1
    return {name: (lo, (starts[j + 1][0] - 1) if j + 1 < len(starts) else total) for j, (lo, name) in enumerate(starts)}


def line_counts(stats: str, ptx_name: str) -> dict[int, int]:
    """PTX line -> thread instructions executed, for the lines of `ptx_name` in a gpgpu_inst_stats.txt."""
    out: dict[int, int] = {}
    for line in stats.splitlines()[1:]:
        m = _STAT.match(line)
        if m and m.group(1) == ptx_name:
            out[int(m.group(2))] = out.get(int(m.group(2)), 0) + int(m.group(3))
    return out


def opcode(line: str) -> str:
    """The instruction of a PTX line, without its guard predicate (`@%p1 bra L` -> `bra`)."""
    toks = line.strip().rstrip(";").split()
    if toks and toks[0].startswith("@"):
        toks = toks[1:]
    return toks[0] if toks else "?"


def profile(ptx: str, counts: dict[int, int], lo: int, hi: int) -> dict:
    """Thread instructions of lines lo..hi: the total, per opcode, and per execution count (count -> lines)."""
    lines = ptx.split("\n")
    by_op: collections.Counter = collections.Counter()
    by_count: dict[int, int] = collections.defaultdict(int)
    total = 0
    for ln in range(lo, hi + 1):
        c = counts.get(ln, 0)
        if c:
            by_op[opcode(lines[ln - 1])] += c
            by_count[c] += 1
            total += c
    return {"total": total, "by_opcode": by_op, "by_count": dict(by_count)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder kept by run_cases.py --keep-runs")
    ap.add_argument("kernel", help="part of the kernel's (mangled) name, e.g. dsconv_bwd_dt")
    ap.add_argument("--top", type=int, default=20, help="opcodes to list per kernel (default 20)")
    a = ap.parse_args(argv)
    run = Path(a.run)
    stats = run / "gpgpu_inst_stats.txt"
    ptxs = sorted(run.glob("*.ptx"))
    if not stats.exists() or not ptxs:
        print(f"error: {run} holds no gpgpu_inst_stats.txt and PTX (run_cases.py --keep-runs keeps them)")
        return 2
    text = stats.read_text()
    found = False
    for ptx_file in ptxs:
        ptx = ptx_file.read_text()
        counts = line_counts(text, ptx_file.name)
        for name, (lo, hi) in kernel_ranges(ptx).items():
            if a.kernel not in name:
                continue
            prof = profile(ptx, counts, lo, hi)
            if not prof["total"]:
                continue
            found = True
            tot = prof["total"]
            print(f"{name}: {tot:,} thread instructions ({tot // 32:,} warp instructions if no lane idles)")
            for op, n in prof["by_opcode"].most_common(a.top):
                print(f"  {op:<24} {n:>12,} {100 * n / tot:5.1f}%")
            print("  by execution count (lines run equally often: one loop level):")
            for c, nl in sorted(prof["by_count"].items(), key=lambda kv: -kv[0] * kv[1])[:8]:
                print(f"    {nl:5d} lines x {c:>9,} = {100 * c * nl / tot:5.1f}%")
    if not found:
        print(f"error: no executed kernel in {run} has {a.kernel!r} in its name")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
