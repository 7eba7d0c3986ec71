"""Turn a ``pytest bench/ --benchmark-only --benchmark-json=RUN.json`` run into markdown and a PNG.

    python bench/report.py RUN.json                       # markdown to stdout (all configurations)
    python bench/report.py RUN.json --config a100_r100_d3 --md out.md --png out.png
    python bench/report.py RUN.json --model-batch 32      # also append the analytic MODEL tables

Measured numbers (medians and IQR of the timed rounds, saved-activation bytes) and MODEL numbers
(bench/perf_model.py: bytes, FLOPs, roofline) are printed in separate, labelled sections.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
try:  # the installed package (native extension included) when there is one, else this checkout
    import fused_dsconv  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

MODE_ORDER = {"eval": 0, "train_fwd": 1, "train_fwd_bwd": 2, "inference": 3, "train_step": 4}
BASELINE = "eager-nchw"


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _impl_order(impl: str) -> tuple:
    base = ["eager-nchw", "eager-channels_last", "compile-nchw"]
    if impl in base:
        return (base.index(impl), "", 0)
    name, _, layout = impl.rpartition("-")
    return (len(base), name, layout != "nchw")


def rows_of(run: dict, config: Optional[str] = None) -> "OrderedDict[tuple, dict]":
    """(kind, case, mode) -> {"info": extra_info of the first entry, "impls": {impl: stats}}."""
    groups: dict[tuple, dict] = {}
    for b in run["benchmarks"]:
        e = b["extra_info"]
        if config and e.get("config") != config:
            continue
        key = (e["kind"], e["case"], e["mode"])
        g = groups.setdefault(key, {"info": e, "impls": {}, "infos": {}})
        g["impls"][e["impl"]] = b["stats"]
        g["infos"][e["impl"]] = e
    layer_no = lambda case: int(case.rsplit("_b", 1)[1]) if "_b" in case else 0  # noqa: E731
    keys = sorted(groups, key=lambda k: (k[0] != "block", k[1].rsplit("_b", 1)[0], layer_no(k[1]), MODE_ORDER[k[2]]))
    return OrderedDict((k, groups[k]) for k in keys)


def machine_line(run: dict) -> str:
    e = run["benchmarks"][0]["extra_info"] if run["benchmarks"] else {}
    cap = f", {e['capability']}" if e.get("capability") else ""
    commit = run.get("commit_info", {}).get("id", "")[:10]
    return (
        f"MEASURED on {e.get('device', '?')}{cap}; torch {e.get('torch')} (CUDA build {e.get('cuda_build')}), "
        f"triton {e.get('triton')}, python {e.get('python')}; {e.get('size', '?')} "
        f"(batch {e.get('batch', '?')}); {run.get('datetime', '')[:19]} UTC" + (f"; commit {commit}" if commit else "")
    )


def timing_markdown(run: dict, config: Optional[str] = None) -> str:
    rows = rows_of(run, config)
    impls = sorted({i for g in rows.values() for i in g["impls"]}, key=_impl_order)
    head = [
        "kind",
        "case",
        "shape",
        "mode",
        *[f"{i} ms" for i in impls],
        f"{BASELINE} / best fused_dsconv (medians; mins)",
    ]
    out = [
        machine_line(run),
        "",
        "Median of the timed rounds in ms, IQR in parentheses. Last column: baseline time over the fastest of "
        "our backends (auto included), from medians and from minimums (> 1 means ours is faster). On CPU our only "
        "backend is 'reference', the plain-PyTorch fallback: it is not a fused kernel; auto picks, per block, "
        "between it and the unfused layers.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for (kind, case, mode), g in rows.items():
        info = g["info"]
        shape = info.get("shape") or f"{info.get('resolution')}x{info.get('resolution')}"
        cells = [kind, case, shape, mode]
        for i in impls:
            s = g["impls"].get(i)
            cells.append(f"{s['median'] * 1e3:.3g} ({s['iqr'] * 1e3:.2g})" if s else "-")
        ours = [s for i, s in g["impls"].items() if not i.startswith(("eager-", "compile-"))]
        base = g["impls"].get(BASELINE)
        cells.append(
            f"{base['median'] / min(s['median'] for s in ours):.2f}; {base['min'] / min(s['min'] for s in ours):.2f}"
            if ours and base
            else "-"
        )
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def memory_markdown(run: dict, config: Optional[str] = None) -> str:
    rows = rows_of(run, config)
    out = []
    blocks = [
        (k, g["info"]["MEASURED_saved_bytes"])
        for k, g in rows.items()
        if k[0] == "block" and k[2] == "train_fwd" and "MEASURED_saved_bytes" in g["info"]
    ]
    if blocks:
        out += [
            "MEASURED saved-activation bytes of one block training forward (fused_dsconv.saved_activations):",
            "",
            "| case | unfused KiB | fused KiB | recompute KiB | fused/unfused | recompute/unfused |",
            "|---|---|---|---|---|---|",
        ]
        for (_, case, _), m in blocks:
            out.append(
                f"| {case} | {m['unfused'] / 1024:.0f} | {m['fused'] / 1024:.0f} | {m['recompute'] / 1024:.0f} | "
                f"{m['fused'] / m['unfused']:.3f} | {m['recompute'] / m['unfused']:.3f} |"
            )
        tot = {k: sum(m[k] for _, m in blocks) for k in ("unfused", "fused", "recompute")}
        out += [
            "",
            f"Sum over these cases: fused/unfused **{tot['fused'] / tot['unfused']:.3f}**, "
            f"recompute/unfused **{tot['recompute'] / tot['unfused']:.3f}**.",
            "",
        ]
    models = [(k, g["info"]) for k, g in rows.items() if k[0] == "classifier" and "MEASURED_memory" in g["info"]]
    if models:
        out += [
            "MEASURED saved-activation bytes per sample of the classifier's training forward (slope between batch 1 "
            "and 2) and the DERIVED largest batch on an 11 GiB GPU:",
            "",
            "| config | resolution | unfused MiB/sample | fused MiB/sample | recompute MiB/sample | fused/unfused | "
            "recompute/unfused | max batch unfused / fused / recompute (derived) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for (_, case, _), info in models:
            ps, mb = info["MEASURED_memory"]["per_sample"], info["DERIVED_max_batch_11GiB"]
            res = info["MEASURED_memory"].get("resolution", info.get("resolution"))
            out.append(
                f"| {case} | {res} | {ps['unfused'] / 2**20:.2f} | {ps['fused'] / 2**20:.2f} | "
                f"{ps['recompute'] / 2**20:.2f} | {ps['fused'] / ps['unfused']:.3f} | "
                f"{ps['recompute'] / ps['unfused']:.3f} | {mb['unfused']} / {mb['fused']} / {mb['recompute']} |"
            )
        out += [
            "",
            "Derived max batch = floor((11 GiB - 1 GiB margin for CUDA context/workspaces - 16 B x params "
            "[fp32 weights, grads, Adam moments] - fixed saved bytes) / (saved bytes per sample + 2 x largest "
            "activation per sample)). An estimate from measured per-sample bytes, not a GPU measurement.",
            "",
        ]
    peaks = [
        (k, g) for k, g in rows.items() if any(e.get("peak_allocated_bytes") is not None for e in g["infos"].values())
    ]
    if peaks:
        impls = sorted({i for _, g in peaks for i in g["infos"]}, key=_impl_order)
        out += [
            "MEASURED CUDA peak allocated memory of one training step above the pre-call level "
            "(torch.cuda.max_memory_allocated after reset_peak_memory_stats), MiB:",
            "",
            "| kind | case | mode | " + " | ".join(impls) + " |",
            "|---|---|---|" + "---|" * len(impls),
        ]
        for (kind, case, mode), g in peaks:
            vals = [g["infos"].get(i, {}).get("peak_allocated_bytes") for i in impls]
            out.append(
                f"| {kind} | {case} | {mode} | "
                + " | ".join("-" if v is None else f"{v / 2**20:.1f}" for v in vals)
                + " |"
            )
        out.append("")
    return "\n".join(out)


def tuning_markdown(run: dict, config: Optional[str] = None) -> str:
    """What "auto" measured before its timed rounds: per block, each candidate's median, the winner, its speed-up
    over the unfused layers (the same numbers as `fused-dsconv tune`)."""
    out = []
    for b in run["benchmarks"]:
        e = b["extra_info"]
        if not e.get("tuning") or (config and e.get("config") != config):
            continue
        if not out:
            out += [
                "MEASURED by the tuner (fused_dsconv/tune.py) in this run, before auto's timed rounds: median ms "
                "per call of each candidate on synthetic inputs of the block's shape.",
                "",
                "| kind | case | mode | impl | block | shape | candidates, median ms | winner | unfused / winner |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
        for r in e["tuning"]:
            times = "; ".join(f"{c} {t:.3g}" for c, t in r.get("MEASURED_median_ms", {}).items()) or r["source"]
            sp = r.get("speedup_vs_unfused")
            out.append(
                f"| {e['kind']} | {e['case']} | {e['mode']} | {e['impl']} | {r['block']} | {r.get('shape', '-')} "
                f"| {times} | {r['winner']} | {f'{sp:.2f}' if sp else '-'} |"
            )
    return "\n".join(out)


def model_markdown(batch: int, alpha: float = 1.0, rho: float = 1.0, dilation: int = 3) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import perf_model as pm

    layers = pm.classifier_layers(batch, alpha, rho, dilation)
    out = [
        f"MODEL (analytic, bytes only, not measured; bench/perf_model.py): the nine joint blocks, batch {batch}, "
        f"alpha {alpha}, rho {rho}, dilation {dilation}, fp32. Roofline = sum over kernels of max(bytes / bandwidth, "
        f"FLOPs / peak fp32); GPUs: "
        + "; ".join(
            f"{g.name} {g.bandwidth / 1e9:.0f} GB/s, {g.fp32_flops / 1e12:.2f} TFLOP/s" for g in pm.GPUS.values()
        )
    ]
    for mode in pm.MODES:
        out += ["", f"**{mode}**", "", pm.markdown(pm.model_rows(layers, mode))]
    return "\n".join(out)


def plot(run: dict, config: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows_of(run, config)
    if not rows:
        raise SystemExit(f"no benchmarks for config {config!r} in this run")
    impls = sorted({i for g in rows.values() for i in g["impls"]}, key=_impl_order)
    panels = [("block", m) for m in ("eval", "train_fwd", "train_fwd_bwd")] + [("classifier", None)]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8))
    width = 0.8 / max(1, len(impls))
    for ax, (kind, mode) in zip(axes, panels):
        sel = [(k, g) for k, g in rows.items() if k[0] == kind and (mode is None or k[2] == mode)]
        labels = [(k[1].rsplit("_", 1)[1] if kind == "block" else k[2]) for k, _ in sel]
        for j, impl in enumerate(impls):
            med = [g["impls"][impl]["median"] * 1e3 if impl in g["impls"] else 0 for _, g in sel]
            lo = [
                (g["impls"][impl]["median"] - g["impls"][impl]["q1"]) * 1e3 if impl in g["impls"] else 0 for _, g in sel
            ]
            hi = [
                (g["impls"][impl]["q3"] - g["impls"][impl]["median"]) * 1e3 if impl in g["impls"] else 0 for _, g in sel
            ]
            ax.bar([i + j * width for i in range(len(sel))], med, width, yerr=[lo, hi], label=impl, capsize=2)
        ax.set_xticks([i + width * (len(impls) - 1) / 2 for i in range(len(sel))], labels)
        ax.set_yscale("log")
        ax.set_ylabel("median ms (log); bars: q1..q3")
        ax.set_title(f"{kind}: {mode}" if mode else "classifier")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{config} -- " + machine_line(run), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", help="a --benchmark-json file")
    p.add_argument("--config", default=None, help="only this configuration, e.g. a100_r100_d3 (default: all)")
    p.add_argument("--md", default=None, help="write markdown here (default: stdout)")
    p.add_argument("--png", default=None, help="write a PNG plot here (needs --config or uses a100_r100_d3)")
    p.add_argument("--model-batch", type=int, default=None, help="append the MODEL tables for this batch size")
    a = p.parse_args(argv)
    run = load(a.json)
    parts = [
        "### Measured timings",
        "",
        timing_markdown(run, a.config),
        "",
        "### Measured memory",
        "",
        memory_markdown(run, a.config),
    ]
    tuning = tuning_markdown(run, a.config)
    if tuning:
        parts += ["", "### Measured backend choice (auto)", "", tuning]
    if a.model_batch:
        parts += ["### Traffic and roofline MODEL (not measured)", "", model_markdown(a.model_batch)]
    text = "\n".join(parts) + "\n"
    if a.md:
        Path(a.md).write_text(text)
    else:
        sys.stdout.write(text)
    if a.png:
        plot(run, a.config or "a100_r100_d3", a.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
