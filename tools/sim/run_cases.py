#!/usr/bin/env python3
"""Build and simulate a list of cases on GPGPU-Sim, in parallel and niced, with a result cache, and write
a markdown table of simulated cycles per kernel. Usage and examples: tools/sim/README.md.

A case is IMPL:MODE:SHAPE[:DTYPE[:LAYOUT]]; each part may be a comma-separated list (cross product):
  IMPL   fused (csrc/kernels via launch.cuh) | unfused (tools/sim/baseline: what PyTorch runs)
  MODE   eval | train | step (training forward + backward) | bwd (backward alone)
  SHAPE  b1..b9 (the classifier's blocks at --batch, --dilation, --rho), bK@S (block K at S x S input: a
         cheaper probe the cost model scales to the full size), bK#N (block K at batch N: where the launcher
         picks other kernels than at batch 1), bK+planB (fused: the kernel variants and splits the launcher
         picks at batch B, run on the smaller shape: a plan probe), combined as bK@S#N+planB, or
         NxCxKxHxW[sS][dD]
  DTYPE  f32 (default) | f16 | bf16            LAYOUT  nchw (default) | nhwc
e.g.   python tools/sim/run_cases.py fused,unfused:eval:b3 fused:step:1x64x64x28x28s1d3
       python tools/sim/run_cases.py --preset issue11 --out docs/results/sim_gtx1080ti.md
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures as cf
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import simlib  # noqa: E402
from simlib import Case  # noqa: E402

LAUNCH_LATENCY = 5000  # gpusim configs' -gpgpu_kernel_launch_latency, included in every kernel's cycles
COMMITTED = simlib.ROOT / "bench" / "data" / "sim_gtx1080ti.json"  # run_cases.py --json of the presets

PRESETS = {
    # issue 11's done-criteria: batch 1, delta 3, fp32 NCHW, fused and unfused.
    "issue11": ["fused,unfused:eval:b1,b3,b5,b7,b9", "fused,unfused:step:b3,b7"],
    # the training steps of issue 12's other blocks at full size (an hour or more of a core each; the unfused b1
    # step about three: `unfused:train:b1` and `unfused:bwd:b1` side by side halve the wait, not the work)
    "steps": ["fused,unfused:step:b1,b5,b9"],
    # seconds-long cases: a smoke test of both programs, and latency-bound kernels for the model's calibration
    "small": ["fused,unfused:eval,step:1x16x16x16x16s1d3", "fused,unfused:step:2x8x12x9x11s2d2"],
    # the blocks and modes issue11 leaves out: with issue11 they give bench/cost_model.py every block in both
    # modes. Eval at full size (2-15 minutes each).
    "probes": ["fused,unfused:eval:b2,b4,b6,b8", "fused,unfused:step:b1@32,b2,b4,b5@16,b6@16,b8,b9"],
    # blocks at the batch where the launcher changes kernels (bench/cost_model.py scales the case with the
    # most pixels to batch 32): dsconv_fwd's pairs of span tiles (plan.cuh DSC_FWD_PAIR_BLOCKS: b2 and b3
    # from batch 3, b4 and b5 from 5, b6 and b7 from 9, b8 and b9 from 17)
    "batched": ["fused:eval:b2#3,b3#3,b4#5,b5#5,b6#9,b7#9,b8#17"],
    # second sizes of the step probes (bench/cost_model.py splits a kernel whose grid does not change with
    # the size into a fixed cost per block and a cost per pixel)
    "seconds": ["fused,unfused:step:b1@16,b2@16,b3@28,b4@8,b5@8,b6@8,b7@7"],
    # plan probes: each block's training step at 128 output pixels (two images) with the kernel variants and
    # splits the launcher picks for the block at batch 32 (paired forward tiles, no channel splits), which
    # batch 1 does not run; bench/cost_model.py scales these, not the plain cases, to batch 32. The same at 64
    # pixels (one image) gives the kernels whose grid does not change with the size (the statistics merges)
    # a second size; and each block's eval forward at 128 pixels. Minutes each for b1-b5, 10 minutes for b7,
    # 15 for b8's step, longer for b9's.
    "plans": [
        "fused:step:b1@16#2+plan32,b2@16#2+plan32,b3@8#2+plan32,b4@16#2+plan32,b5@8#2+plan32,b6@16#2+plan32,"
        "b7@8#2+plan32,b8@16#2+plan32,b9@8#2+plan32",
        "fused:step:b1@16+plan32,b2@16+plan32,b3@8+plan32,b4@16+plan32,b5@8+plan32,b6@16+plan32,b7@8+plan32,"
        "b8@16+plan32,b9@8+plan32",
        "fused:eval:b1@16#2+plan32,b2@16#2+plan32,b3@8#2+plan32,b4@16#2+plan32,b5@8#2+plan32,b6@16#2+plan32,"
        "b7@8#2+plan32,b8@16#2+plan32,b9@8#2+plan32",
    ],
}


def classifier_blocks() -> list[tuple[int, int, int]]:
    """(C, K, stride) of the nine blocks, read from fused_dsconv/models.py without importing torch."""
    tree = ast.parse((simlib.ROOT / "fused_dsconv" / "models.py").read_text())
    consts = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("TABLE1", "BASE_RESOLUTION"):
                consts[node.targets[0].id] = ast.literal_eval(node.value)
    return consts["TABLE1"], consts["BASE_RESOLUTION"]


def block_shapes(batch: int, dilation: int, rho: float = 1.0) -> dict[str, tuple]:
    table, base = classifier_blocks()
    h = int(round(base * rho))
    out = {}
    for i, (c, k, s) in enumerate(table):
        out[f"b{i + 1}"] = (batch, c, k, h, h, s, dilation)
        h = (h - 1) // s + 1
    return out


def parse_cases(specs: list[str], batch: int, dilation: int, rho: float) -> list[Case]:
    blocks = block_shapes(batch, dilation, rho)
    cases: list[Case] = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) < 3 or len(parts) > 5:
            raise SystemExit(f"bad case {spec!r}: want IMPL:MODE:SHAPE[:DTYPE[:LAYOUT]]")
        impls, modes, shapes = (p.split(",") for p in parts[:3])
        dtypes = parts[3].split(",") if len(parts) > 3 else ["f32"]
        layouts = parts[4].split(",") if len(parts) > 4 else ["nchw"]
        for impl in impls:
            if impl not in simlib.PROGRAMS:
                raise SystemExit(f"bad IMPL {impl!r} in {spec!r}: choose from {', '.join(simlib.PROGRAMS)}")
            for mode in modes:
                if mode not in ("eval", "train", "step", "bwd"):
                    raise SystemExit(f"bad MODE {mode!r} in {spec!r}: choose from eval, train, step, bwd")
                for shape in shapes:
                    # a block, optionally at a smaller spatial size (@S), another batch (#N) and with the
                    # launch plan of another batch (+planB: a plan probe, fused only)
                    blk = re.fullmatch(r"(b\d)(?:@(\d+))?(?:#(\d+))?(?:\+plan(\d+))?", shape)
                    plan = 0
                    if blk and blk.group(1) in blocks:
                        g, label = blocks[blk.group(1)], blk.group(1)
                        hw = int(blk.group(2)) if blk.group(2) else g[3]
                        geo = (int(blk.group(3)) if blk.group(3) else g[0], g[1], g[2], hw, hw, g[5], g[6])
                        plan = int(blk.group(4)) if blk.group(4) else 0
                        if plan and impl != "fused":
                            raise SystemExit(f"{spec!r}: +plan is for the fused kernels (the baseline has no plan)")
                    else:
                        m = re.fullmatch(r"(\d+)x(\d+)x(\d+)x(\d+)x(\d+)(?:s(\d+))?(?:d(\d+))?", shape)
                        if not m:
                            raise SystemExit(
                                f"bad SHAPE {shape!r} in {spec!r}: b1..b9 (with @S, #N, +planB: bK@S#N+planB) "
                                "or NxCxKxHxW[sS][dD]"
                            )
                        g = [int(v) for v in m.groups()[:5]]
                        geo = (*g, int(m.group(6) or 1), int(m.group(7) or dilation))
                        label = ""
                    for dt in dtypes:
                        if dt not in simlib.DTYPES:
                            raise SystemExit(f"bad DTYPE {dt!r} in {spec!r}: choose from {', '.join(simlib.DTYPES)}")
                        for lay in layouts:
                            if lay not in ("nchw", "nhwc"):
                                raise SystemExit(f"bad LAYOUT {lay!r} in {spec!r}: nchw or nhwc")
                            if impl == "unfused" and (dt != "f32" or lay != "nchw"):
                                raise SystemExit(f"{spec!r}: the unfused baseline is fp32 NCHW only")
                            plan_hw = g[3] if plan else 0  # the block's own input size
                            cases.append(
                                Case(impl, mode, *geo, dtype=dt, layout=lay, label=label, plan=plan, plan_hw=plan_hw)
                            )
    seen, out = set(), []
    for c in cases:
        if c.ident() not in seen:
            seen.add(c.ident())
            out.append(c)
    return out


# ---- tables -----------------------------------------------------------------------------------------
def total(res: dict, without_launch: bool = False) -> int:
    return sum(k["cycles"] - (LAUNCH_LATENCY if without_launch else 0) for k in res["kernels"])


def case_name(c: dict) -> str:
    return f"{c['label'] + ' ' if c.get('label') else ''}{c['mode']} {c['dtype']} {c['layout']}"


def markdown(results: list[dict], config: str) -> str:
    mhz = 1582.0 if "1080" in config else None
    lines = [
        f"SIMULATED (GPGPU-Sim 4.2, PTX mode, config {config} as patched by tools/sim/simlib.py). "
        f"Cycles per kernel include the config's {LAUNCH_LATENCY}-cycle kernel launch latency; "
        f"'busy' excludes it. Every result checked against a float64 CPU reference.",
        "",
    ]
    # fused vs unfused side by side
    pairs: dict[tuple, dict] = {}
    for r in results:
        c = r["case"]
        key = (c["mode"], c["dtype"], c["layout"], c["n"], c["c"], c["k"], c["h"], c["w"], c["stride"], c["dil"])
        pairs.setdefault(key, {})[c["impl"]] = r
    lines += [
        "| case | shape | fused kernels | fused cycles (busy) | unfused kernels | unfused cycles (busy) | "
        "fused / unfused | checks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, d in pairs.items():
        f, u = d.get("fused"), d.get("unfused")
        any_r = f or u
        c = any_r["case"]
        cells = [case_name(c), f"N{c['n']} {c['c']}->{c['k']} {c['h']}x{c['w']} s{c['stride']} d{c['dil']}"]
        for r in (f, u):
            if r is None:
                cells += ["", ""]
            else:
                cells += [str(len(r["kernels"])), f"{total(r):,} ({total(r, True):,})"]
        ratio = f"{total(f) / total(u):.2f} ({total(f, True) / max(1, total(u, True)):.2f})" if f and u else ""
        verdicts = " / ".join(r["verdict"] for r in (f, u) if r is not None)
        cells += [ratio, verdicts]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per kernel (launch order):",
        "",
        "| case | impl | # | kernel | grid | CTAs/SM (limit) | cycles | busy cycles"
        + (" | busy us" if mhz else "")
        + " | warp insts | IPC (thread) | L2 accesses |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if mhz else "") + "---|---|---|",
    ]
    for r in results:
        c = r["case"]
        for i, k in enumerate(r["kernels"]):
            busy = k["cycles"] - LAUNCH_LATENCY
            row = [
                case_name(c) if i == 0 else "",
                c["impl"] if i == 0 else "",
                str(i),
                f"`{k['name']}`",
                "x".join(map(str, k.get("grid", []))),
                k.get("ctas_per_sm") or "",
                f"{k['cycles']:,}",
                f"{busy:,}",
            ]
            if mhz:
                row.append(f"{busy / mhz:.1f}")
            row += [
                f"{k.get('warp_insn', 0):,}",
                f"{k.get('thread_insn', 0) / max(1, k['cycles']):.0f}",
                f"{k.get('l2_accesses', 0):,}",
            ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_grids(path: Path, batches: list[int], dilation: int, rho: float, build_dir: Path) -> None:
    """Launch grids and kernels (demangled names), in launch order, of every block, mode and implementation at
    each batch: the host programs run natively with --dry (no GPU, no simulator, nothing computed)."""
    exes = {impl: simlib.build(impl, "f32", build_dir / "bin", print) for impl in simlib.PROGRAMS}
    out = {
        "blocks": block_shapes(1, dilation, rho),
        "grids": {},
        "kernels": {},
        "kernel_hash": {p: simlib.kernel_hash(p) for p in simlib.PROGRAMS},
    }
    for b in batches:
        for label, geo in block_shapes(b, dilation, rho).items():
            for impl, exe in exes.items():
                for mode in ("eval", "step"):
                    c = Case(impl, mode, *geo, label=label)
                    launches = simlib.dry_launch_list(exe, c)
                    out["grids"][f"{impl}|{mode}|{label}|{b}"] = [list(grid) for _, grid, _, _ in launches]
                    names = simlib.demangle([n for n, _, _, _ in launches])
                    out["kernels"][f"{impl}|{mode}|{label}|{b}"] = [simlib.short_name(n) for n in names]
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"[grids] {path}")


# ---- main -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="*", help="IMPL:MODE:SHAPE[:DTYPE[:LAYOUT]] (see above)")
    ap.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        action="append",
        default=[],
        help="add a named list of cases (issue11: the done-criteria cases)",
    )
    ap.add_argument("--batch", type=int, default=1, help="batch of the bN shapes (default 1)")
    ap.add_argument("--dilation", type=int, default=3, help="dilation of the bN shapes (default 3)")
    ap.add_argument("--rho", type=float, default=1.0, help="resolution multiplier of the bN shapes")
    ap.add_argument("--config", default="GTX1080Ti", help="gpusim config name (default GTX1080Ti)")
    ap.add_argument("--gpusim", default=None, help="gpusim's tool folder (default $GPUSIM_TOOL)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="simulations at once, one per core (default min(2, cores))",
    )
    ap.add_argument("--nice", type=int, default=10, help="niceness of the simulations (default 10)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per simulation (default none)")
    ap.add_argument("--build-dir", default=str(simlib.ROOT / "build" / "sim"), help="binaries, configs, runs")
    ap.add_argument("--cache", default=None, help="result cache folder (default BUILD_DIR/cache)")
    ap.add_argument("--rerun", action="store_true", help="simulate even when the cache has the result")
    ap.add_argument(
        "--import-cache",
        nargs="+",
        default=[],
        metavar="DIR",
        help="first copy the results in these cache folders (other checkouts') or --json files (the "
        "committed bench/data/sim_gtx1080ti.json) that are valid for today's sources into the cache",
    )
    ap.add_argument("--keep-runs", action="store_true", help="keep each run's folder (sim.log, PTX)")
    ap.add_argument("--build-only", action="store_true", help="build the host programs and stop (no simulator)")
    ap.add_argument(
        "--cached-only",
        action="store_true",
        help="tables and JSON from the cache alone: simulate nothing, list the cases not run yet",
    )
    ap.add_argument("--out", default=None, help="write the markdown table here (default: print it)")
    ap.add_argument("--json", default=None, help="write all results (per kernel statistics) here")
    ap.add_argument(
        "--grids-json",
        default=None,
        help="write the launch grids of every block (b1..b9), mode (eval, step) and implementation at "
        "--grid-batches here (host programs' --dry mode, no simulator; bench/cost_model.py reads it)",
    )
    ap.add_argument("--grid-batches", type=int, nargs="+", default=[1, 32])
    a = ap.parse_args(argv)

    specs = list(a.cases)
    for p in a.preset:
        specs += PRESETS[p]
    if a.grids_json:
        write_grids(Path(a.grids_json), a.grid_batches, a.dilation, a.rho, Path(a.build_dir))
        if not specs:
            return 0
    if not specs and not a.build_only:
        ap.error("give cases or --preset")
    cases = parse_cases(specs, a.batch, a.dilation, a.rho)
    build_dir = Path(a.build_dir)
    cache = Path(a.cache) if a.cache else build_dir / "cache"
    lock = threading.Lock()

    def log(msg: str) -> None:
        with lock:
            print(msg, flush=True)

    want = sorted({(c.impl, c.dtype) for c in cases}) if cases else [(p, "f32") for p in simlib.PROGRAMS]
    # The sources' hash as the binaries are built (an edit while a simulation runs must not relabel its result).
    khash = {impl: simlib.kernel_hash(impl) for impl in simlib.PROGRAMS}
    exes = {}
    for impl, dt in want:
        exes[(impl, dt)] = simlib.build(impl, dt, build_dir / "bin", log)
        log(f"[build] {impl} {dt}: {exes[(impl, dt)]}")
    if a.build_only:
        return 0

    cfg_dir, cfg_hash = simlib.prepare_config(a.config, build_dir)
    cache.mkdir(parents=True, exist_ok=True)

    def exe_for(impl: str, dtype: str) -> Path:
        if (impl, dtype) not in exes:
            exes[(impl, dtype)] = simlib.build(impl, dtype, build_dir / "bin", log)
        return exes[(impl, dtype)]

    # Results cached before launch fingerprints, still valid for today's sources, get a fingerprinted key.
    simlib.import_cache(cache, cache, a.config, cfg_hash, exe_for, log)
    # The committed results seed every fresh cache (a new checkout has none): a result there is used exactly
    # where today's launch fingerprint is the one it was simulated with.
    if COMMITTED.exists():
        n = simlib.import_cache(COMMITTED, cache, a.config, cfg_hash, exe_for, lambda m: None)
        if n:
            log(f"[import] {n} results from {COMMITTED.relative_to(simlib.ROOT)}")
    for d in a.import_cache:
        log(f"[import] {simlib.import_cache(Path(d), cache, a.config, cfg_hash, exe_for, log)} results from {d}")
    results: dict[str, dict] = {}
    todo = []
    fingerprints = {}
    for c in cases:
        fingerprints[c.ident()] = fp = simlib.launch_fingerprint(exes[(c.impl, c.dtype)], c)
        key = simlib.cache_key(c, cfg_hash, fp)
        f = cache / f"{key}.json"
        if f.exists() and not a.rerun:
            r = json.loads(f.read_text())
            results[c.ident()] = r
            log(f"[cache] {c.ident()}: {r['verdict']} {total(r):,} cycles")
        else:
            todo.append((c, key))
    missing = []
    if a.cached_only:
        missing, todo = [c for c, _ in todo], []
        for c in missing:
            log(f"[cache] {c.ident()}: not run yet")
    t0 = time.time()
    tool = simlib.gpusim_dir(a.gpusim) if todo else None  # cached results need no simulator

    def work(item):
        c, key = item
        run_dir = build_dir / "runs" / c.ident()
        with simlib.case_lock(run_dir):
            if (cache / f"{key}.json").exists():  # another process simulated it while this one waited
                r = json.loads((cache / f"{key}.json").read_text())
                log(f"[cache] {c.ident()}: {r['verdict']} {total(r):,} cycles (simulated by another process)")
                return c, r
            log(f"[sim] start {c.ident()} ({c.shape()})")
            r = simlib.run_case(c, exes[(c.impl, c.dtype)], cfg_dir, run_dir, tool, a.nice, a.timeout)
            return finish(c, key, r, run_dir)

    def finish(c, key, r, run_dir):
        r["case"] = {**c.__dict__}
        r["key"] = key
        r["config"] = a.config
        r["kernel_hash"] = khash[c.impl]
        r["fingerprint"], r["config_hash"] = fingerprints[c.ident()], cfg_hash
        if r["verdict"] in ("PASS", "UNCHECKED"):  # failures are not cached: they are rerun next time
            (cache / f"{key}.json").write_text(json.dumps(r, indent=1))
        if not a.keep_runs and r["verdict"] == "PASS":
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        log(
            f"[sim] done  {c.ident()}: {r['verdict']} {total(r):,} cycles, {r['wall_s']:.0f}s wall "
            f"({time.time() - t0:.0f}s since start)"
        )
        if r["verdict"] != "PASS":
            log("\n".join(r["checks"]) + "\n" + r.get("run_output_tail", ""))
        return c, r

    handlers = {}
    if todo and threading.current_thread() is threading.main_thread():  # kill, hang-up: the finally still runs
        handlers = {
            sig: signal.signal(sig, lambda signum, _: sys.exit(128 + signum)) for sig in (signal.SIGTERM, signal.SIGHUP)
        }
    ex = cf.ThreadPoolExecutor(max_workers=max(1, a.jobs))
    try:
        for c, r in ex.map(work, todo):
            results[c.ident()] = r
    finally:  # Ctrl-C, a kill or an error: the simulations run in sessions of their own, so end them here
        ex.shutdown(wait=False, cancel_futures=True)
        simlib.stop_all()
        for sig, old in handlers.items():
            signal.signal(sig, old)
    done_cases = [c for c in cases if c.ident() in results]
    ordered = [results[c.ident()] for c in done_cases]
    for r, c in zip(ordered, done_cases):
        r["case"] = {**c.__dict__}  # labels come from this invocation
    md = markdown(ordered, a.config)
    if missing:
        md += "\nNot simulated yet: " + ", ".join(f"{c.impl} {c.mode} {c.label or c.shape()}" for c in missing) + "\n"
    cmd = "python tools/sim/run_cases.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.out:
        Path(a.out).write_text(f"<!-- generated by: {cmd} -->\n\n" + md)
        log(f"[table] {a.out}")
    else:
        print(md)
    if a.json:
        Path(a.json).write_text(json.dumps({"config": a.config, "command": cmd, "results": ordered}, indent=1) + "\n")
        log(f"[json] {a.json}")
    bad = [r for r in ordered if r["verdict"] != "PASS"]
    return 1 if bad or missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
