// Kernels of the fused joint block: 3x3 depthwise (dilation d, padding d, stride s) -> 1x1 pointwise
// -> batch norm -> ReLU. Torch-free: included by the CUDA extension, the NVRTC sm_61 check and the
// CPU emulator. Design notes and the tile picture: docs/cuda.md.
//
// Notation: x [N, C, H, W], Wd [C, 9], Wp [K, C], t = dw(x) [N, C, Ho, Wo], y = Wp t + bias [N, K, Ho, Wo].
// A "tile" is 8x8 output pixels of one image; tiles are numbered n-major, then tile row, then tile column.
#pragma once

#include "common.cuh"

namespace dsc {

constexpr int kThreads = 256;  // every kernel: 256 threads, 1-D
constexpr int kTileSide = 8;   // a tile is 8x8 output pixels
constexpr int kTP = 64;        // pixels per tile
constexpr int kBK = 64;        // output channels per block (forward, dWp)
constexpr int kBC = 16;        // input channels per depthwise chunk (forward)
constexpr int kBCd = 64;       // input channels per block (dt kernel)
constexpr int kHalo = 24;      // staged halo rows / cols (dense: 7s + 2d + 1 <= 24, else 3 taps x 8)
constexpr int kHaloC = 8;      // channels per staged halo (dt kernel's dWd step)

enum Mode : int { kEval = 0, kTrain = 1, kYOnly = 2 };

// Everything a launch needs: geometry, raw pointers (storage dtype T behind the void*), strides.
struct Problem {
  int64_t N, C, K, H, W, Ho, Wo, M;  // M = N * Ho * Wo
  int stride, dil;
  int64_t tiles_h, tiles_w, ntiles;
  int cl;  // 1: x and every activation-shaped output are channels_last, else NCHW (both contiguous)
  int mode;
  int splits;  // dWp kernel: blocks along the pixel-tile axis
  int norm_lanes;  // normalize kernel, channels_last: channel lanes per pixel row (power of 2, <= 256)
  float eps;

  const void* x;
  Str4 xs;
  const void* wd;  // [C, 9]
  const void* wp;  // [K, C]
  const float* bias;   // [K] or null
  const float* gamma;  // [K] or null
  const float* beta;   // [K] or null

  void* y;  // forward: y (train / y-only)
  Str4 ys;
  void* out;  // forward: out
  Str4 os;
  float* mean;  // forward train: written; backward train: read
  float* var;

