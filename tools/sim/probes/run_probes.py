#!/usr/bin/env python3
"""FMA-efficiency probes of the simulator (tools/sim/README.md, "SGEMM efficiency"): builds the baseline's
SGEMM (`unfused_sim --gemm`), CUTLASS's SIMT SGEMM (probes/cutlass_sgemm.cu) and the FFMA micro-benchmark
(probes/ffma_probe.cu), runs each case on gpusim one at a time (niced), and prints a markdown table: cycles,
% of the simulated FMA peak, the FFMA share of the warp instructions, and what the warp schedulers did.

A case is one of
  gemm:ours:M:N:K      the baseline's SGEMM (tools/sim/baseline/sgemm.cuh, tile and split-K as pick_plan says)
  gemm:cutlass:M:N:K   CUTLASS 128x128x8 SIMT SGEMM (needs the nvidia-cutlass wheel's headers)
  ffma:MODE[:ITERS[:BLOCKS]]   the micro-benchmark, MODE r1 | r2 | r3 (1, 2, 3 register sources per FFMA)

--probe OPT=VALUE (repeatable) runs the cases on a copy of the config with gpgpu-sim options changed: a
sensitivity probe that shows which part of the core model sets a number; its rows are labelled PROBE and
are never the measure.

  python tools/sim/probes/run_probes.py gemm:ours:896:1024:256 gemm:cutlass:896:1024:256 ffma:r1 ffma:r3
  python tools/sim/probes/run_probes.py --probe gpgpu_num_reg_banks=64 ffma:r3
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROBE_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(PROBE_DIR.parent))
import simlib  # noqa: E402

LAUNCH_LATENCY = 5000  # cycles gpusim's configs add to every kernel (-gpgpu_kernel_launch_latency)
WARP = 32


def cutlass_include(arg: str | None) -> Path:
    """CUTLASS's include/ from --cutlass-include or the installed nvidia-cutlass wheel (not imported)."""
    if arg:
        p = Path(arg)
    else:
        spec = importlib.util.find_spec("cutlass_library")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(
                "gemm:cutlass needs CUTLASS's headers: `pip install nvidia-cutlass` (4.x) or pass "
                "--cutlass-include DIR (the folder holding cutlass/gemm/device/gemm.h)"
            )
        p = Path(list(spec.submodule_search_locations)[0]) / "source" / "include"
    if not (p / "cutlass" / "gemm" / "device" / "gemm.h").exists():
        raise SystemExit(f"{p} has no cutlass/gemm/device/gemm.h")
    return p


def parse_case(spec: str) -> dict:
    parts = spec.split(":")
    try:
        if parts[0] == "gemm" and len(parts) == 5 and parts[1] in ("ours", "cutlass"):
            m, n, k = (int(x) for x in parts[2:])
            if min(m, n, k) < 1:
                raise ValueError
            args = ["--gemm", str(m), str(n), str(k)] if parts[1] == "ours" else [str(m), str(n), str(k)]
            return {"spec": spec, "prog": parts[1], "args": args, "ffma": m * n * k}
        if parts[0] == "ffma" and 2 <= len(parts) <= 4 and parts[1] in ("r1", "r2", "r3"):
            iters = int(parts[2]) if len(parts) > 2 else 32
            blocks = int(parts[3]) if len(parts) > 3 else 56
            if iters < 1 or blocks < 1:
                raise ValueError
            return {
                "spec": spec,
                "prog": "ffma",
                "args": [parts[1], str(iters), str(blocks), "256"],
                "ffma": 64 * iters * blocks * 256,
            }
    except ValueError:
        pass
    raise SystemExit(f"bad case {spec!r}: want gemm:ours|cutlass:M:N:K or ffma:r1|r2|r3[:ITERS[:BLOCKS]]")


def build_programs(progs: set[str], bin_dir: Path, cutlass_inc: str | None) -> dict[str, Path]:
    exes = {}
    if "ours" in progs:
        exes["ours"] = simlib.build("unfused", "f32", bin_dir)
    for prog, src in (("cutlass", "cutlass_sgemm.cu"), ("ffma", "ffma_probe.cu")):
        if prog not in progs:
            continue
        inc = [cutlass_include(cutlass_inc)] if prog == "cutlass" else []
        files = [PROBE_DIR / src, PROBE_DIR.parent / "sim_common.cuh", PROBE_DIR.parent / "ptx_fix.py"]
        version = "".join((d / "cutlass" / "version.h").read_text() for d in inc)  # the CUTLASS release
        h = simlib.hash_files(files, simlib.nvcc_version() + version)
        exes[prog] = simlib.build_source(PROBE_DIR / src, bin_dir / f"{prog}_probe_{h}", [*inc, PROBE_DIR.parent], [])
    return exes


def probe_config(base: Path, overrides: list[str], out_dir: Path) -> tuple[Path, str]:
    """A copy of the config with `-OPT VALUE` lines replaced (each option must exist in it)."""
    if not overrides:
        return base, ""
    text = (base / "gpgpusim.config").read_text()
    for ov in overrides:
        opt, _, val = ov.partition("=")
        opt = "-" + opt.lstrip("-")
        pat = re.compile(rf"^{re.escape(opt)}\s+\S.*$", re.M)
        if not val or not pat.search(text):
            raise SystemExit(f"--probe {ov!r}: want OPT=VALUE with OPT an option of the config")
        text = pat.sub(f"{opt} {val}", text)
    tag = hashlib.sha256(text.encode()).hexdigest()[:12]
    d = out_dir / f"{base.name}_probe_{tag}"
    if not d.exists():
        shutil.copytree(base, d)
        (d / "gpgpusim.config").write_text(text)
    return d, " ".join(overrides)


