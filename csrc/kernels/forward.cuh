// Forward stages: dsconv_fwd (depthwise -> pointwise -> bias [-> ReLU], tile statistics), bn_stats
// (merge the tile statistics), bn_relu (normalise + ReLU). Torch-free. Design: docs/cuda.md.
#pragma once

#include "problem.cuh"
#include "reductions.cuh"
#include "tile_gemm.cuh"
#include "window.cuh"

namespace dsc {

// Row lengths of the transposed output half-tile of the epilogue: [BK/2][BP + 4] (NCHW) or [BP][BK/2 + 4]
// (channels_last), so that the stores' shared reads run along the contiguous axis of the output without
// bank conflicts.
template <class Tl>
struct FwdOut {
  static constexpr int kOutK = Tl::BP + 4, kOutP = Tl::BK / 2 + 4;
  static constexpr int kOut = Tl::BK / 2 * kOutK > Tl::BP * kOutP ? Tl::BK / 2 * kOutK : Tl::BP * kOutP;
};

template <class Tl, int S, int D>
struct FwdSmem {
  // 8 input channels per chunk where two windows of them fit in ~13 KB (stride 1 on 8x8 tiles), else 4.
  using G = Window<Tl, S, D, window_floats<Tl, S, D>() <= 400 ? 8 : 4>;
  union {
    struct {  // two of everything: chunk i + 1's depthwise runs beside chunk i's GEMM, one barrier per chunk
      float halo[2][G::BC][G::HALO];
      alignas(16) float t[2][G::BC][Tl::BP];  // depthwise chunk: B operand of the GEMM
      alignas(16) float w[2][G::BC][Tl::BK];  // Wp^T chunk: A operand
      float wd[2][G::BC][9];
    } m;
    alignas(16) float o[FwdOut<Tl>::kOut];  // epilogue: half of the output tile (FwdOut)
  };
  int64_t slot[Tl::BP];       // offset of each pixel in the output tensor, -1 past the end
  int row[kSpanRowsMax];      // span: offset of each staged row from the tile's first image, -1 for padding
};

// Offset of every pixel slot of tile `tile` in a tensor with strides st (-1 past the end).
template <class Tl>
DSC_DEVICE void slot_offsets(const Problem& p, const Tiling& tl, int64_t tile, const Str4& st, int64_t* slot,
                             int tid, int nt) {
  for (int q = tid; q < Tl::BP; q += nt) {
    int64_t off = -1;
    if (!Tl::SPAN) {
      const RectTile rt = rect_tile<Tl::TH, Tl::TW>(tl, tile);
      const int ho = rt.ho0 + q / Tl::TW, wo = rt.wo0 + q % Tl::TW;
      if (ho < p.Ho && wo < p.Wo) off = rt.n * st.n + ho * st.h + wo * st.w;
    } else {
      const int64_t g64 = tile * Tl::BP + q;
      if (g64 < p.M) {
        const uint32_t g = static_cast<uint32_t>(g64), n = fdiv(p.div_hw, g);
        const uint32_t r = g - n * static_cast<uint32_t>(p.Ho * p.Wo), ho = fdiv(p.div_wo, r);
        const uint32_t wo = r - ho * static_cast<uint32_t>(p.Wo);
        off = static_cast<int64_t>(n) * st.n + static_cast<int64_t>(ho) * st.h + static_cast<int64_t>(wo) * st.w;
      }
    }
    slot[q] = off;
  }
}

// Epilogue of dsconv_fwd (and dsconv_fwd_reduce), half of the BK channels at a time: + bias, transpose through
// shared memory (o), coalesced stores in both layouts; eval -> relu(y + bias); train -> y + bias stored and
// the tile's per-channel (mean, M2) written to ws; y-only -> y + bias stored. slot: the tile's pixel offsets
// in the output (published by a barrier before the call).
template <class T, class Tl>
DSC_DEVICE void fwd_epilogue(const Problem& p, float* ws, int64_t tile, int64_t k0, float (&acc)[8][4], float* o,
                             const int64_t* slot, int tid) {
  constexpr int BK = Tl::BK, BP = Tl::BP, NT = Tl::THREADS, kOutK = FwdOut<Tl>::kOutK, kOutP = FwdOut<Tl>::kOutP;
  const int ty = tid / Tl::TX, tx = tid % Tl::TX;
  const Str4 os = p.mode == kEval ? p.os : p.ys;
  T* __restrict__ out = static_cast<T*>(p.mode == kEval ? p.out : p.y);
  const int warp = tid / 32, lane = tid % 32;
  constexpr int NW = NT / 32;
  float cnt = 0.f;
  if (p.mode == kTrain) cnt = static_cast<float>(tile_count(p, p.ft, tile));
  // o(r, q): channel r of the half, pixel q.
  auto o_at = [&](int r, int q) -> float& {
    return p.cl ? o[q * kOutP + r] : o[r * kOutK + q];
  };
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t kh = k0 + h * (BK / 2);
    float b[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t k = kh + ty * 4 + i;
      b[i] = (p.bias != nullptr && k < p.K) ? p.bias[k] : 0.f;
    }
    if (!p.cl) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        f4 v;
        v.x = acc[h * 4 + i][0] + b[i];
        v.y = acc[h * 4 + i][1] + b[i];
        v.z = acc[h * 4 + i][2] + b[i];
        v.w = acc[h * 4 + i][3] + b[i];
        *reinterpret_cast<f4*>(&o[(ty * 4 + i) * kOutK + tx * 4]) = v;
      }
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        f4 v;
        v.x = acc[h * 4 + 0][j] + b[0];
        v.y = acc[h * 4 + 1][j] + b[1];
        v.z = acc[h * 4 + 2][j] + b[2];
        v.w = acc[h * 4 + 3][j] + b[3];
        *reinterpret_cast<f4*>(&o[(tx * 4 + j) * kOutP + ty * 4]) = v;
      }
    }
    DSC_SYNC(4);  // half tile in shared memory
    if (!p.cl) {  // a warp per output channel, lanes along the pixels
      for (int r = warp; r < BK / 2; r += NW) {
        const int64_t k = kh + r;
        if (k >= p.K) break;
        for (int q = lane; q < BP; q += 32) {
          const int64_t po = slot[q];
          const float v = o_at(r, q);
          if (po >= 0) out[po + k * os.c] = Cvt<T>::store(p.mode == kEval ? relu_nan(v) : v);
        }
      }
    } else {  // a warp per pixel, lanes along the channels
      for (int q = warp; q < BP; q += NW) {
        const int64_t po = slot[q];
        if (po < 0) continue;
        for (int r = lane; r < BK / 2; r += 32) {
          const int64_t k = kh + r;
          const float v = o_at(r, q);
          if (k < p.K) out[po + k] = Cvt<T>::store(p.mode == kEval ? relu_nan(v) : v);
        }
      }
    }
    if (p.mode == kTrain) {
      // Tile statistics of the fp32 y per channel: mean, then M2 about it (two passes, warp trees).
      for (int r = warp; r < BK / 2; r += NW) {
        const int64_t k = kh + r;
        if (k >= p.K) break;
        float sm = 0.f;
        for (int q = lane; q < BP; q += 32) sm += slot[q] >= 0 ? o_at(r, q) : 0.f;
        sm = warp_sum(sm);
        const float mk = sm / cnt;
        float sq = 0.f;
        for (int q = lane; q < BP; q += 32) {
          const float dl = o_at(r, q) - mk;
          sq += slot[q] >= 0 ? dl * dl : 0.f;
        }
        sq = warp_sum(sq);
        if (lane == 0) {
          ws[tile * p.K + k] = mk;
          ws[p.ft.ntiles * p.K + tile * p.K + k] = sq;
        }
      }
    }
    DSC_SYNC(5);  // half consumed before the next half overwrites it
  }
}

