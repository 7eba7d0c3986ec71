"""An analytic MODEL of global-memory traffic and FLOPs of the joint block, and roofline times.

Everything here is computed from tensor shapes; nothing is measured. Numbers from this module must
always be shown labelled as a model, never next to measured times as if they were measurements.

Per layer (one joint block: 3x3 depthwise, dilation d, stride s -> 1x1 -> BN -> ReLU) and per mode
("eval", "train_fwd", "train_fwd_bwd") it lists the kernels each implementation launches, with the
bytes each reads and writes in global memory and its FLOPs (2 per multiply-add), for

- ``unfused``: the eager PyTorch sequence ``Sequential(dw, pw, bn, ReLU())`` (the module
  ``JointBlock.to_unfused()`` returns), and
- ``fused``: our kernels as laid out in DESIGN.md (eval: one kernel; training: pass A, the tiny
  statistics pass B, the elementwise pass C; backward: the dbeta/dgamma reduction, the tiled pass 2,
  the partial-sum reductions and the depthwise data-gradient pass 3), optionally in recompute mode.

Notation: x [N, C, H, W], t = dw(x) [N, C, Ho, Wo], y = pw(t) [N, K, Ho, Wo], M = N*Ho*Wo.

Assumptions (the same for both sides, so the comparison is fair):

1. Compulsory traffic only: each kernel reads each input tensor from DRAM once and writes each
   output once. Halo overlap of the 3x3 window, re-reads of x when the fused kernel recomputes the
   depthwise chunk per output-channel tile, and the native depthwise weight-gradient kernel's
   re-read per tap are assumed to hit L2/shared memory. Real kernels move at least this much.
   Dilation therefore does not change the byte counts (only the halo size).
2. Activations are stored in ``act_bytes`` per element (4 = float32); weights too (the backend
   contract gives weights x's dtype); per-channel vectors (BN parameters, statistics, partial sums)
   are float32.
3. Unfused PyTorch: BatchNorm training forward is two passes over y (statistics, then normalise:
   ``batch_norm_collect_statistics`` + ``batch_norm_elemt``); BN backward is two passes (reduce
   dz and dz*yhat; then the elementwise dy); ReLU is *not* in place (``nn.ReLU()``, as
   ``to_unfused`` builds it), so ReLU reads z and writes out, and its backward reads dout and out.
   Running-statistics updates and ``.grad`` accumulation are per-channel/parameter sized and left
   out on both sides.
4. Fused: per-tile partial sums (float32) go to a workspace and are reduced by a separate small
   kernel, as DESIGN.md prescribes; a tile covers ``tile_pixels`` = 64 output pixels (8x8). DESIGN.md
   writes one [K, C] weight-gradient partial per tile; ``wgrad_partials`` caps the number of partial
   rows (a grid that loops over several pixel tiles per block), None = one per tile, as written.
   Recompute mode rebuilds y in backward by rerunning pass A (reads x, writes y) before pass 1.
5. FLOPs: 2 per multiply-add for the convolutions; elementwise work counted per element as
   BN-eval 2, ReLU 1, statistics 3, normalise 2 (+1 for fused ReLU), BN-backward reduce 4 and
   elementwise 5. The fused kernels' recomputation (the depthwise chunk per output-channel tile of
   ``k_tile`` channels; t again in backward pass 2) is counted.
6. Roofline: each kernel takes max(bytes / bandwidth, flops / peak fp32 rate); a layer's time is the
   sum over its kernels (no overlap between kernels, no launch latency, 100% of peak). A model of
   the lower bound, not a prediction of achieved speed.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

MODES = ("eval", "train_fwd", "train_fwd_bwd")
F32 = 4  # bytes of a float32 per-channel value / partial sum


@dataclass(frozen=True)
class GPU:
    name: str
    bandwidth: float  # bytes / s (DRAM, theoretical)
    fp32_flops: float  # FLOP / s (fp32 non-tensor-core peak at boost clock)
    source: str


# Published figures, checked against vendor/review spec sheets (Nov 2026):
# - GTX 1080 Ti: 3584 CUDA cores x 1582 MHz boost x 2 = 11.34 TFLOP/s; 352-bit GDDR5X at 11 Gbps = 484 GB/s
#   (NVIDIA GTX 1080 Ti spec page; vortez.net review spec table "Memory Bandwidth: 484 GB/s, Boost 1582 MHz").
# - RTX 3060 (12 GB): 3584 CUDA cores x 1777 MHz boost x 2 = 12.74 TFLOP/s; 192-bit GDDR6 at 15 Gbps = 360 GB/s
#   (NVIDIA RTX 3060 family spec page; pcpartdb.com: 3,584 cores, 1,777 MHz boost, 360 GB/s).
# - RTX 4090: 16384 CUDA cores x 2520 MHz boost x 2 = 82.58 TFLOP/s; 384-bit GDDR6X at 21 Gbps = 1008 GB/s
#   (NVIDIA RTX 4090 spec page; Tom's Hardware spec table: "FP32 TFLOPS 82.6, Bandwidth 1008 GB/s").
GPUS = {
    "GTX 1080 Ti": GPU("GTX 1080 Ti", 484e9, 11.34e12, "3584 cores x 1582 MHz x 2; 352-bit x 11 Gbps"),
    "RTX 3060": GPU("RTX 3060", 360e9, 12.74e12, "3584 cores x 1777 MHz x 2; 192-bit x 15 Gbps"),
    "RTX 4090": GPU("RTX 4090", 1008e9, 82.58e12, "16384 cores x 2520 MHz x 2; 384-bit x 21 Gbps"),
}


@dataclass(frozen=True)
class Layer:
    """One joint block call: x [n, c, h, w] -> out [n, k, ho, wo]."""
    name: str
    n: int
    c: int
    k: int
    h: int
    w: int
    stride: int = 1
    dilation: int = 1

    @property
    def ho(self) -> int:
        return (self.h - 1) // self.stride + 1

    @property
    def wo(self) -> int:
        return (self.w - 1) // self.stride + 1

    @property
    def m(self) -> int:  # output pixels per channel, N*Ho*Wo
        return self.n * self.ho * self.wo


@dataclass(frozen=True)
class Kernel:
    name: str
    read: int  # bytes read from global memory
    written: int  # bytes written to global memory
    flops: int

    @property
    def bytes(self) -> int:
        return self.read + self.written


@dataclass
class Traffic:
    """The kernels of one implementation of one layer in one mode."""
    layer: Layer
    impl: str
    mode: str
    kernels: list[Kernel] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(k.bytes for k in self.kernels)

    @property
    def flops(self) -> int:
        return sum(k.flops for k in self.kernels)

    def roofline_s(self, gpu: GPU) -> float:
        return roofline_s(self.kernels, gpu)


def roofline_s(kernels: Sequence[Kernel], gpu: GPU) -> float:
    """MODEL: sum over kernels of max(bytes / bandwidth, flops / peak)."""
    return sum(max(k.bytes / gpu.bandwidth, k.flops / gpu.fp32_flops) for k in kernels)


def _sizes(l: Layer, e: int):
    x = l.n * l.c * l.h * l.w * e
    t = l.n * l.c * l.ho * l.wo * e
    y = l.n * l.k * l.ho * l.wo * e
    wd = 9 * l.c * e
    wp = l.k * l.c * e
    return x, t, y, wd, wp


def unfused(layer: Layer, mode: str, act_bytes: int = 4) -> Traffic:
    """MODEL of eager PyTorch dw -> pw -> BN -> ReLU (assumptions in the module docstring)."""
    _check_mode(mode)
    l, e = layer, act_bytes
    x, t, y, wd, wp = _sizes(l, e)
    ye = y // e  # elements of y
    dw_fl, pw_fl = 2 * 9 * l.c * l.m, 2 * l.k * l.c * l.m
    pc = l.k * F32  # one per-channel vector
    ks = [Kernel("dw_conv", x + wd, t, dw_fl), Kernel("pw_conv", t + wp, y, pw_fl)]
    if mode == "eval":
        ks += [Kernel("bn_eval", y + 4 * pc, y, 2 * ye), Kernel("relu", y, y, ye)]
    else:
        ks += [Kernel("bn_stats", y, 2 * pc, 3 * ye), Kernel("bn_apply", y + 4 * pc, y, 2 * ye),
               Kernel("relu", y, y, ye)]
    if mode == "train_fwd_bwd":
        ks += [
            Kernel("relu_bwd", 2 * y, y, ye),  # reads dout and out, writes dz
            Kernel("bn_bwd_reduce", 2 * y + 2 * pc, 2 * pc, 4 * ye),  # dz, y -> sum dz, sum dz*yhat
            Kernel("bn_bwd_elemt", 2 * y + 5 * pc, y, 5 * ye),  # dz, y -> dy
            Kernel("pw_bwd_input", y + wp, t, pw_fl),  # dt = Wp^T dy
            Kernel("pw_bwd_weight", y + t, wp, pw_fl),  # dWp = dy t^T
            Kernel("dw_bwd_input", t + wd, x, dw_fl),  # dx
            Kernel("dw_bwd_weight", t + x, wd, dw_fl),  # dWd
        ]
    return Traffic(layer, "unfused", mode, ks)


def fused(layer: Layer, mode: str, act_bytes: int = 4, *, recompute: bool = False, tile_pixels: int = 64,
          k_tile: int = 128, wgrad_partials: Optional[int] = None) -> Traffic:
    """MODEL of our kernels per DESIGN.md (assumptions in the module docstring)."""
    _check_mode(mode)
    l, e = layer, act_bytes
    x, t, y, wd, wp = _sizes(l, e)
    ye = y // e
    te = t // e
    dw_fl, pw_fl = 2 * 9 * l.c * l.m, 2 * l.k * l.c * l.m
    ktiles = math.ceil(l.k / k_tile)  # depthwise chunk recomputed per output-channel tile
    pc = l.k * F32
    tiles = math.ceil(l.m / tile_pixels)
    impl = "fused_recompute" if recompute else "fused"
    if mode == "eval":
        return Traffic(layer, impl, mode, [Kernel("fused_eval", x + wd + wp + pc, y, dw_fl * ktiles + pw_fl + 2 * ye)])
    part = tiles * 2 * pc  # per-tile (sum, sum of squares) partials
    ks = [
        Kernel("pass_a", x + wd + wp + pc, y + part, dw_fl * ktiles + pw_fl + 3 * ye),
        Kernel("pass_b_stats", part, 2 * pc, 2 * tiles * l.k + 8 * l.k),
        Kernel("pass_c_bn_relu", y + 4 * pc, y, 3 * ye),
    ]
    if mode == "train_fwd_bwd":
        rows = tiles if wgrad_partials is None else min(tiles, wgrad_partials)
        wpart = rows * (l.k * l.c + 9 * l.c) * F32
        if recompute:  # rebuild y from x: pass A's work again, without statistics
            ks.append(Kernel("bwd_recompute_y", x + wd + wp + pc, y, dw_fl * ktiles + pw_fl))
        ks += [
            Kernel("bwd_pass1_reduce", 2 * y + 4 * pc, part, 6 * ye),  # dout, y -> dbeta, dgamma partials
            Kernel("bwd_reduce_stats", part, 2 * pc, 2 * tiles * l.k),
            # x (halo), dout, y -> dt; partial dWp, dWd. Recomputes t (dw) and forms dy on the fly.
            Kernel("bwd_pass2", x + 2 * y + wd + wp + 6 * pc, t + wpart,
                   dw_fl * ktiles + 2 * pw_fl + dw_fl + 5 * ye),
            Kernel("bwd_reduce_wgrad", wpart, wp + wd, rows * (l.k * l.c + 9 * l.c)),
            Kernel("bwd_pass3_dx", t + wd, x, 2 * 9 * te),
        ]
    return Traffic(layer, impl, mode, ks)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


# -- the paper's classifier ---------------------------------------------------------------------
def classifier_layers(batch: int, alpha: float = 1.0, rho: float = 1.0, dilation: int = 3) -> list[Layer]:
    """The nine joint blocks of Table 1 (names b1..b9), with the stem's output as b1's input."""
    from .models import BASE_RESOLUTION, STEM_CHANNELS, TABLE1, scaled
    h = int(round(BASE_RESOLUTION * rho))
    assert scaled(STEM_CHANNELS, alpha) == scaled(TABLE1[0][0], alpha)
    layers = []
    for i, (c, k, s) in enumerate(TABLE1):
        layer = Layer(f"b{i + 1}", batch, scaled(c, alpha), scaled(k, alpha), h, h, s, dilation)
        layers.append(layer)
        h = layer.ho
    return layers


def model_rows(layers: Sequence[Layer], mode: str, act_bytes: int = 4, gpus: Sequence[str] = tuple(GPUS),
               wgrad_partials: Optional[int] = None) -> list[dict]:
    """MODEL rows: per layer and a total row, bytes/FLOPs of unfused, fused and fused-recompute."""
    rows = []
    acc: dict[str, list] = {}
    for layer in list(layers) + [None]:
        if layer is None:
            impls = {k: [kk for t in v for kk in t.kernels] for k, v in acc.items()}
            name, shape = "total", ""
        else:
            tr = {"unfused": unfused(layer, mode, act_bytes),
                  "fused": fused(layer, mode, act_bytes, wgrad_partials=wgrad_partials)}
            if mode == "train_fwd_bwd":
                tr["fused_recompute"] = fused(layer, mode, act_bytes, recompute=True, wgrad_partials=wgrad_partials)
            for k, v in tr.items():
                acc.setdefault(k, []).append(v)
            impls = {k: v.kernels for k, v in tr.items()}
            name = layer.name
            shape = f"{layer.c}->{layer.k} s{layer.stride} d{layer.dilation} {layer.h}x{layer.w}"
        row = {"layer": name, "shape": shape, "mode": mode}
        for impl, ks in impls.items():
            row[f"{impl}_bytes"] = sum(k.bytes for k in ks)
            row[f"{impl}_flops"] = sum(k.flops for k in ks)
            for g in gpus:
                row[f"{impl}_{g}_us"] = roofline_s(ks, GPUS[g]) * 1e6
        rows.append(row)
    return rows


def markdown(rows: list[dict], gpus: Sequence[str] = tuple(GPUS)) -> str:
    impls = [i for i in ("unfused", "fused", "fused_recompute") if f"{i}_bytes" in rows[0]]
    head = ["layer", "shape", *[f"{i} MB" for i in impls], "fused/unfused bytes", "GFLOP unf/fused"]
    for g in gpus:
        head.append(f"{g} us unf/fused")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["layer"], r["shape"], *[f"{r[f'{i}_bytes'] / 1e6:.1f}" for i in impls],
                 f"{r['fused_bytes'] / r['unfused_bytes']:.2f}",
                 f"{r['unfused_flops'] / 1e9:.2f} / {r['fused_flops'] / 1e9:.2f}"]
        for g in gpus:
            cells.append(f"{r[f'unfused_{g}_us']:.0f} / {r[f'fused_{g}_us']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Print the analytic traffic/FLOP/roofline MODEL tables (not measurements).")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--rho", type=float, default=1.0)
    p.add_argument("--dilation", type=int, default=3)
    p.add_argument("--act-bytes", type=int, default=4, help="bytes per activation element (4 fp32, 2 fp16)")
    p.add_argument("--wgrad-partials", type=int, default=None,
                   help="cap on weight-gradient partial rows in the fused backward (default: one per 64-pixel tile)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    a = p.parse_args(argv)
    layers = classifier_layers(a.batch, a.alpha, a.rho, a.dilation)
    print(f"MODEL (analytic, not measured): batch {a.batch}, alpha {a.alpha}, rho {a.rho}, dilation {a.dilation}, "
          f"{a.act_bytes}-byte activations; roofline = sum over kernels of max(bytes/BW, FLOPs/peak fp32).")
    for mode in a.modes:
        print(f"\n### {mode}\n")
        print(markdown(model_rows(layers, mode, a.act_bytes, wgrad_partials=a.wgrad_partials)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