def sm_count_and_peak(config_dir: Path) -> tuple[int, int]:
    """(SMs, FFMA per cycle): SP units per SM x a warp per cycle each (fp MAD initiation interval 1)."""
    text = (config_dir / "gpgpusim.config").read_text()

    def opt(name: str) -> int:
        m = re.search(rf"^-{name}\s+(\d+)", text, re.M)
        if not m:
            raise SystemExit(f"{config_dir}: no -{name}")
        return int(m.group(1))

    sms = opt("gpgpu_n_clusters") * opt("gpgpu_n_cores_per_cluster")
    return sms, sms * opt("gpgpu_num_sp_units") * WARP


def metrics(res: dict, ffma: int, sms_peak: tuple[int, int]) -> dict:
    """% of the FMA peak over the kernel's busy cycles (without the launch latency), the FFMA share of the warp
    instructions, and the warp schedulers' cycles by outcome (shares of all scheduler-cycles while busy)."""
    ks = res["kernels"]
    cycles = sum(k["cycles"] for k in ks)
    busy = cycles - LAUNCH_LATENCY * len(ks)
    winsn = sum(k.get("warp_insn", 0) for k in ks)
    sched = {
        key: sum(k.get(key, 0) for k in ks)
        for key in ("sched_stall", "sched_idle", "sched_scoreboard", "sched_single_issue", "sched_dual_issue")
    }
    total = sum(sched.values())
    issued = sched["sched_single_issue"] + sched["sched_dual_issue"]
    return {
        "kernels": len(ks),
        "cycles": cycles,
        "busy": busy,
        "ffma": ffma,
        "fma_peak_pct": 100.0 * ffma / (busy * sms_peak[1]) if busy > 0 else float("nan"),
        "warp_insn": winsn,
        "ffma_share_pct": 100.0 * ffma / WARP / winsn if winsn else float("nan"),
        "issue_pct": 100.0 * issued / total if total else float("nan"),
        "stall_pct": 100.0 * sched["sched_stall"] / total if total else float("nan"),
        "scoreboard_pct": 100.0 * sched["sched_scoreboard"] / total if total else float("nan"),
        "idle_pct": 100.0 * sched["sched_idle"] / total if total else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--gpusim", help="gpusim's tool folder (default $GPUSIM_TOOL)")
    ap.add_argument("--config", default="GTX1080Ti")
    ap.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="OPT=VALUE",
        help="sensitivity probe: run on a copy of the config with this gpgpu-sim option changed",
    )
    ap.add_argument("--cutlass-include", help="CUTLASS's include/ (default: the nvidia-cutlass wheel's)")
    ap.add_argument("--build-dir", default=str(simlib.ROOT / "build" / "sim"))
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--json", help="also write every counter to this file")
    a = ap.parse_args(argv)
    cases = [parse_case(s) for s in a.cases]
    build_dir = Path(a.build_dir).resolve()
    tool = simlib.gpusim_dir(a.gpusim)
    exes = build_programs({c["prog"] for c in cases}, build_dir / "bin", a.cutlass_include)
    base_cfg, _ = simlib.prepare_config(a.config, build_dir)
    cfg, probe_label = probe_config(base_cfg, a.probe, build_dir)
    sms_peak = sm_count_and_peak(cfg)
    label = f"SIMULATED, gpusim {a.config}" + (f", PROBE {probe_label}" if probe_label else "")
    print(f"# {label}: FMA peak {sms_peak[1]} FFMA/cycle ({sms_peak[0]} SMs)", flush=True)
    print(
        "| case | result | cycles | busy | FFMA | % FMA peak | warp insn | FFMA share | issue | stall | "
        "scoreboard | idle |\n|---|---|---|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    rows = []
    for c in cases:
        exe = exes[c["prog"]]
        key = hashlib.sha256(f"{exe.name}|{c['args']}|{cfg.name}".encode()).hexdigest()[:16]
        run_dir = build_dir / "probe_runs" / key
        t0 = time.time()
        log = run_dir / "sim.log"
        if not log.exists() or simlib.parse_log(log.read_text(errors="replace"))["verdict"] != "PASS":
            if run_dir.exists():
                shutil.rmtree(run_dir)
            subprocess.run(
                [
                    "nice",
                    "-n",
                    str(a.nice),
                    "bash",
                    str(tool / "run"),
                    "--config",
                    str(cfg),
                    str(run_dir),
                    str(exe),
                    *c["args"],
                ],
                capture_output=True,
                text=True,
            )
        res = simlib.parse_log(log.read_text(errors="replace")) if log.exists() else {"kernels": [], "verdict": "?"}
        m = metrics(res, c["ffma"], sms_peak) if res["kernels"] else {}
        rows.append(
            {
                "case": c["spec"],
                "verdict": res["verdict"],
                "label": label,
                "run_dir": str(run_dir),
                "wall_s": round(time.time() - t0, 1),
                **m,
                "kernel_stats": res.get("kernels", []),
            }
        )
        if not m:
            print(f"| {c['spec']} | {res['verdict']} (no kernel ran; see {log}) |" + " |" * 10, flush=True)
            continue
        print(
            f"| {c['spec']} | {res['verdict']} | {m['cycles']:,} | {m['busy']:,} | {m['ffma'] / 1e6:.1f} M | "
            f"**{m['fma_peak_pct']:.1f}%** | {m['warp_insn'] / 1e6:.2f} M | {m['ffma_share_pct']:.1f}% | "
            f"{m['issue_pct']:.1f}% | {m['stall_pct']:.1f}% | {m['scoreboard_pct']:.1f}% | {m['idle_pct']:.1f}% |",
            flush=True,
        )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["verdict"] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
