// Backward stages: bn_bwd_reduce, bn_bwd_finalize, bn_bwd_dy, dsconv_bwd_dt, dsconv_bwd_dwp, dsconv_bwd_dx
// (which also forms the depthwise weight gradient). Torch-free. Design: docs/cuda.md.
//
// dz = dout where z > 0 or z is NaN, else 0 (threshold_backward), z = A (y - mu) + beta; in training
// dy = A (dz - B - yhat C) with yhat = r (y - mu), A = gamma r, B = dbeta / M, C = dgamma / M, i.e.
// dy = A dz + b2 (y - mu) + c2 with b2 = -A C r and c2 = -A B. Eval: mu = 0, A = 1, beta = b2 = c2 = 0,
// so z = out and dy = dz. bn_bwd_finalize writes (mu, A, beta, b2, c2) per channel once. Where dy would be
// formed more than three times over (once per input-channel block of dsconv_bwd_dt and of dsconv_bwd_dwp),
// bn_bwd_dy stores it once in the workspace and those two read it; otherwise they form it on the fly from
// dout and y with the coefficients.
#pragma once

#include "forward.cuh"
#include "problem.cuh"
#include "reductions.cuh"
#include "tile_gemm.cuh"
#include "window.cuh"

namespace dsc {

struct DyCoef {
  float mu, a, beta, b2, c2;
};
DSC_DEVICE DyCoef dy_coef(const float* coef, int64_t k) {  // coef + 8k is 16-byte aligned (bwd_ws)
  const f4 v = *reinterpret_cast<const f4*>(coef + 8 * k);
  return DyCoef{v.x, v.y, v.z, v.w, coef[8 * k + 4]};
}
DSC_DEVICE float dy_of(const DyCoef& c, float go, float a) {
  const float ym = a - c.mu;
  const float dz = c.a * ym + c.beta <= 0.f ? 0.f : go;
  return c.a * dz + c.b2 * ym + c.c2;
}

// (n, ho, wo) of flattened output pixel g < 2^31.
struct Pix {
  uint32_t n, ho, wo;
};
DSC_DEVICE Pix pixel_of(const Problem& p, uint32_t g) {
  const uint32_t n = fdiv(p.div_hw, g), r = g - n * static_cast<uint32_t>(p.Ho * p.Wo), ho = fdiv(p.div_wo, r);
  return Pix{n, ho, r - ho * static_cast<uint32_t>(p.Wo)};
}
DSC_DEVICE int64_t pix_off(const Str4& s, const Pix& q) {
  return static_cast<int64_t>(q.n) * s.n + static_cast<int64_t>(q.ho) * s.h + static_cast<int64_t>(q.wo) * s.w;
}

// ---------------------------------------------------------------------------------------------
// bn_bwd_reduce: per (pixel group, channel) partial sums of dz, dz yhat, yhat -> ws[red + (q G + g) K + k].
// NCHW: a warp per channel, lanes along the group's pixels (coalesced); channels_last: lanes along 32
// channels, warps along the pixels, the 8 warp partials added in order through shared memory.
// ---------------------------------------------------------------------------------------------
struct RedSmem {
  float v[3][8][32];
};

template <class T>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(256) bn_bwd_reduce_kernel(const Problem p, float* ws) {
  DSC_SHARED(RedSmem, s);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t grp = blockIdx.y, g0 = grp * p.rgroup_px;
  const int64_t g1 = p.M - g0 < p.rgroup_px ? p.M : g0 + p.rgroup_px;
  const int64_t k = p.cl ? static_cast<int64_t>(blockIdx.x) * 32 + lane : static_cast<int64_t>(blockIdx.x) * 8 + warp;
  float s0 = 0.f, s1 = 0.f, s2 = 0.f;
  if (k < p.K) {
    const bool train = p.mode == kTrain;
    const float mu = train ? p.mean[k] : 0.f, r = train ? DSC_RSQRT(p.var[k] + p.eps) : 1.f;
    const bool affine = train && p.gamma != nullptr;
    const float g = affine ? p.gamma[k] : 1.f, be = affine ? p.beta[k] : 0.f;
    const T* __restrict__ go = static_cast<const T*>(p.dout) + k * p.dos.c;
    const T* __restrict__ ac = static_cast<const T*>(p.act) + k * p.as.c;
    const int first = p.cl ? warp : lane, step = p.cl ? 8 : 32;
    // The pixel and its offsets advance by `step` per element; rows of at least `step` pixels wrap at
    // most once (no division per element), narrower maps recompute them with FastDiv.
    const bool inc = p.Wo >= step;
    Pix q = pixel_of(p, static_cast<uint32_t>(g0 + first < g1 ? g0 + first : g0));
    int64_t og = pix_off(p.dos, q), oa = pix_off(p.as, q);
    for (int64_t gg = g0 + first; gg < g1; gg += step) {
      if (!inc) {
        q = pixel_of(p, static_cast<uint32_t>(gg));
        og = pix_off(p.dos, q);
        oa = pix_off(p.as, q);
      }
      const float gv = Cvt<T>::ldg(go + og), a = Cvt<T>::ldg(ac + oa);
      if (inc) {
        q.wo += step;
        og += step * p.dos.w;
        oa += step * p.as.w;
        if (q.wo >= p.Wo) {
          q.wo -= static_cast<uint32_t>(p.Wo);
          og += p.dos.h - p.Wo * p.dos.w;
          oa += p.as.h - p.Wo * p.as.w;
          if (++q.ho == p.Ho) {
            q.ho = 0;
            og += p.dos.n - p.Ho * p.dos.h;
            oa += p.as.n - p.Ho * p.as.h;
          }
        }
      }
      float yh = 0.f, dz;
      if (!train) {
        dz = a <= 0.f ? 0.f : gv;
      } else {
        yh = (a - mu) * r;
        const float z = affine ? yh * g + be : yh;
        dz = z <= 0.f ? 0.f : gv;
      }
      s0 += dz;
      s1 += dz * yh;
      s2 += yh;
    }
  }
  float* red = ws + bwd_ws(p).red;
  if (!p.cl) {
    s0 = warp_sum(s0);
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
    if (lane == 0 && k < p.K) {
      red[grp * p.K + k] = s0;
      red[(p.rgroups + grp) * p.K + k] = s1;
      red[(2 * p.rgroups + grp) * p.K + k] = s2;
    }
  } else {
    s.v[0][warp][lane] = s0;
    s.v[1][warp][lane] = s1;
    s.v[2][warp][lane] = s2;
    DSC_SYNC(20);
    if (warp == 0 && k < p.K) {
#pragma unroll
      for (int q = 0; q < 3; ++q) {
        float t = 0.f;
        for (int w = 0; w < 8; ++w) t += s.v[q][w][lane];
        red[(q * p.rgroups + grp) * p.K + k] = t;
      }
    }
  }
}

// bn_bwd_finalize: per channel, the group partials summed in a fixed order (32 channels per block as
// lanes, 8 group strides as warps, warp results added in order) -> dbeta, dgamma, dbias and the dy
// coefficients (mu, A, beta, b2, c2) at ws[coef + 8k].
template <int kUnused = 0>  // a template only so that every translation unit may define it
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(256) bn_bwd_finalize_kernel(const Problem p, float* ws) {
  DSC_SHARED(RedSmem, s);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * 32 + lane;
  const BwdWs L = bwd_ws(p);
  const float* red = ws + L.red;
  float sm[3] = {0.f, 0.f, 0.f};
  if (k < p.K)
#pragma unroll
    for (int q = 0; q < 3; ++q)
      for (int64_t g = warp; g < p.rgroups; g += 8) sm[q] += red[(q * p.rgroups + g) * p.K + k];
#pragma unroll
  for (int q = 0; q < 3; ++q) s.v[q][warp][lane] = sm[q];
  DSC_SYNC(21);
  if (warp != 0 || k >= p.K) return;
#pragma unroll
  for (int q = 0; q < 3; ++q) {
    float t = 0.f;
    for (int w = 0; w < 8; ++w) t += s.v[q][w][lane];
    sm[q] = t;
  }
  float* coef = ws + L.coef + 8 * k;
  if (p.mode == kEval) {
    p.dbias[k] = sm[0];
    coef[0] = 0.f;
    coef[1] = 1.f;
    coef[2] = coef[3] = coef[4] = 0.f;
    return;
  }
  const float M = static_cast<float>(p.M), r = DSC_RSQRT(p.var[k] + p.eps);
  const bool affine = p.gamma != nullptr;
  const float A = (affine ? p.gamma[k] : 1.f) * r, B = sm[0] / M, Cc = sm[1] / M;
  coef[0] = p.mean[k];
  coef[1] = A;
  coef[2] = affine ? p.beta[k] : 0.f;
  coef[3] = -A * Cc * r;
  coef[4] = -A * B;
  // Gradients of absent parameters are zeros (as the reference returns; the autograd layer drops them).
  p.dbeta[k] = affine ? sm[0] : 0.f;
  p.dgamma[k] = affine ? sm[1] : 0.f;
  p.dbias[k] = p.bias != nullptr ? -A * sm[2] * Cc : 0.f;  // sum_p dy = A (dbeta - M B - C sum_p yhat)
}

// bn_bwd_dy (with p.dyws): dy of every element, once, into the fp32 workspace (dense, the activations'
// layout), so that dsconv_bwd_dt and dsconv_bwd_dwp read one value per element instead of forming dy from
// dout, y and the coefficients once per input-channel block each (plan.cuh says when that pays). Four
// elements per thread, consecutive threads on consecutive elements, every load issued before the first use.
template <class T>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(256) bn_bwd_dy_kernel(const Problem p, float* ws) {
  constexpr int E = 4;
  const BwdWs L = bwd_ws(p);
  const float* coef = ws + L.coef;
  float* __restrict__ dy = ws + L.dy;
  const T* __restrict__ go = static_cast<const T*>(p.dout);
  const T* __restrict__ ac = static_cast<const T*>(p.act);
  // K M < 2^31 (plan.cuh sets dyws only then): 32-bit element numbers and FastDiv.
  const uint32_t total = static_cast<uint32_t>(p.K * p.M), K = static_cast<uint32_t>(p.K);
  const uint32_t hw = static_cast<uint32_t>(p.Ho * p.Wo), wo = static_cast<uint32_t>(p.Wo);
  const uint32_t e0 = blockIdx.x * (256 * E) + threadIdx.x;
  float g[E], a[E];
  DyCoef c[E];
#pragma unroll
  for (int j = 0; j < E; ++j) {
    const uint32_t e = e0 + j * 256 < total ? e0 + j * 256 : 0;
    uint32_t k, n, r;  // channel, image, pixel in the image
    if (p.cl) {
      const uint32_t g_px = fdiv(p.div_k, e);
      k = e - g_px * K;
      n = fdiv(p.div_hw, g_px);
      r = g_px - n * hw;
    } else {
      const uint32_t plane = fdiv(p.div_hw, e);
      r = e - plane * hw;
      n = fdiv(p.div_k, plane);
      k = plane - n * K;
    }
    const uint32_t ho = fdiv(p.div_wo, r);
    const Pix q{n, ho, r - ho * wo};
    g[j] = Cvt<T>::ldg(go + pix_off(p.dos, q) + static_cast<int64_t>(k) * p.dos.c);
    a[j] = Cvt<T>::ldg(ac + pix_off(p.as, q) + static_cast<int64_t>(k) * p.as.c);
    c[j] = dy_coef(coef, k);
  }
#pragma unroll
  for (int j = 0; j < E; ++j)
    if (e0 + j * 256 < total) dy[e0 + j * 256] = dy_of(c[j], g[j], a[j]);
}

// ---------------------------------------------------------------------------------------------
// dsconv_bwd_dt: dt[c, p] = sum_k Wp[k, c] dy[k, p] for one span tile of BP pixels x BCb input channels.
// K streamed in chunks of 8: dy chunk read from bn_bwd_dy's workspace or formed from dout and y
// (coefficients from bn_bwd_finalize) into shared memory, Wp chunk staged with vector loads (its rows are
// contiguous in c), 8x4 register micro-GEMM. dt -> fp32 workspace in x's layout through a shared-memory
// transpose (coalesced).
// ---------------------------------------------------------------------------------------------
constexpr int kDtKC = 8;

template <class Tl>
struct DtSmem {
  static constexpr int kOutK = Tl::BP + 4, kOutP = Tl::BK / 2 + 4;
  static constexpr int kOut = Tl::BK / 2 * kOutK > Tl::BP* kOutP ? Tl::BK / 2 * kOutK : Tl::BP * kOutP;
  union {
    struct {
      alignas(16) float w[kDtKC][Tl::BK];       // A: Wp rows (k) over the block's channels
      alignas(16) float dy[kDtKC][Tl::BP + 4];  // B: dy rows over the tile's pixels
    } m;
    alignas(16) float o[kOut];
  };
  int64_t sg[Tl::BP], sa[Tl::BP], sd[Tl::BP];  // pixel offsets in dout, y (or out), dt
};

template <class T, class Tl>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS_MIN(Tl::THREADS, 2) dsconv_bwd_dt_kernel(const Problem p, float* ws) {
  constexpr int BCb = Tl::BK, BP = Tl::BP, NT = Tl::THREADS, KC = kDtKC;
  using Smem = DtSmem<Tl>;
  DSC_SHARED(Smem, s);
  const int tid = threadIdx.x;
  const TileBlock tb = tile_block();
  if (tb.tile >= p.bt.ntiles) return;  // the whole block: no barrier is left waiting
  // Grid x = input-channel block + cblocks x output-channel split (bsplit > 1 on small maps: partial dt
  // planes, summed in order by dsconv_bwd_dx as it stages them).
  const int64_t cblocks = (p.C + BCb - 1) / BCb, ks = tb.block / cblocks;
  const int64_t tile = tb.tile, c0 = (tb.block % cblocks) * BCb;
  // A block whose channels fill at most half the tile's rows (C - c0 <= BCb / 2: b1 of the classifier, 32 of
  // 64) computes only those: its threads form 2 groups (still 8 x 4 outputs each), each over half of every
  // K chunk, added in order before the epilogue. Block-uniform.
  const int NG = p.C - c0 <= BCb / 2 ? 2 : 1, NTG = NT / NG, grp = tid / NTG, lt = tid % NTG;
  const int ty = lt / Tl::TX, tx = lt % Tl::TX, half = BCb / 2 / NG;
  const int64_t k_lo = ks * p.ksplit, k_hi = k_lo + p.ksplit < p.K ? k_lo + p.ksplit : p.K;
  const BwdWs L = bwd_ws(p);
  const float* coef = ws + L.coef;
  const Str4 dts = dt_strides(p);
  // dy from bn_bwd_dy's workspace (dyw: one load per element) or formed here from dout and y.
  const bool dyw = p.dyws != 0;
  const Str4 gs = dyw ? dy_strides(p) : p.dos;
  const float* __restrict__ dyp = ws + L.dy;
  slot_offsets<Tl>(p, p.bt, tile, gs, s.sg, tid, NT);
  slot_offsets<Tl>(p, p.bt, tile, p.as, s.sa, tid, NT);
  slot_offsets<Tl>(p, p.bt, tile, dts, s.sd, tid, NT);
  const T* __restrict__ wp = static_cast<const T*>(p.wp);
  const T* __restrict__ go = static_cast<const T*>(p.dout);
  const T* __restrict__ ac = static_cast<const T*>(p.act);
  const bool vec_wp = p.vec_wp != 0;
  DSC_SYNC(22);  // slot tables written

  float acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

  // Each thread stages one 4-channel slice of a Wp row and NE dy values per chunk, at fixed places: the
  // next chunk's loads are issued into registers before this chunk's GEMM (double buffering through
  // registers); dy is formed from them when they are stored.
  constexpr int NE = KC * BP / NT, WPT = KC * (BCb / 4);
  static_assert(WPT <= NT && NE >= 1, "dt staging");
  const int kk_w = tid / (BCb / 4), cg_w = (tid % (BCb / 4)) * 4;
  const int64_t nc = p.C - c0 - cg_w;
  const int nw = tid < WPT ? (nc < 4 ? static_cast<int>(nc < 0 ? 0 : nc) : 4) : 0;
  const T* wcol = wp + (nw > 0 ? c0 + cg_w : 0);
  int kk_e[NE], q_e[NE];
  int64_t og_e[NE], oa_e[NE];
#pragma unroll
  for (int i = 0; i < NE; ++i) {
    const int e = tid + i * NT;
    kk_e[i] = p.cl ? e % KC : e / BP;  // coalesced along the layout
    q_e[i] = p.cl ? e / KC : e % BP;
    og_e[i] = s.sg[q_e[i]];
    oa_e[i] = s.sa[q_e[i]];
  }
  // dy's coefficients are prefetched with dout and y: loaded where dy is formed, after the GEMM, their
  // latency was the chunk's (SIMULATED, b7: 2.6 M scoreboard stall cycles). Not on 128-pixel tiles (4
  // values per thread): 20 more registers spilled there on sm_61.
  constexpr bool kPreCoef = NE <= 2;
  float pw[4], pg[NE], pa[NE];
  DyCoef pc[kPreCoef ? NE : 1];
  auto load = [&](int64_t k0) {
    const bool kv = k0 + kk_w < p.K;
    load4<T>(wcol + (kv ? (k0 + kk_w) * p.C : 0), kv ? nw : 0, vec_wp, pw);
#pragma unroll
    for (int i = 0; i < NE; ++i) {
      const int64_t k = k0 + kk_e[i];
      const bool ok = k < p.K && og_e[i] >= 0;
      if (dyw) {
        pg[i] = DSC_LDG(dyp + (ok ? og_e[i] + k * gs.c : 0));
        pa[i] = 0.f;
      } else {
        pg[i] = Cvt<T>::ldg(go + (ok ? og_e[i] + k * p.dos.c : 0));
        pa[i] = Cvt<T>::ldg(ac + (ok ? oa_e[i] + k * p.as.c : 0));
        if constexpr (kPreCoef) pc[i] = dy_coef(coef, k < p.K ? k : 0);
      }
    }
  };
  load(k_lo);
  for (int64_t k0 = k_lo; k0 < k_hi; k0 += KC) {
    if (tid < WPT) *reinterpret_cast<f4*>(&s.m.w[kk_w][cg_w]) = f4{pw[0], pw[1], pw[2], pw[3]};
#pragma unroll
    for (int i = 0; i < NE; ++i) {
      const int64_t k = k0 + kk_e[i];
      const bool ok = k < p.K && og_e[i] >= 0;
      float v = pg[i];
      if (!dyw) {
        DyCoef c;
        if constexpr (kPreCoef)
          c = pc[i];
        else
          c = dy_coef(coef, k < p.K ? k : 0);
        v = dy_of(c, pg[i], pa[i]);
      }
      s.m.dy[kk_e[i]][q_e[i]] = ok ? v : 0.f;
    }
    DSC_SYNC(23);  // chunk staged
    if (k0 + KC < k_hi) load(k0 + KC);
    if (NG == 1)
      mma_8x4_steps<BCb, KC>(acc, s.m.w[0], BCb, s.m.dy[0], BP + 4, ty, tx);
    else
      mma_8x4_steps_h<KC / 2>(acc, s.m.w[grp * KC / 2], half, BCb, s.m.dy[grp * KC / 2], BP + 4, ty, tx);
    DSC_SYNC(24);  // chunk consumed
  }
  if (NG == 2) {  // group 1's sums to group 0 (after the last chunk's barrier: s.o may overwrite s.m)
    static_assert(NT / 2 * 32 <= Smem::kOut, "dt group sums");
    if (grp == 1)
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) s.o[(i * 4 + j) * NTG + lt] = acc[i][j];
    DSC_SYNC(37);  // group 1's sums in shared memory
    if (grp == 0)
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += s.o[(i * 4 + j) * NTG + lt];
    DSC_SYNC(38);  // read before the epilogue overwrites them
  }

