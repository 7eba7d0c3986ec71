// Launch planning, host side of the launcher: from (N, C, K, H, W, stride, dilation) to the tile classes,
// splits and workspace sizes of a Problem, and the declarations of the launchers (defined in launch.cuh).
// Kernel-free, so the torch binding of the CUDA build (csrc/native_cuda.cpp) compiles with the host
// compiler alone: only the launcher translation units (csrc/native_fwd.cu, csrc/native_bwd_*.cu) go
// through nvcc.
#pragma once

#include "problem.cuh"

namespace dsc {

// At most this many dWp partials (blocks along the pixel-tile axis). csrc/emu/tsan_main.cpp lowers it so
// that its small problems give a dsconv_bwd_dwp block more than one tile (its end-of-tile barriers matter).
#ifndef DSC_DWP_MAX_SPLITS
#define DSC_DWP_MAX_SPLITS 64
#endif

// Widest output map on span tiles (dsconv_dw computes the depthwise output once, dsconv_fwd is then a pure
// GEMM over it): 112, the classifier's widest (b1 at 224 x 224). SIMULATED (GTX 1080 Ti config, batch 1,
// eval): b5 of the classifier (256 -> 256 at 28x28) 95,325 cycles on span tiles against 184,306 on 8x8 rect
// tiles (2 channel blocks x 16 tiles: 32 blocks on 28 SMs) and 158,699 unfused; b3 (128 -> 128 at 56x56)
// 79,441 against 100,015 and 128,808; b1 (32 -> 64 at 112x112, stride 2) 95,844 (dsconv_dw 45,949, dsconv_fwd
// in pairs 49,895, though K = 64 leaves half of its 128-channel tile idle) against 149,253 on 8x16 rect tiles
// (a 21 x 37 window per channel staged for 128 pixels: a fifth of the instructions were FMAs) and 173,376
// unfused. The price is dsconv_dw's t in the workspace, C x M floats (b1 and b3 at batch 32: 51 MB, what the
// unfused chain holds for its depthwise output too). Wider maps keep rect tiles, which need no workspace.
#ifndef DSC_SPAN_MAX_WO
#define DSC_SPAN_MAX_WO 112
#endif

constexpr int64_t kFwdWave = 56;  // tiled-kernel blocks resident at once on a GTX 1080 Ti (2 per SM)

// dsconv_fwd on span tiles takes its tiles in pairs (8 x 8 outputs per thread, forward.cuh) from this many
// single-tile blocks on: two waves, so that pairs still fill one. csrc/emu/tsan_main.cpp lowers it to run
// the paired kernel on its small problems.
#ifndef DSC_FWD_PAIR_BLOCKS
#define DSC_FWD_PAIR_BLOCKS (2 * kFwdWave)
#endif

// The dilations compiled as template specialisations, a bit mask (bit d for dilation d, 1..4); every other
// dilation runs the runtime-dilation kernels (D = 0), as dilations above 4 always do. A fast build
// (DSC_FAST_BUILD: FUSED_DSCONV_FAST_BUILD=1, fused_dsconv/_build_config.py) compiles none, about a third of
// the device code, for the test suite's build checks and quick iteration: the same results, slower kernels.
// Test programs that run a few dilations compile only those (csrc/emu/tsan_main.cpp, the simulator host
// programs' build check). In a full build runtime_dilation_only() lets the emulator tests run a fast build's
// plans.
#ifdef DSC_FAST_BUILD
#undef DSC_KERNEL_DILATIONS
#define DSC_KERNEL_DILATIONS 0
#endif
#ifndef DSC_KERNEL_DILATIONS
#define DSC_KERNEL_DILATIONS 0x1e  // 1, 2, 3 and 4
#endif
inline bool& runtime_dilation_only() {
  static bool only = false;
  return only;
}
// The dilation the kernels are specialised for: one of DSC_KERNEL_DILATIONS, or 0 (read from the problem at
// run time).
inline int kernel_dilation(int d) {
  return d >= 1 && d <= 4 && ((DSC_KERNEL_DILATIONS >> d) & 1) && !runtime_dilation_only() ? d : 0;
}

// Span tiles (64 consecutive pixels across images) need a template dilation, small maps and 32-bit pixel
// numbers (dsconv_dw and the slot tables divide them in 32 bits). No kernel stages a span tile's window any
// more (dsconv_dw reads x per pixel, everything after it reads t), so the window's size no longer matters.
// While it did, b2 and b4 (windows of 11 rows of 118 and 13 of 62 floats) and b3 from batch 2 on took
// rect tiles. SIMULATED (batch 1, eval) with rect tiles: b4 142,278 cycles against 90,191 unfused.
inline bool span_tiles(int64_t M, int64_t Wo, int d) {
  return kernel_dilation(d) > 0 && Wo <= DSC_SPAN_MAX_WO && M < (int64_t(1) << 31);
}

inline Tiling rect_tiling(int cls, int64_t N, int64_t Ho, int64_t Wo) {
  const int tw = cls == kTileRect8x16 ? 16 : 8;
  Tiling t{cls, 0, cdiv(Wo, tw), 0};
  t.tiles_img = cdiv(Ho, 8) * t.tiles_w;
  t.ntiles = N * t.tiles_img;
  return t;
}
inline Tiling span_tiling(int cls, int64_t M) { return Tiling{cls, cdiv(M, cls == kTileSpan64 ? 64 : 128), 0, 0}; }

// Fills the geometry fields of p from (N, C, K, H, W, stride, dilation): tilings and partial-row counts.
inline void set_geometry(Problem& p, int64_t N, int64_t C, int64_t K, int64_t H, int64_t W, int stride, int dil) {
  p.N = N;
  p.C = C;
  p.K = K;
  p.H = H;
  p.W = W;
  p.stride = stride;
  p.dil = dil;
  p.Ho = (H - 1) / stride + 1;
  p.Wo = (W - 1) / stride + 1;
  p.M = N * p.Ho * p.Wo;
  // Forward tiles: span tiles on small maps; 64 channels x 8x16 pixels when K <= 64 on wide maps (one
  // channel block, no idle half); else 128 channels x 8x8. dWp: span or 8x8 (64-pixel tiles). dt: span
  // tiles always (it has no window), 128 pixels x 64 channels when C <= 64.
  p.span = span_tiles(p.M, p.Wo, dil) ? 1 : 0;
  if (p.span) {
    p.ft = p.wt = span_tiling(kTileSpan64, p.M);
  } else {
    p.ft = rect_tiling((K <= 64 && p.Wo > 8) ? kTileRect8x16 : kTileRect8x8, N, p.Ho, p.Wo);
    p.wt = rect_tiling(kTileRect8x8, N, p.Ho, p.Wo);
  }
  p.bt = span_tiling(C <= 64 ? kTileSpan128 : kTileSpan64, p.M);
  // Input-channel split of dsconv_fwd: where K blocks x tiles fall short of one wave (2 blocks on each of
  // a GTX 1080 Ti's 28 SMs), the input channels are split over up to that many blocks, at least 32 channels
  // each; dsconv_fwd_reduce then sums the partial tiles in order.
  {
    int64_t blocks = cdiv(K, p.ft.cls == kTileRect8x16 ? 64 : 128) * p.ft.ntiles;
    p.fpair = (p.ft.cls == kTileSpan64 && blocks >= DSC_FWD_PAIR_BLOCKS) ? 1 : 0;
    if (p.fpair) blocks = cdiv(K, 128) * cdiv(p.ft.ntiles, 2);
    int64_t split = blocks >= kFwdWave ? 1 : kFwdWave / blocks;
    if (split > C / 32) split = C / 32;
    if (split < 1) split = 1;
    p.csplit = cdiv(cdiv(C, split), 8) * 8;
    p.fsplit = static_cast<int>(cdiv(C, p.csplit));
  }
  auto fd = [](int64_t v) { return fast_div(static_cast<uint32_t>(v < 1 ? 1 : (v < (1 << 30) ? v : (1 << 30)))); };
  p.div_hw = fd(p.Ho * p.Wo);
  p.div_wo = fd(p.Wo);
  p.div_k = fd(K);
  p.div_hp = fd(H + 2 * dil);
  p.div_cwin = fd(W + 2 * dil);
  // Output-channel split of dsconv_bwd_dt, as the forward's: where C blocks x tiles fall short of one wave,
  // up to that many splits of at least 64 output channels each.
  {
    const int64_t blocks = cdiv(C, p.bt.cls == kTileSpan128 ? 64 : 128) * p.bt.ntiles;
    int64_t split = blocks >= kFwdWave ? 1 : kFwdWave / blocks;
    if (split > K / 64) split = K / 64;
    if (split < 1) split = 1;
    p.ksplit = cdiv(cdiv(K, split), 8) * 8;
    p.bsplit = static_cast<int>(cdiv(K, p.ksplit));
  }
  // bn_bwd_reduce: ~512 blocks (channel blocks x pixel groups of >= 256 pixels, a multiple of 32).
  const int64_t kb = cdiv(K, 8);
  int64_t groups = cdiv(512, kb);
  if (groups > cdiv(p.M, 256)) groups = cdiv(p.M, 256);
  if (groups < 1) groups = 1;
  p.rgroup_px = cdiv(cdiv(p.M, groups), 32) * 32;
  p.rgroups = p.M > 0 ? cdiv(p.M, p.rgroup_px) : 1;
  // dWp: splits of the pixel tiles over blocks, each split one [K, C] partial that colsum reads back. Up to
  // about 256 blocks (at most 64 splits and the tiles), the fewest splits with the fewest waves (kFwdWave
  // blocks) x tiles per block: b3 at batch 1 (2 channel blocks x 49 tiles) gets 25 splits, one wave of 2
  // tiles, not 49 (two waves of 1 tile, twice the partials); b7 (32 x 4 tiles) keeps 4; b1 (one channel
  // block x 196 tiles) gets 49, one wave of 4 tiles. (The rule was "no more rounds than the largest count",
  // which gave b1 25 splits: one block on each of 25 SMs for 8 tiles, SIMULATED 405,223 cycles.)
  // Span tiles with both channel counts at least 128 (b3-b9 of the classifier): 128 x 128 blocks of dWp, an
  // 8 x 8 register block per thread (dsconv_bwd_dwp, WIDE), each staged dy value feeding 128 input channels
  // instead of 64. Not below 128: the 128 x 64 tile's corner groups compute b1's 64 x 32 without idle rows.
  p.dwide = (p.wt.cls == kTileSpan64 && K >= kDwpK && C >= kDwpWideC) ? 1 : 0;
  const int64_t blocks = cdiv(K, kDwpK) * cdiv(C, p.dwide ? kDwpWideC : kDwpC);
  int64_t smax = cdiv(256, blocks);
  if (smax > DSC_DWP_MAX_SPLITS) smax = DSC_DWP_MAX_SPLITS;
  if (smax > p.wt.ntiles) smax = p.wt.ntiles;
  if (smax < 1) smax = 1;
  auto rounds = [&](int64_t s) { return cdiv(blocks * s, kFwdWave) * cdiv(p.wt.ntiles, s); };
  int64_t splits = 1;
  for (int64_t s = 2; s <= smax; ++s)
    if (rounds(s) < rounds(splits)) splits = s;
  p.splits = static_cast<int>(splits);
  // dy stored once (bn_bwd_dy) where dsconv_bwd_dt and dsconv_bwd_dwp would form it from dout and y more
  // than three times over in all (once per input-channel block each): that reads 2 K M values per block,
  // against 3 K M once (dout, y in; dy out) and K M per block. b5-b9 of the classifier (C >= 256: 6 to 24
  // blocks), not b1-b4 (2 or 3). K M < 2^31: bn_bwd_dy numbers elements in 32 bits.
  {
    const int64_t reads = cdiv(C, p.bt.cls == kTileSpan128 ? 64 : 128) + cdiv(C, p.dwide ? kDwpWideC : kDwpC);
    p.dyws = (reads > 3 && K * p.M < (int64_t(1) << 31)) ? 1 : 0;
  }
  // dx: 8x8 input tiles; ~1024 blocks of 8-channel chunks x tile groups (dWd partial rows).
  p.xtiles_w = cdiv(W, 8);
  p.xtiles_img = cdiv(H, 8) * p.xtiles_w;
  p.xtiles = N * p.xtiles_img;
  int64_t xg = cdiv(1024, cdiv(C, 8));
  if (xg > p.xtiles) xg = p.xtiles;
  if (xg > 65535) xg = 65535;
  p.xgroups = xg < 1 ? 1 : xg;
}

inline int64_t forward_ws_floats(const Problem& p) { return fwd_ws_floats(p); }
inline int64_t backward_ws_floats(const Problem& p) { return bwd_ws(p).total; }

// The launchers (csrc/kernels/launch.cuh), templated on the launch policy P and the storage type T.
template <class P, class T>
void forward_conv(const Problem& p, float* ws);
template <class P, class T>
void forward_stats(const Problem& p, float* ws);
template <class P, class T>
void normalize(const Problem& p, float* ws);
template <class P, class T>
void forward(const Problem& p, float* ws);
template <class P, class T>
void backward_sums(const Problem& p, float* ws);
template <class P, class T>
void backward_convs(const Problem& p, float* ws);
template <class P, class T>
void backward(const Problem& p, float* ws);

}  // namespace dsc
