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
  static constexpr int kOut = Tl::BK / 2 * kOutK > Tl::BP* kOutP ? Tl::BK / 2 * kOutK : Tl::BP * kOutP;
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
  int64_t slot[Tl::BP];   // offset of each pixel in the output tensor, -1 past the end
  int row[kSpanRowsMax];  // span: offset of each staged row from the tile's first image, -1 for padding
};

// Offset of every pixel slot of tile `tile` in a tensor with strides st (-1 past the end).
template <class Tl>
DSC_DEVICE void slot_offsets(const Problem& p, const Tiling& tl, int64_t tile, const Str4& st, int64_t* slot, int tid,
                             int nt) {
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
// in the output (written before the call: the first barrier here publishes it).
template <class T, class Tl>
DSC_DEVICE void fwd_epilogue(const Problem& p, float* ws, int64_t tile, int64_t k0, float (&acc)[8][4], float* o,
                             const int64_t* slot, int tid) {
  constexpr int BK = Tl::BK, BP = Tl::BP, NT = Tl::THREADS, kOutK = FwdOut<Tl>::kOutK, kOutP = FwdOut<Tl>::kOutP;
  const int ty = tid / Tl::TX, tx = tid % Tl::TX;
  const Str4 os = p.mode == kEval ? p.os : p.ys;
  T* __restrict__ out = static_cast<T*>(p.mode == kEval ? p.out : p.y);
  const int warp = tid / 32, lane = tid % 32;
  constexpr int NW = NT / 32;
  // 1 / (valid pixels of the tile), for the tile means (a reciprocal once, not an IEEE division per channel).
  const float inv_cnt = p.mode == kTrain ? 1.f / static_cast<float>(tile_count(p, p.ft, tile)) : 0.f;
  const int64_t krows = p.K - k0;  // channels of this block that exist
  // o(r, q): channel r of the half, pixel q.
  auto o_at = [&](int r, int q) -> float& { return p.cl ? o[q * kOutP + r] : o[r * kOutK + q]; };
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
      for (int r = warp; r < BK / 2 && h * (BK / 2) + r < krows; r += NW) {
        const int64_t k = kh + r;
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
      // Tile statistics of the fp32 y per channel: mean, then M2 about it (two passes). TPC adjacent threads
      // per channel, each over every TPC-th pixel (conflict-free NCHW reads), then a shuffle butterfly
      // within those TPC lanes: every channel of the half at once. (A warp per channel with two 5-step
      // trees per channel, channel after channel, was the epilogue's longest chain.)
      constexpr int TPC = NT / (BK / 2), PPT = BP / TPC;
      static_assert(TPC * (BK / 2) == NT && (TPC & (TPC - 1)) == 0 && TPC <= 32 && PPT * TPC == BP, "stats");
      // The thread's values are read once, all before the first add (the simulator issues in order).
      const int r = tid / TPC, j = tid % TPC;
      float v[PPT];
      uint32_t ok = 0;  // bit i: pixel j + TPC i exists
#pragma unroll
      for (int i = 0; i < PPT; ++i) v[i] = o_at(r, j + TPC * i);
#pragma unroll
      for (int i = 0; i < PPT; ++i) ok |= (slot[j + TPC * i] >= 0 ? 1u : 0u) << i;
      float sm = 0.f;
#pragma unroll
      for (int i = 0; i < PPT; ++i) sm += (ok >> i) & 1u ? v[i] : 0.f;
#pragma unroll
      for (int m = TPC / 2; m >= 1; m >>= 1) sm += __shfl_xor_sync(0xffffffffu, sm, m);
      const float mk = sm * inv_cnt;
      float sq = 0.f;
#pragma unroll
      for (int i = 0; i < PPT; ++i) {
        const float dl = v[i] - mk;
        sq += (ok >> i) & 1u ? dl * dl : 0.f;
      }
#pragma unroll
      for (int m = TPC / 2; m >= 1; m >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, m);
      if (j == 0 && h * (BK / 2) + r < krows) {
        ws[tile * p.K + kh + r] = mk;
        ws[p.ft.ntiles * p.K + tile * p.K + kh + r] = sq;
      }
    }
    DSC_SYNC(5);  // half consumed before the next half overwrites it
  }
}