  // Epilogue: dt -> workspace, half of the channels at a time through shared memory.
  float* dt = ws + L.dt + ks * p.N * p.C * p.Ho * p.Wo;
  const int warp = tid / 32, lane = tid % 32;
  constexpr int NW = NT / 32;
  // (Two groups: group 0 holds all BCb / 2 rows, ty * 4 + i and half + ty * 4 + i: one pass.)
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (h == 1 && NG == 2) break;  // (block-uniform)
    const int64_t ch = c0 + h * (BCb / 2);
    auto put = [&](int hh, int r0) {  // acc rows hh * 4 + i -> tile rows r0 + i (hh a constant at every call)
      if (!p.cl) {
#pragma unroll
        for (int i = 0; i < 4; ++i)
          *reinterpret_cast<f4*>(&s.o[(r0 + i) * Smem::kOutK + tx * 4]) =
              f4{acc[hh * 4 + i][0], acc[hh * 4 + i][1], acc[hh * 4 + i][2], acc[hh * 4 + i][3]};
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j)
          *reinterpret_cast<f4*>(&s.o[(tx * 4 + j) * Smem::kOutP + r0]) =
              f4{acc[hh * 4 + 0][j], acc[hh * 4 + 1][j], acc[hh * 4 + 2][j], acc[hh * 4 + 3][j]};
      }
    };
    if (NG == 1) {
      put(h, ty * 4);
    } else if (grp == 0) {
      put(0, ty * 4);
      put(1, half + ty * 4);
    }
    DSC_SYNC(25);  // half tile in shared memory
    if (!p.cl) {
      for (int r = warp; r < BCb / 2; r += NW) {
        const int64_t c = ch + r;
        if (c >= p.C) break;
        for (int q = lane; q < BP; q += 32)
          if (s.sd[q] >= 0) dt[s.sd[q] + c * dts.c] = s.o[r * Smem::kOutK + q];
      }
    } else {
      for (int q = warp; q < BP; q += NW) {
        if (s.sd[q] < 0) continue;
        for (int r = lane; r < BCb / 2; r += 32)
          if (ch + r < p.C) dt[s.sd[q] + ch + r] = s.o[q * Smem::kOutP + r];
      }
    }
    DSC_SYNC(26);  // half stored before the next half overwrites it
  }
}

