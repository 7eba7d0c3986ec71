// Torch-free launcher: grid / block / workspace logic of the op family, templated on a launch
// policy so the same code drives real CUDA launches (csrc/native_cuda.cu: CudaPolicy) and emulated
// ones (csrc/emu/emu_ext.cpp, csrc/emu/tsan_main.cpp: EmuPolicy).
//
// A policy provides:  template <class K, class... A> static void launch(K kernel, int64_t gx, int64_t gy,
//                     int64_t gz, int threads, A... args);   // launches and checks the launch
#pragma once

#include "fused.cuh"

namespace dsc {

// At most this many dWp partials (blocks along the pixel-tile axis). csrc/emu/tsan_main.cpp lowers it so
// that its small problems give a dsconv_bwd_dwp block more than one tile (its end-of-tile barriers matter).
#ifndef DSC_DWP_MAX_SPLITS
#define DSC_DWP_MAX_SPLITS 64
#endif

// Widest output map on span tiles (dsconv_dw computes the depthwise output once, dsconv_fwd is then a pure
// GEMM over it). SIMULATED (GTX 1080 Ti config, batch 1, eval): b5 of the classifier (256 -> 256 at 28x28)
// 95,325 cycles on span tiles against 184,306 on 8x8 rect tiles (2 channel blocks x 16 tiles: 32 blocks on
// 28 SMs) and 158,699 unfused; b3 (128 -> 128 at 56x56) 79,441 against 100,015 and 128,808. The price is
// dsconv_dw's t in the workspace, C x M floats (b3 at batch 32: 51 MB, what the unfused chain holds for its
// depthwise output too). b2 and b4 stay on rect tiles: their windows per channel (11 rows of 118, 13 of 62)
// are over kSpanHalo.
#ifndef DSC_SPAN_MAX_WO
#define DSC_SPAN_MAX_WO 56
#endif

constexpr int64_t kFwdWave = 56;  // tiled-kernel blocks resident at once on a GTX 1080 Ti (2 per SM)

// Span tiles (64 consecutive pixels across images) need a template dilation, small maps, 32-bit pixel
// and padded-row numbers, and a staged window within kSpanHalo floats per channel. Returns the most
// padded rows a tile stages, or 0 if span tiles do not apply.
inline int span_rows(int64_t N, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int s, int d) {
  if (d < 1 || d > 4 || Wo > DSC_SPAN_MAX_WO || N * Ho * Wo >= (int64_t(1) << 31) ||
      N * (H + 2 * d) >= (int64_t(1) << 31))
    return 0;
  int64_t dr = (Wo + 62) / Wo, dn = (Ho * Wo + 62) / (Ho * Wo);  // most output rows / images a tile crosses
  if (dr > N * Ho - 1) dr = N * Ho - 1;
  if (dn > N - 1) dn = N - 1;
  if ((dn + 1) * C * H * W >= (int64_t(1) << 31)) return 0;  // staged offsets from the first image are 32-bit
  const int64_t rows = s * dr + dn * (H + 2 * d - s * Ho) + 2 * d + 1;
  return (rows <= kSpanRowsMax && rows * (W + 2 * d) <= kSpanHalo) ? static_cast<int>(rows) : 0;
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
  p.span_rows = span_rows(N, C, H, W, p.Ho, p.Wo, stride, dil);
  if (p.span_rows > 0) {
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
    const int64_t blocks = cdiv(K, p.ft.cls == kTileRect8x16 ? 64 : 128) * p.ft.ntiles;
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
  // dWp: enough blocks along the pixel-tile axis to fill a GPU (~256 blocks), at most 64 partials.
  const int64_t blocks = cdiv(K, kDwpK) * cdiv(C, kDwpC);
  int64_t splits = cdiv(256, blocks);
  if (splits > DSC_DWP_MAX_SPLITS) splits = DSC_DWP_MAX_SPLITS;
  if (splits > p.wt.ntiles) splits = p.wt.ntiles;
  p.splits = static_cast<int>(splits < 1 ? 1 : splits);
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

// Grid y / z of the (channel block, pixel tile) kernels: tile = y + z * grid.y (see tile_block).
#ifndef DSC_TILE_GRID_Y
#define DSC_TILE_GRID_Y 65535  // CUDA's grid.y limit; csrc/emu/tsan_main.cpp lowers it to run the z split
#endif
inline int64_t tile_grid_y(int64_t ntiles) { return ntiles < DSC_TILE_GRID_Y ? ntiles : DSC_TILE_GRID_Y; }
inline int64_t tile_grid_z(int64_t ntiles) { return cdiv(ntiles, DSC_TILE_GRID_Y); }

// Dilations 1..4 are compile-time specialisations; anything else runs the runtime-dilation path (0).
// (A macro rather than a templated lambda: the CUDA build compiles as C++17.)
#define DSC_DISPATCH_DILATION(dil, ...) \
  switch (dil) {                        \
    case 1: {                           \
      constexpr int D = 1;              \
      __VA_ARGS__;                      \
    } break;                            \
    case 2: {                           \
      constexpr int D = 2;              \
      __VA_ARGS__;                      \
    } break;                            \
    case 3: {                           \
      constexpr int D = 3;              \
      __VA_ARGS__;                      \
    } break;                            \
    case 4: {                           \
      constexpr int D = 4;              \
      __VA_ARGS__;                      \
    } break;                            \
    default: {                          \
      constexpr int D = 0;              \
      __VA_ARGS__;                      \
    } break;                            \
  }
#define DSC_DISPATCH_STRIDE(s, ...) \
  if ((s) == 1) {                   \
    constexpr int S = 1;            \
    __VA_ARGS__;                    \
  } else {                          \
    constexpr int S = 2;            \
    __VA_ARGS__;                    \
  }

// dsconv_dw's channel groups (the kernel derives the group size from this): kDwChannels channels per thread,
// or 2 where that still keeps the grid within about 2.5 waves of resident threads (128 registers per thread:
// 512 per SM on a GTX 1080 Ti). SIMULATED, batch 1, eval: b9 (64 pixels x 1024 channels) 12,498 cycles with 2
// against 28,058 with 8 (8192 threads: most SMs idle); b7 (256 x 512) 16,657 with 8 against 18,947 with 2
// (4.6 waves of short blocks).
inline int64_t dw_grid_y(const Problem& p) {
  const int64_t threads2 = p.ft.ntiles * TileSpan64::BP * cdiv(p.C, 2);
  const int64_t g = cdiv(p.C, threads2 <= 28 * 512 * 5 / 2 ? 2 : kDwChannels);
  return g < 65535 ? g : 65535;
}

template <class P, class T, class Tl, int S, int D>
void launch_fwd(const Problem& p, float* ws) {
  if constexpr (Tl::SPAN) {  // t for every pixel first (dsconv_dw), then dsconv_fwd as a pure GEMM over it
    const int64_t mp = p.ft.ntiles * Tl::BP, th = mp < 256 ? mp : 256;  // mp: a multiple of 64
    P::launch(dsconv_dw_kernel<T, S, D>, cdiv(mp, th), dw_grid_y(p), 1, static_cast<int>(th), p, ws + fwd_t_offset(p));
  }
  P::launch(dsconv_fwd_kernel<T, Tl, S, D>, cdiv(p.K, Tl::BK) * p.fsplit, tile_grid_y(p.ft.ntiles),
            tile_grid_z(p.ft.ntiles), Tl::THREADS, p, ws);
  if (p.fsplit > 1)
    P::launch(dsconv_fwd_reduce_kernel<T, Tl>, cdiv(p.K, Tl::BK), tile_grid_y(p.ft.ntiles), tile_grid_z(p.ft.ntiles),
              Tl::THREADS, p, ws);
}

inline int vec_ok(const Problem& p) { return (p.C % 4 == 0 && reinterpret_cast<uintptr_t>(p.wp) % 16 == 0) ? 1 : 0; }

// dsconv_fwd (y, or out in eval mode; kTrain: the tile statistics partials too).
template <class P, class T>
void forward_conv(const Problem& p0, float* ws) {
  Problem p = p0;
  p.vec_wp = vec_ok(p);
  DSC_DISPATCH_STRIDE(p.stride, DSC_DISPATCH_DILATION(p.dil, {
                        if (p.ft.cls == kTileRect8x8)
                          launch_fwd<P, T, TileRect8x8, S, D>(p, ws);
                        else if (p.ft.cls == kTileRect8x16)
                          launch_fwd<P, T, TileRect8x16, S, D>(p, ws);
                        else if constexpr (D > 0)
                          launch_fwd<P, T, TileSpan64, S, D>(p, ws);
                      }));
}

// Pass 1 of training (mode kTrain): y and its statistics (p.mean, p.var; bn_relu's scale / shift in ws).
template <class P, class T>
void forward_stats(const Problem& p, float* ws) {
  forward_conv<P, T>(p, ws);
  P::launch(bn_stats_kernel<>, cdiv(p.K, 32), 1, 1, 256, p, ws);
}

// Pass 2 (mode kTrain): out = relu(y a + b) with the scale / shift at ws + fwd_ss_offset(p) (bn_stats', or
// written by the caller from statistics merged elsewhere); ws is only read.
template <class P, class T>
void normalize(const Problem& p, float* ws) {
  // bn_relu: rows of L elements (NCHW: N K planes of Ho Wo; channels_last: M pixels of K channels).
  const int64_t L = p.cl ? p.K : p.Ho * p.Wo, R = p.cl ? p.M : p.N * p.K;
  const int64_t rows = L >= 1024 ? 1 : 1024 / L, cols = L >= 1024 ? 1024 : L;
  P::launch(bn_relu_kernel<T>, cdiv(R, rows), cdiv(L, cols), 1, 256, p, static_cast<const float*>(ws), rows, cols);
}

// Forward. mode kEval: out; kTrain: y, mean, var, out; kYOnly: y (backward's recompute mode). The stages
// above are also the split passes of synchronised batch norm (the op layer merges the statistics over
// processes between forward_stats and normalize, fused_dsconv/distributed.py).
template <class P, class T>
void forward(const Problem& p, float* ws) {
  if (p.mode != kTrain) return forward_conv<P, T>(p, ws);
  forward_stats<P, T>(p, ws);
  normalize<P, T>(p, ws);
}

// bn_bwd_reduce + bn_bwd_finalize: the per-channel sums (p.dbeta = sum dz, p.dgamma = sum dz yhat with an
// affine BN), p.dbias, and dy's coefficients in ws.
template <class P, class T>
void backward_sums(const Problem& p, float* ws) {
  P::launch(bn_bwd_reduce_kernel<T>, cdiv(p.K, p.cl ? 32 : 8), p.rgroups, 1, 256, p, ws);
  P::launch(bn_bwd_finalize_kernel<>, cdiv(p.K, 32), 1, 1, 256, p, ws);
}

// dsconv_bwd_dt, dsconv_bwd_dwp, dsconv_bwd_dx, colsum: dx, dwd, dwp from dy's coefficients at
// ws + bwd_ws(p).coef (bn_bwd_finalize's, or written by the caller from sums merged elsewhere).
// p.unwanted (the op's output_mask negated) skips what only an unwanted gradient needs: without dWp, no
// dsconv_dw / dsconv_bwd_dwp and no dWp colsum; without dx and dWd, no dsconv_bwd_dt (its dt feeds only those
// two) and no dsconv_bwd_dx. One of the two still runs dsconv_bwd_dx whole: dx and the dWd partials share its
// staged dt window, so only the dWd colsum is left out, and p.dx must be a buffer whenever dWd is wanted (the
// op layer passes a scratch dx then: a branch around the store made the kernel spill on sm_61). Otherwise an
// unwanted output's pointer is never written (it may be null).
template <class P, class T>
void backward_convs(const Problem& p0, float* ws) {
  Problem p = p0;
  p.vec_wp = vec_ok(p);
  const BwdWs L = bwd_ws(p);
  const bool want_dwd = !(p.unwanted & kGradDw), want_dwp = !(p.unwanted & kGradPw);
  const bool want_dt = !(p.unwanted & kGradX) || want_dwd;
  if (want_dt) {
    if (p.bt.cls == kTileSpan64)
      P::launch(dsconv_bwd_dt_kernel<T, TileSpan64>, cdiv(p.C, TileSpan64::BK) * p.bsplit, tile_grid_y(p.bt.ntiles),
                tile_grid_z(p.bt.ntiles), TileSpan64::THREADS, p, ws);
    else
      P::launch(dsconv_bwd_dt_kernel<T, TileSpan128>, cdiv(p.C, TileSpan128::BK) * p.bsplit, tile_grid_y(p.bt.ntiles),
                tile_grid_z(p.bt.ntiles), TileSpan128::THREADS, p, ws);
  }
  DSC_DISPATCH_STRIDE(
      p.stride, DSC_DISPATCH_DILATION(p.dil, {
        if (want_dwp) {
          if (p.wt.cls == kTileRect8x8)
            P::launch(dsconv_bwd_dwp_kernel<T, TileRect8x8, S, D>, cdiv(p.K, kDwpK), cdiv(p.C, kDwpC), p.splits, 256, p,
                      ws);
          else if constexpr (D > 0) {  // t for every pixel first (dsconv_dw), read by the dWp blocks of every K block
            const int64_t mp = p.wt.ntiles * 64, th = mp < 256 ? mp : 256;
            P::launch(dsconv_dw_kernel<T, S, D>, cdiv(mp, th), dw_grid_y(p), 1, static_cast<int>(th), p, ws + L.t);
            P::launch(dsconv_bwd_dwp_kernel<T, TileSpan64, S, D>, cdiv(p.K, kDwpK), cdiv(p.C, kDwpC), p.splits, 256, p,
                      ws);
          }
        }
        const int cc = p.cl ? DxWindow<S, D>::CCL : 8;
        if (want_dt) P::launch(dsconv_bwd_dx_kernel<T, S, D>, cdiv(p.C, cc), p.xgroups, 1, 256, p, ws);
      }));
  // A job with no columns gets no colsum blocks (colsum_blocks_a / _b of 0).
  const ColsumJob<T> jwp{ws + L.dwp, p.splits, want_dwp ? p.K * p.C : 0, static_cast<T*>(p.dwp)};
  const ColsumJob<T> jwd{ws + L.dwd, p.xgroups, want_dwd ? p.C * 9 : 0, static_cast<T*>(p.dwd)};
  const int64_t blocks = colsum_blocks_a(jwp.cols) + colsum_blocks_b(jwd.cols);
  if (blocks > 0) P::launch(colsum_kernel<T>, blocks, 1, 1, 256, jwp, jwd);
}

// Backward (mode kTrain or kEval; p.act is y or out). Writes dx, dwd, dwp (dtype T) and the fp32
// per-channel gradients; ws must hold backward_ws_floats(p) floats. Its two stages above are also the split
// passes of synchronised batch norm (the sums merged over processes in between).
template <class P, class T>
void backward(const Problem& p, float* ws) {
  backward_sums<P, T>(p, ws);
  backward_convs<P, T>(p, ws);
}

}  // namespace dsc