  const void* dout;
  Str4 dos;
  const void* act;  // backward: y (train) or out (eval)
  Str4 as;
  void* dx;
  void* dwd;
  void* dwp;
  float* dbias;
  float* dgamma;
  float* dbeta;
};

struct TileCoord {
  int64_t n, ho0, wo0;
};

// Tile numbers are < 2^31 (they are grid.x indices), so 32-bit division suffices: a 64-bit division
// is a subroutine call on the GPU, and its call frame cost sm_61 spill bytes in the forward kernel.
DSC_HD TileCoord tile_coord(const Problem& p, int64_t t) {
  const uint32_t per = static_cast<uint32_t>(p.tiles_h * p.tiles_w), tw = static_cast<uint32_t>(p.tiles_w);
  const uint32_t t32 = static_cast<uint32_t>(t), n = t32 / per, r = t32 - n * per, th = r / tw;
  return TileCoord{static_cast<int64_t>(n), static_cast<int64_t>(th) * kTileSide,
                   static_cast<int64_t>(r - th * tw) * kTileSide};
}

// The (pixel tile, channel block) a block of fwd_kernel / dt_kernel works on. The channel block is the
// grid's x axis, so the blocks that each re-read one tile's inputs (x in the forward, dout and y in dt)
// run back to back and find them in L2; with the tile on x they came a whole-tensor sweep apart, from
// DRAM wherever the tensor outgrows L2 (2.75 MB on a GTX 1080 Ti). Tiles span y and z (grid.y <= 65535);
// blocks past the last tile return at once (tile_grid in launch.cuh).
struct TileBlock {
  int64_t tile, block;
};
DSC_DEVICE TileBlock tile_block() {
  return TileBlock{static_cast<int64_t>(blockIdx.y) + static_cast<int64_t>(blockIdx.z) * gridDim.y,
                   static_cast<int64_t>(blockIdx.x)};
}

DSC_HD int64_t tile_pixels(const Problem& p, int64_t t) {
  const TileCoord tc = tile_coord(p, t);
  const int64_t h = p.Ho - tc.ho0 < kTileSide ? p.Ho - tc.ho0 : kTileSide;
  const int64_t w = p.Wo - tc.wo0 < kTileSide ? p.Wo - tc.wo0 : kTileSide;
  return h * w;
}

// Storage strides of the fp32 dt workspace: x's layout at output size.
DSC_HD Str4 dt_strides(const Problem& p) {
  if (p.cl) return Str4{p.Ho * p.Wo * p.C, 1, p.Wo * p.C, p.C};
  return Str4{p.C * p.Ho * p.Wo, p.Ho * p.Wo, p.Wo, 1};
}

// Workspace (fp32) layout, in floats. Forward: [mean partials | M2 partials], [ntiles, K] each.
// Backward: [3][ntiles][K] BN-gradient partials | [4][K] coefficients | [splits][K][C] dWp partials |
//           [ntiles][C * 9] dWd partials | dt [N, C, Ho, Wo] in x's layout.
struct BwdWs {
  int64_t red, coef, dwp, dwd, dt, total;
};
DSC_HD BwdWs bwd_ws(const Problem& p) {
  BwdWs w;
  w.red = 0;
  w.coef = w.red + 3 * p.ntiles * p.K;
  w.dwp = w.coef + 4 * p.K;
  w.dwd = w.dwp + (int64_t)p.splits * p.K * p.C;
  w.dt = w.dwd + p.ntiles * p.C * 9;
  w.total = w.dt + p.N * p.C * p.Ho * p.Wo;
  return w;
}

// One depthwise output t[n, c, ho, wo] straight from x (9 taps, zero padding), fp32.
template <class T, int DIL>
DSC_DEVICE float dw_point(const Problem& p, int64_t n, int64_t c, int64_t ho, int64_t wo) {
  const int d = DIL > 0 ? DIL : p.dil;
  const T* xc = static_cast<const T*>(p.x) + n * p.xs.n + c * p.xs.c;
  const T* w = static_cast<const T*>(p.wd) + c * 9;
  const int64_t h0 = ho * p.stride - d, w0 = wo * p.stride - d;
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    const int64_t h = h0 + i * d;
    if (h < 0 || h >= p.H) continue;
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      const int64_t ww = w0 + j * d;
      if (ww < 0 || ww >= p.W) continue;
      acc += Cvt<T>::load(xc[h * p.xs.h + ww * p.xs.w]) * Cvt<T>::load(w[i * 3 + j]);
    }
  }
  return acc;
}

// ---------------------------------------------------------------------------------------------
// Forward: one block = one 8x8 pixel tile x 64 output channels. Per chunk of 16 input channels the
// depthwise chunk goes to shared memory (never to global memory), then a 4x4 register-tiled
// micro-GEMM. Epilogue: eval -> relu(y + bias) stored; train -> y stored and the tile's per-channel
// (mean, M2) written to the workspace (Chan-merged later, fixed order); y-only -> y stored.
// ---------------------------------------------------------------------------------------------
struct FwdSmem {
  float t[kBC][kTP];
  float w[kBC][kBK];
  float red[16][kBK];
  float mean[kBK];
};