// ---------------------------------------------------------------------------------------------
// dsconv_bwd_dwp: dWp partials, block = (128 output channels, 64 input channels, one split of the wt
// pixel tiles). Per tile: t [64 px x 64 c] rebuilt from the staged input window (rect tiles, as dsconv_fwd
// does) or read from dsconv_dw's t (span tiles, small maps: computed once for all K blocks), dy
// [32 px x 128 k] staged twice per tile, read from bn_bwd_dy's workspace or formed here (NCHW: lanes along
// the pixels, coefficients from shared memory; channels-last: a thread owns one k), and
// dWp[k, c] += sum_p dy[k, p] t[c, p] in the 8x4 register micro-GEMM. -> ws[dwp + split K C + k C + c].
// ---------------------------------------------------------------------------------------------

template <class Tl, int S, int D>
struct DwpSmem {
  using G = Window<Tl, S, D, window_floats<Tl, S, D>() <= kSpanHalo ? 8 : 4>;
  union {
    float halo[Tl::SPAN ? 1 : G::BC][Tl::SPAN ? 1 : G::HALO];  // (span tiles read t from dsconv_dw instead)
    alignas(16) float dyT[32][kDwpK + 4];                      // A: per pixel, dy over the block's output channels
    float red[4096];  // after the tile loop: the accumulators of pixel groups 1 and 2 (3 goes to tT)
  } u;
  alignas(16) float tT[Tl::BP][kDwpC + 4];  // B: per pixel, t over the block's input channels
  float wd[G::BC][9];
  float cf[5][kDwpK];  // dy's coefficients of the block's output channels (NCHW: a thread forms dy for 16 of them)
  int64_t sg[Tl::BP], sa[Tl::BP];
  int row[kSpanRowsMax];
  int gcode;  // the block's pixel groups (dwp_map)
};

// dsconv_bwd_dwp's thread map from gcode (bit 0: at most 64 output channels left, bit 1: at most 32 input
// channels): ng groups of ntg threads, each thread 8 x 4 outputs at rows ty * 4 and half + ty * 4, columns tx * 4.
struct DwpMap {
  int ng, ntg, grp, lt, ty, tx, half;
};
DSC_DEVICE DwpMap dwp_map(int gcode, int tid) {
  const int hk = 1 + (gcode & 1), hc = 1 + (gcode >> 1), ng = hk * hc, ntg = 256 / ng, lt = tid % ntg;
  const int txs = hc == 2 ? 3 : 4;  // log2 of kDwpC / 4 / hc
  return DwpMap{ng, ntg, tid / ntg, lt, lt >> txs, lt & ((1 << txs) - 1), kDwpK / 2 / hk};
}

