"""MODEL v2 for the Triton kernels on the RTX 3060 and RTX 4090 (not measured).

Per launch, the executed SASS counts of tools/triton_counts.py (bench/data/triton_sm86.json: sm_86 cubins,
the RTX 4090's sm_89 read as sm_86 as cost_model.py does) go through cost_model.kernel_time, with the
parameters it calibrates on the simulator, the transfer band of a GPU other than the simulated one, and:

- instructions: every warp instruction one issue slot (counted, so no SASS / PTX ratio and no fp16 factor);
- tensor cores: `mma` cycles = multiply-adds / TENSOR_MACS_PER_CYCLE per SM sub-partition: 64 for fp16 with
  fp32 accumulation, 32 for TF32 on GA10x and AD10x (25.5 and 12.7 TFLOP/s on the RTX 3060's 28 SMs at
  1.78 GHz; every HMMA of a TF32 launch is TF32, its operands being fp32);
- load/store pipeline: one slot per 32-byte global sector (every lane's bytes, as if coalesced) and per
  shared-memory wavefront (no bank conflicts: the low side); L2 bytes: the global bytes; DRAM: the layer's
  compulsory bytes (perf_model v1) spread over the launches by their global bytes;
- a tuned kernel's config: the one the model puts fastest (the autotuner measures; this is its stand-in).

The unfused side is cost_model.py's: the simulated ATen-style kernels and SGEMM, with the fp16 GEMM at the
tensor-core rate (2x the fp32 SIMT rate); for fp32, TF32 tensor cores are no faster than fp32 SIMT on these
two GPUs (12.7 / 12.7 and 82.6 / 82.6 TFLOP/s), so the fp32 rows are the unfused fp32 model as it is.

    python bench/triton_model.py                       # the table
    python bench/triton_model.py --write-docs          # README.md and docs/triton.md, between their markers
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import cost_model as cm
import perf_model as v1

DATA = Path(__file__).resolve().parent / "data"
TENSOR_MACS_PER_CYCLE = {"f16": 64, "f32": 32}  # per SM sub-partition: fp16 (fp32 accumulation), TF32
GPUS = ("RTX 3060", "RTX 4090")
DTYPES = {"float16": "f16", "float32-tf32": "f32"}
DTYPE_WORD = {"float16": "fp16", "float32-tf32": "fp32 (TF32)"}


def profile(row: dict) -> cm.KernelProfile:
    """A launch of tools/triton_counts.py as the model's kernel profile (counts over the whole grid)."""
    rate = TENSOR_MACS_PER_CYCLE[DTYPES[row.get("dtype", "float16")]]
    programs = math.prod(row["grid"])
    c = {k: v * programs for k, v in row["per_program"].items()}
    global_bytes = c.get("global_load_bytes", 0.0) + c.get("global_store_bytes", 0.0)
    return cm.KernelProfile(
        name=f"triton {row['kernel']}",  # not the CUDA kernel of the same name: no calibration factor of its own
        grid=tuple(row["grid"]),
        block=32 * row["num_warps"],
        regs=row["registers"],
        smem=row["shared_bytes"],
        warp_insn=c.get("warp_insn", 0.0),
        lsu_insn=global_bytes / 32.0 + c.get("shared_wavefronts", 0.0),
        smem_wavefronts=c.get("shared_wavefronts", 0.0),
        l2_bytes=global_bytes,
        gload_insn=c.get("ldg", 0.0) + c.get("ldgsts", 0.0),
        gwrite_txn=c.get("global_store_bytes", 0.0) / 32.0,
        tensor_cycles=c.get("mma_macs", 0.0) / rate,
    )


def block_time(dev: cm.Device, rows: Sequence[dict], p: cm.Params, shape: tuple, mode: str, dtype: str) -> dict:
    """(low, high) microseconds of one block's launches, each with the config the model puts fastest."""
    by_launch: dict = {}
    for r in rows:
        by_launch.setdefault(r["launch"], []).append(r)
    n, c, k, h, w, s, d = shape
    layer = v1.Layer("", n, c, k, h, w, s, d)
    dram = float(v1.native(layer, "eval" if mode == "eval" else "train_fwd_bwd", 2 if dtype == "f16" else 4).bytes)
    chosen = {}
    for i, cands in by_launch.items():  # the config's DRAM share does not depend on the config: rank without it
        chosen[i] = min(cands, key=lambda r: cm.kernel_time(dev, profile(r), p).us[0])
    profs = {i: profile(r) for i, r in chosen.items()}
    l2 = sum(q.l2_bytes for q in profs.values()) or 1.0
    kts = {i: cm.kernel_time(dev, q, p, dram_bytes=dram * q.l2_bytes / l2) for i, q in profs.items()}
    busy = (sum(t.us[0] for t in kts.values()), sum(t.us[1] for t in kts.values()))
    launch = (len(kts) * dev.launch_us[0], len(kts) * dev.launch_us[1])
    return {
        "total_us": (busy[0] + launch[0], busy[1] + launch[1]),
        "kernels": [(chosen[i], kts[i]) for i in sorted(kts)],
    }