// dsconv_fwd: one block = one pixel tile x BK output channels. For each chunk of BC input channels the
// tile's input window is staged once in shared memory (coalesced along x's contiguous axis), the
// depthwise chunk t [BC x BP] is computed from it (9 taps and the channel's 9 weights in registers) and
// multiplied by the staged Wp^T chunk in the 8x4 register micro-GEMM. t never leaves the chip.
// Epilogue through shared memory (coalesced stores in both layouts): eval -> relu(y + bias); train ->
// y + bias stored and the tile's per-channel (mean, M2) written to ws; y-only -> y + bias stored.
template <class T, class Tl, int S, int D>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS_MIN(Tl::THREADS, 2) dsconv_fwd_kernel(const Problem p, float* ws) {
  using Smem = FwdSmem<Tl, S, D>;
  using G = typename Smem::G;
  constexpr int BC = G::BC, BK = Tl::BK, BP = Tl::BP, NT = Tl::THREADS;
  constexpr int TPC = NT / BC, PPT = BP / TPC;  // depthwise: threads per channel, pixels per thread
  static_assert(BP % TPC == 0 && NT % BC == 0, "depthwise mapping");
  DSC_SHARED(Smem, s);
  const int tid = threadIdx.x, ty = tid / Tl::TX, tx = tid % Tl::TX;
  const TileBlock tb = tile_block();
  if (tb.tile >= p.ft.ntiles) return;  // the whole block: no barrier is left waiting
  // Grid x = output-channel block + kblocks x input-channel split (fsplit > 1: small maps).
  const int64_t tile = tb.tile, kblocks = (p.K + BK - 1) / BK, kb = tb.block % kblocks, cs = tb.block / kblocks;
  const int64_t k0 = kb * BK, c_lo = cs * p.csplit, c_hi = c_lo + p.csplit < p.C ? c_lo + p.csplit : p.C;
  const T* __restrict__ wp = static_cast<const T*>(p.wp);
  const T* __restrict__ wd = static_cast<const T*>(p.wd);
  const Str4 os = p.mode == kEval ? p.os : p.ys;

  G win;
  win.setup(p, p.ft, tile, s.row, tid);
  slot_offsets<Tl>(p, p.ft, tile, os, s.slot, tid, NT);
  int base[PPT];
#pragma unroll
  for (int j = 0; j < PPT; ++j) base[j] = win.base(p, tid % TPC + j * TPC);
  const int tap_r = win.tap_r();
  const int cc_dw = tid / TPC;  // this thread's depthwise channel within a chunk
  DSC_SYNC(7);  // slot and row tables written
  if (!p.cl) win.prepare(p, s.row, tid);

  float acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

  // Chunk j = input channels c_lo + j BC ... Per chunk: S (window and depthwise weights to shared memory),
  // D (depthwise chunk t from the window, Wp^T chunk to shared memory), G (acc += Wp^T t). Software
  // pipeline with double buffers and one barrier per chunk: iteration j runs D(j + 1) and G(j), stores
  // chunk j + 2's window and issues the loads of chunk j + 3's window and j + 2's Wp into registers, which
  // land while the next iteration computes (double buffering through registers; the NCHW window only when
  // it fits in 8 registers, else it is loaded when stored).
  constexpr bool PF = BC * G::E <= 8;
  constexpr int WPT = BK * (BC / 4);  // threads that stage Wp (<= NT)
  const int kk_w = tid / (BC / 4), cg_w = (tid % (BC / 4)) * 4;
  const bool kv = tid < WPT && k0 + kk_w < p.K;
  const T* wrow = wp + (kv ? (k0 + kk_w) * p.C : 0) + cg_w;
  const bool vec_wp = p.vec_wp != 0;
  const int nch = static_cast<int>((c_hi - c_lo + BC - 1) / BC);
  float xv[PF ? BC : 1][PF ? G::E : 1], wv4[4], wdv = 0.f;  // (the window only when prefetched)
  auto ld_win = [&](int j) {  // window and depthwise weights of chunk j into registers
    const int64_t c = c_lo + static_cast<int64_t>(j) * BC;
    if constexpr (PF)
      if (!p.cl) win.template load<T>(p, c, xv);
    const bool dv = tid < BC * 9 && c + tid / 9 < p.C;
    const float t = Cvt<T>::ldg(wd + (dv ? c * 9 + tid : 0));
    wdv = dv ? t : 0.f;
  };
  auto st_win = [&](int j, int b) {  // ... to shared buffer b
    if constexpr (PF) {
      if (!p.cl) win.store(xv, s.m.halo[b], tid);
      else win.template stage<T>(p, s.row, c_lo + static_cast<int64_t>(j) * BC, s.m.halo[b], tid);
    } else {
      win.template stage<T>(p, s.row, c_lo + static_cast<int64_t>(j) * BC, s.m.halo[b], tid);
    }
    if (tid < BC * 9) s.m.wd[b][tid / 9][tid % 9] = wdv;
  };
  auto ld_w = [&](int j) {  // Wp^T slice of chunk j into registers: one vector load per thread
    const int64_t c = c_lo + static_cast<int64_t>(j) * BC, n = p.C - c - cg_w;
    load4<T>(wrow + (kv ? c : 0), kv ? (n < 4 ? static_cast<int>(n < 0 ? 0 : n) : 4) : 0, vec_wp, wv4);
  };
  auto st_w = [&](int b) {
    if (tid < WPT) {
#pragma unroll
      for (int i = 0; i < 4; ++i) s.m.w[b][cg_w + i][kk_w] = wv4[i];
    }
  };
  auto dstep = [&](int b) {  // depthwise chunk in buffer b: each thread one channel, PPT pixels
    float wv[9];
#pragma unroll
    for (int i = 0; i < 9; ++i) wv[i] = s.m.wd[b][cc_dw][i];
#pragma unroll
    for (int j = 0; j < PPT; ++j)
      s.m.t[b][cc_dw][tid % TPC + j * TPC] = dw_tap9<G::TAP_C>(s.m.halo[b][cc_dw], base[j], tap_r, wv);
  };

  if (nch > 0) {
    ld_win(0);
    st_win(0, 0);
    ld_w(0);
    if (nch > 1) ld_win(1);
    DSC_SYNC(1);  // chunk 0's window staged
    dstep(0);
    st_w(0);
    if (nch > 1) {
      st_win(1, 1);
      ld_w(1);
      if (nch > 2) ld_win(2);
    }
    DSC_SYNC(2);  // chunk 0 ready for the GEMM, chunk 1's window staged
  }
  for (int j = 0; j < nch; ++j) {
    const int b = j & 1;
    if (j + 1 < nch) {
      dstep(b ^ 1);
      st_w(b ^ 1);
    }
#pragma unroll
    for (int cc = 0; cc < BC; ++cc) mma_8x4<BK>(acc, s.m.w[b][cc], s.m.t[b][cc], ty, tx);
    if (j + 2 < nch) {
      st_win(j + 2, b);
      ld_w(j + 2);
      if (j + 3 < nch) ld_win(j + 3);
    }
    DSC_SYNC(3);  // chunk j consumed, chunk j + 1 ready, chunk j + 2's window staged
  }

  if (p.fsplit > 1) {  // a split of the input channels: fp32 partial tile, summed by dsconv_fwd_reduce
    float* part = ws + fwd_part_offset(p) + ((cs * p.ft.ntiles + tile) * kblocks + kb) * (BK * BP);
#pragma unroll
    for (int i = 0; i < 8; ++i)
      *reinterpret_cast<f4*>(part + mma_row<BK>(ty, i) * BP + tx * 4) = f4{acc[i][0], acc[i][1], acc[i][2], acc[i][3]};
    return;
  }
  fwd_epilogue<T, Tl>(p, ws, tile, k0, acc, s.o, s.slot, tid);
}

