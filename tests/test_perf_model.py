"""The traffic/FLOP MODEL's byte counts checked by hand for one small case, and the native model's
tile / workspace geometry checked against the C++ launcher it mirrors."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import perf_model as pm  # noqa: E402

from fused_dsconv.testing import NATIVE_TILE_CASES as TILE_CASES

# x [1, 2, 4, 4], stride 1 -> t [1, 2, 4, 4], y [1, 4, 4, 4]; float32 everywhere.
L = pm.Layer("tiny", n=1, c=2, k=4, h=4, w=4, stride=1, dilation=3)
X, T, Y = 1 * 2 * 16 * 4, 1 * 2 * 16 * 4, 1 * 4 * 16 * 4  # 128, 128, 256 bytes
WD, WP, PC = 9 * 2 * 4, 4 * 2 * 4, 4 * 4  # 72, 32, 16 bytes


def test_unfused_eval_bytes_by_hand():
    tr = pm.unfused(L, "eval")
    assert [k.name for k in tr.kernels] == ["dw_conv", "pw_conv", "bn_eval", "relu"]
    assert [k.bytes for k in tr.kernels] == [X + WD + T, T + WP + Y, Y + 4 * PC + Y, 2 * Y]
    assert tr.bytes == 328 + 416 + 576 + 512 == 1832


def test_fused_eval_bytes_by_hand():
    tr = pm.fused(L, "eval")
    assert len(tr.kernels) == 1
    assert tr.bytes == X + WD + WP + PC + Y == 504
    # FLOPs: depthwise 2*9*C*M, pointwise 2*K*C*M (M = 16), bias + ReLU 2 per y element.
    assert tr.flops == 2 * 9 * 2 * 16 + 2 * 4 * 2 * 16 + 2 * 64


def test_train_forward_bytes_by_hand():
    assert pm.unfused(L, "train_fwd").bytes == (X + WD + T) + (T + WP + Y) + (Y + 2 * PC) + (Y + 4 * PC + Y) + 2 * Y
    part = 1 * 2 * PC  # one 64-pixel tile: (sum, sum of squares) per channel
    tr = pm.fused(L, "train_fwd")
    assert [k.bytes for k in tr.kernels] == [X + WD + WP + PC + Y + part, part + 2 * PC, Y + 4 * PC + Y]
    assert tr.bytes == 536 + 64 + 576


def test_backward_bytes_by_hand():
    unf = pm.unfused(L, "train_fwd_bwd").bytes - pm.unfused(L, "train_fwd").bytes
    assert unf == (3 * Y) + (2 * Y + 4 * PC) + (3 * Y + 5 * PC) + (Y + WP + T) + (Y + T + WP) + (T + WD + X) + (
        T + X + WD
    )
    part, wpart = 2 * PC, (4 * 2 + 9 * 2) * 4  # one tile of stats partials and of [K, C] + [C, 9] weight partials
    fus = pm.fused(L, "train_fwd_bwd").bytes - pm.fused(L, "train_fwd").bytes
    assert fus == (2 * Y + 4 * PC + part) + (part + 2 * PC) + (X + 2 * Y + WD + WP + 6 * PC + T + wpart) + (
        wpart + WP + WD
    ) + (T + WD + X)
    rec = pm.fused(L, "train_fwd_bwd", recompute=True).bytes - pm.fused(L, "train_fwd_bwd").bytes
    assert rec == X + WD + WP + PC + Y


def test_design_rows_are_the_fused_plan_and_labelled_design():
    # The tables' "design" columns must be the modelled plan of docs/design.md (`fused`), not another implementation: their
    # kernels and bytes are the plan's, and differ from the shipped kernels' (`native`).
    layers = pm.classifier_layers(batch=2)
    for mode in pm.MODES:
        row = pm.model_rows(layers[:1], mode)[0]
        plan = pm.fused(layers[0], mode)
        assert row["design_bytes"] == plan.bytes and row["design_flops"] == plan.flops
        assert plan.impl == "design" and [k.name for k in plan.kernels] != [
            k.name for k in pm.native(layers[0], mode).kernels
        ]
    assert pm.fused(L, "train_fwd_bwd", recompute=True).impl == "design_recompute"


# -- native: the shipped CUDA kernels -------------------------------------------------------------
# Tiny case: Ho = Wo = 4 -> span tiles (a small map, dilation 3): one 64-pixel tile (16 valid pixels) for the
# forward and dWp kernels, one 128-pixel tile for dt (C <= 64); one 128-channel K block; splits = 1; one
# bn_bwd_reduce group, one dx tile and group.
NTILES = 1
TWS = 2 * 64 * 4  # dsconv_dw's t: [C = 2][1 tile x 64] fp32


def test_native_geometry_tiny():
    g = pm.native_geometry(L)
    assert (g.fwd_tile, g.dwp_tile, g.dt_tile) == ("span64", "span64", "span128")
    assert (g.ntiles, g.dwp_tiles, g.dt_tiles, g.splits, g.rgroups, g.xtiles, g.xgroups) == (1, 1, 1, 1, 1, 1, 1)
    assert (g.k_blocks, g.c_blocks) == (1, 1)
    # [mean | M2] x [1 tile, K], [scale | shift] x [K], dsconv_dw's t [C][1 tile x 64]
    assert g.fwd_ws_floats == 2 * 1 * 4 + 2 * 4 + 2 * 64
    # red [3][1][4] = 12 floats (already a multiple of 4), coef [4][8], dWp [1][4][2] (unused: one split, the
    # kernel stores dWp), dWd [1][2*9], dt [1,2,4,4]
    assert (g.bwd_red, g.bwd_coef, g.bwd_dwp, g.bwd_dwd, g.bwd_dt) == (0, 12, 44, 52, 70)
    assert g.bwd_total == 104 + 2 * 64  # dt ends at 70 + 2 * 16 = 102, + dsconv_dw's t [C][1 x 64] at 104


def test_native_eval_bytes_by_hand():
    tr = pm.native(L, "eval")
    assert tr.impl == "native"
    assert [k.name for k in tr.kernels] == ["fold_bn (torch)", "dsconv_dw", "dsconv_fwd eval"]
    # fold: reads Wp and 4 per-channel vectors, writes Wp' and b'; span tiles: dsconv_dw writes t [C][1 tile x
    # 64] in fp32 (padded slots included), the forward GEMM reads it instead of x.
    assert [k.bytes for k in tr.kernels] == [WP + 4 * PC + WP + PC, X + WD + TWS, TWS + WP + PC + Y]
    assert tr.bytes == 144 + 504 + 2 * TWS
    # Executed FLOPs: depthwise 2*9*C over the 64-pixel tile, the GEMM over the whole tile x 128 K x 8 C
    # (zero padding included), bias + ReLU 2 per y element.
    assert tr.kernels[1].flops == 2 * 9 * 2 * 64
    assert tr.kernels[2].flops == 2 * 64 * 128 * 8 + 2 * 64
    assert tr.reread == 0  # one K block: t read once


def test_native_train_forward_bytes_by_hand():
    part = 2 * NTILES * 4 * 4  # forward_ws_floats: [mean | M2] x [ntiles, K] floats
    tr = pm.native(L, "train_fwd")
    assert [k.name for k in tr.kernels] == ["dsconv_dw", "dsconv_fwd train", "bn_stats", "bn_relu"]
    # bn_stats reads the partials, gamma and beta and writes mean, var and bn_relu's scale and shift.
    assert [k.bytes for k in tr.kernels] == [
        X + WD + TWS,
        TWS + WP + PC + Y + part,
        part + 2 * PC + 4 * PC,
        Y + 2 * PC + Y,
    ]
    assert tr.bytes == 536 + 2 * TWS + 128 + 544
    # Recompute mode writes y into out and normalises in place: the same bytes.
    assert pm.native(L, "train_fwd", recompute=True).bytes == tr.bytes


def test_native_backward_bytes_by_hand():
    red = 3 * 1 * 4 * 4  # [3][rgroups][K] floats, one group
    coef = 8 * 4 * 4  # [K][8] floats
    # One split: dsconv_bwd_dwp stores dWp itself (no partials); colsum has only dWd's.
    dwd = 1 * 2 * 9 * 4  # [xgroups][C*9] floats
    dt = 1 * 2 * 16 * 4  # dt [N, C, Ho, Wo] in fp32
    fwd = pm.native(L, "train_fwd")
    tr = pm.native(L, "train_fwd_bwd")
    bwd = tr.kernels[len(fwd.kernels) :]
    assert [k.name for k in bwd] == [
        "bn_bwd_reduce",
        "bn_bwd_finalize",
        "dsconv_bwd_dt",
        "dsconv_dw",
        "dsconv_bwd_dwp",
        "dsconv_bwd_dx",
        "colsum (dWp, dWd)",
    ]
    assert [(k.read, k.written) for k in bwd] == [
        (2 * Y + 4 * PC, red),  # dout, y, mean, var, gamma, beta -> partials of dz, dz yhat, yhat
        (red + 4 * PC, coef + 3 * PC),  # -> dy coefficients and dbeta, dgamma, dbias
        (2 * Y + WP + coef, dt),  # dt = Wp^T dy (dy formed from dout, y) to the workspace
        (X + WD, TWS),  # span tiles: t once for every K block of dsconv_bwd_dwp
        (TWS + 2 * Y + coef, WP),  # t, dy from (dout, y) -> dWp
        (dt + X + WD, X + dwd),  # dx and the dWd partials from dt and x
        (dwd, WD),
    ]
    assert tr.bytes - fwd.bytes == 624 + 288 + 800 + 872 + 2 * TWS + 528 + 144
    rec = pm.native(L, "train_fwd_bwd", recompute=True)
    assert rec.impl == "native_recompute"
    dw, extra = rec.kernels[len(fwd.kernels) : len(fwd.kernels) + 2]
    assert dw.name == "dsconv_dw" and dw.bytes == X + WD + TWS
    assert extra.name == "dsconv_fwd y-only (recompute)" and extra.bytes == TWS + WP + PC + Y
    assert rec.bytes - tr.bytes == 504 + 2 * TWS


def test_native_half_precision_keeps_fp32_workspaces():
    e = 2
    x, t, wp = X // 2, T // 2, WP // 2
    tr = pm.native(L, "train_fwd_bwd", act_bytes=e)
    k = {kk.name: kk for kk in tr.kernels}
    assert k["dsconv_bwd_dt"].written == 1 * 2 * 16 * 4  # dt stays fp32
    # One split: dWp stored directly, in the activations' dtype; dWd through an fp32 partial row and colsum.
    assert k["dsconv_bwd_dx"].read == 1 * 2 * 16 * 4 + x + WD // 2 and k["dsconv_bwd_dx"].written == x + 2 * 9 * 4
    assert k["dsconv_bwd_dwp"].written == wp and k["colsum (dWp, dWd)"].written == WD // 2
    # 16x16: 4 tiles, 4 dWp splits and 4 dx tile groups: fp32 partials, colsum casts both.
    l16 = pm.Layer("tiny16", n=1, c=2, k=4, h=16, w=16, stride=1, dilation=3)
    g = pm.native_geometry(l16)
    assert (g.splits, g.xgroups) == (4, 4)
    k = {kk.name: kk for kk in pm.native(l16, "train_fwd_bwd", act_bytes=e).kernels}
    assert k["dsconv_bwd_dwp"].written == 4 * 4 * 2 * 4 and k["dsconv_bwd_dx"].written == 2 * 256 * e + 4 * 2 * 9 * 4
    assert k["colsum (dWp, dWd)"].read == (4 * 4 * 2 + 4 * 2 * 9) * 4
    assert k["colsum (dWp, dWd)"].written == wp + WD // 2
    ev = pm.native(L, "eval", act_bytes=e).kernels[0]  # fold: cast to fp32, multiply, cast back
    assert (ev.read, ev.written) == (4 * 2 * (2 + 8) + 4 * PC, 4 * 2 * (2 + 8) + PC)
    assert t == 64


def test_native_rereads_of_the_grid():
    b9 = pm.classifier_layers(batch=32)[8]  # 1024 -> 1024 at 7x7: 8 forward K blocks, 8 dt C blocks
    x, _, y, _, _ = pm._sizes(b9, 4)
    k = {kk.name: kk for kk in pm.native(b9, "train_fwd_bwd").kernels}
    # Channel blocks of one tile run back to back (grid x), so every re-read is a near one. Span tiles: the
    # K blocks re-read dsconv_dw's t [C][25 tiles x 64] (fp32), not x.
    t = 1024 * 25 * 64 * 4
    assert k["dsconv_fwd train"].reread == 7 * t and k["dsconv_fwd train"].reread_far == 0
    # dy: 8 + 8 input-channel blocks would form it from dout and y, so bn_bwd_dy stores it once (fp32) and
    # those blocks re-read that.
    assert pm.native_geometry(b9).dyws == 1 and k["bn_bwd_dy"].written == y
    assert k["dsconv_bwd_dt"].reread == 7 * y and k["dsconv_bwd_dt"].reread_far == 0
    assert pm.native_geometry(b9).dwide == 1  # 128-channel K blocks, 128-channel C blocks
    assert k["dsconv_bwd_dwp"].reread == 7 * t + 7 * y
    b1 = pm.classifier_layers(batch=32)[0]  # 32 -> 64: one K block, one C block
    assert pm.native(b1, "train_fwd_bwd").reread == 0


# (N, C, K, H, W, stride, dilation) -> (forward tile class, forward tiles, splits), by hand from plan.cuh
# set_geometry: span tiles where Wo <= 112 and the dilation is 1..4; s0 = clamp(cdiv(256, B), 1, min(64, T)) with
# B = cdiv(K, 128) * cdiv(C, 64) dWp blocks and T dWp tiles, then of the s <= s0 with the fewest rounds
# cdiv(B s, 56) * cdiv(T, s), the fewest.
GEOMETRY_CASES = [
    ((32, 1024, 1024, 7, 7, 1, 3), ("span64", 32 * 49 // 64 + 1, 4)),  # b9 at batch 32: 64 wide dWp blocks
    ((32, 32, 64, 224, 224, 2, 3), ("span64", 32 * 112 * 112 // 64, 56)),  # b1: span tiles up to Wo = 112; one
    # dWp block: s0 = 64 (2 waves x 98 tiles), 56 splits take 1 wave x 112 tiles
    ((1, 32, 64, 224, 224, 2, 3), ("span64", 196, 49)),  # b1 at batch 1: 196 tiles, 1 wave x 4 (not 25 x 8)
    ((32, 32, 64, 448, 448, 2, 3), ("rect8x16", 32 * 28 * 14, 56)),  # Wo = 224 > 112: rect, K <= 64 -> 8x16 tiles;
    # dWp over 25,088 8x8 tiles: 56 splits, 1 wave x 448
    ((32, 256, 512, 56, 56, 2, 3), ("span64", 32 * 28 * 28 // 64, 7)),  # 28x28 output at s2 (rect tiles while the
    # window had to fit); 8 wide dWp blocks: s0 = 32, 7 splits take 1 wave x 56 tiles (14 too, more splits)
    ((1, 128, 128, 56, 56, 1, 3), ("span64", 49, 49)),  # b3 at batch 1: one wide dWp block, 49 splits of 1 tile
    ((32, 512, 1024, 28, 28, 2, 3), ("span64", 32 * 196 // 64, 7)),  # 14x14 output: 32 wide dWp blocks -> 7
    ((1, 64, 64, 7, 7, 1, 1), ("span64", 1, 1)),  # capped at the tiles
    ((2, 3, 5, 17, 9, 2, 2), ("span64", 2, 2)),  # 9x5 output, 90 pixels: two span tiles across both images
    ((1, 2048, 2048, 16, 16, 1, 1), ("span64", 4, 1)),  # 512 blocks -> cdiv = 1
    ((1, 8, 8, 40, 40, 1, 7), ("rect8x16", 1 * 5 * 3, 25)),  # runtime dilation: rect tiles
]


@pytest.mark.parametrize("shape,expected", GEOMETRY_CASES)
def test_native_splits_and_tiles_by_hand(shape, expected):
    n, c, k, h, w, s, d = shape
    g = pm.native_geometry(pm.Layer("g", n, c, k, h, w, s, d))
    assert (g.fwd_tile, g.ntiles, g.splits) == expected


_GEO_CPP = r"""
#include "emu/emu.h"
#include "kernels/common.cuh"
#include "kernels/plan.cuh"
#include <cstdio>
int main() {
  long long N, C, K, H, W;
  int s, d;
  while (std::scanf("%lld %lld %lld %lld %lld %d %d", &N, &C, &K, &H, &W, &s, &d) == 7) {
    dsc::Problem p{};
    dsc::set_geometry(p, N, C, K, H, W, s, d);
    p.mode = dsc::kTrain;
    const dsc::BwdWs L = dsc::bwd_ws(p);
    std::printf("%d %lld %d %lld %d %lld %d %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %d %d %d %lld %d %d\n", p.ft.cls,
                (long long)p.ft.ntiles, p.wt.cls, (long long)p.wt.ntiles, p.bt.cls, (long long)p.bt.ntiles, p.splits,
                (long long)p.rgroups, (long long)p.xtiles, (long long)p.xgroups, (long long)dsc::forward_ws_floats(p),
                (long long)L.red, (long long)L.coef, (long long)L.dwp, (long long)L.dwd, (long long)L.dt,
                (long long)dsc::backward_ws_floats(p), (long long)p.span, p.fsplit, p.bsplit, p.dyws,
                (long long)L.dy, p.fpair, p.dwide);
  }
}
"""


@pytest.mark.build
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to compile csrc/kernels/plan.cuh")
def test_native_geometry_matches_plan_cuh(tmp_path):
    """native_geometry against the C++ itself: set_geometry, forward_ws_floats and bwd_ws, compiled with
    the emulator headers (torch-free), over the hand cases and the classifier's blocks."""
    root = Path(__file__).resolve().parents[1]
    src, exe = tmp_path / "geo.cpp", tmp_path / "geo"
    src.write_text(_GEO_CPP)
    build = subprocess.run(
        ["g++", "-std=c++20", "-O0", "-pthread", f"-I{root / 'csrc'}", str(src), "-o", str(exe)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    layers = [pm.Layer("g", *shape) for shape, _ in GEOMETRY_CASES]
    layers += pm.classifier_layers(batch=32) + pm.classifier_layers(batch=3, alpha=0.75, rho=192 / 224)
    layers += pm.classifier_layers(batch=1) + [
        pm.Layer("t", *shape, stride=s, dilation=d) for shape, s, d, _ in TILE_CASES
    ]
    stdin = "".join(f"{l.n} {l.c} {l.k} {l.h} {l.w} {l.stride} {l.dilation}\n" for l in layers)
    run = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True)
    got = [tuple(map(int, line.split())) for line in run.stdout.splitlines()]
    assert len(got) == len(layers)
    cls = {0: "rect8x8", 1: "rect8x16", 2: "span64", 3: "span128"}  # problem.cuh TileClass
    for l, cpp in zip(layers, got):
        g = pm.native_geometry(l)
        assert (
            g.fwd_tile,
            g.ntiles,
            g.dwp_tile,
            g.dwp_tiles,
            g.dt_tile,
            g.dt_tiles,
            g.splits,
            g.rgroups,
            g.xtiles,
            g.xgroups,
            g.fwd_ws_floats,
            g.bwd_red,
            g.bwd_coef,
            g.bwd_dwp,
            g.bwd_dwd,
            g.bwd_dt,
            g.bwd_total,
            int(pm._span(l)),
            g.fsplit,
            g.bsplit,
            g.dyws,
            g.bwd_dy,
            g.fpair,
            g.dwide,
        ) == (cls[cpp[0]], cpp[1], cls[cpp[2]], *cpp[3:4], cls[cpp[4]], *cpp[5:]), l


def test_model_tables_label_every_implementation():
    layers = pm.classifier_layers(batch=2)
    rows = pm.model_rows(layers, "train_fwd_bwd")
    for impl in ("unfused", "native", "native_recompute", "design", "design_recompute"):
        assert rows[-1][f"{impl}_bytes"] == sum(r[f"{impl}_bytes"] for r in rows[:-1])
    assert rows[-1]["native_reread"] > 0 and rows[-1]["native_reread_far"] == 0
    md = pm.markdown(rows)
    assert "native/unfused bytes" in md and "design/unfused bytes" in md and "native far re-reads MB" in md
    assert "native_recompute MB" not in pm.markdown(pm.model_rows(layers, "eval"))
    assert pm.summary_markdown(layers).count("\n") == 4
    assert "dsconv_fwd eval" in pm.kernel_markdown(pm.native(layers[0], "eval"))


def test_cli_runs(capsys):
    assert pm.main(["--batch", "2", "--modes", "eval"]) == 0
    assert pm.main(["--batch", "2", "--summary"]) == 0
    assert pm.main(["--batch", "2", "--kernels", "b9", "--modes", "train_fwd_bwd"]) == 0
    out = capsys.readouterr().out
    assert "MODEL (analytic, not measured" in out and "dsconv_bwd_dwp" in out and "native / unfused" in out


def test_stride_two_shapes_and_classifier_layers():
    l2 = pm.Layer("s2", 2, 8, 16, 5, 5, stride=2)
    assert (l2.ho, l2.wo, l2.m) == (3, 3, 18)
    layers = pm.classifier_layers(batch=1, alpha=1.0, rho=1.0, dilation=3)
    assert [l.name for l in layers] == [f"b{i}" for i in range(1, 10)]
    assert (layers[0].c, layers[0].h, layers[-1].k, layers[-1].h) == (32, 224, 1024, 7)


def test_roofline_is_max_of_bandwidth_and_compute_per_kernel():
    gpu = pm.GPUS["GTX 1080 Ti"]
    mem_bound = pm.Kernel("m", int(484e9), 0, 1)
    compute_bound = pm.Kernel("c", 0, 0, int(11.34e12))
    assert pm.roofline_s([mem_bound], gpu) == pytest.approx(1.0)
    assert pm.roofline_s([mem_bound, compute_bound], gpu) == pytest.approx(2.0)


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        pm.unfused(L, "training")


def test_sync_bn_exchange_by_hand():
    """Synchronised BN per block and step: 2K + 1 values forward (count, mean, M2), 2K backward (K = 4 here); on
    a ring each process sends (P - 1)(2K + 1) for the forward's all-gather and 2 (P - 1) / P 2K for the
    backward's all-reduce, in float32."""
    assert pm.sync_bn_values(L, "eval") == {"forward": 0, "backward": 0}
    assert pm.sync_bn_values(L, "train_fwd") == {"forward": 9, "backward": 0}
    assert pm.sync_bn_values(L, "train_fwd_bwd") == {"forward": 9, "backward": 8}
    assert pm.sync_bn_wire_bytes(L, "train_fwd_bwd", 2) == (1 * 9 + 1 * 8) * 4 == 68
    assert pm.sync_bn_wire_bytes(L, "train_fwd_bwd", 4) == (3 * 9 + 12) * 4 == 156
    assert pm.block_param_values(L) == 9 * 2 + 4 * 2 + 2 * 4
    table = pm.sync_markdown([L], (2,))
    assert "| 2 | 9 + 8 | 0.1 KB |" in table
