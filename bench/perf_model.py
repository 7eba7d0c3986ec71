"""MODEL v1 (bytes only): global-memory traffic and FLOPs of the joint block, and roofline times.

The secondary, bytes-only model; bench/cost_model.py (v2) adds instructions, shared memory, L2, latency
and launch costs and is the one the README reports. v2 uses these compulsory bytes as its DRAM traffic.

Everything here is computed from tensor shapes; nothing is measured. Numbers from this module must
always be shown labelled as a model, never next to measured times as if they were measurements.

Per layer (one joint block: 3x3 depthwise, dilation d, stride s -> 1x1 -> BN -> ReLU) and per mode
("eval", "train_fwd", "train_fwd_bwd") it lists the kernels each implementation launches, with the
bytes each reads and writes in global memory and its FLOPs (2 per multiply-add), for

- ``unfused``: the eager PyTorch sequence ``Sequential(dw, pw, bn, ReLU())`` (the module
  ``JointBlock.to_unfused()`` returns);
- ``native``: the CUDA kernels we ship (``csrc/kernels/fused.cuh``, launched by
  ``csrc/kernels/launch.cuh`` with the set-up of ``csrc/binding/ops_impl.h``), with their tile
  geometry and workspace sizes mirrored here (``native_geometry``), optionally in recompute mode;
- ``design`` (the function ``fused``): the plan described in docs/design.md (eval: one kernel;
  training: pass A, the tiny statistics pass B, the elementwise pass C; backward: the dbeta/dgamma
  reduction, the tiled pass 2 with one [K, C] weight-gradient partial per tile, the partial-sum
  reductions and the depthwise data-gradient pass 3), optionally in recompute mode. A plan, not code:
  nothing ships in this shape. (The Triton backend is not modelled.)

Notation: x [N, C, H, W], t = dw(x) [N, C, Ho, Wo], y = pw(t) [N, K, Ho, Wo], M = N*Ho*Wo.

Assumptions (the same for every implementation, so the comparison is fair):

1. Compulsory traffic only: each kernel reads each input tensor from DRAM once and writes each
   output once. Halo overlap of the 3x3 window, re-reads of x when a fused kernel recomputes the
   depthwise chunk per output-channel tile, a kernel's re-reads of its inputs along a grid axis that
   does not partition them, and the native depthwise weight-gradient kernel's re-read per tap are
   assumed to hit L2/shared memory. Real kernels move at least this much. Dilation therefore does not
   change the byte counts (only the halo size). For ``native`` the activation-sized re-reads that this
   assumption hides are listed per kernel (``Kernel.reread``, not part of ``Kernel.bytes``; see 7).
2. Activations are stored in ``act_bytes`` per element (4 = float32); weights too (the backend
   contract gives weights x's dtype); per-channel vectors (BN parameters, statistics, partial sums)
   and every fused workspace (partials, native's dt buffer) are float32.
3. Unfused PyTorch: BatchNorm training forward is two passes over y (statistics, then normalise:
   ``batch_norm_collect_statistics`` + ``batch_norm_elemt``); BN backward is two passes (reduce
   dz and dz*yhat; then the elementwise dy); ReLU is *not* in place (``nn.ReLU()``, as
   ``to_unfused`` builds it), so ReLU reads z and writes out, and its backward reads dout and out.
   Running-statistics updates and ``.grad`` accumulation are per-channel/parameter sized and left
   out on every side.
4. Design: per-tile partial sums (float32) go to a workspace and are reduced by a separate small
   kernel, as the plan prescribes; a tile covers ``tile_pixels`` = 64 output pixels (8x8). The plan
   writes one [K, C] weight-gradient partial per tile; ``wgrad_partials`` caps the number of partial
   rows (a grid that loops over several pixel tiles per block), None = one per tile, as written.
   Recompute mode rebuilds y in backward by rerunning pass A (reads x, writes y) before pass 1.
   The per-call eval fold of BN into Wp (which the plan also needs) is not counted here.
5. FLOPs: 2 per multiply-add for the convolutions; elementwise work counted per element as
   BN-eval 2, ReLU 1, statistics 3, normalise 2 (+1 for fused ReLU), BN-backward reduce 4 and
   elementwise 5. The fused kernels' recomputation (the depthwise chunk per output-channel tile of
   ``k_tile`` channels; t again in backward pass 2) is counted.
6. Roofline: each kernel takes max(bytes / bandwidth, flops / peak fp32 rate); a layer's time is the
   sum over its kernels (no overlap between kernels, no launch latency, 100% of peak). A model of
   the lower bound, not a prediction of achieved speed.
7. Native: tiles are 8x8 output pixels *of one image* (N * ceil(Ho/8) * ceil(Wo/8) tiles, so a 7x7
   layer has one 49-pixel tile per image); every workspace is sized as ``bwd_ws`` /
   ``forward_ws_floats`` size it (dWp partials ``[splits, K, C]`` with plan.cuh's ``splits``, unused
   with one split: the kernel stores dWp; dWd partials ``[xgroups, C*9]``; dt ``[N, C, Ho, Wo]`` fp32,
   written by the dt kernel and read back by dx). Eval counts the per-call BN fold into Wp (``fold_bn``,
   torch ops on [K, C]). FLOPs are the ones the kernels execute: the tile GEMMs run over whole 64-pixel
   tiles and 64-channel (forward: 16-input-channel) blocks, zero padding included; dy is rebuilt (7 FLOPs per element) in every
   kernel that reads it. ``Kernel.reread`` = bytes of *activation* re-reads along grid axes (x once
   per 64-channel K block of the forward and dWp kernels; dout and y once per 64-channel C block of
   the dWp and dt kernels), beyond the compulsory read; ``Kernel.reread_far`` = the part of it whose
   re-use comes only after a sweep of the grid's fast axis over the whole tensor, which comes from DRAM
   whenever that tensor does not fit in L2 (2.75-3 MB on the GTX 1080 Ti / RTX 3060). In the shipped
   launch order it is 0: every kernel that re-reads a tile's input runs the channel blocks of that tile
   on grid x, back to back (with the tile on grid x instead, this model counts 1.79 GB of far re-reads
   in the forward and dt kernels for the classifier at batch 32). Weight re-reads (every block reads its Wp
   slice) and halo overlap are left out.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

try:  # the installed package when there is one, else this checkout
    import fused_dsconv  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fused_dsconv.contract import output_size, walk_blocks  # noqa: E402

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
        return output_size(self.h, self.stride)

    @property
    def wo(self) -> int:
        return output_size(self.w, self.stride)

    @property
    def m(self) -> int:  # output pixels per channel, N*Ho*Wo
        return self.n * self.ho * self.wo


@dataclass(frozen=True)
class Kernel:
    name: str
    read: int  # bytes read from global memory (compulsory: each input once)
    written: int  # bytes written to global memory
    flops: int
    reread: int = 0  # activation re-reads along grid axes beyond `read`, assumed L2 hits (assumption 7)
    reread_far: int = 0  # the part of `reread` re-used only after a sweep of the whole tensor
    note: str = ""

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

    @property
    def reread(self) -> int:
        return sum(k.reread for k in self.kernels)

    @property
    def reread_far(self) -> int:
        return sum(k.reread_far for k in self.kernels)

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
        ks += [
            Kernel("bn_stats", y, 2 * pc, 3 * ye),
            Kernel("bn_apply", y + 4 * pc, y, 2 * ye),
            Kernel("relu", y, y, ye),
        ]
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


def fused(
    layer: Layer,
    mode: str,
    act_bytes: int = 4,
    *,
    recompute: bool = False,
    tile_pixels: int = 64,
    k_tile: int = 128,
    wgrad_partials: Optional[int] = None,
) -> Traffic:
    """MODEL of the planned kernels (docs/design.md), labelled "design" (assumptions in the module docstring).

    Not the shipped kernels: ``native`` models those."""
    _check_mode(mode)
    l, e = layer, act_bytes
    x, t, y, wd, wp = _sizes(l, e)
    ye = y // e
    te = t // e
    dw_fl, pw_fl = 2 * 9 * l.c * l.m, 2 * l.k * l.c * l.m
    ktiles = math.ceil(l.k / k_tile)  # depthwise chunk recomputed per output-channel tile
    pc = l.k * F32
    tiles = math.ceil(l.m / tile_pixels)
    impl = "design_recompute" if recompute else "design"
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
            Kernel("bwd_pass2", x + 2 * y + wd + wp + 6 * pc, t + wpart, dw_fl * ktiles + 2 * pw_fl + dw_fl + 5 * ye),
            Kernel("bwd_reduce_wgrad", wpart, wp + wd, rows * (l.k * l.c + 9 * l.c)),
            Kernel("bwd_pass3_dx", t + wd, x, 2 * 9 * te),
        ]
    return Traffic(layer, impl, mode, ks)


# -- the shipped CUDA kernels ------------------------------------------------------------------
# Mirrors of the C++ constants (keep in sync; tests/test_perf_model.py compiles launch.cuh and checks
# native_geometry against set_geometry / forward_ws_floats / bwd_ws):
FWD_BK = {"rect8x8": 128, "rect8x16": 64, "span64": 128}  # dsconv_fwd output channels per block
FWD_BP = {"rect8x8": 64, "rect8x16": 128, "span64": 64}  # pixels per tile
FWD_BC = 8  # dsconv_fwd input channels per depthwise chunk on rect tiles (4 for wide windows)
DT_BC = {"span64": 128, "span128": 64}  # dsconv_bwd_dt input channels per block; pixels = the class's number
DWP_BK, DWP_BC = 128, 64  # dsconv_bwd_dwp block: 128 output x 64 input channels
DWP_WIDE_BC = 128  # ... 128 input channels on span tiles with K, C >= 128 (plan.cuh dwide)


def _ran_rows(n: int, block: int) -> int:
    """Rows of n that blocks of `block` compute, where a block with at most half a block left computes half
    (dsconv_bwd_dt's input channels, dsconv_bwd_dwp's output and input channels: their thread groups)."""
    full, rem = divmod(n, block)
    return full * block + (0 if rem == 0 else block // 2 if rem <= block // 2 else block)


def _dwp_cells(l: "Layer", g: "NativeGeometry") -> int:
    """dWp entries dsconv_bwd_dwp's blocks compute per pixel, padding included: whole 128 x 128 blocks when
    wide, else the 128 x 64 blocks with their half-block corners (_ran_rows)."""
    if g.dwide:
        return _cdiv(l.k, DWP_BK) * DWP_BK * _cdiv(l.c, DWP_WIDE_BC) * DWP_WIDE_BC
    return _ran_rows(l.k, DWP_BK) * _ran_rows(l.c, DWP_BC)


def _dx_taps(l: "Layer") -> float:
    """dsconv_bwd_dx's taps per input pixel: at stride 2 with a template dilation (<= 4) a warp runs only
    its parity class's taps (NCHW; 4 + 2 + 2 + 1 over the four classes at odd dilation, 9 + 0 + 0 + 0 at even)."""
    return 9 / 4 if l.stride == 2 and l.dilation <= 4 else 9