// A thread's 8 x 4 block of dWp sums (rows k0 + mma_row_h(half, ty, i), columns c0 .. c0 + 3) -> dWp itself
// with one split (no partial for colsum to copy: b8, b9 at batch 1), else the split's partial [K, C] at part.
// 4 consecutive channels as one vector store where rows are 16-byte aligned (C % 4 == 0; the workspace is):
// 16 scalar stores of a half warp, 16 bytes apart, cost 0.5 write transactions per float (SIMULATED, b3 and
// b7 at batch 1: a third of dWp's global transactions), a vector store 0.125. (fp32 only where dWp itself is
// stored: 16-bit stores gain nothing, and the extra path spilled on sm_75.)
template <class T>
DSC_DEVICE void dwp_store(const Problem& p, float* part_base, const float (&acc)[8][4], int64_t k0, int half, int ty,
                          int64_t c0) {
  const bool direct = p.splits == 1;
  float* part = part_base + static_cast<int64_t>(blockIdx.z) * p.K * p.C;
  T* __restrict__ dwp = static_cast<T*>(p.dwp);
  constexpr bool kF32 = sizeof(T) == 4;
  const bool vec = (p.C & 3) == 0 && (!direct || (kF32 && (reinterpret_cast<uint64_t>(dwp) & 15) == 0));
  float* vdst = kF32 && direct ? reinterpret_cast<float*>(dwp) : part;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int64_t k = k0 + mma_row_h(half, ty, i);
    if (k >= p.K) continue;
    if (vec) {
      if (c0 < p.C) Vec4<float>::store(vdst + k * p.C + c0, acc[i]);  // c0 < C: then c0 + 3 < C too
      continue;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (c0 + j >= p.C) continue;
      if (direct)
        dwp[k * p.C + c0 + j] = Cvt<T>::store(acc[i][j]);
      else
        part[k * p.C + c0 + j] = acc[i][j];
    }
  }
}

template <class T, class Tl, int S, int D>
DSC_DEVICE void dwp_tiles(const Problem& p, float* ws) {
  using G = typename DwpSmem<Tl, S, D>::G;
  constexpr int BC = G::BC, BP = Tl::BP, NT = 256;
  constexpr int TPC = NT / BC, PPT = BP / TPC;
  static_assert(BP == 64, "dWp tiles are 64 pixels");
  static_assert(kDwpK == 128 && kDwpC == 64, "the pixel groups below halve a 128 x 64 block tile");
  using Smem = DwpSmem<Tl, S, D>;
  DSC_SHARED(Smem, s);
  const int tid = threadIdx.x;
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kDwpK, cb = static_cast<int64_t>(blockIdx.y) * kDwpC;
  // A block whose channels fill half the tile's rows (K - k0 <= 64) or columns (C - cb <= 32) or both computes
  // only that 64 x 64, 128 x 32 or 64 x 32 corner: its threads form 2 or 4 groups (still 8 x 4 outputs per
  // thread), each over its share of every 32 pixels, added in order at the end. b1 of the classifier (64 x 32)
  // otherwise spent three quarters of its GEMM on zeros. Block-uniform, kept in shared memory and mapped
  // where used: live across the tile loop, the mapping cost 7 registers the kernel does not have (128 at 2
  // blocks per SM; it spilled on sm_61).
  const int gcode = (p.K - k0 <= kDwpK / 2 ? 1 : 0) | (p.C - cb <= kDwpC / 2 ? 2 : 0);
  if (tid == 0) s.gcode = gcode;  // visible after the tile loop's first barrier
  const BwdWs L = bwd_ws(p);
  const float* coef = ws + L.coef;
  const T* __restrict__ wd = static_cast<const T*>(p.wd);
  const T* __restrict__ go = static_cast<const T*>(p.dout);
  const T* __restrict__ ac = static_cast<const T*>(p.act);
  const int cc_dw = tid / TPC;
  // dy mapping. Channels-last: lanes along the output channels (contiguous there); this thread's channel and
  // first pixel (16 pixels, stride 2, per half tile). NCHW: lanes along the pixels, contiguous there, so a
  // warp's load of dout or y is 4 sectors instead of 32 (one per lane's channel plane: 1.2 M L2 accesses
  // on b3 and b7, SIMULATED); warp w forms dy for output channels w, w + 8, ... with coefficients from s.cf.
  const int kk_dy = tid % kDwpK, q_dy = tid / kDwpK;
  const int64_t k_dy = k0 + kk_dy;
  const bool kv_dy = k_dy < p.K;
  const DyCoef cf = dy_coef(coef, kv_dy ? k_dy : 0);
  const T* go_k = go + (kv_dy ? k_dy * p.dos.c : 0);  // this thread's channel of dout and y
  const T* ac_k = ac + (kv_dy ? k_dy * p.as.c : 0);
  // dy from bn_bwd_dy's workspace (dyw: one load per element) or formed here from dout and y. (Offsets
  // recomputed where used: 4 more live registers spilled on sm_61.)
  const bool dyw = p.dyws != 0;
  const float* __restrict__ dyp = ws + L.dy;
  const int64_t dyc = dy_strides(p).c;
  if (!p.cl && tid < kDwpK) {  // visible after the tile loop's first barrier
    s.cf[0][tid] = cf.mu;
    s.cf[1][tid] = cf.a;
    s.cf[2][tid] = cf.beta;
    s.cf[3][tid] = cf.b2;
    s.cf[4][tid] = cf.c2;
  }

  float acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

  for (int64_t tile = blockIdx.z; tile < p.wt.ntiles; tile += p.splits) {
    slot_offsets<Tl>(p, p.wt, tile, dyw ? dy_strides(p) : p.dos, s.sg, tid, NT);
    slot_offsets<Tl>(p, p.wt, tile, p.as, s.sa, tid, NT);
    DSC_SYNC(27);  // slot tables written (and the previous tile's GEMM done)
    if constexpr (Tl::SPAN) {
      // t for the block's 64 input channels from dsconv_dw's [C][Mp] (written once for every K block),
      // transposed into tT, lanes along the channels (conflict-free stores).
      const int64_t mp = p.wt.ntiles * 64;
      const float* __restrict__ tw = ws + L.t + tile * 64;
      // All four loads before the first store (which selects, so waits for its load).
      constexpr int R = kDwpC * 16 / NT;
      const int cc = tid % kDwpC;
      const bool ok = cb + cc < p.C;
      f4 v[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int q4 = ((tid + r * NT) / kDwpC) * 4;
        v[r] = DSC_LDG(reinterpret_cast<const f4*>(tw + (ok ? (cb + cc) * mp + q4 : 0)));
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int q4 = ((tid + r * NT) / kDwpC) * 4;
        s.tT[q4][cc] = ok ? v[r].x : 0.f;
        s.tT[q4 + 1][cc] = ok ? v[r].y : 0.f;
        s.tT[q4 + 2][cc] = ok ? v[r].z : 0.f;
        s.tT[q4 + 3][cc] = ok ? v[r].w : 0.f;
      }
    } else {
      // t for the block's 64 input channels rebuilt from the staged window, BC at a time.
      G win;
      win.setup(p, p.wt, tile, s.row, tid);  // (rect windows: no row table)
      int base[PPT];
#pragma unroll
      for (int j = 0; j < PPT; ++j) base[j] = win.base(p, tid % TPC + j * TPC);
      const int tap_r = win.tap_r();
      if (!p.cl) win.prepare(p, s.row, tid);
      for (int c8 = 0; c8 < kDwpC && cb + c8 < p.C; c8 += BC) {  // (columns past C: never stored)
        win.template stage<T>(p, s.row, cb + c8, s.u.halo, tid);
        if (tid < BC * 9) {
          const int cc = tid / 9;
          s.wd[cc][tid - cc * 9] = cb + c8 + cc < p.C ? Cvt<T>::ldg(wd + (cb + c8) * 9 + tid) : 0.f;
        }
        DSC_SYNC(28);  // window staged
        float wv[9];
#pragma unroll
        for (int i = 0; i < 9; ++i) wv[i] = s.wd[cc_dw][i];
#pragma unroll
        for (int j = 0; j < PPT; ++j)
          s.tT[tid % TPC + j * TPC][c8 + cc_dw] = dw_tap9<G::TAP_C>(s.u.halo[cc_dw], base[j], tap_r, wv);
        DSC_SYNC(29);  // window consumed
      }
    }

    // dy, 32 pixels at a time, then dWp += dy t^T over them. Span tiles: only over the tile's valid pixels
    // (a prefix; the rest of dy and t is 0), in steps of 8: the last tile of b7 at batch 1 holds 4 of its
    // 64 pixels, and 32 of the 128 blocks are that tile's.
    const int nv = Tl::SPAN ? static_cast<int>(tile_count(p, p.wt, tile)) : BP;  // block-uniform
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int hv = nv - h * 32 < 32 ? nv - h * 32 : 32;
      if (hv <= 0) break;  // (block-uniform: every thread leaves the tile's loop body here)
      if (p.cl) {
#pragma unroll 4
        for (int j = 0; j < 16 && k0 + (kk_dy & ~31) < p.K; ++j) {  // (warps wholly past K: rows never stored)
          const int ql = q_dy + 2 * j, q = h * 32 + ql;
          const int64_t og = s.sg[q], oa = s.sa[q];
          const bool ok = kv_dy && og >= 0;
          float g, a = 0.f;
          if (dyw) {
            g = DSC_LDG(dyp + (ok ? k_dy * dyc + og : 0));
          } else {
            g = Cvt<T>::ldg(go_k + (ok ? og : 0));
            a = Cvt<T>::ldg(ac_k + (ok ? oa : 0));
          }
          s.u.dyT[ql][kk_dy] = ok ? (dyw ? g : dy_of(cf, g, a)) : 0.f;
        }
      } else {
        const int ql = tid % 32, q = h * 32 + ql;
        const int64_t og = s.sg[q], oa = s.sa[q];
        // The thread's 16 channels in two batches of 8, each batch's loads issued before its first use: with
        // four in flight (unroll 4) the kernel waited on memory (SIMULATED, b7: 4.4 M scoreboard stalls); all
        // 16 at once spilled on sm_61 (16 bytes, fp16 runtime dilation).
        constexpr int KB = 8;
#pragma unroll 1
        for (int j0 = 0; j0 < kDwpK / 8 && k0 + 8 * j0 < p.K; j0 += KB) {  // (rows past K: never stored)
          float g[KB], a[KB];
#pragma unroll
          for (int j = 0; j < KB; ++j) {
            const int64_t k = k0 + tid / 32 + 8 * (j0 + j);
            const bool ok = k < p.K && og >= 0;
            if (dyw) {
              g[j] = DSC_LDG(dyp + (ok ? k * dyc + og : 0));
              a[j] = 0.f;
            } else {
              g[j] = Cvt<T>::ldg(go + (ok ? k * p.dos.c + og : 0));
              a[j] = Cvt<T>::ldg(ac + (ok ? k * p.as.c + oa : 0));
            }
          }
#pragma unroll
          for (int j = 0; j < KB; ++j) {
            const int kk = tid / 32 + 8 * (j0 + j);
            const bool ok = k0 + kk < p.K && og >= 0;
            float v = g[j];
            if (!dyw) {
              const DyCoef c{s.cf[0][kk], s.cf[1][kk], s.cf[2][kk], s.cf[3][kk], s.cf[4][kk]};
              v = dy_of(c, g[j], a[j]);
            }
            s.u.dyT[ql][kk] = ok ? v : 0.f;
          }
        }
      }
      DSC_SYNC(30);  // dy half staged (and t complete)
      const DwpMap m = dwp_map(s.gcode, tid);
      if (hv == 32 && m.ng == 1) {
        mma_8x4_steps<kDwpK, 32>(acc, s.u.dyT[0], kDwpK + 4, s.tT[h * 32], kDwpC + 4, m.ty, m.tx);
      } else {
        for (int q8 = m.grp * 8; q8 < hv; q8 += 8 * m.ng)
          mma_8x4_steps_h<8, false>(acc, s.u.dyT[q8], m.half, kDwpK + 4, s.tT[h * 32 + q8], kDwpC + 4, m.ty, m.tx);
      }
      DSC_SYNC(31);  // dy half consumed
    }
  }

  // Pixel groups 1.. hand their sums to group 0 (the tile loop ended with a barrier after its last read of dyT
  // and tT), which adds them in group order.
  const DwpMap m = dwp_map(gcode, tid);
  if (m.ng > 1) {
    if (m.grp > 0) {
      float* r = m.grp == 3 ? &s.tT[0][0] : s.u.red + (m.grp - 1) * 2048;
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) r[(i * 4 + j) * m.ntg + m.lt] = acc[i][j];
    }
    DSC_SYNC(36);  // group sums handed over
    if (m.grp > 0) return;
    for (int g = 1; g < m.ng; ++g) {
      const float* r = g == 3 ? &s.tT[0][0] : s.u.red + (g - 1) * 2048;
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += r[(i * 4 + j) * m.ntg + m.lt];
    }
  }
  dwp_store<T>(p, ws + L.dwp, acc, k0, m.half, m.ty, cb + m.tx * 4);
}