template <class T, int DIL>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(kThreads) fwd_kernel(const Problem p, float* ws) {
  DSC_SHARED(FwdSmem, s);
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const TileBlock tb = tile_block();
  if (tb.tile >= p.ntiles) return;  // the whole block: no barrier is left waiting
  const int64_t tile = tb.tile, k0 = tb.block * kBK;
  const TileCoord tc = tile_coord(p, tile);
  const T* wp = static_cast<const T*>(p.wp);

  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

  for (int64_t c0 = 0; c0 < p.C; c0 += kBC) {
    for (int e = tid; e < kBC * kTP; e += kThreads) {
      const int cc = e / kTP, pp = e % kTP;
      const int64_t c = c0 + cc, ho = tc.ho0 + pp / kTileSide, wo = tc.wo0 + pp % kTileSide;
      s.t[cc][pp] = (c < p.C && ho < p.Ho && wo < p.Wo) ? dw_point<T, DIL>(p, tc.n, c, ho, wo) : 0.f;
    }
    for (int e = tid; e < kBC * kBK; e += kThreads) {
      const int cc = e % kBC, kk = e / kBC;  // consecutive threads read consecutive c of one Wp row
      const int64_t c = c0 + cc, k = k0 + kk;
      s.w[cc][kk] = (c < p.C && k < p.K) ? Cvt<T>::load(wp[k * p.C + c]) : 0.f;
    }
    DSC_SYNC(1);  // chunk staged
#pragma unroll 4
    for (int cc = 0; cc < kBC; ++cc) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = s.t[cc][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = s.w[cc][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    DSC_SYNC(2);  // chunk consumed before the next one overwrites it
  }

  // Epilogue.
  T* out = static_cast<T*>(p.mode == kEval ? p.out : p.y);
  const Str4 os = p.mode == kEval ? p.os : p.ys;
  bool pv[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int pp = ty + 16 * i;
    pv[i] = tc.ho0 + pp / kTileSide < p.Ho && tc.wo0 + pp % kTileSide < p.Wo;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t k = k0 + tx + 16 * j;
    const float b = (p.bias != nullptr && k < p.K) ? p.bias[k] : 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int pp = ty + 16 * i;
      const float v = acc[i][j] + b;
      acc[i][j] = v;
      if (pv[i] && k < p.K) {
        const int64_t o = at4(os, tc.n, k, tc.ho0 + pp / kTileSide, tc.wo0 + pp % kTileSide);
        out[o] = Cvt<T>::store(p.mode == kEval ? relu_nan(v) : v);
      }
    }
  }
  if (p.mode != kTrain) return;  // uniform across the block

  // Tile statistics of the fp32 y: mean, then M2 about that mean (two passes over registers).
  const float cnt = static_cast<float>(tile_pixels(p, tile));
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float sm = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) sm += pv[i] ? acc[i][j] : 0.f;
    s.red[ty][tx + 16 * j] = sm;
  }
  DSC_SYNC(3);
  if (tid < kBK) {
    float sm = 0.f;
    for (int r = 0; r < 16; ++r) sm += s.red[r][tid];
    s.mean[tid] = sm / cnt;
  }
  DSC_SYNC(4);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float mk = s.mean[tx + 16 * j];
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float dlt = acc[i][j] - mk;
      sq += pv[i] ? dlt * dlt : 0.f;
    }
    s.red[ty][tx + 16 * j] = sq;
  }
  DSC_SYNC(5);
  if (tid < kBK && k0 + tid < p.K) {
    float sq = 0.f;
    for (int r = 0; r < 16; ++r) sq += s.red[r][tid];
    ws[tile * p.K + k0 + tid] = s.mean[tid];
    ws[p.ntiles * p.K + tile * p.K + k0 + tid] = sq;
  }
}

// (n, mean, M2) merge (Chan et al.); b may be empty.
DSC_DEVICE void chan_merge(float& na, float& ma, float& qa, float nb, float mb, float qb) {
  if (nb == 0.f) return;
  const float n = na + nb, dlt = mb - ma, f = nb / n;
  ma = ma + dlt * f;
  qa = qa + qb + dlt * dlt * na * f;
  na = n;
}

struct StatsSmem {
  float n[kThreads / 32], m[kThreads / 32], q[kThreads / 32];
};

// grid = K blocks: per channel, merge the tile partials in a fixed order -> biased mean / var.
// (A template only so that every translation unit may define it, like the other kernels.)
template <int kUnused = 0>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(kThreads) stats_finalize_kernel(const Problem p, const float* ws) {
  DSC_SHARED(StatsSmem, s);
  const int tid = threadIdx.x;
  const int64_t k = blockIdx.x;
  float n = 0.f, m = 0.f, q = 0.f;
  for (int64_t t = tid; t < p.ntiles; t += kThreads)
    chan_merge(n, m, q, static_cast<float>(tile_pixels(p, t)), ws[t * p.K + k], ws[p.ntiles * p.K + t * p.K + k]);
  for (int off = 16; off >= 1; off >>= 1) {
    const float on = __shfl_xor_sync(0xffffffffu, n, off);
    const float om = __shfl_xor_sync(0xffffffffu, m, off);
    const float oq = __shfl_xor_sync(0xffffffffu, q, off);
    chan_merge(n, m, q, on, om, oq);
  }
  if ((tid & 31) == 0) {
    s.n[tid >> 5] = n;
    s.m[tid >> 5] = m;
    s.q[tid >> 5] = q;
  }
  DSC_SYNC(6);
  if (tid == 0) {
    float fn = 0.f, fm = 0.f, fq = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) chan_merge(fn, fm, fq, s.n[w], s.m[w], s.q[w]);
    p.mean[k] = fm;
    p.var[k] = fq / fn;
  }
}

