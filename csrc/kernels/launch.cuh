// Torch-free launcher: grid / block / workspace logic of the op family, templated on a launch
// policy so the same code drives real CUDA launches (csrc/native_cuda.cu: CudaPolicy) and emulated
// ones (csrc/emu/emu_ext.cpp, csrc/emu/tsan_test.cpp: EmuPolicy).
//
// A policy provides:  template <class K, class... A> static void launch(K kernel, int64_t gx, int64_t gy,
//                     int64_t gz, int threads, A... args);   // launches and checks the launch
#pragma once

#include "fused.cuh"

namespace dsc {

// At most this many dWp partials (blocks along the pixel-tile axis). csrc/emu/tsan_main.cpp lowers it so
// that its small problems give a dwp_kernel block more than one tile (its end-of-tile barrier then matters).
#ifndef DSC_DWP_MAX_SPLITS
#define DSC_DWP_MAX_SPLITS 64
#endif

// Fills the geometry fields of p from (N, C, K, H, W, stride, dilation).
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
  p.tiles_h = cdiv(p.Ho, kTileSide);
  p.tiles_w = cdiv(p.Wo, kTileSide);
  p.ntiles = N * p.tiles_h * p.tiles_w;
  // dWp: enough blocks along the pixel axis to fill a GPU (~256 blocks), at most 64 partials.
  const int64_t blocks = cdiv(K, 64) * cdiv(C, 64);
  int64_t splits = cdiv(256, blocks);
  if (splits > DSC_DWP_MAX_SPLITS) splits = DSC_DWP_MAX_SPLITS;
  if (splits > p.ntiles) splits = p.ntiles;
  p.splits = static_cast<int>(splits < 1 ? 1 : splits);
  int lanes = 1;
  while (lanes < K && lanes < kThreads) lanes *= 2;
  p.norm_lanes = lanes;
}

inline int64_t forward_ws_floats(const Problem& p) { return p.mode == kTrain ? 2 * p.ntiles * p.K : 0; }
inline int64_t backward_ws_floats(const Problem& p) { return bwd_ws(p).total; }

// Grid y / z of the (channel block, pixel tile) kernels: tile = y + z * grid.y (see tile_block).
#ifndef DSC_TILE_GRID_Y
#define DSC_TILE_GRID_Y 65535  // CUDA's grid.y limit; csrc/emu/tsan_main.cpp lowers it to run the z split
#endif
inline int64_t tile_grid_y(const Problem& p) { return p.ntiles < DSC_TILE_GRID_Y ? p.ntiles : DSC_TILE_GRID_Y; }
inline int64_t tile_grid_z(const Problem& p) { return cdiv(p.ntiles, DSC_TILE_GRID_Y); }

inline int64_t elementwise_blocks(int64_t total) {
  const int64_t b = cdiv(total, kThreads);
  return b < 1 ? 1 : (b > (1 << 20) ? (1 << 20) : b);
}

// Dilations 1..4 are compile-time specialisations; anything else runs the runtime-dilation path (0).
// (A macro rather than a templated lambda: the CUDA build compiles as C++17.)
#define DSC_DISPATCH_DILATION(dil, ...)        \
  switch (dil) {                               \
    case 1: { constexpr int D = 1; __VA_ARGS__; } break; \
    case 2: { constexpr int D = 2; __VA_ARGS__; } break; \
    case 3: { constexpr int D = 3; __VA_ARGS__; } break; \
    case 4: { constexpr int D = 4; __VA_ARGS__; } break; \
    default: { constexpr int D = 0; __VA_ARGS__; } break; \
  }

// Forward. mode kEval: out; kTrain: y, mean, var, out; kYOnly: y (backward's recompute mode).
template <class P, class T>
void forward(const Problem& p, float* ws) {
  DSC_DISPATCH_DILATION(p.dil, P::launch(fwd_kernel<T, D>, cdiv(p.K, kBK), tile_grid_y(p), tile_grid_z(p), kThreads,
                                         p, ws));
  if (p.mode != kTrain) return;
  P::launch(stats_finalize_kernel<>, p.K, 1, 1, kThreads, p, static_cast<const float*>(ws));
  if (p.cl) {
    const int64_t rows_per_block = kThreads / p.norm_lanes;
    P::launch(normalize_kernel<T>, elementwise_blocks(cdiv(p.N * p.Ho * p.Wo, rows_per_block) * kThreads), 1, 1,
              kThreads, p);
  } else {
    P::launch(normalize_kernel<T>, elementwise_blocks(p.Ho * p.Wo), p.K < 65535 ? p.K : 65535,
              p.N < 65535 ? p.N : 65535, kThreads, p);
  }
}

// Backward (mode kTrain or kEval; p.act is y or out). Writes dx, dwd, dwp (dtype T) and the fp32
// per-channel gradients. ws must hold backward_ws_floats(p) floats.
template <class P, class T>
void backward(const Problem& p, float* ws) {
  const BwdWs L = bwd_ws(p);
  P::launch(bwd_reduce_kernel<T>, p.ntiles, cdiv(p.K, kBK), 1, kThreads, p, ws);
  P::launch(bn_bwd_finalize_kernel<>, cdiv(p.K, kThreads), 1, 1, kThreads, p, ws);
  DSC_DISPATCH_DILATION(p.dil,
      P::launch(dwp_kernel<T, D>, cdiv(p.K, 64), cdiv(p.C, 64), p.splits, kThreads, p, ws);
      P::launch(dt_kernel<T, D>, cdiv(p.C, kBCd), tile_grid_y(p), tile_grid_z(p), kThreads, p, ws);
      P::launch(dx_kernel<T, D>, elementwise_blocks(p.N * p.C * p.H * p.W), 1, 1, kThreads, p,
                static_cast<const float*>(ws)));
  P::launch(colsum_kernel<T>, cdiv(p.K * p.C, kThreads), 1, 1, kThreads, static_cast<const float*>(ws + L.dwp),
            static_cast<int64_t>(p.splits), p.K * p.C, static_cast<T*>(p.dwp));
  P::launch(colsum_kernel<T>, cdiv(p.C * 9, kThreads), 1, 1, kThreads, static_cast<const float*>(ws + L.dwd),
            p.ntiles, p.C * 9, static_cast<T*>(p.dwd));
}

}  // namespace dsc