// WIDE (plan.cuh dwide: span tiles, K and C >= 128): a block owns 128 output x 128 input channels of dWp and
// each thread an 8 x 8 register block (rows ty * 4 and 64 + ty * 4, columns tx * 4 and 64 + tx * 4:
// mma_8x4x2_steps_h), so a staged dy value feeds 128 input channels and a warp's shared loads per FMA fall
// from 3 per 32 to 4 per 64. Pixels in stages of kDwpQ = 16: dy [16 px x 128 k] and t [16 px x 128 c] are
// 17 KB together, so two blocks also fit sm_75's 64 KB. A stage's loads are issued after the previous
// stage's GEMM, not held in registers across it (the 64 sums leave no room at 128 registers; the other
// block on the SM runs meanwhile): dy in two batches of 4, then t (t first, or dy in one batch of 8, spilled
// 12-16 bytes on sm_61; 8-pixel double-buffered stages, loaded during the GEMM, 92-100). t comes from
// dsconv_dw's workspace (zero past M), so S and D play no part: one instantiation per dtype
// (<T, TileSpan64, 1, 0, true>).
constexpr int kDwpQ = 16;
struct DwpWideSmem {
  alignas(16) float dyT[kDwpQ][kDwpK + 4];     // A: per pixel, dy over the block's output channels
  alignas(16) float tT[kDwpQ][kDwpWideC + 4];  // B: per pixel, t over the block's input channels
  float cf[5][kDwpK];                          // dy's coefficients of the block's output channels
  int64_t sg[64], sa[64];                      // the tile's pixel offsets in dy (or dout) and y
};