// dsconv_fwd_reduce: with the input channels split over fsplit blocks (small maps: too few tiles to fill the
// GPU), sums the partial tiles in split order (deterministic), then the epilogue of dsconv_fwd.
template <class Tl>
struct FwdReduceSmem {
  alignas(16) float o[FwdOut<Tl>::kOut];
  int64_t slot[Tl::BP];
};

template <class T, class Tl>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(Tl::THREADS) dsconv_fwd_reduce_kernel(const Problem p, float* ws) {
  constexpr int BK = Tl::BK, BP = Tl::BP, NT = Tl::THREADS;
  using Smem = FwdReduceSmem<Tl>;
  DSC_SHARED(Smem, s);
  const int tid = threadIdx.x, ty = tid / Tl::TX, tx = tid % Tl::TX;
  const TileBlock tb = tile_block();
  if (tb.tile >= p.ft.ntiles) return;
  const int64_t tile = tb.tile, kb = tb.block, kblocks = (p.K + BK - 1) / BK;
  slot_offsets<Tl>(p, p.ft, tile, p.mode == kEval ? p.os : p.ys, s.slot, tid, NT);
  float acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
  const float* part = ws + fwd_part_offset(p) + (tile * kblocks + kb) * (BK * BP);
  const int64_t split_stride = p.ft.ntiles * kblocks * (BK * BP);
  for (int cs = 0; cs < p.fsplit; ++cs) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const f4 v = *reinterpret_cast<const f4*>(part + cs * split_stride + mma_row<BK>(ty, i) * BP + tx * 4);
      acc[i][0] += v.x;
      acc[i][1] += v.y;
      acc[i][2] += v.z;
      acc[i][3] += v.w;
    }
  }
  DSC_SYNC(9);  // slot table written
  fwd_epilogue<T, Tl>(p, ws, tile, kb * BK, acc, s.o, s.slot, tid);
}