// Training forward pass C: out = relu(gamma (y - mean) rsqrt(var + eps) + beta), reading the stored y.
// y and out are both contiguous in the op's layout. Division-free indexing (64-bit division is a call):
//   NCHW: grid (pixel chunks, channels, images), index (n K + k) HoWo + pixel;
//   channels_last: a block is (256 / lanes) pixel rows x `lanes` channel lanes, index row K + k.
template <class T>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(kThreads) normalize_kernel(const Problem p) {
  const T* y = static_cast<const T*>(p.y);
  T* out = static_cast<T*>(p.out);
  const int64_t hw = p.Ho * p.Wo;
  const int tid = threadIdx.x;
  auto apply = [&](int64_t i, int64_t k) {
    float z = (Cvt<T>::load(y[i]) - p.mean[k]) * DSC_RSQRT(p.var[k] + p.eps);
    if (p.gamma != nullptr) z = z * p.gamma[k] + p.beta[k];
    out[i] = Cvt<T>::store(relu_nan(z));
  };
  if (!p.cl) {
    for (int64_t n = blockIdx.z; n < p.N; n += gridDim.z)
      for (int64_t k = blockIdx.y; k < p.K; k += gridDim.y)
        for (int64_t q = (int64_t)blockIdx.x * kThreads + tid; q < hw; q += (int64_t)gridDim.x * kThreads)
          apply((n * p.K + k) * hw + q, k);
  } else {
    const int lanes = p.norm_lanes, rows_per_block = kThreads / lanes, lane = tid % lanes;
    const int64_t rows = p.N * hw;
    const int64_t nblocks = (int64_t)gridDim.x * gridDim.y * gridDim.z;
    const int64_t b = blockIdx.x + (int64_t)gridDim.x * (blockIdx.y + (int64_t)gridDim.y * blockIdx.z);
    for (int64_t r = b * rows_per_block + tid / lanes; r < rows; r += nblocks * rows_per_block)
      for (int64_t k = lane; k < p.K; k += lanes) apply(r * p.K + k, k);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.
// dz = dout where z > 0 or z is NaN, else 0 (threshold_backward); z from (y, mean, var) in training,
// z = out in eval. dy = A_k (dz - B_k - yhat C_k) with A = gamma r, B = dbeta / M, C = dgamma / M
// (eval: dy = dz). dy is formed on the fly wherever it is read and never stored.
// ---------------------------------------------------------------------------------------------
template <class T>
DSC_DEVICE void dz_yhat(const Problem& p, int64_t n, int64_t k, int64_t ho, int64_t wo, float& dz, float& yhat) {
  const float go = Cvt<T>::load(static_cast<const T*>(p.dout)[at4(p.dos, n, k, ho, wo)]);
  const float a = Cvt<T>::load(static_cast<const T*>(p.act)[at4(p.as, n, k, ho, wo)]);
  if (p.mode == kEval) {
    yhat = 0.f;
    dz = a <= 0.f ? 0.f : go;
    return;
  }
  yhat = (a - p.mean[k]) * DSC_RSQRT(p.var[k] + p.eps);
  const float z = p.gamma != nullptr ? yhat * p.gamma[k] + p.beta[k] : yhat;
  dz = z <= 0.f ? 0.f : go;
}

template <class T>
DSC_DEVICE float dy_at(const Problem& p, const float* coef, int64_t n, int64_t k, int64_t ho, int64_t wo) {
  float dz, yhat;
  dz_yhat<T>(p, n, k, ho, wo, dz, yhat);
  if (p.mode == kEval) return dz;
  return coef[k] * (dz - coef[p.K + k] - yhat * coef[2 * p.K + k]);
}

struct RedSmem {
  float red[3][16][kBK];
};

// Backward pass 1: per (tile, channel) partial sums of dz, dz * yhat, yhat -> workspace [3][ntiles][K].
template <class T>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(kThreads) bwd_reduce_kernel(const Problem p, float* ws) {
  DSC_SHARED(RedSmem, s);
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t tile = blockIdx.x, k0 = (int64_t)blockIdx.y * kBK;
  const TileCoord tc = tile_coord(p, tile);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t k = k0 + tx + 16 * j;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int pp = ty + 16 * i;
      const int64_t ho = tc.ho0 + pp / kTileSide, wo = tc.wo0 + pp % kTileSide;
      if (k < p.K && ho < p.Ho && wo < p.Wo) {
        float dz, yhat;
        dz_yhat<T>(p, tc.n, k, ho, wo, dz, yhat);
        s0 += dz;
        s1 += dz * yhat;
        s2 += yhat;
      }
    }
    s.red[0][ty][tx + 16 * j] = s0;
    s.red[1][ty][tx + 16 * j] = s1;
    s.red[2][ty][tx + 16 * j] = s2;
  }
  DSC_SYNC(7);
  if (tid < kBK && k0 + tid < p.K) {
    for (int q = 0; q < 3; ++q) {
      float sm = 0.f;
      for (int r = 0; r < 16; ++r) sm += s.red[q][r][tid];
      ws[(q * p.ntiles + tile) * p.K + k0 + tid] = sm;
    }
  }
}