// dsconv_dw (span tiles, small maps): the depthwise output t of every pixel, once for all output-channel
// blocks of dsconv_fwd (and of dsconv_bwd_dwp), into fp32 t_out [C][Mp] (Mp = span tiles x 64 pixels of the
// flattened (n, ho, wo) order; the padding columns past M are 0). A block = a group of channels (grid y;
// a thread loops over its group, and past 65535 groups) x up to 256 consecutive pixels (grid x): the 9
// weights are block-uniform loads, the tap offsets of a pixel are computed once for all the channels it
// visits, the stores are coalesced. NCHW reads are coalesced along the pixels; channels_last reads are
// strided (correct, not tuned). The group size follows from grid y (dw_grid_y: kDwChannels per thread, or 2
// where the grid would otherwise leave SMs idle), so no Problem field is needed.
constexpr int kDwChannels = 8;
template <class T, int S, int D>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(256) dsconv_dw_kernel(const Problem p, float* t_out) {
  const int64_t mp = p.ft.ntiles * TileSpan64::BP;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= mp) return;
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ wd = static_cast<const T*>(p.wd);
  float* __restrict__ t = t_out;
  const int d = D > 0 ? D : p.dil;
  // Pixel g's image, row and column by multiply-shift division (M < 2^31: host-checked for span tiles).
  const bool valid = g < p.M;
  const uint32_t gg = valid ? static_cast<uint32_t>(g) : 0u, n = fdiv(p.div_hw, gg);
  const uint32_t r = gg - n * static_cast<uint32_t>(p.Ho * p.Wo), ho = fdiv(p.div_wo, r);
  const int h0 = static_cast<int>(ho) * S - d, w0 = static_cast<int>(r - ho * static_cast<uint32_t>(p.Wo)) * S - d;
  int off[9];  // offsets inside one channel plane (< 2^31: the op checks C H W < 2^31); -1: zero padding
#pragma unroll
  for (int i = 0; i < 3; ++i)
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      const int h = h0 + i * d, w = w0 + j * d;
      off[i * 3 + j] = (valid && h >= 0 && h < p.H && w >= 0 && w < p.W)
                           ? h * static_cast<int>(p.xs.h) + w * static_cast<int>(p.xs.w)
                           : -1;
    }
  const T* xn = x + static_cast<int64_t>(n) * p.xs.n;
  // 2 channels per thread when the grid has a group of 2 for every channel, else kDwChannels (dw_grid_y); a
  // comparison, not a division: any grid still covers every channel (the loop strides over the groups).
  const int64_t group = 2 * static_cast<int64_t>(gridDim.y) >= p.C ? 2 : kDwChannels;
  for (int64_t c0 = static_cast<int64_t>(blockIdx.y) * group; c0 < p.C; c0 += static_cast<int64_t>(gridDim.y) * group) {
    const int nc = p.C - c0 < group ? static_cast<int>(p.C - c0) : static_cast<int>(group);
    // Two channels per step, all 36 loads issued before the first multiply-add (in program order, as the
    // simulator issues PTX, a load next to its use stalls the warp once per tap).
    for (int cc = 0; cc < nc; cc += 2) {
      const int64_t ca = c0 + cc, cb = cc + 1 < nc ? ca + 1 : ca;  // (an odd last channel: computed twice)
      const T* xa = xn + ca * p.xs.c;
      const T* xb = xn + cb * p.xs.c;
      float va[9], vb[9], wa[9], wb[9];
#pragma unroll
      for (int k = 0; k < 9; ++k) {
        const int o = off[k] >= 0 ? off[k] : 0;
        va[k] = Cvt<T>::ldg(xa + o);
        vb[k] = Cvt<T>::ldg(xb + o);
        wa[k] = Cvt<T>::ldg(wd + ca * 9 + k);
        wb[k] = Cvt<T>::ldg(wd + cb * 9 + k);
      }
      float a[3], b[3];
#pragma unroll
      for (int i = 0; i < 3; ++i) {  // one partial sum per tap row: dependent chains of 3
        a[i] = 0.f;
        b[i] = 0.f;
#pragma unroll
        for (int j = 0; j < 3; ++j) {
          const bool in = off[i * 3 + j] >= 0;
          a[i] += (in ? va[i * 3 + j] : 0.f) * wa[i * 3 + j];
          b[i] += (in ? vb[i * 3 + j] : 0.f) * wb[i * 3 + j];
        }
      }
      t[ca * mp + g] = a[0] + a[1] + a[2];
      if (cb != ca) t[cb * mp + g] = b[0] + b[1] + b[2];
    }
  }
}

