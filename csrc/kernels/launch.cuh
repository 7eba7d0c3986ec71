// Torch-free launcher: the kernel launches of the op family (planning: plan.cuh), templated on a launch
// policy so the same code drives real CUDA launches (csrc/binding/cuda_policy.cuh: CudaPolicy) and emulated
// ones (csrc/emu/emu_ext.cpp, csrc/emu/tsan_main.cpp: EmuPolicy).
//
// A policy provides:  template <class K, class... A> static void launch(K kernel, int64_t gx, int64_t gy,
//                     int64_t gz, int threads, A... args);   // launches and checks the launch
#pragma once

#include "fused.cuh"
#include "plan.cuh"

namespace dsc {

// Grid y / z of the (channel block, pixel tile) kernels: tile = y + z * grid.y (see tile_block).
#ifndef DSC_TILE_GRID_Y
#define DSC_TILE_GRID_Y 65535  // CUDA's grid.y limit; csrc/emu/tsan_main.cpp lowers it to run the z split
#endif
inline int64_t tile_grid_y(int64_t ntiles) { return ntiles < DSC_TILE_GRID_Y ? ntiles : DSC_TILE_GRID_Y; }
inline int64_t tile_grid_z(int64_t ntiles) { return cdiv(ntiles, DSC_TILE_GRID_Y); }

// Dilations 1..4 are compile-time specialisations where DSC_KERNEL_DILATIONS has them (plan.cuh:
// kernel_dilation); anything else runs the runtime-dilation path (0), as every dilation does in a fast build
// or with runtime_dilation_only() set. A dilation left out of the mask is never instantiated.
// (Macros rather than a templated lambda: the CUDA build compiles as C++17.)
#define DSC_DILATION_CASE(d, ...) \
  case d: {                       \
    constexpr int D = d;          \
    __VA_ARGS__;                  \
  } break;
#if (DSC_KERNEL_DILATIONS >> 1) & 1
#define DSC_DILATION_CASE_1(...) DSC_DILATION_CASE(1, __VA_ARGS__)
#else
#define DSC_DILATION_CASE_1(...)
#endif
#if (DSC_KERNEL_DILATIONS >> 2) & 1
#define DSC_DILATION_CASE_2(...) DSC_DILATION_CASE(2, __VA_ARGS__)
#else
#define DSC_DILATION_CASE_2(...)
#endif
#if (DSC_KERNEL_DILATIONS >> 3) & 1
#define DSC_DILATION_CASE_3(...) DSC_DILATION_CASE(3, __VA_ARGS__)
#else
#define DSC_DILATION_CASE_3(...)
#endif
#if (DSC_KERNEL_DILATIONS >> 4) & 1
#define DSC_DILATION_CASE_4(...) DSC_DILATION_CASE(4, __VA_ARGS__)
#else
#define DSC_DILATION_CASE_4(...)
#endif
#define DSC_DISPATCH_DILATION(dil, ...) \
  switch (kernel_dilation(dil)) {       \
    DSC_DILATION_CASE_1(__VA_ARGS__)    \
    DSC_DILATION_CASE_2(__VA_ARGS__)    \
    DSC_DILATION_CASE_3(__VA_ARGS__)    \
    DSC_DILATION_CASE_4(__VA_ARGS__)    \
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
// The limit is a variable only so that the simulator's plan probes (tools/sim/fused_sim.cu --plan-batch) can
// run a large batch's choice on a small shape; nothing else sets it.
inline int64_t& dw_pair_threads() {
  static int64_t limit = 28 * 512 * 5 / 2;
  return limit;
}
inline int64_t dw_grid_y(const Problem& p) {
  const int64_t threads2 = p.ft.ntiles * TileSpan64::BP * cdiv(p.C, 2);
  const int64_t g = cdiv(p.C, threads2 <= dw_pair_threads() ? 2 : kDwChannels);
  return g < 65535 ? g : 65535;
}

template <class P, class T, class Tl, int S, int D>
void launch_fwd(const Problem& p, float* ws) {
  if constexpr (Tl::SPAN) {  // t for every pixel first (dsconv_dw), then dsconv_fwd as a pure GEMM over it
    const int64_t mp = p.ft.ntiles * Tl::BP, th = mp < 256 ? mp : 256;  // mp: a multiple of 64
    P::launch(dsconv_dw_kernel<T, S, D>, cdiv(mp, th), dw_grid_y(p), 1, static_cast<int>(th), p, ws + fwd_t_offset(p));
  }
  if constexpr (Tl::SPAN) {
    if (p.fpair) {
      const int64_t pairs = cdiv(p.ft.ntiles, 2);
      P::launch(dsconv_fwd_kernel<T, Tl, S, D, true>, cdiv(p.K, Tl::BK) * p.fsplit, tile_grid_y(pairs),
                tile_grid_z(pairs), Tl::THREADS, p, ws);
    }
  }
  if (!p.fpair)
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

// (bn_bwd_dy,) dsconv_bwd_dt, dsconv_bwd_dwp, dsconv_bwd_dx, colsum: dx, dwd, dwp from dy's coefficients at
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
  if (p.dyws && (want_dt || want_dwp)) P::launch(bn_bwd_dy_kernel<T>, cdiv(p.K * p.M, 1024), 1, 1, 256, p, ws);
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
            if (p.dwide)
              P::launch(dsconv_bwd_dwp_kernel<T, TileSpan64, 1, 0, true>, cdiv(p.K, kDwpK), cdiv(p.C, kDwpWideC),
                        p.splits, 256, p, ws);
            else
              P::launch(dsconv_bwd_dwp_kernel<T, TileSpan64, S, D>, cdiv(p.K, kDwpK), cdiv(p.C, kDwpC), p.splits, 256,
                        p, ws);
          }
        }
        const int cc = p.cl ? DxWindow<S, D>::CCL : 8;
        if (want_dt) P::launch(dsconv_bwd_dx_kernel<T, S, D>, cdiv(p.C, cc), p.xgroups, 1, 256, p, ws);
      }));
  // A job with no columns gets no colsum blocks (colsum_blocks_a / _b of 0): an unwanted gradient, or dWp
  // from one split, which dsconv_bwd_dwp stored itself. (dsconv_bwd_dx always leaves dWd partials: a branch
  // to store one group's sums directly made it spill 12-36 bytes on sm_61.)
  const ColsumJob<T> jwp{ws + L.dwp, p.splits, want_dwp && p.splits > 1 ? p.K * p.C : 0, static_cast<T*>(p.dwp)};
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