// Sums the tile partials per channel in a fixed order; writes dbeta, dgamma, dbias and the dy
// coefficients [A | B | C | unused] into the workspace. One thread per channel.
template <int kUnused = 0>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(kThreads) bn_bwd_finalize_kernel(const Problem p, float* ws) {
  const int64_t k = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  if (k >= p.K) return;
  const BwdWs L = bwd_ws(p);
  float sm[3] = {0.f, 0.f, 0.f};
  for (int q = 0; q < 3; ++q)
    for (int64_t t = 0; t < p.ntiles; ++t) sm[q] += ws[L.red + (q * p.ntiles + t) * p.K + k];
  float* coef = ws + L.coef;
  if (p.mode == kEval) {
    p.dbias[k] = sm[0];
    coef[k] = 1.f;
    coef[p.K + k] = 0.f;
    coef[2 * p.K + k] = 0.f;
    return;
  }
  const float M = static_cast<float>(p.M);
  const float g = p.gamma != nullptr ? p.gamma[k] : 1.f;
  const float A = g * DSC_RSQRT(p.var[k] + p.eps), B = sm[0] / M, Cc = sm[1] / M;
  coef[k] = A;
  coef[p.K + k] = B;
  coef[2 * p.K + k] = Cc;
  // Gradients of absent parameters are zeros (as the reference returns; the autograd layer drops them).
  const bool affine = p.gamma != nullptr;
  p.dbeta[k] = affine ? sm[0] : 0.f;
  p.dgamma[k] = affine ? sm[1] : 0.f;
  p.dbias[k] = p.bias != nullptr ? -A * sm[2] * Cc : 0.f;  // sum_p dy = A (dbeta - M B - C sum_p yhat)
}

// dWp partials: block = (64 output channels, 64 input channels, one split of the pixel tiles).
// For each of its tiles it rebuilds the depthwise chunk T [64 c x 64 px] from x and dy [64 k x 64 px]
// on the fly, and accumulates dWp[k, c] = sum_p dy[k, p] T[c, p] in registers. -> ws [splits][K][C].
struct DwpSmem {
  float t[64][kTP + 1];
  float d[64][kTP + 1];
};

template <class T, int DIL>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(kThreads) dwp_kernel(const Problem p, float* ws) {
  DSC_SHARED(DwpSmem, s);
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t k0 = (int64_t)blockIdx.x * 64, c0 = (int64_t)blockIdx.y * 64;
  const BwdWs L = bwd_ws(p);
  const float* coef = ws + L.coef;
  float acc[4][4];  // [c = c0 + ty + 16 i][k = k0 + tx + 16 j]
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

  for (int64_t tile = blockIdx.z; tile < p.ntiles; tile += p.splits) {
    const TileCoord tc = tile_coord(p, tile);
    for (int e = tid; e < 64 * kTP; e += kThreads) {
      const int row = e / kTP, pp = e % kTP;
      const int64_t ho = tc.ho0 + pp / kTileSide, wo = tc.wo0 + pp % kTileSide;
      const bool pv = ho < p.Ho && wo < p.Wo;
      s.t[row][pp] = (pv && c0 + row < p.C) ? dw_point<T, DIL>(p, tc.n, c0 + row, ho, wo) : 0.f;
      s.d[row][pp] = (pv && k0 + row < p.K) ? dy_at<T>(p, coef, tc.n, k0 + row, ho, wo) : 0.f;
    }
    DSC_SYNC(8);
#pragma unroll 4
    for (int pp = 0; pp < kTP; ++pp) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = s.t[ty + 16 * i][pp];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = s.d[tx + 16 * j][pp];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    DSC_SYNC(9);
  }
  float* part = ws + L.dwp + (int64_t)blockIdx.z * p.K * p.C;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t c = c0 + ty + 16 * i, k = k0 + tx + 16 * j;
      if (c < p.C && k < p.K) part[k * p.C + c] = acc[i][j];
    }
}