template <class T>
DSC_DEVICE void dwp_wide(const Problem& p, float* ws) {
  constexpr int NT = 256, KP = kDwpK + 4, CP = kDwpWideC + 4;
  DSC_SHARED(DwpWideSmem, s);
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kDwpK, cb = static_cast<int64_t>(blockIdx.y) * kDwpWideC;
  const BwdWs L = bwd_ws(p);
  const T* __restrict__ go = static_cast<const T*>(p.dout);
  const T* __restrict__ ac = static_cast<const T*>(p.act);
  const bool dyw = p.dyws != 0;
  const float* __restrict__ dyp = ws + L.dy;
  if (tid < kDwpK) {  // visible after the tile loop's first barrier
    const DyCoef c = dy_coef(ws + L.coef, k0 + tid < p.K ? k0 + tid : 0);
    s.cf[0][tid] = c.mu;
    s.cf[1][tid] = c.a;
    s.cf[2][tid] = c.beta;
    s.cf[3][tid] = c.b2;
    s.cf[4][tid] = c.c2;
  }
  // Staging maps, fixed for the block. dy: NCHW lanes along 16 pixels (2 channel rows per warp: 4 sectors
  // a load, as 32 lanes on one row), channels kq + 16 j; channels_last lanes along the channels (contiguous
  // there), pixels kq + 2 j. t: lanes along the channels (conflict-free transposed stores), a float4 of 4
  // pixels at q4 and q4 + 8.
  const int kq = p.cl ? tid / kDwpK : tid / kDwpQ, kr = p.cl ? tid % kDwpK : tid % kDwpQ;
  const int cc = tid % kDwpWideC, q4 = (tid / kDwpWideC) * 4;
  const bool cv = cb + cc < p.C;
  const int64_t mp = p.wt.ntiles * 64;
  const float* __restrict__ tcol = ws + L.t + (cv ? (cb + cc) * mp : 0);

  float acc[2][8][4];  // [column half][row][column]
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[h][i][j] = 0.f;

  for (int64_t tile = blockIdx.z; tile < p.wt.ntiles; tile += p.splits) {
    slot_offsets<TileSpan64>(p, p.wt, tile, dyw ? dy_strides(p) : p.dos, s.sg, tid, NT);
    if (!dyw) slot_offsets<TileSpan64>(p, p.wt, tile, p.as, s.sa, tid, NT);
    DSC_SYNC(40);  // slot tables written (and the previous tile's GEMM done)
    const int nv = static_cast<int>(tile_count(p, p.wt, tile));  // block-uniform
    for (int q0 = 0; q0 < nv; q0 += kDwpQ) {
      // dy: 8 values per thread in two batches of 4, each batch's loads before its first use (all 8 at once,
      // beside the 64 sums, spilled).
#pragma unroll 1
      for (int jb = 0; jb < 8; jb += 4) {
        float g[4], a[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int ql = p.cl ? kq + 2 * (jb + j) : kr, kk = p.cl ? kr : kq + 16 * (jb + j);
          const int64_t og = s.sg[q0 + ql], k = k0 + kk;
          const bool ok = k < p.K && og >= 0;
          if (dyw) {
            g[j] = DSC_LDG(dyp + (ok ? og + k * dy_strides(p).c : 0));
            a[j] = 0.f;
          } else {
            g[j] = Cvt<T>::ldg(go + (ok ? og + k * p.dos.c : 0));
            a[j] = Cvt<T>::ldg(ac + (ok ? s.sa[q0 + ql] + k * p.as.c : 0));
          }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int ql = p.cl ? kq + 2 * (jb + j) : kr, kk = p.cl ? kr : kq + 16 * (jb + j);
          const bool ok = k0 + kk < p.K && s.sg[q0 + ql] >= 0;
          float v = g[j];
          if (!dyw) v = dy_of(DyCoef{s.cf[0][kk], s.cf[1][kk], s.cf[2][kk], s.cf[3][kk], s.cf[4][kk]}, g[j], a[j]);
          s.dyT[ql][kk] = ok ? v : 0.f;
        }
      }
      // t: zero past M (dsconv_dw) and past C (selected here).
      {
        const float* tq = tcol + tile * 64 + q0 + q4;
        const f4 t0 = DSC_LDG(reinterpret_cast<const f4*>(tq)), t1 = DSC_LDG(reinterpret_cast<const f4*>(tq + 8));
        const float tv[8] = {t0.x, t0.y, t0.z, t0.w, t1.x, t1.y, t1.z, t1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i) s.tT[q4 + (i & 3) + (i >> 2) * 8][cc] = cv ? tv[i] : 0.f;
      }
      DSC_SYNC(41);  // stage staged
      mma_8x4x2_steps_h<kDwpQ>(acc[0], acc[1], s.dyT[0], kDwpK / 2, KP, s.tT[0], kDwpWideC / 2, CP, ty, tx);
      DSC_SYNC(42);  // stage consumed
    }
  }

  // The two column halves' blocks, as dwp_tiles stores its one.
  dwp_store<T>(p, ws + L.dwp, acc[0], k0, kDwpK / 2, ty, cb + tx * 4);
  dwp_store<T>(p, ws + L.dwp, acc[1], k0, kDwpK / 2, ty, cb + kDwpWideC / 2 + tx * 4);
}

template <class T, class Tl, int S, int D, bool WIDE = false>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS_MIN(256, 2) dsconv_bwd_dwp_kernel(const Problem p, float* ws) {
  if constexpr (WIDE) {
    static_assert(Tl::SPAN && S == 1 && D == 0, "one wide instantiation per dtype: <T, TileSpan64, 1, 0, true>");
    dwp_wide<T>(p, ws);
  } else {
    dwp_tiles<T, Tl, S, D>(p, ws);
  }
}

// ---------------------------------------------------------------------------------------------
// dsconv_bwd_dx: dx[n, c, h, w] = sum over taps (i, j) with (h + d - i d) and (w + d - j d) divisible by
// s of dt[n, c, (h + d - i d) / s, (w + d - j d) / s] Wd[c, i, j], and, from the same dt values,
// dWd[c, i, j] += x[n, c, h, w] dt[...]: every (input pixel, tap) pair is one (output pixel, tap) pair.
// Block = a channel chunk x a group of 8x8 input tiles (looped, so the dWd partials [groups, C, 9] stay
// bounded); per tile the dt window it needs is staged in shared memory (zero outside the map) and each
// thread keeps its channel's 9 weights and 9 dWd sums in registers. Window, per channel:
//   dilation D > 0: the dense window of output rows floor((h0 - D) / S) .. , tap (i, j) of input pixel
//     (a, b) at ((a + D + m - i D) / S, (b + D + m - j D) / S) with m = S - 1 if D is odd at S = 2, and
//     only where those are integers (stride 2: a parity test per tap);
//   runtime dilation: gathered, row i * 8 + a holds tap i of input row a (0 where the tap falls between
//     output rows at stride 2, or outside the map), so the taps need no test.
// Threads: NCHW a warp per channel (8 channels, 2 pixels per lane), except at stride 2 with a template
// dilation, where a warp holds the pixels of one parity class (row and column parity) for 4 channels, 8
// lanes each, so that it runs only that class's taps (dx_class_taps: 2.25 of 9 taps on average at odd D);
// channels_last 32 channels as lanes (8 when the window is too large), pixels across warps. dWd: per-thread
// sums, added in a fixed order.
// ---------------------------------------------------------------------------------------------
template <int S, int D>
struct DxWindow {
  static constexpr int XR = D > 0 ? (S == 1 ? 8 + 2 * D : (2 * D + D % 2 + 7) / 2 + 1) : 24;  // rows = cols
  static constexpr int HALO = XR * XR;
  // A channel's window every HS floats: odd, so that the 32 lanes of a channels-last warp (one channel each,
  // the same pixel) read 32 banks. At HALO floats (even) they shared 8, 2 or 1 banks: 4- to 32-way
  // conflicts on every read of the window (32-way at stride 1 dilation 4, stride 2 dilation 3 or 4).
  static constexpr int HS = HALO | 1;
  static constexpr int CCL = 32 * HS * 4 <= 40960 ? 32 : 8;  // channels_last channel chunk
  // NCHW at stride 1 with a template dilation: the window's rows XP = 24 floats apart (24 mod 32), one
  // channel every HSN. A warp reads 4 rows x 8 columns of one channel's window, which at XR floats a row
  // (10-16) put rows a and a + 2 in the same banks: 2-way conflicts on every tap (SIMULATED, b3's step:
  // 263 K conflicts on 322 K shared-memory instructions). Within the channels-last window's footprint.
  static constexpr int XP = S == 1 && D > 0 ? 24 : XR;
  static constexpr int HSN = XR * XP;
  static constexpr int WIN = CCL * HS > 8 * HSN ? CCL * HS : 8 * HSN;
  static constexpr int OFS = D > 0 ? (S == 1 ? 2 * D : 2 * D + D % 2) : 0;  // (row of tap 0 of a = 0) * S
};

