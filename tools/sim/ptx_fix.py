"""Rewrite the PTX of a simulation build around four GPGPU-Sim 4.2 bugs (tools/sim/README.md, "Simulator
work-arounds"). Each rewrite keeps the instruction's meaning; on a GPU the original and the rewritten
PTX compute the same values.

1. ``shfl.sync.<mode>.b32 %r|%p, ...``: GPGPU-Sim writes the optional "lane in range" predicate into the
   value register, so every warp shuffle returns 0 or 1. NVVM emits the predicate form even when nothing
   reads the predicate; the rewrite drops the predicate destination (and refuses if anything reads it).
2. ``cvt.<rnd>.<f32|f64>.<s64|u64>``: GPGPU-Sim converts an uninitialised value (``y.s64`` for
   ``x.s64`` in ``s2f`` / ``u2f``), so every 64-bit integer -> float conversion yields garbage (0 in
   practice). The rewrite converts the two 32-bit halves exactly in float64 (hi * 2^32 + lo, exact below
   2^53) and rounds once to the destination type.
3. ``mov.b32 %f, {0, %rs}`` (cuda_bf16.hpp's bfloat16 -> float): GPGPU-Sim's PTX parser rejects a
   vector operand with an immediate. The rewrite builds the same bits with a shift.
4. ``ld.global.L2::128B`` (the L2 prefetch-size hint; CUTLASS emits it for sm_75+ targets): GPGPU-Sim's PTX
   parser rejects it and the program crashes. The rewrite drops the hint, which changes no value, giving the
   load CUTLASS compiles for Pascal (its ``CUTLASS_ENABLE_L2_PREFETCH`` is 0 below sm_75).

Usage: python ptx_fix.py IN.ptx [OUT.ptx]   (in place without OUT); prints what it changed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_SHFL = re.compile(r"^(\s*(?:@!?%\w+\s+)?shfl\.sync\.\w+\.b32\s+)(%\w+)\|(%\w+)(\s*,.*)$")
_CVT64 = re.compile(r"^(\s*)(@!?%\w+\s+)?cvt\.(rn|rz|rm|rp)\.(f32|f64)\.(s64|u64)\s+(%\w+)\s*,\s*(%\w+)\s*;\s*$")
_BF16MOV = re.compile(r"(@!?%\w+\s+)?mov\.b32\s+(%\w+)\s*,\s*\{\s*0\s*,\s*(%\w+)\s*\}\s*;")
_L2HINT = re.compile(r"(\bld(?:\.global)?(?:\.\w+)*?)\.L2::(?:64|128|256)B\b")
_FUNC_START = re.compile(r"^\s*(\.visible\s+|\.weak\s+|\.extern\s+)?\.(entry|func)\b")

# Scratch registers, declared once per function that needs them.
_DECL = "\t.reg .b64 %simfix_t;\n\t.reg .b32 %simfix_lo, %simfix_hi;\n\t.reg .f64 %simfix_a, %simfix_b;\n"


def _cvt64(indent: str, guard: str, rnd: str, dst_t: str, src_t: str, dst: str, src: str) -> list[str]:
    g = guard or ""
    signed = src_t == "s64"
    lines = [
        f"{g}shr.{'s' if signed else 'u'}64 %simfix_t, {src}, 32;",
        f"{g}cvt.u32.u64 %simfix_hi, %simfix_t;",
        f"{g}cvt.u32.u64 %simfix_lo, {src};",
        f"{g}cvt.rn.f64.{'s' if signed else 'u'}32 %simfix_a, %simfix_hi;",
        f"{g}cvt.rn.f64.u32 %simfix_b, %simfix_lo;",
        f"{g}fma.rn.f64 %simfix_a, %simfix_a, 0d41F0000000000000, %simfix_b;",
        f"{g}cvt.{rnd}.f32.f64 {dst}, %simfix_a;" if dst_t == "f32" else f"{g}mov.f64 {dst}, %simfix_a;",
    ]
    return [indent + ln + "\n" for ln in lines]


def _declare(out: list[str], func_open: int, declared: bool, ln: str) -> bool:
    """Puts the scratch registers at the top of the current function once; returns True."""
    if func_open < 0:
        raise ValueError(f"ptx_fix: a rewrite outside a function body: {ln.strip()}")
    if not declared:
        out.insert(func_open, _DECL)
    return True


def fix_ptx(text: str) -> tuple[str, dict[str, int]]:
    """Returns the rewritten PTX and a count per rewrite kind."""
    lines = text.splitlines(keepends=True)
    counts = {"shfl_pred": 0, "cvt_int64_float": 0, "bf16_mov": 0, "l2_hint": 0}
    # Predicates written by shfl; a rewrite is only safe if nothing in the same function reads them.
    starts = [i for i, ln in enumerate(lines) if _FUNC_START.match(ln)] + [len(lines)]
    for a, b in zip(starts, starts[1:]):
        preds = {m.group(3) for ln in lines[a:b] if (m := _SHFL.match(ln))}
        if not preds:
            continue
        pat = re.compile("|".join(re.escape(p) + r"\b" for p in sorted(preds)))
        for ln in lines[a:b]:
            if _SHFL.match(ln) or ln.lstrip().startswith(".reg"):
                continue
            if pat.search(ln.split("//")[0]):
                raise ValueError(f"ptx_fix: a shfl predicate is read, cannot drop it: {ln.strip()}")
    out: list[str] = []
    func_open = -1  # index in `out` of the current function's opening brace line
    declared = False
    for ln in lines:
        if _FUNC_START.match(ln):
            func_open, declared = -1, False
        if func_open < 0 and ln.strip() == "{":
            out.append(ln)
            func_open = len(out)
            continue
        m = _SHFL.match(ln)
        if m:
            out.append(f"{m.group(1)}{m.group(2)}{m.group(4)}\n")
            counts["shfl_pred"] += 1
            continue
        m = _CVT64.match(ln)
        if m:
            declared = _declare(out, func_open, declared, ln)
            indent, guard, rnd, dst_t, src_t, dst, src = m.groups()
            out.extend(_cvt64(indent, guard, rnd, dst_t, src_t, dst, src))
            counts["cvt_int64_float"] += 1
            continue
        m = _BF16MOV.search(ln)
        if m:
            declared = _declare(out, func_open, declared, ln)
            g, dst, src = m.group(1) or "", m.group(2), m.group(3)
            rep = (
                f"{g}cvt.u32.u16 %simfix_lo, {src}; {g}shl.b32 %simfix_lo, %simfix_lo, 16; "
                f"{g}mov.b32 {dst}, %simfix_lo;"
            )
            out.append(ln[: m.start()] + rep + ln[m.end() :])
            counts["bf16_mov"] += 1
            continue
        ln, n = _L2HINT.subn(r"\1", ln)
        counts["l2_hint"] += n
        out.append(ln)
    return "".join(out), counts


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    src = Path(argv[1])
    dst = Path(argv[2]) if len(argv) == 3 else src
    text, counts = fix_ptx(src.read_text())
    dst.write_text(text)
    print(f"ptx_fix: {src.name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