// bn_stats: per channel, merge the tile partials (count, mean, M2) in a fixed order -> biased mean, var.
// Block = 32 channels (lanes, coalesced reads of the [ntiles, K] partials) x 8 tile strides (warps);
// the 8 warp results are merged in order through shared memory. Deterministic, no atomics, and no
// sum-of-squares cancellation.
struct StatsSmem {
  float n[8][32], m[8][32], q[8][32];
};

template <int kUnused = 0>  // a template only so that every translation unit may define it
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(256) bn_stats_kernel(const Problem p, float* ws) {
  DSC_SHARED(StatsSmem, s);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * 32 + lane;
  float n = 0.f, m = 0.f, q = 0.f;
  if (k < p.K)
    for (int64_t t = warp; t < p.ft.ntiles; t += 8)
      chan_merge(n, m, q, static_cast<float>(tile_count(p, p.ft, t)), ws[t * p.K + k],
                 ws[p.ft.ntiles * p.K + t * p.K + k]);
  s.n[warp][lane] = n;
  s.m[warp][lane] = m;
  s.q[warp][lane] = q;
  DSC_SYNC(6);
  if (warp == 0 && k < p.K) {
    float fn = 0.f, fm = 0.f, fq = 0.f;
    for (int w = 0; w < 8; ++w) chan_merge(fn, fm, fq, s.n[w][lane], s.m[w][lane], s.q[w][lane]);
    const float var = fq / fn, a = (p.gamma != nullptr ? p.gamma[k] : 1.f) * DSC_RSQRT(var + p.eps);
    p.mean[k] = fm;
    p.var[k] = var;
    // bn_relu's z = y a + b per channel: a = gamma rsqrt(var + eps), b = beta - mean a.
    float* ss = ws + fwd_ss_offset(p);
    ss[k] = a;
    ss[p.K + k] = (p.gamma != nullptr ? p.beta[k] : 0.f) - fm * a;
  }
}