// dsconv_fwd: one block = one pixel tile x BK output channels, acc += Wp^T t over chunks of BC input channels
// in the 8x4 register micro-GEMM, then the epilogue through shared memory (coalesced stores in both layouts):
// eval -> relu(y + bias); train -> y + bias stored and the tile's per-channel (mean, M2) written to ws;
// y-only -> y + bias stored. Where the depthwise chunk t [BC x BP] comes from depends on the tile class:
//  - rect tiles: per chunk, the tile's input window is staged once in shared memory (coalesced along x's
//    contiguous axis) and t computed from it (9 taps and the channel's 9 weights in registers); t never
//    leaves the chip;
//  - span tiles (small maps: plan.cuh span_tiles): dsconv_dw wrote t for every pixel into the workspace once, for all
//    output-channel blocks, and a chunk is two vector loads per thread: the block is a pure GEMM. On those
//    maps a window chunk costs more instructions than its GEMM (a 64-pixel span window is ~4x the pixels it
//    feeds, and K / 128 blocks would each recompute it), while t [C x M] is small and stays in L2.
template <class Tl, bool PAIR = false>
struct FwdPwSmem {  // span tiles: double-buffered t and Wp^T chunks (t of both tiles of a pair)
  // Pairs: 8 channels per chunk, so that two blocks still fit in sm_75's 64 KB of shared memory.
  static constexpr int BC = PAIR ? 8 : 16, NH = PAIR ? 2 : 1;
  union {
    struct {
      alignas(16) float t[2][BC][NH * Tl::BP];  // B operand
      alignas(16) float w[2][BC][Tl::BK];       // A operand
    } m;
    alignas(16) float o[FwdOut<Tl>::kOut];  // epilogue: half of the output tile (FwdOut)
  };
  int64_t slot[Tl::BP];
};
template <class Tl, int S, int D, bool PAIR, bool SPAN = Tl::SPAN>
struct FwdSmemOf {
  using type = FwdSmem<Tl, S, D>;
};
template <class Tl, int S, int D, bool PAIR>
struct FwdSmemOf<Tl, S, D, PAIR, true> {
  using type = FwdPwSmem<Tl, PAIR>;
};