// dt and dWd partials: block = one pixel tile x 64 input channels.
// dt[c, p] = sum_k Wp[k, c] dy[k, p], K streamed in chunks of 64 with dy formed on the fly; dt goes to
// the fp32 workspace (pass 3 needs its neighbourhood). Then, 8 channels at a time, the x halo is staged
// in shared memory once and all 9 taps of dWd[c, tap] = sum_p dt[c, p] x[tap(p)] are read from it.
// Halo: dense ((7s + 2d + 1)^2 window) when 7s + 2d + 1 <= 24, else the 3 tap rows x 8 pixel rows
// (and the same for columns) gathered: 24 x 24 per channel either way, for any dilation.
struct DtSmem {
  union {
    struct {
      float d[64][kTP + 1];
      float w[64][64 + 1];
    } g;
    struct {
      float dt[kBCd][kTP + 1];
      float halo[kHaloC][kHalo][kHalo];
    } h;
  };
};

DSC_HD bool halo_dense(int s, int d) { return 7 * s + 2 * d + 1 <= kHalo; }
// Staged halo index of output pixel row (or column) ph for tap i.
DSC_HD int halo_idx(bool dense, int s, int d, int ph, int i) { return dense ? ph * s + i * d : i * kTileSide + ph; }
// Image row (or column) of staged index r, relative to the tile's first output row o0.
DSC_HD int64_t halo_src(bool dense, int s, int d, int64_t o0, int r) {
  return dense ? o0 * s - d + r : (o0 + r % kTileSide) * s - d + (r / kTileSide) * d;
}