// bn_relu: out = relu(y a + b) with bn_stats' per-channel a = gamma rsqrt(var + eps), b = beta - mean a, from
// the stored y (as the reference). y and out are contiguous in the op's layout, seen as R rows of L
// elements: NCHW R = N K planes of L = Ho Wo (channel = row % K), channels_last R = N Ho Wo pixel rows of
// L = K (channel = column). Grid x = row groups, y = column chunks: a block covers ~1024 elements, whole rows
// where rows are short (many 7x7 planes per block instead of one). 4 consecutive elements per thread when L
// is a multiple of 4 (one 16-byte access for fp32); row and channel by multiply-shift division (FastDiv).
template <class T>
DSC_DEVICE void load_n(const T* p, float* v, int n) {
  if (n == 4) {
    Vec4<T>::load(p, *reinterpret_cast<float(*)[4]>(v));
  } else {
    v[0] = Cvt<T>::load(p[0]);
  }
}

template <class T>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(256) bn_relu_kernel(const Problem p, const float* ws, int64_t rows_per_block,
                                                      int64_t cols_per_block) {
  const T* y = static_cast<const T*>(p.y);  // not __restrict__: out may alias y (recompute mode), each
  T* out = static_cast<T*>(p.out);          // element read, then written, by one thread
  const float* sa = ws + fwd_ss_offset(p);
  const float* sb = sa + p.K;
  const int64_t L = p.cl ? p.K : p.Ho * p.Wo, R = p.cl ? p.M : p.N * p.K;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * cols_per_block;
  const int64_t nr = R - r0 < rows_per_block ? R - r0 : rows_per_block;
  const int64_t nc = L - c0 < cols_per_block ? L - c0 : cols_per_block;
  const FastDiv dl = p.cl ? p.div_k : p.div_hw;  // by L
  const uint32_t total = static_cast<uint32_t>(nr * nc);  // < 2^31 (host: rows_per_block * L bounded)
  const int V = (L % 4 == 0 && nc % 4 == 0) ? 4 : 1;  // block-uniform
  for (uint32_t e = threadIdx.x * V; e < total; e += 256 * V) {
    uint32_t lr = 0, lc = e;
    if (nc == L) {  // whole rows
      lr = fdiv(dl, e);
      lc = e - lr * static_cast<uint32_t>(L);
    }
    const int64_t r = r0 + lr, c = c0 + lc, i = r * L + c;
    float v[4], a[4], b[4];
    load_n<T>(y + i, v, V);
    if (p.cl) {
      for (int j = 0; j < V; ++j) {
        a[j] = sa[c + j];
        b[j] = sb[c + j];
      }
    } else {
      const int64_t k = static_cast<int64_t>(static_cast<uint32_t>(r) -
                                             fdiv(p.div_k, static_cast<uint32_t>(r)) * static_cast<uint32_t>(p.K));
      a[0] = a[1] = a[2] = a[3] = sa[k];
      b[0] = b[1] = b[2] = b[3] = sb[k];
    }
    for (int j = 0; j < V; ++j) out[i + j] = Cvt<T>::store(relu_nan(v[j] * a[j] + b[j]));
  }
}

}  // namespace dsc