// The taps of input pixels (2 ai + PA, 2 bi + PB) at stride 2 (dense window): (i, j) contributes only where
// PA + OFS - i D and PB + OFS - j D are even, known at compile time here (4, 2, 2 and 1 taps of the four
// parity classes at odd D; 9 or none at even D), instead of all 9 with a parity select per tap.
template <int D, int PA, int PB>
DSC_DEVICE float dx_class_taps(const float* wc, int ai, int bi, const float (&wv)[9], float (&gw)[9], float xv) {
  using X = DxWindow<2, D>;
  const float* w0 = wc + ai * X::XR + bi;
  float acc = 0.f;
#pragma unroll
  for (int ti = 0; ti < 3; ++ti) {
#pragma unroll
    for (int tj = 0; tj < 3; ++tj) {
      if (((PA + X::OFS - ti * D) | (PB + X::OFS - tj * D)) & 1) continue;
      const float v = w0[(PA + X::OFS - ti * D) / 2 * X::XR + (PB + X::OFS - tj * D) / 2];
      acc += v * wv[ti * 3 + tj];
      gw[ti * 3 + tj] += v * xv;
    }
  }
  return acc;
}

// The 9 taps of input pixel (a, b) at stride 1 with a template dilation, window rows P floats apart (a
// compile-time pitch: NCHW's and channels_last's are both instantiated; at a run-time pitch the offsets took
// up to 14 more registers on sm_86).
template <int D, int P>
DSC_DEVICE float dx_s1_taps(const float* wc, int a, int b, const float (&wv)[9], float (&gw)[9], float xv) {
  constexpr int OFS = 2 * D;
  const float* w0 = wc + a * P + b;
  float acc = 0.f;
#pragma unroll
  for (int ti = 0; ti < 3; ++ti) {
#pragma unroll
    for (int tj = 0; tj < 3; ++tj) {
      const float v = w0[(OFS - ti * D) * P + OFS - tj * D];
      acc += v * wv[ti * 3 + tj];
      gw[ti * 3 + tj] += v * xv;
    }
  }
  return acc;
}

template <int S, int D>
struct DxSmem {
  using X = DxWindow<S, D>;
  static constexpr int CCM = X::CCL > 8 ? X::CCL : 8;
  union {
    float win[X::WIN];  // channel ch at ch * HS (channels_last) or ch * HSN (NCHW)
    float red[256][9];
  };
  float wd[CCM][9];
};

// Resident blocks of dsconv_bwd_dx asked of ptxas. sm_61: 3 (<= 85 registers), what its shared memory allows,
// 2 at stride 1 dilation 4; without the hint ptxas 12.9 gave stride 1 with a run-time dilation a 64-register
// budget and spilled. sm_75+: no hint (ptxas settles at 62-110 registers there; with a minimum of 1 or 3 it
// took 72-106 or 80 everywhere, fewer blocks per SM on sm_86). DSC_TARGET_SM61: compute_75 PTX that is run
// as sm_61 (the simulator, tools/sim).
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 700 || defined(DSC_TARGET_SM61))
#define DSC_DX_BOUNDS(S, D) DSC_LAUNCH_BOUNDS_MIN(256, ((S) == 1 && (D) == 4 ? 2 : 3))
#else
#define DSC_DX_BOUNDS(S, D) DSC_LAUNCH_BOUNDS(256)
#endif