// PAIR (span tiles, plan.cuh fpair): a block owns two consecutive tiles and keeps both 8 x 4 blocks of
// each thread (an 8 x 8 register block, mma_8x4x2_steps_h), so every Wp^T fragment and Wp chunk it loads
// feeds 128 pixels: per FMA half the Wp traffic and 2/3 of the shared loads of single tiles. Each tile's
// epilogue is the single tile's, one after the other.
template <class T, class Tl, int S, int D, bool PAIR = false>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS_MIN(Tl::THREADS, 2) dsconv_fwd_kernel(const Problem p, float* ws) {
  static_assert(!PAIR || Tl::SPAN, "pairs of span tiles only");
  using Smem = typename FwdSmemOf<Tl, S, D, PAIR>::type;
  constexpr int BK = Tl::BK, BP = Tl::BP, NT = Tl::THREADS, NH = PAIR ? 2 : 1;
  DSC_SHARED(Smem, s);
  const int tid = threadIdx.x, ty = tid / Tl::TX, tx = tid % Tl::TX;
  const TileBlock tb = tile_block();
  const int64_t tile = tb.tile * NH;         // (a pair's first tile)
  if (tile >= p.ft.ntiles) return;           // the whole block: no barrier is left waiting
  const bool has2 = tile + 1 < p.ft.ntiles;  // PAIR: the second tile exists (block-uniform)
  // Grid x = output-channel block + kblocks x input-channel split (fsplit > 1: small maps).
  const int64_t kblocks = (p.K + BK - 1) / BK, kb = tb.block % kblocks, cs = tb.block / kblocks;
  const int64_t k0 = kb * BK, c_lo = cs * p.csplit, c_hi = c_lo + p.csplit < p.C ? c_lo + p.csplit : p.C;
  const T* __restrict__ wp = static_cast<const T*>(p.wp);
  const Str4 os = p.mode == kEval ? p.os : p.ys;
  const bool vec_wp = p.vec_wp != 0;
  float acc[NH][8][4];
#pragma unroll
  for (int h = 0; h < NH; ++h)
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[h][i][j] = 0.f;

  if constexpr (Tl::SPAN) {
    constexpr int BC = Smem::BC, TQ = BP / 4, TPT = BC * TQ;  // t staging: TPT threads, one float4 each
    constexpr int WR = BK * (BC / 4) / NT;                    // Wp staging: float4s per thread
    static_assert(TPT <= NT && BK * (BC / 4) % NT == 0, "span staging mapping");
    slot_offsets<Tl>(p, p.ft, tile, os, s.slot, tid, NT);
    const int64_t mp = p.ft.ntiles * BP;  // row length of the t workspace
    const int tr = tid / TQ, tq = (tid % TQ) * 4;
    const int crem = static_cast<int>(c_hi - c_lo);  // channels of this block's split
    // Every source is a running pointer stepped one chunk per ld (chunks are loaded in order): the 64-bit
    // offset arithmetic is done once per block, not per chunk (register room for the pairs' 64 sums).
    const bool tthr = tid < TPT && tr < crem;  // (else this thread stages no channel of t: zeros)
    const float* const t0 = ws + fwd_t_offset(p) + tile * BP + (tthr ? (c_lo + tr) * mp + tq : 0);
    const float* tcur = t0;
    const T* wcur[WR];
    int wrem[WR];  // channels left from this thread's first one (<= 0: none)
#pragma unroll
    for (int r = 0; r < WR; ++r) {
      const int e = tid + r * NT, kk = e / (BC / 4), cg = (e % (BC / 4)) * 4;
      const bool kv = k0 + kk < p.K;
      wcur[r] = wp + (kv ? (k0 + kk) * p.C + c_lo + cg : 0);
      wrem[r] = kv ? crem - cg : 0;
    }
    const int nch = (crem + BC - 1) / BC;
    // Channels past c_hi are zeroed when stored, not when loaded: a select right after the load waits for it,
    // and in order (as the simulator runs PTX) so does everything after it, the GEMM this load should hide
    // behind included.
    f4 tv[NH];
    bool tok = false;
    float wv[WR][4];
    auto ld = [&](int j) {  // chunk j into registers (j = 0, 1, 2, ... in turn)
      tok = tthr && j * BC + tr < crem;
      const float* src = tok ? tcur : t0;
      tcur += BC * mp;
      tv[0] = DSC_LDG(reinterpret_cast<const f4*>(src));
      // (a pair without its second tile multiplies the first tile's t again into acc[1], never stored)
      if constexpr (PAIR) tv[1] = DSC_LDG(reinterpret_cast<const f4*>(src + (has2 ? BP : 0)));
#pragma unroll
      for (int r = 0; r < WR; ++r) {
        const int n = wrem[r] - j * BC;
        load4<T>(n > 0 ? wcur[r] : wp, n < 4 ? (n < 0 ? 0 : n) : 4, vec_wp, wv[r]);
        wcur[r] += BC;
      }
    };
    auto st = [&](int b) {  // ... to shared buffer b
#pragma unroll
      for (int h = 0; h < NH; ++h)
        if (tid < TPT) *reinterpret_cast<f4*>(&s.m.t[b][tr][h * BP + tq]) = tok ? tv[h] : f4{0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int r = 0; r < WR; ++r) {
        const int e = tid + r * NT, kk = e / (BC / 4), cg = (e % (BC / 4)) * 4;
#pragma unroll
        for (int i = 0; i < 4; ++i) s.m.w[b][cg + i][kk] = wv[r][i];
      }
    };
    // One barrier per chunk: iteration j stores chunk j + 1 (loaded during chunk j - 1's GEMM) into the
    // other buffer, issues chunk j + 2's loads and multiplies chunk j. Pairs load chunk j + 1 after chunk
    // j's GEMM instead (no chunk held in registers across it: the 64 sums leave no room on sm_61; the
    // other block on the SM runs while these wait).
    if (nch > 0) {
      ld(0);
      st(0);
      if (!PAIR && nch > 1) ld(1);
    }
    DSC_SYNC(10);  // chunk 0 and the slot table in shared memory
    for (int j = 0; j < nch; ++j) {
      const int b = j & 1;
      if constexpr (PAIR) {
        mma_8x4x2_steps_h<BC>(acc[0], acc[1], s.m.w[b][0], BK / 2, BK, s.m.t[b][0], BP, NH * BP, ty, tx);
        if (j + 1 < nch) {
          ld(j + 1);
          st(b ^ 1);
        }
      } else {
        if (j + 1 < nch) {
          st(b ^ 1);
          if (j + 2 < nch) ld(j + 2);
        }
        mma_8x4_steps<BK, BC>(acc[0], s.m.w[b][0], BK, s.m.t[b][0], BP, ty, tx);
      }
      DSC_SYNC(11);  // chunk j consumed, chunk j + 1 stored
    }
  } else {
    using G = typename Smem::G;
    constexpr int BC = G::BC;
    constexpr int TPC = NT / BC, PPT = BP / TPC;  // depthwise: threads per channel, pixels per thread
    static_assert(BP % TPC == 0 && NT % BC == 0, "depthwise mapping");
    const T* __restrict__ wd = static_cast<const T*>(p.wd);
    G win;
    win.setup(p, p.ft, tile, s.row, tid);
    slot_offsets<Tl>(p, p.ft, tile, os, s.slot, tid, NT);
    int base[PPT];
#pragma unroll
    for (int j = 0; j < PPT; ++j) base[j] = win.base(p, tid % TPC + j * TPC);
    const int tap_r = win.tap_r();
    const int cc_dw = tid / TPC;  // this thread's depthwise channel within a chunk
    if (!p.cl)
      win.prepare(p, s.row, tid);  // (rect windows read no row table; the chunk loop's first barrier
                                   // publishes the slot table)

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
    const int nch = static_cast<int>((c_hi - c_lo + BC - 1) / BC);
    float xv[PF ? BC : 1][PF ? G::E : 1], wv4[4], wdv = 0.f;  // (the window only when prefetched)
    auto ld_win = [&](int j) {                                // window and depthwise weights of chunk j into registers
      const int64_t c = c_lo + static_cast<int64_t>(j) * BC;
      if constexpr (PF)
        if (!p.cl) win.template load<T>(p, c, xv);
      const bool dv = tid < BC * 9 && c + tid / 9 < p.C;
      const float t = Cvt<T>::ldg(wd + (dv ? c * 9 + tid : 0));
      wdv = dv ? t : 0.f;
    };
    auto st_win = [&](int j, int b) {  // ... to shared buffer b
      if constexpr (PF) {
        if (!p.cl)
          win.store(xv, s.m.halo[b], tid);
        else
          win.template stage<T>(p, s.row, c_lo + static_cast<int64_t>(j) * BC, s.m.halo[b], tid);
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
      mma_8x4_steps<BK, BC>(acc[0], s.m.w[b][0], BK, s.m.t[b][0], BP, ty, tx);
      if (j + 2 < nch) {
        st_win(j + 2, b);
        ld_w(j + 2);
        if (j + 3 < nch) ld_win(j + 3);
      }
      DSC_SYNC(3);  // chunk j consumed, chunk j + 1 ready, chunk j + 2's window staged
    }
  }

  if (p.fsplit > 1) {  // a split of the input channels: fp32 partial tiles, summed by dsconv_fwd_reduce
#pragma unroll
    for (int h = 0; h < NH; ++h) {
      if (h > 0 && !has2) break;
      float* part = ws + fwd_part_offset(p) + ((cs * p.ft.ntiles + tile + h) * kblocks + kb) * (BK * BP);
#pragma unroll
      for (int i = 0; i < 8; ++i)
        *reinterpret_cast<f4*>(part + mma_row<BK>(ty, i) * BP + tx * 4) =
            f4{acc[h][i][0], acc[h][i][1], acc[h][i][2], acc[h][i][3]};
    }
    return;
  }
  fwd_epilogue<T, Tl>(p, ws, tile, k0, acc[0], s.o, s.slot, tid);
  if constexpr (PAIR) {
    if (has2) {  // (the epilogue's last barrier: every read of the first tile's slots is done)
      slot_offsets<Tl>(p, p.ft, tile + 1, os, s.slot, tid, NT);
      fwd_epilogue<T, Tl>(p, ws, tile + 1, k0, acc[1], s.o, s.slot, tid);
    }
  }
}

// dsconv_fwd_reduce: with the input channels split over fsplit blocks (small maps: too few tiles to fill the
// GPU), sums the partial tiles in split order (deterministic), then the epilogue of dsconv_fwd.
template <class Tl>
struct FwdReduceSmem {
  alignas(16) float o[FwdOut<Tl>::kOut];
  int64_t slot[Tl::BP];
};

template <class T, class Tl>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS_MIN(Tl::THREADS, 2) dsconv_fwd_reduce_kernel(const Problem p, float* ws) {
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
  // A split's eight loads are issued before its sums (interleaved in the PTX, each load waited for the add
  // before it). The splits are added in order. SIMULATED, b5 at 16x16, training step, 7 splits on 8 blocks:
  // 35,635 -> 34,645 cycles, still as much as the GEMM's: the time was mostly the statistics epilogue's
  // (25,841 with its channel-parallel statistics).
  for (int cs = 0; cs < p.fsplit; ++cs) {
    f4 v[8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
      v[i] = *reinterpret_cast<const f4*>(part + cs * split_stride + mma_row<BK>(ty, i) * BP + tx * 4);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      acc[i][0] += v[i].x;
      acc[i][1] += v[i].y;
      acc[i][2] += v[i].z;
      acc[i][3] += v[i].w;
    }
  }
  fwd_epilogue<T, Tl>(p, ws, tile, kb * BK, acc, s.o, s.slot, tid);  // (its first barrier publishes the slots)
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
    Vec4<T>::load(p, *reinterpret_cast<float (*)[4]>(v));
  } else {
    v[0] = Cvt<T>::load(p[0]);
  }
}