SPLITS_TARGET_BLOCKS = 256  # plan.cuh set_geometry: splits = cdiv(256, dwp blocks) ...
SPLITS_MAX = 64  # ... capped at 64 and at the dWp tiles, at least 1; the fewest of those with the fewest rounds
SPAN_MAX_WO = 112  # plan.cuh DSC_SPAN_MAX_WO: the widest output map on span tiles
WAVE = 56  # plan.cuh kFwdWave: dsconv_fwd / dsconv_bwd_dt split their reduction axis below this many blocks
DY_FLOPS = 6  # dy_of: y - mu, z, threshold, A dz + b2 (y - mu) + c2, per element


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _span(l: "Layer") -> bool:
    """plan.cuh span_tiles: whether dsconv_fwd / dsconv_bwd_dwp take 64-pixel span tiles."""
    return 1 <= l.dilation <= 4 and l.wo <= SPAN_MAX_WO and l.m < 2**31


@dataclass(frozen=True)
class NativeGeometry:
    """Tilings, grids and workspace sizes of the CUDA backend for one layer, as launch.cuh computes them."""

    fwd_tile: str  # dsconv_fwd tile class: rect8x8, rect8x16 or span64
    ntiles: int  # dsconv_fwd pixel tiles
    dwp_tile: str  # dsconv_bwd_dwp tile class (64 pixels): rect8x8 or span64
    dwp_tiles: int
    dt_tile: str  # dsconv_bwd_dt tile class: span64 or span128
    dt_tiles: int
    fsplit: int  # dsconv_fwd input-channel splits (> 1: partial tiles + dsconv_fwd_reduce)
    fpair: int  # 1: dsconv_fwd takes its span tiles in pairs (plan.cuh DSC_FWD_PAIR_BLOCKS)
    bsplit: int  # dsconv_bwd_dt output-channel splits (> 1: partial dt planes)
    splits: int  # dsconv_bwd_dwp blocks along its tiles = rows of the dWp partials
    rgroups: int  # bn_bwd_reduce pixel groups = rows of its partials
    xtiles: int  # dsconv_bwd_dx 8x8 input tiles
    xgroups: int  # dsconv_bwd_dx tile groups = rows of the dWd partials
    k_blocks: int  # cdiv(K, BK): dsconv_fwd grid x
    c_blocks: int  # cdiv(C, dt channels): dsconv_bwd_dt grid x
    fwd_ws_floats: int  # forward_ws_floats (training): [mean | M2] partials, [ntiles, K] each, [scale | shift],
    # [K] each (each part 16-byte aligned), then with fsplit > 1 the partial tiles [fsplit][ntiles][K blocks]
    # [BK x BP] (eval: only those), then for span tiles dsconv_dw's t [C][ntiles x 64]
    bwd_red: int  # bwd_ws offsets, in floats: [3][rgroups][K] BN-gradient partials
    bwd_coef: int  # [K][8] dy coefficients (16-byte aligned)
    bwd_dwp: int  # [splits][K][C] dWp partials (unused with one split: dsconv_bwd_dwp stores dWp itself)
    bwd_dwd: int  # [xgroups][C * 9] dWd partials
    bwd_dt: int  # dt [N, C, Ho, Wo], fp32
    bwd_total: int  # backward_ws_floats (span tiles: + dsconv_dw's t [C][tiles x 64] for dsconv_bwd_dwp)
    dyws: int  # 1: bn_bwd_dy stores dy once for dsconv_bwd_dt and dsconv_bwd_dwp (plan.cuh)
    bwd_dy: int  # offset of that dy [N, K, Ho, Wo] (16-byte aligned; K M floats when dyws)
    dwide: int  # 1: dsconv_bwd_dwp in 128 x 128 blocks (span tiles, K and C >= 128; plan.cuh)

    @property
    def dwp_bc(self) -> int:
        """dsconv_bwd_dwp's input channels per block."""
        return DWP_WIDE_BC if self.dwide else DWP_BC