def unfused_roofline_ms(gpu: str, shape: tuple, mode: str, dtype: str) -> float:
    """The fastest the unfused kernels could be (perf_model v1): per kernel max(compulsory bytes at the peak
    DRAM bandwidth, flops at the tensor-core peak), summed; no launch gaps, no instruction costs."""
    dev = cm.DEVICES[gpu]
    peak = 2 * TENSOR_MACS_PER_CYCLE[dtype] * 4 * dev.sms * dev.mhz * 1e6
    n, c, k, h, w, s, d = shape
    layer = v1.Layer("", n, c, k, h, w, s, d)
    tr = v1.unfused(layer, "eval" if mode == "eval" else "train_fwd_bwd", 2 if dtype == "f16" else 4)
    return 1e3 * tr.roofline_s(replace(v1.GPUS[gpu], fp32_flops=max(peak, v1.GPUS[gpu].fp32_flops)))


def table(counts: dict, sim: dict, grids: dict, p: cm.Params, ratios: dict) -> tuple[str, dict]:
    """Markdown: per block, mode and dtype, Triton fused / unfused (ms, batch of the counts) on each GPU the
    counts planned launches for, and unfused / fused at the low ends; the sums over the blocks; and
    {(dtype, mode, gpu): {block or "sum": ratio}}."""
    batch = counts["rows"][0]["batch"]
    gpus = [g for g in GPUS if any(r["gpu"] == g for r in counts["rows"])]
    unfused = {(r.block, r.mode): r for r in cm.layer_runs(sim, grids, batch) if r.impl == "unfused"}
    by: dict = {}
    for r in counts["rows"]:
        by.setdefault((r["block"], r["mode"], r["dtype"], r["gpu"]), []).append(r)
    head = ["block", "mode", "dtype"]
    for g in gpus:
        head += [f"MODEL {g} batch {batch}, ms Triton / unfused", "unfused / Triton, low ends", "unfused roofline, ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sums: dict = {}
    out: dict = {}
    keys = sorted({k[:3] for k in by}, key=lambda t: (t[2], t[1] != "eval", int(t[0][1:])))
    for b, mode, dt in keys:
        if (b, mode) not in unfused:
            continue
        cells = [b, "eval forward" if mode == "eval" else "training fwd+bwd", DTYPE_WORD[dt]]
        shape = (batch, *grids["blocks"][b][1:])
        for g in gpus:
            dev = cm.DEVICES[g]
            t = block_time(dev, by[(b, mode, dt, g)], p, shape, mode, DTYPES[dt])["total_us"]
            u = cm.layer_time(dev, unfused[(b, mode)], p, ratios, DTYPES[dt])["total_us"]
            out.setdefault((dt, mode, g), {})[b] = u[0] / t[0]
            roof = unfused_roofline_ms(g, shape, mode, DTYPES[dt])
            acc = sums.setdefault((dt, mode, g), [0.0] * 5)
            for j, v in enumerate((t[0], t[1], u[0], u[1], roof)):
                acc[j] += v
            cells += [f"{cm.fmt(t, 1e-3, 2)} / {cm.fmt(u, 1e-3, 2)}", f"**{u[0] / t[0]:.2f}x**", f"{roof:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for dt in DTYPES:
        for mode in ("eval", "step"):
            if (dt, mode, gpus[0]) not in sums:
                continue
            n_blocks = len(out[(dt, mode, gpus[0])])
            cells = [f"sum of the {n_blocks} blocks", "eval forward" if mode == "eval" else "training fwd+bwd"]
            cells.append(DTYPE_WORD[dt])
            for g in gpus:
                a = sums[(dt, mode, g)]
                out[(dt, mode, g)]["sum"] = a[2] / a[0]
                cells += [
                    f"{cm.fmt((a[0], a[1]), 1e-3, 2)} / {cm.fmt((a[2], a[3]), 1e-3, 2)}",
                    f"**{a[2] / a[0]:.2f}x**",
                    f"{a[4]:.2f}",
                ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default=str(DATA / "triton_sm86.json"), help="tools/triton_counts.py --out")
    ap.add_argument("--sim", default=str(DATA / "sim_gtx1080ti.json"))
    ap.add_argument("--grids", default=str(DATA / "launch_grids.json"))
    ap.add_argument("--sass", default=str(DATA / "sass_ratios.json"))
    ap.add_argument("--write-docs", action="store_true")
    a = ap.parse_args(argv)
    sim, grids, ratios = (cm.load_json(x) for x in (a.sim, a.grids, a.sass))
    counts = json.loads(Path(a.counts).read_text())
    profiles = [cm.profile_from_sim(k) for r in sim["results"] if r["verdict"] == "PASS" for k in r["kernels"]]
    p, _ = cm.calibrate(profiles, fixed=cm.fit_errors(profiles)[0][1])
    md, _ = table(counts, sim, grids, p, ratios)
    if a.write_docs:
        root = Path(__file__).resolve().parent.parent
        cm.write_marked((root / "README.md", root / "docs" / "triton.md"), {"triton-model-table": md})
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