template <class T>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(256)
    bn_relu_kernel(const Problem p, const float* ws, int64_t rows_per_block, int64_t cols_per_block) {
  const T* y = static_cast<const T*>(p.y);  // not __restrict__: out may alias y (recompute mode), each
  T* out = static_cast<T*>(p.out);          // element read, then written, by one thread
  const float* sa = ws + fwd_ss_offset(p);
  const float* sb = sa + p.K;
  const int64_t L = p.cl ? p.K : p.Ho * p.Wo, R = p.cl ? p.M : p.N * p.K;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * cols_per_block;
  const int64_t nr = R - r0 < rows_per_block ? R - r0 : rows_per_block;
  const int64_t nc = L - c0 < cols_per_block ? L - c0 : cols_per_block;
  const FastDiv dl = p.cl ? p.div_k : p.div_hw;           // by L
  const uint32_t total = static_cast<uint32_t>(nr * nc);  // < 2^31 (host: rows_per_block * L bounded)
  const int V = (L % 4 == 0 && nc % 4 == 0) ? 4 : 1;      // block-uniform
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
    if (V == 4) {  // one 16-byte store for fp32: four scalar ones left each sector a quarter written per store
      float o[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) o[j] = relu_nan(v[j] * a[j] + b[j]);
      Vec4<T>::store(out + i, o);
    } else {
      out[i] = Cvt<T>::store(relu_nan(v[0] * a[0] + b[0]));
    }
  }
}

}  // namespace dsc