def native_geometry(layer: Layer) -> NativeGeometry:
    """plan.cuh ``set_geometry`` + ``forward_ws_floats`` + problem.cuh ``bwd_ws``, in Python."""
    l = layer
    span = _span(l)

    def rect(bp_w: int) -> int:
        return l.n * _cdiv(l.ho, 8) * _cdiv(l.wo, bp_w)

    if span:
        fwd_tile, ntiles = "span64", _cdiv(l.m, 64)
        dwp_tile, dwp_tiles = "span64", ntiles
    else:
        fwd_tile = "rect8x16" if l.k <= 64 and l.wo > 8 else "rect8x8"
        ntiles = rect(16 if fwd_tile == "rect8x16" else 8)
        dwp_tile, dwp_tiles = "rect8x8", rect(8)
    dt_tile = "span128" if l.c <= 64 else "span64"
    dt_tiles = _cdiv(l.m, 128 if dt_tile == "span128" else 64)

    def split(blocks: int, n: int, per: int) -> int:  # plan.cuh: splits of a reduction axis of n
        s = max(1, min(1 if blocks >= WAVE else WAVE // blocks, n // per))
        chunk = _cdiv(_cdiv(n, s), 8) * 8
        return _cdiv(n, chunk)

    k_blocks = _cdiv(l.k, FWD_BK[fwd_tile])
    fpair = int(span and k_blocks * ntiles >= 2 * WAVE)  # plan.cuh: pairs of span tiles from two waves on
    fsplit = split(k_blocks * (_cdiv(ntiles, 2) if fpair else ntiles), l.c, 32)
    bsplit = split(_cdiv(l.c, DT_BC[dt_tile]) * dt_tiles, l.k, 64)
    groups = max(1, min(_cdiv(512, _cdiv(l.k, 8)), _cdiv(l.m, 256)))
    rgroup_px = _cdiv(_cdiv(l.m, groups), 32) * 32
    rgroups = _cdiv(l.m, rgroup_px)
    dwide = int(span and l.k >= DWP_BK and l.c >= DWP_WIDE_BC)
    dwp_bc = DWP_WIDE_BC if dwide else DWP_BC  # (NativeGeometry.dwp_bc, before there is one)
    dwp_blocks = _cdiv(l.k, DWP_BK) * _cdiv(l.c, dwp_bc)
    s0 = max(1, min(_cdiv(SPLITS_TARGET_BLOCKS, dwp_blocks), SPLITS_MAX, dwp_tiles))

    def rounds(s: int) -> int:  # plan.cuh: waves of WAVE blocks x tiles per block
        return _cdiv(dwp_blocks * s, WAVE) * _cdiv(dwp_tiles, s)

    splits = min(range(1, s0 + 1), key=lambda s: (rounds(s), s))  # the fewest rounds, then the fewest splits
    xtiles = l.n * _cdiv(l.h, 8) * _cdiv(l.w, 8)
    xgroups = max(1, min(_cdiv(1024, _cdiv(l.c, 8)), xtiles, 65535))
    red = 0
    coef = red + (3 * rgroups * l.k + 3) // 4 * 4
    dwp = coef + 8 * l.k
    dwd = dwp + splits * l.k * l.c  # (unused with one split: dsconv_bwd_dwp stores dWp then)
    dt = dwd + xgroups * l.c * 9
    # then (16-byte aligned) dsconv_dw's t [C][tiles x 64] for dsconv_bwd_dwp on span tiles, then (aligned)
    # bn_bwd_dy's dy [K][M] where dt and dWp would form dy more than 3 times over (input-channel blocks)
    dyws = int(_cdiv(l.c, DT_BC[dt_tile]) + _cdiv(l.c, dwp_bc) > 3 and l.k * l.m < 2**31)
    dy = ((dt + bsplit * l.n * l.c * l.ho * l.wo + 3) // 4 * 4 + (l.c * dwp_tiles * 64 if span else 0) + 3) // 4 * 4
    total = dy + (l.k * l.m if dyws else 0)
    part = fsplit * ntiles * k_blocks * FWD_BK[fwd_tile] * FWD_BP[fwd_tile] if fsplit > 1 else 0  # BK x BP floats each
    fwd_ws = (2 * ntiles * l.k + 3) // 4 * 4 + (2 * l.k + 3) // 4 * 4 + part  # (training) partials, scale | shift
    if span:  # dsconv_dw's t [C][ntiles x 64] for the span path of dsconv_fwd
        fwd_ws += l.c * ntiles * 64
    return NativeGeometry(
        fwd_tile,
        ntiles,
        dwp_tile,
        dwp_tiles,
        dt_tile,
        dt_tiles,
        fsplit,
        fpair,
        bsplit,
        splits,
        rgroups,
        xtiles,
        xgroups,
        k_blocks,
        _cdiv(l.c, DT_BC[dt_tile]),
        fwd_ws,
        red,
        coef,
        dwp,
        dwd,
        dt,
        total,
        dyws,
        dy,
        dwide,
    )


def native(layer: Layer, mode: str, act_bytes: int = 4, *, recompute: bool = False) -> Traffic:
    """MODEL of the CUDA kernels the ``native`` backend launches (assumptions 1-3, 5-7 of the module docstring).

    Kernels in launch order: eval: the BN fold (torch ops, block.py) and ``dsconv_fwd``; training
    forward: ``dsconv_fwd`` (y + tile statistics), ``bn_stats``, ``bn_relu`` (recompute mode writes y into
    out's storage and normalises in place: the same bytes); backward: (recompute: ``dsconv_fwd`` in y-only
    mode into a temporary), ``bn_bwd_reduce``, ``bn_bwd_finalize``, (``bn_bwd_dy``,) ``dsconv_bwd_dt``,
    ``dsconv_bwd_dwp``, ``dsconv_bwd_dx`` (with the dWd partials), ``colsum`` (the dWp and dWd partials, one
    launch; dWp not there with one split, which dsconv_bwd_dwp stores directly).
    """
    _check_mode(mode)
    l, e = layer, act_bytes
    g = native_geometry(l)
    x, t, y, wd, wp = _sizes(l, e)
    ye, te = y // e, t // e
    pc = l.k * F32
    bp = FWD_BP[g.fwd_tile]
    px = g.ntiles * bp  # pixel slots the forward GEMM runs over (partial tiles padded with zeros)
    gemm_flops = 2 * px * FWD_BK[g.fwd_tile] * _cdiv(l.c, FWD_BC) * FWD_BC * g.k_blocks
    dw_flops = 2 * 9 * l.c * px
    span = g.fwd_tile == "span64"
    # Span tiles (small maps): dsconv_dw writes the depthwise output t once per layer into an fp32 workspace
    # [C][tiles x 64], and every K block of dsconv_fwd (and of dsconv_bwd_dwp) reads it instead of x.
    t_ws = l.c * px * F32 if span else 0
    fwd_in = t_ws + wp if span else x + wd + wp
    fwd_flops = gemm_flops if span else gemm_flops + dw_flops * g.k_blocks
    fwd_rr = (g.k_blocks - 1) * (t_ws if span else x)
    fwd_note = (
        f"t from dsconv_dw, read by each of the {g.k_blocks} {FWD_BK[g.fwd_tile]}-channel blocks"
        if span
        else f"depthwise chunk computed once per {FWD_BK[g.fwd_tile]}-channel block ({g.k_blocks}x) from a "
        f"staged window; {g.fwd_tile} tiles"
    )
    dw_kernel = Kernel("dsconv_dw", x + wd, t_ws, dw_flops, note="depthwise once per layer (span tiles)")
    impl = "native_recompute" if recompute else "native"

    split_part = (g.fsplit * g.ntiles * g.k_blocks * FWD_BK[g.fwd_tile] * bp * F32) if g.fsplit > 1 else 0

    def fwd(name: str, written: int, epi_flops: int) -> list[Kernel]:
        """dsconv_fwd, and with the input channels split, its partial tiles and dsconv_fwd_reduce."""
        pre = [dw_kernel] if span else []
        if g.fsplit == 1:
            return pre + [Kernel(name, fwd_in + pc, written, fwd_flops + epi_flops, fwd_rr, 0, fwd_note)]
        return pre + [
            Kernel(
                name,
                fwd_in,
                split_part,
                fwd_flops,
                fwd_rr,
                0,
                fwd_note + f"; input channels split {g.fsplit} ways",
            ),
            Kernel(
                name.replace("dsconv_fwd", "dsconv_fwd_reduce"),
                split_part + pc,
                written,
                g.fsplit * g.ntiles * g.k_blocks * FWD_BK[g.fwd_tile] * bp + epi_flops,
            ),
        ]

    if mode == "eval":
        # block.py folds BN into Wp per call (reference.fold_bn): w = Wp * scale[:, None] in fp32, then
        # .to(dtype); for fp32 both casts are no-ops, otherwise one cast copy each way.
        wfold = l.k * l.c * (F32 if e == F32 else e + 2 * F32)
        return Traffic(
            layer,
            impl,
            mode,
            [
                Kernel(
                    "fold_bn (torch)",
                    wfold + 4 * pc,
                    wfold + pc,
                    l.k * l.c + 8 * l.k,
                    note="per call: Wp' = Wp * gamma r, b' = beta + (b - mean) gamma r",
                ),
                *fwd("dsconv_fwd eval", y, 2 * ye),
            ],
        )
    part = 2 * g.ntiles * l.k * F32  # [mean | M2] tile partials
    ks = [
        *fwd("dsconv_fwd train", y + part, 4 * ye),  # + bias, tile mean and M2
        Kernel("bn_stats", part + 2 * pc, 4 * pc, 9 * g.ntiles * l.k),  # Chan merges -> mean, var, scale, shift
        Kernel("bn_relu", y + 2 * pc, y, 3 * ye),
    ]
    if mode == "train_fwd_bwd":
        red = 3 * g.rgroups * l.k * F32
        # fp32 partials (dWp: where its pixels are split over blocks; one split: the kernel stores dWp)
        dwp_part = g.splits * l.k * l.c * F32 if g.splits > 1 else 0
        dwd_part = g.xgroups * l.c * 9 * F32
        dt = te * F32  # fp32 workspace whatever the activation dtype
        coef = 8 * l.k * F32
        dt_bp = 64 if g.dt_tile == "span64" else 128
        dwp_kb, dwp_cb = _cdiv(l.k, DWP_BK), _cdiv(l.c, g.dwp_bc)
        dwp_px = g.dwp_tiles * 64
        # dy's inputs for dt and dWp: dout and y with the coefficients (dy formed per C block), or bn_bwd_dy's
        # fp32 dy (formed once)
        dy_in, dy_flops, dy_what = (ye * F32, 0, "dy") if g.dyws else (2 * y + coef, DY_FLOPS * ye, "dout and y")
        if recompute:
            ks += fwd("dsconv_fwd y-only (recompute)", y, ye)
        ks += [
            Kernel("bn_bwd_reduce", 2 * y + 4 * pc, red, 6 * ye),  # dout, y -> dz, dz yhat, yhat partials
            Kernel("bn_bwd_finalize", red + 4 * pc, coef + 3 * pc, 3 * g.rgroups * l.k),
            *([Kernel("bn_bwd_dy", 2 * y + coef, ye * F32, DY_FLOPS * ye, note="dy once, fp32")] if g.dyws else []),
            Kernel(
                "dsconv_bwd_dt",
                dy_in + wp,
                dt * g.bsplit,
                dy_flops * g.c_blocks + 2 * g.dt_tiles * dt_bp * _cdiv(l.k, 8) * 8 * _ran_rows(l.c, DT_BC[g.dt_tile]),
                (g.c_blocks - 1) * dy_in,
                0,
                f"{dy_what} read once per {DT_BC[g.dt_tile]}-channel C block ({g.c_blocks}x), the C blocks of "
                f"a tile adjacent in launch order (grid x)",
            ),
            *(
                [Kernel("dsconv_dw", x + wd, l.c * dwp_px * F32, 2 * 9 * l.c * dwp_px, note="t for dsconv_bwd_dwp")]
                if span
                else []
            ),
            Kernel(
                "dsconv_bwd_dwp",
                (l.c * dwp_px * F32 if span else x + wd) + dy_in,
                dwp_part or wp,
                (0 if span else 2 * 9 * dwp_px * _cdiv(l.c, 8) * 8 * dwp_kb)  # t for the 8-channel chunks
                + dy_flops * dwp_cb
                + 2 * dwp_px * _dwp_cells(l, g),
                (dwp_kb - 1) * (l.c * dwp_px * F32 if span else x) + (dwp_cb - 1) * dy_in,
                0,
                f"{'t' if span else 'x'} once per {DWP_BK}-channel K block ({dwp_kb}x), {dy_what} once per "
                f"{g.dwp_bc}-channel C block ({dwp_cb}x); {g.splits} split(s)",
            ),
            Kernel(
                "dsconv_bwd_dx",
                dt * g.bsplit + x + wd,
                x + dwd_part,
                round(4 * _dx_taps(l) * l.n * l.c * l.h * l.w),
                note="dt window per 8x8 input tile; dx and the dWd partials from the same dt taps",
            ),
        ]
        ks.append(  # one launch for both; the dWp job has no blocks with one split
            Kernel(
                "colsum (dWp, dWd)",
                dwp_part + dwd_part,
                (wp if dwp_part else 0) + wd,
                (g.splits * l.k * l.c if dwp_part else 0) + g.xgroups * l.c * 9,
            )
        )
    return Traffic(layer, impl, mode, ks)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


# -- the paper's classifier ---------------------------------------------------------------------
def classifier_layers(batch: int, alpha: float = 1.0, rho: float = 1.0, dilation: int = 3) -> list[Layer]:
    """The nine joint blocks of Table 1 (names b1..b9), with the stem's output as b1's input."""
    from fused_dsconv.models import BASE_RESOLUTION, STEM_CHANNELS, TABLE1, scaled

    assert scaled(STEM_CHANNELS, alpha) == scaled(TABLE1[0][0], alpha)
    return [
        Layer(f"b{i + 1}", batch, b.c, b.k, b.side, b.side, b.stride, dilation)
        for i, b in enumerate(walk_blocks(TABLE1, int(round(BASE_RESOLUTION * rho)), alpha))
    ]


IMPLS = ("unfused", "native", "native_recompute", "design", "design_recompute")


def traffics(layer: Layer, mode: str, act_bytes: int = 4, wgrad_partials: Optional[int] = None) -> dict[str, Traffic]:
    """MODEL of every implementation of one layer in one mode (recompute variants in train_fwd_bwd only:
    a recompute-mode forward moves the same bytes as the plain one)."""
    tr = {"unfused": unfused(layer, mode, act_bytes), "native": native(layer, mode, act_bytes)}
    if mode == "train_fwd_bwd":
        tr["native_recompute"] = native(layer, mode, act_bytes, recompute=True)
    tr["design"] = fused(layer, mode, act_bytes, wgrad_partials=wgrad_partials)
    if mode == "train_fwd_bwd":
        tr["design_recompute"] = fused(layer, mode, act_bytes, recompute=True, wgrad_partials=wgrad_partials)
    return tr


def model_rows(
    layers: Sequence[Layer],
    mode: str,
    act_bytes: int = 4,
    gpus: Sequence[str] = tuple(GPUS),
    wgrad_partials: Optional[int] = None,
) -> list[dict]:
    """MODEL rows: per layer and a total row, bytes/FLOPs/roofline of unfused, native (shipped CUDA
    kernels) and design (the plan of docs/design.md), with their recompute variants in train_fwd_bwd, and the
    native kernels' re-read bytes (``{impl}_reread``, ``{impl}_reread_far``; not in ``{impl}_bytes``)."""
    rows = []
    acc: dict[str, list] = {}
    for layer in list(layers) + [None]:
        if layer is None:
            impls = {k: [kk for t in v for kk in t.kernels] for k, v in acc.items()}
            name, shape = "total", ""
        else:
            tr = traffics(layer, mode, act_bytes, wgrad_partials)
            for k, v in tr.items():
                acc.setdefault(k, []).append(v)
            impls = {k: v.kernels for k, v in tr.items()}
            name = layer.name
            shape = f"{layer.c}->{layer.k} s{layer.stride} d{layer.dilation} {layer.h}x{layer.w}"
        row = {"layer": name, "shape": shape, "mode": mode}
        for impl, ks in impls.items():
            row[f"{impl}_bytes"] = sum(k.bytes for k in ks)
            row[f"{impl}_flops"] = sum(k.flops for k in ks)
            row[f"{impl}_reread"] = sum(k.reread for k in ks)
            row[f"{impl}_reread_far"] = sum(k.reread_far for k in ks)
            for g in gpus:
                row[f"{impl}_{g}_us"] = roofline_s(ks, GPUS[g]) * 1e6
        rows.append(row)
    return rows


def markdown(rows: list[dict], gpus: Sequence[str] = tuple(GPUS)) -> str:
    """One MODEL table: bytes of every implementation, ratios to unfused, the native kernels' far re-reads
    (not in the byte columns), FLOPs and roofline times of unfused / native / design."""
    impls = [i for i in IMPLS if f"{i}_bytes" in rows[0]]
    trio = ("unfused", "native", "design")
    head = [
        "layer",
        "shape",
        *[f"{i} MB" for i in impls],
        "native/unfused bytes",
        "design/unfused bytes",
        "native far re-reads MB",
        "GFLOP unf/native/design",
    ]
    for g in gpus:
        head.append(f"{g} us unf/native/design")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["layer"],
            r["shape"],
            *[f"{r[f'{i}_bytes'] / 1e6:.1f}" for i in impls],
            f"{r['native_bytes'] / r['unfused_bytes']:.2f}",
            f"{r['design_bytes'] / r['unfused_bytes']:.2f}",
            f"{r['native_reread_far'] / 1e6:.1f}",
            " / ".join(f"{r[f'{i}_flops'] / 1e9:.2f}" for i in trio),
        ]
        for g in gpus:
            cells.append(" / ".join(f"{r[f'{i}_{g}_us']:.0f}" for i in trio))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(layers: Sequence[Layer], act_bytes: int = 4, gpus: Sequence[str] = tuple(GPUS)) -> str:
    """The README-sized MODEL table: the totals over ``layers`` per mode (GB, ms)."""
    label = {"eval": "eval forward", "train_fwd": "training forward", "train_fwd_bwd": "training forward + backward"}
    trio = ("unfused", "native", "design")
    head = [
        "mode",
        *[f"{i} GB" for i in trio],
        "native / unfused",
        "design / unfused",
        "native far re-reads GB",
        *[f"{g} ms unf / native / design" for g in gpus],
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode in MODES:
        r = model_rows(layers, mode, act_bytes, gpus)[-1]
        cells = [
            label[mode],
            *[f"{r[f'{i}_bytes'] / 1e9:.2f}" for i in trio],
            f"{r['native_bytes'] / r['unfused_bytes']:.2f}",
            f"{r['design_bytes'] / r['unfused_bytes']:.2f}",
            f"{r['native_reread_far'] / 1e9:.2f}",
            *[" / ".join(f"{r[f'{i}_{g}_us'] / 1e3:.2f}" for i in trio) for g in gpus],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kernel_markdown(tr: Traffic) -> str:
    """Per-kernel MODEL table of one implementation of one layer (bytes in MB, FLOPs in GFLOP)."""
    lines = [
        f"{tr.impl}, {tr.layer.name}, {tr.mode}:",
        "",
        "| kernel | read MB | written MB | GFLOP | re-read MB (far) | note |",
        "|---|---|---|---|---|---|",
    ]
    for k in tr.kernels:
        rr = f"{k.reread / 1e6:.1f} ({k.reread_far / 1e6:.1f})" if k.reread else ""
        lines.append(
            f"| {k.name} | {k.read / 1e6:.2f} | {k.written / 1e6:.2f} | {k.flops / 1e9:.3f} | {rr} | {k.note} |"
        )
    read, written = sum(k.read for k in tr.kernels), sum(k.written for k in tr.kernels)
    lines.append(
        f"| total | {read / 1e6:.2f} | {written / 1e6:.2f} | {tr.flops / 1e9:.3f} "
        f"| {tr.reread / 1e6:.1f} ({tr.reread_far / 1e6:.1f}) | |"
    )
    return "\n".join(lines)


# -- several processes: synchronised batch norm -------------------------------------------------
def sync_bn_values(layer: Layer, mode: str) -> dict[str, int]:
    """MODEL: per-channel values one process contributes per block and step when BN is synchronised
    (``JointBlock(sync_bn=True)``, fused_dsconv/distributed.py; nn.SyncBatchNorm exchanges as many), beside
    the activation traffic above, which it does not change: forward 2K + 1 (count, mean, M2), backward 2K
    (sum dz, sum dz * yhat). float32 (float64 for float64 inputs)."""
    _check_mode(mode)
    train = mode != "eval"
    return {"forward": 2 * layer.k + 1 if train else 0, "backward": 2 * layer.k if mode == "train_fwd_bwd" else 0}


def sync_bn_wire_bytes(layer: Layer, mode: str, processes: int, value_bytes: int = F32) -> int:
    """MODEL: bytes one process sends (and receives) per block and step on a ring of ``processes``: the forward's
    all-gather of every process's 2K + 1 values, (P - 1)(2K + 1), and the backward's all-reduce of 2K values,
    2 (P - 1) / P 2K (reduce-scatter, then all-gather)."""
    v = sync_bn_values(layer, mode)
    p = processes
    return round(((p - 1) * v["forward"] + 2 * (p - 1) / p * v["backward"]) * value_bytes)


def block_param_values(layer: Layer) -> int:
    """Parameters of one joint block (depthwise 9C, pointwise KC, BN 2K): what DDP's gradient all-reduce
    carries for it per step, for scale."""
    return 9 * layer.c + layer.k * layer.c + 2 * layer.k


def sync_markdown(layers: Sequence[Layer], processes: Sequence[int] = (2, 8), act_bytes: int = 4) -> str:
    """MODEL table of what synchronised BN adds per training step (forward + backward) over ``layers``, next to
    the native kernels' activation bytes per process and DDP's own gradient all-reduce."""
    mode = "train_fwd_bwd"
    values = [sync_bn_values(l, mode) for l in layers]
    fwd, bwd = sum(v["forward"] for v in values), sum(v["backward"] for v in values)
    act = sum(native(l, mode, act_bytes).bytes for l in layers)
    grads = sum(block_param_values(l) for l in layers)
    head = [
        "processes",
        "sync-BN values per process (fwd + bwd)",
        "sync-BN bytes sent per process (ring)",
        "DDP gradient all-reduce bytes sent per process (ring)",
        "native activation bytes per process",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in processes:
        wire = sum(sync_bn_wire_bytes(l, mode, p) for l in layers)
        lines.append(
            f"| {p} | {fwd:,} + {bwd:,} | {wire / 1e3:,.1f} KB | {2 * (p - 1) / p * grads * F32 / 1e6:,.2f} MB "
            f"| {act / 1e9:,.2f} GB |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Print the analytic traffic/FLOP/roofline MODEL tables (not measurements).")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--rho", type=float, default=1.0)
    p.add_argument("--dilation", type=int, default=3)
    p.add_argument("--act-bytes", type=int, default=4, help="bytes per activation element (4 fp32, 2 fp16)")
    p.add_argument(
        "--wgrad-partials",
        type=int,
        default=None,
        help="cap on weight-gradient partial rows of the design backward (default: one per 64-pixel tile)",
    )
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument(
        "--kernels",
        nargs="+",
        default=None,
        metavar="LAYER",
        help="instead of the tables, list the kernels of these layers (b1..b9) per implementation",
    )
    p.add_argument("--summary", action="store_true", help="only the README-sized table of totals per mode")
    p.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=None,
        metavar="P",
        help="instead of the tables, what synchronised BN exchanges per training step on P processes",
    )
    a = p.parse_args(argv)
    layers = classifier_layers(a.batch, a.alpha, a.rho, a.dilation)
    print(
        f"MODEL (analytic, not measured): batch {a.batch}, alpha {a.alpha}, rho {a.rho}, dilation {a.dilation}, "
        f"{a.act_bytes}-byte activations; roofline = sum over kernels of max(bytes/BW, FLOPs/peak fp32). "
        f"native = the shipped CUDA kernels, design = the plan of docs/design.md."
    )
    if a.summary:
        print("\n" + summary_markdown(layers, a.act_bytes))
        return 0
    if a.processes:
        print("\n" + sync_markdown(layers, a.processes, a.act_bytes))
        return 0
    if a.kernels:
        by_name = {l.name: l for l in layers}
        for name in a.kernels:
            if name not in by_name:
                p.error(f"unknown layer {name!r}; choose from {', '.join(by_name)}")
            for mode in a.modes:
                for tr in traffics(by_name[name], mode, a.act_bytes, a.wgrad_partials).values():
                    print("\n" + kernel_markdown(tr))
        return 0
    for mode in a.modes:
        print(f"\n### {mode}\n")
        print(markdown(model_rows(layers, mode, a.act_bytes, wgrad_partials=a.wgrad_partials)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