template <class T, int DIL>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(kThreads) dt_kernel(const Problem p, float* ws) {
  DSC_SHARED(DtSmem, s);
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const TileBlock tb = tile_block();
  if (tb.tile >= p.ntiles) return;  // the whole block: no barrier is left waiting
  const int64_t tile = tb.tile, c0 = tb.block * kBCd;
  const TileCoord tc = tile_coord(p, tile);
  const BwdWs L = bwd_ws(p);
  const float* coef = ws + L.coef;
  const T* wp = static_cast<const T*>(p.wp);
  const int d = DIL > 0 ? DIL : p.dil, st = p.stride;

  float acc[4][4];  // [c = c0 + ty + 16 i][pixel tx + 16 j]
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

  for (int64_t k0 = 0; k0 < p.K; k0 += 64) {
    for (int e = tid; e < 64 * kTP; e += kThreads) {
      const int kk = e / kTP, pp = e % kTP;
      const int64_t ho = tc.ho0 + pp / kTileSide, wo = tc.wo0 + pp % kTileSide;
      s.g.d[kk][pp] = (ho < p.Ho && wo < p.Wo && k0 + kk < p.K) ? dy_at<T>(p, coef, tc.n, k0 + kk, ho, wo) : 0.f;
    }
    for (int e = tid; e < 64 * 64; e += kThreads) {
      const int cc = e % 64, kk = e / 64;
      const int64_t c = c0 + cc, k = k0 + kk;
      s.g.w[kk][cc] = (c < p.C && k < p.K) ? Cvt<T>::load(wp[k * p.C + c]) : 0.f;
    }
    DSC_SYNC(10);
#pragma unroll 4
    for (int kk = 0; kk < 64; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = s.g.w[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = s.g.d[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    DSC_SYNC(11);
  }

  // dt -> workspace (valid entries) and shared memory (all entries; invalid ones are 0).
  float* dtw = ws + L.dt;
  const Str4 dts = dt_strides(p);
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int cc = ty + 16 * i, pp = tx + 16 * j;
      const int64_t c = c0 + cc, ho = tc.ho0 + pp / kTileSide, wo = tc.wo0 + pp % kTileSide;
      if (c < p.C && ho < p.Ho && wo < p.Wo) dtw[at4(dts, tc.n, c, ho, wo)] = acc[i][j];
      s.h.dt[cc][pp] = acc[i][j];
    }

  const bool dense = halo_dense(st, d);
  const T* x = static_cast<const T*>(p.x);
  float* dwd_part = ws + L.dwd + tile * p.C * 9;
  for (int sc = 0; sc < kBCd && c0 + sc < p.C; sc += kHaloC) {
    // (The barrier at the top also publishes s.h.dt on the first round.)
    for (int e = tid; e < kHaloC * kHalo * kHalo; e += kThreads) {
      const int cc = e / (kHalo * kHalo), r = (e / kHalo) % kHalo, q = e % kHalo;
      const int64_t c = c0 + sc + cc;
      const int64_t h = halo_src(dense, st, d, tc.ho0, r), w = halo_src(dense, st, d, tc.wo0, q);
      float v = 0.f;
      if (c < p.C && h >= 0 && h < p.H && w >= 0 && w < p.W) v = Cvt<T>::load(x[at4(p.xs, tc.n, c, h, w)]);
      s.h.halo[cc][r][q] = v;
    }
    DSC_SYNC(12);
    if (tid < kHaloC * 9) {
      const int cc = tid / 9, tap = tid % 9, ti = tap / 3, tj = tap % 3;
      float sm = 0.f;
      for (int pp = 0; pp < kTP; ++pp) {
        const int ph = pp / kTileSide, pw = pp % kTileSide;
        sm += s.h.dt[sc + cc][pp] * s.h.halo[cc][halo_idx(dense, st, d, ph, ti)][halo_idx(dense, st, d, pw, tj)];
      }
      if (c0 + sc + cc < p.C) dwd_part[(c0 + sc + cc) * 9 + tap] = sm;
    }
    DSC_SYNC(13);
  }
}

// Pass 3: dx[n, c, h, w] = sum over taps (i, j) with (h + d - i d) divisible by s of
// dt[n, c, (h + d - i d) / s, (w + d - j d) / s] Wd[c, i, j]. One thread per x element, storage order.
template <class T, int DIL>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(kThreads) dx_kernel(const Problem p, const float* ws) {
  const int d = DIL > 0 ? DIL : p.dil, st = p.stride;
  const float* dtw = ws + bwd_ws(p).dt;
  const Str4 dts = dt_strides(p);
  const T* wd = static_cast<const T*>(p.wd);
  T* dx = static_cast<T*>(p.dx);
  const int64_t total = p.N * p.C * p.H * p.W;
  for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < total; i += (int64_t)gridDim.x * kThreads) {
    int64_t n, c, h, w;
    if (p.cl) {
      c = i % p.C;
      w = (i / p.C) % p.W;
      h = (i / (p.C * p.W)) % p.H;
      n = i / (p.C * p.W * p.H);
    } else {
      w = i % p.W;
      h = (i / p.W) % p.H;
      c = (i / (p.W * p.H)) % p.C;
      n = i / (p.W * p.H * p.C);
    }
    float acc = 0.f;
#pragma unroll
    for (int ti = 0; ti < 3; ++ti) {
      const int64_t hh = h + d - ti * d;
      if (hh < 0 || hh % st != 0 || hh / st >= p.Ho) continue;
#pragma unroll
      for (int tj = 0; tj < 3; ++tj) {
        const int64_t ww = w + d - tj * d;
        if (ww < 0 || ww % st != 0 || ww / st >= p.Wo) continue;
        acc += dtw[at4(dts, n, c, hh / st, ww / st)] * Cvt<T>::load(wd[c * 9 + ti * 3 + tj]);
      }
    }
    dx[i] = Cvt<T>::store(acc);
  }
}

// Fixed-order column sums of a [rows, cols] fp32 partial buffer, cast to the output dtype.
template <class TO>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(kThreads) colsum_kernel(const float* part, int64_t rows, int64_t cols, TO* out) {
  const int64_t col = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  if (col >= cols) return;
  float sm = 0.f;
  for (int64_t r = 0; r < rows; ++r) sm += part[r * cols + col];
  out[col] = Cvt<TO>::store(sm);
}

}  // namespace dsc