template <class T, int S, int D>
DSC_GLOBAL void DSC_DX_BOUNDS(S, D) dsconv_bwd_dx_kernel(const Problem p, float* ws) {
  using X = DxWindow<S, D>;
  using Smem = DxSmem<S, D>;
  constexpr int XR = X::XR, NT = 256, DC = D > 0 ? D : 1;  // DC: dx_class_taps' (used only where D > 0)
  constexpr int CN = 8;                                    // channels per block in NCHW
  DSC_SHARED(Smem, s);
  const int tid = threadIdx.x;
  const int CC = p.cl ? X::CCL : CN, TPC = NT / CC, PPT = 64 / TPC;  // threads per channel, pixels per thread
  // Parity classes (NCHW, stride 2, template dilation): warp w holds class w % 4 of channels 4 (w / 4) ..
  // + 3; pt = class * 8 + the lane's index in its channel's 8.
  const bool cls = S == 2 && D > 0 && !p.cl;
  const int cc = p.cl ? tid % CC : (cls ? (tid / 128) * 4 + (tid % 32) / 8 : tid / TPC);
  const int pt = p.cl ? tid / CC : (cls ? ((tid / 32) % 4) * 8 + tid % 8 : tid % TPC);
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * CC, c = c0 + cc;
  const int d = D > 0 ? D : p.dil;
  const BwdWs L = bwd_ws(p);
  const float* __restrict__ dt = ws + L.dt;
  const int64_t dt_plane = p.N * p.C * p.Ho * p.Wo;
  const Str4 dts = dt_strides(p);
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ wdp = static_cast<const T*>(p.wd);
  T* __restrict__ dx = static_cast<T*>(p.dx);

  for (int e = tid; e < CC * 9; e += NT) {
    const int ch = e / 9;
    s.wd[ch][e - ch * 9] = c0 + ch < p.C ? Cvt<T>::ldg(wdp + c0 * 9 + e) : 0.f;
  }
  DSC_SYNC(32);  // weights staged
  float wv[9], gw[9];
#pragma unroll
  for (int i = 0; i < 9; ++i) {
    wv[i] = s.wd[cc][i];
    gw[i] = 0.f;
  }
  // NCHW with a template dilation: a window has at most 256 elements (XR <= 16), so a thread owns one slot
  // (srr, sqq) of SG channels' windows at once, the same in every tile: the slot's row, column and dt offset
  // are worked out once per tile and each channel costs a load and a pointer step. Staging element by element
  // (the path below: a division pair and four 64-bit multiplies each) took most of the kernel's instructions
  // (b7's step: 35 M of 58 M).
  constexpr int SG = D > 0 ? NT / X::HALO : 1;
  const int sg = tid / X::HALO, srq = tid - sg * X::HALO, srr = srq / XR, sqq = srq - srr * XR;
  const int sl = srr * X::XP + sqq;                              // the slot in NCHW's window
  const int hs = p.cl ? X::HS : X::HSN, xp = p.cl ? XR : X::XP;  // the window's channel and row strides
  const int H = static_cast<int>(p.H), W = static_cast<int>(p.W);
  const uint32_t xsc = static_cast<uint32_t>(p.xs.c), xsh = static_cast<uint32_t>(p.xs.h);
  const uint32_t xsw = static_cast<uint32_t>(p.xs.w);

  for (int64_t tile = blockIdx.y; tile < p.xtiles; tile += p.xgroups) {
    const uint32_t t32 = static_cast<uint32_t>(tile), per = static_cast<uint32_t>(p.xtiles_img);
    const uint32_t n = t32 / per, r = t32 - n * per, tr = r / static_cast<uint32_t>(p.xtiles_w);
    const int h0 = static_cast<int>(tr) * 8, w0 = static_cast<int>(r - tr * static_cast<uint32_t>(p.xtiles_w)) * 8;
    const int64_t dtn = static_cast<int64_t>(n) * dts.n, xn = static_cast<int64_t>(n) * p.xs.n;
    // Window origin in output rows (dense): floor((h0 - D) / S), h0 even at stride 2.
    const int ho_lo = D > 0 ? (S == 1 ? h0 - D : (h0 - D - (D % 2)) / 2) : 0;
    const int wo_lo = D > 0 ? (S == 1 ? w0 - D : (w0 - D - (D % 2)) / 2) : 0;
    // Stage the dt window of the chunk's channels (fp32, x's layout).
    auto src = [&](int rr, int h_or_w0, int lo, int64_t lim) -> int {  // output row / col of window index rr
      if (D > 0) return lo + rr;
      const int hh = h_or_w0 + rr % 8 + d - (rr / 8) * d;
      return (hh < 0 || hh % S != 0 || hh / S >= lim) ? -1 : hh / S;
    };
    if (D > 0 && !p.cl) {
      const int ho = ho_lo + srr, wo = wo_lo + sqq;
      const bool ok = sg < SG && ho >= 0 && ho < p.Ho && wo >= 0 && wo < p.Wo;
      const float* q = dt + dtn + (c0 + sg) * dts.c + (ok ? static_cast<int64_t>(ho) * p.Wo + wo : 0);
      const int64_t step = SG * dts.c;
      if (SG == 1 && D >= 3) {
        // One thread per slot (stride 1, dilation 3 or 4): the slot's channels loaded 4 at a time before
        // their stores. One load after another, each waiting for the last (the channel loop has a run-time
        // bound), a block's staging was a chain of 8 global latencies, and with 3 blocks per SM little else
        // ran meanwhile. (All 8 at once spilled 4-12 bytes on sm_61, sm_75 and sm_86; 4 at a time spilled 20
        // on sm_61 at dilation 2, and 2 at a time 16 on sm_75 at stride 2, where 4 threads share a slot.)
        // The loads are unconditional (dt's first element where the value is zero: outside the map or past
        // C) and the zeros selected afterwards: a branch around each load, with its bound test, cost twice
        // the instructions of the load itself.
        constexpr int V = 4;
        const int nc = ok ? (p.C - c0 < CN ? static_cast<int>(p.C - c0) : CN) : 0;  // slot's channels to load
#pragma unroll 1
        for (int c4 = 0; c4 < CN; c4 += V, q += V * step) {
          float v[V];
#pragma unroll
          for (int i = 0; i < V; ++i) v[i] = DSC_LDG(c4 + i < nc ? q + i * step : dt);
#pragma unroll
          for (int i = 0; i < V; ++i) v[i] = c4 + i < nc ? v[i] : 0.f;
          for (int ks = 1; ks < p.bsplit; ++ks) {  // dt partials of the K splits, in order
            const float* qk = q + ks * dt_plane;
#pragma unroll
            for (int i = 0; i < V; ++i)
              if (c4 + i < nc) v[i] += qk[i * step];
          }
          if (sg < SG)
#pragma unroll
            for (int i = 0; i < V; ++i) s.win[(c4 + i) * X::HSN + sl] = v[i];
        }
      } else if (sg < SG) {
        for (int ch = sg; ch < CN; ch += SG, q += step) {
          float v = 0.f;
          if (ok && c0 + ch < p.C) {
            v = q[0];
            for (int ks = 1; ks < p.bsplit; ++ks) v += q[ks * dt_plane];  // dt partials of the K splits, in order
          }
          s.win[ch * X::HSN + sl] = v;
        }
      }
    } else
      for (int e = tid; e < CC * X::HALO; e += NT) {
        const int ch = p.cl ? e % CC : e / X::HALO, rq = p.cl ? e / CC : e % X::HALO;
        const int rr = rq / XR, qq = rq - rr * XR;
        const int ho = src(rr, h0, ho_lo, p.Ho), wo = src(qq, w0, wo_lo, p.Wo);
        const bool ok = c0 + ch < p.C && ho >= 0 && ho < p.Ho && wo >= 0 && wo < p.Wo;
        const float* src =
            dt +
            (ok ? dtn + (c0 + ch) * dts.c + static_cast<int64_t>(ho) * dts.h + static_cast<int64_t>(wo) * dts.w : 0);
        float v = src[0];
        for (int ks = 1; ks < p.bsplit; ++ks) v += src[ks * dt_plane];  // dt partials of the K splits, in order
        s.win[ch * hs + rr * xp + qq] = ok ? v : 0.f;
      }
    DSC_SYNC(33);  // window staged
    if (c < p.C) {
      const float* wc = s.win + cc * hs;
      // Offsets inside the tile's image in 32 bits (C H W < 2^31, host-checked) from the tile's corner: the
      // 64-bit image base and the corner once per tile, two multiply-adds per pixel (64-bit offsets per
      // pixel, with their bound tests, cost as much as the pixel's 9 taps).
      const T* __restrict__ xi = x + xn;
      T* __restrict__ dxi = dx + xn;
      const uint32_t ob =
          static_cast<uint32_t>(c) * xsc + static_cast<uint32_t>(h0) * xsh + static_cast<uint32_t>(w0) * xsw;
      for (int j = 0; j < PPT; ++j) {
        // Class pixel m = lane index + 8 j of the class's 4 x 4: (2 ai + row parity, 2 bi + column parity).
        const int m = (pt & 7) + 8 * j, ai = m >> 2, bi = m & 3;
        const int px = pt + j * TPC;
        const int a = cls ? 2 * ai + (pt >> 4) : px >> 3, b = cls ? 2 * bi + ((pt >> 3) & 1) : px & 7;
        if (h0 + a >= H || w0 + b >= W) continue;
        const uint32_t off = ob + static_cast<uint32_t>(a) * xsh + static_cast<uint32_t>(b) * xsw;
        const float xv = Cvt<T>::ldg(xi + off);
        float acc = 0.f;
        if (S == 2 && D > 0 && cls) {
          switch (pt / 8) {  // warp-uniform
            case 0:
              acc = dx_class_taps<DC, 0, 0>(wc, ai, bi, wv, gw, xv);
              break;
            case 1:
              acc = dx_class_taps<DC, 0, 1>(wc, ai, bi, wv, gw, xv);
              break;
            case 2:
              acc = dx_class_taps<DC, 1, 0>(wc, ai, bi, wv, gw, xv);
              break;
            default:
              acc = dx_class_taps<DC, 1, 1>(wc, ai, bi, wv, gw, xv);
          }
          dxi[off] = Cvt<T>::store(acc);
          continue;
        }
        if (S == 1 && D > 0) {
          acc = p.cl ? dx_s1_taps<DC, XR>(wc, a, b, wv, gw, xv) : dx_s1_taps<DC, X::XP>(wc, a, b, wv, gw, xv);
          dxi[off] = Cvt<T>::store(acc);
          continue;
        }
#pragma unroll
        for (int ti = 0; ti < 3; ++ti) {
#pragma unroll
          for (int tj = 0; tj < 3; ++tj) {
            float v;
            if (D == 0) {
              v = wc[(ti * 8 + a) * XR + tj * 8 + b];
            } else {
              const int ra = a + X::OFS - ti * D, rb = b + X::OFS - tj * D;  // >= 0, even where a tap lands
              v = ((ra | rb) & 1) ? 0.f : wc[(ra >> 1) * XR + (rb >> 1)];
            }
            acc += v * wv[ti * 3 + tj];
            gw[ti * 3 + tj] += v * xv;
          }
        }
        dxi[off] = Cvt<T>::store(acc);
      }
    }
    DSC_SYNC(34);  // window consumed before the next tile's
  }
  // dWd partial of this block, each channel's threads added in a fixed order.
  float* part = ws + L.dwd + static_cast<int64_t>(blockIdx.y) * p.C * 9;
  if (!p.cl && !cls) {
    // A warp per channel: a butterfly over its lanes, no shared memory. (Through shared memory, 72 threads
    // each added 32 values in a dependent chain, the other 184 idle: a sixth of the kernel's instructions
    // and a serial tail per block where blocks take one tile, as at batch 1.)
    const int lane = tid % 32, tap = warp9_tap(lane);
    const float t = warp_sum9(gw, lane);
    if (c < p.C && tap >= 0 && (lane & 1) == 0) part[c * 9 + tap] = t;
    return;
  }
  if (cls) {
    // Parity classes: a channel's threads are 8 lanes in each of 4 warps (one per class). A butterfly over
    // the 8, then the 4 classes' sums through shared memory, added in class order.
    const int lane = tid % 32, cl4 = (tid / 32) % 4;
    float g2[2];
    warp_sum9_g8(gw, lane, g2);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int tap = warp9_g8_tap(lane, j);
      if (tap >= 0) s.red[cl4 * CN + cc][tap] = g2[j];
    }
    DSC_SYNC(35);  // class sums in shared memory
    for (int e = tid; e < CN * 9; e += NT) {
      const int ch = e / 9, tap = e - ch * 9;
      if (c0 + ch < p.C)
        part[(c0 + ch) * 9 + tap] =
            ((s.red[ch][tap] + s.red[CN + ch][tap]) + s.red[2 * CN + ch][tap]) + s.red[3 * CN + ch][tap];
    }
    return;
  }
  // channels_last: a channel's TPC threads are one lane of each of TPC warps.
#pragma unroll
  for (int i = 0; i < 9; ++i) s.red[tid][i] = gw[i];
  DSC_SYNC(39);  // per-thread sums in shared memory
  for (int e = tid; e < CC * 9; e += NT) {
    const int ch = e / 9, tap = e - ch * 9;
    if (c0 + ch >= p.C) continue;
    float t = 0.f;
    for (int u = 0; u < TPC; ++u) t += s.red[ch + u * CC][tap];
    part[(c0 + ch) * 9 + tap] = t;
  }
}

}  // namespace dsc
