"""What the Triton autotuner would time and what it chose: for ``fused-dsconv info --verbose`` and the tests.
No GPU needed; nothing here launches a kernel."""

from __future__ import annotations

import sys

import torch

from . import triton_setup as ts
from .contract import output_size, walk_blocks
from .triton_setup import TUNED, config_str, configs, k_slice, tuned_kernel


def tuned_configs() -> list[dict]:
    """What the autotuner chose in this process: one dict per (kernel, problem class)."""
    if ts.KERNELS_MODULE not in sys.modules:
        return []
    out = []
    for name in TUNED:
        kern = tuned_kernel(name)
        for key, cfg in kern.cache.items():
            named = dict(zip(kern.keys, key))
            named["dtypes"] = ",".join(str(v)[6:] for v in key[len(kern.keys) :])
            out.append(dict(kernel=name, key=named, config=config_str(cfg)))
    return out


def explain_configs(
    n: int,
    c: int,
    k: int,
    h: int,
    w: int,
    stride: int,
    dtype: torch.dtype = torch.float16,
    arch: int = 86,
    tf32: bool = False,
) -> dict[str, list[str]]:
    """The candidate configs each tuned kernel would time for one layer (after pruning) on a GPU of compute
    capability ``arch`` (86: sm_86); no GPU needed."""
    tk = ts.kernels()
    ho, wo = output_size(h, stride), output_size(w, stride)
    named = dict(C=c, K=k, M=n * ho * wo, N=n, HWo=ho * wo, HW=h * w)
    size = torch.empty((), dtype=dtype).element_size()
    mode = (3 if tf32 else 0) if dtype == torch.float32 else 1
    out = {}
    for name in TUNED:
        kind = tk.dot_kind(size, None if name == "dsconv_bwd_dx" else mode, arch)
        out[name] = [
            config_str(cfg)
            for cfg in tk.candidates(
                configs(name), tk.LIMITS[name](named), kind, k_slice(k, kind) if name == "dsconv_bwd_dt" else None
            )
        ]
    return out


def describe() -> str:
    """For ``fused-dsconv info --verbose``: the autotuner's config spaces, the candidates it would time for
    each block of the default classifier (batch 32, float16 and float32), and what it chose in this process."""
    from .models import BASE_RESOLUTION, TABLE1

    tk = ts.kernels()
    blocks = [
        (f"b{i + 1}", b.c, b.k, b.side, b.stride)  # the default classifier's nine joint blocks (alpha 1)
        for i, b in enumerate(walk_blocks(TABLE1, BASE_RESOLUTION))
    ]
    lines = [
        f"Triton autotuning: {'on' if tk.AUTOTUNE else 'off (FUSED_DSCONV_TRITON_AUTOTUNE=0)'}; "
        f"FUSED_DSCONV_TRITON_VERBOSE=1 prints each choice; at most {tk.MAX_CANDIDATES} candidates per class"
    ]
    for name in TUNED:
        lines.append(f"  {name} space:")
        for cfg in configs(name):
            kinds, max_k = tk.SCOPE.get(cfg, (tk.ALL, None))
            scope = f" (for {', '.join(k for k in tk.KINDS if k in kinds)}"
            scope += f"; K slice <= {max_k})" if max_k else ")"
            lines.append(f"    {config_str(cfg)}{scope}")
    for dtype, tf32 in ((torch.float16, False), (torch.float32, True), (torch.float32, False)):
        what = str(dtype)[6:] + (" TF32" if tf32 else " IEEE" if dtype == torch.float32 else "")
        lines.append(f"  candidates per block (batch 32, {what}, sm_86):")
        kind = tk.dot_kind(dtype.itemsize, (3 if tf32 else 0) if dtype == torch.float32 else 1, 86)
        for name, c, k, h, s in blocks:
            table = explain_configs(32, c, k, h, h, s, dtype, tf32=tf32)
            counts = "; ".join(f"{kern[7:]} {len(v)}" for kern, v in table.items())
            lines.append(f"    {name} C={c} K={k} {h}x{h} s{s}: {counts}; K slice {k_slice(k, kind)}")
    chosen = tuned_configs()
    lines.append(f"  chosen in this process: {len(chosen) or 'none yet (tuning happens at the first launch)'}")
    for row in chosen:
        lines.append(f"    {row['kernel']} {row['key']} -> {row['config']}")
    return "\n".join(lines)
