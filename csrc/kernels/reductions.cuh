// Deterministic reductions shared by the stages: warp trees, the (count, mean, M2) merge, and colsum
// (fixed-order column sums of fp32 partial buffers). No float atomics anywhere: every sum has one
// order, so results are bitwise reproducible run to run. Torch-free.
#pragma once

#include "problem.cuh"

namespace dsc {

// Sum over the 32 lanes of a warp by an xor tree (every lane gets the same, fixed-order result).
DSC_DEVICE float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off >= 1; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Nine per-lane values summed over the 32 lanes of a warp, in a fixed order, as a reduce-scatter butterfly:
// at each level a lane keeps the half of its values that its partner (lane ^ 16, ^ 8, ^ 4, ^ 2, ^ 1) gives
// away, so 5 + 3 + 2 + 1 + 1 = 12 shuffles instead of 9 x 5 for nine xor trees. Returns the sum of value
// warp9_tap(lane) (-1: this lane ends with padding); every value ends on two lanes (lane and lane ^ 1).
// warp_sum9_g8 does the first three levels within each group of 8 lanes (masks 4, 2, 1): a lane keeps 2 of
// its group's 9 sums, values warp9_g8_tap(lane, 0) and (lane, 1).
DSC_DEVICE int warp9_tap(int lane) {
  const int i3 = (lane >> 1) & 3, i2 = ((lane >> 3) & 1) * 3 + i3, tap = ((lane >> 4) & 1) * 5 + i2;
  return (i3 < 3 && i2 < 5 && tap < 9) ? tap : -1;
}
DSC_DEVICE int warp9_g8_tap(int lane, int j) {  // (the 32-lane map: the levels of masks 4, 2, 1 and value j)
  return warp9_tap(((lane & 7) << 2) | (j << 1));
}
// One level of warp_sum9: N values (value j of the lower half, j + H of the upper; past N: 0) -> H values.
template <int N, int H>
DSC_DEVICE void warp_sum9_level(const float (&in)[N], float (&out)[H], int lane, int mask) {
  const bool up = (lane & mask) != 0;
#pragma unroll
  for (int j = 0; j < H; ++j) {
    const float lo = in[j], hi = j + H < N ? in[j + H < N ? j + H : 0] : 0.f;
    out[j] = (up ? hi : lo) + __shfl_xor_sync(0xffffffffu, up ? lo : hi, mask);
  }
}
DSC_DEVICE void warp_sum9_g8(const float (&v)[9], int lane, float (&c)[2]) {
  float a[5], b[3];
  warp_sum9_level<9, 5>(v, a, lane, 4);
  warp_sum9_level<5, 3>(a, b, lane, 2);
  warp_sum9_level<3, 2>(b, c, lane, 1);
}
DSC_DEVICE float warp_sum9(const float (&v)[9], int lane) {
  float a[5], b[3], c[2], d[1];
  warp_sum9_level<9, 5>(v, a, lane, 16);
  warp_sum9_level<5, 3>(a, b, lane, 8);
  warp_sum9_level<3, 2>(b, c, lane, 4);
  warp_sum9_level<2, 1>(c, d, lane, 2);
  return d[0] + __shfl_xor_sync(0xffffffffu, d[0], 1);
}

// (n, mean, M2) merge (Chan et al.); b may be empty.
DSC_DEVICE void chan_merge(float& na, float& ma, float& qa, float nb, float mb, float qb) {
  if (nb == 0.f) return;
  const float n = na + nb, dlt = mb - ma, f = nb / n;
  ma = ma + dlt * f;
  qa = qa + qb + dlt * dlt * na * f;
  na = n;
}

struct ColsumSmem {
  float v[8][32];
};

// One [rows, cols] fp32 partial buffer and where its column sums go (cast to TO).
template <class TO>
struct ColsumJob {
  const float* part;
  int64_t rows, cols;
  TO* out;
};

// colsum: out[col] = sum over rows of part[row, col] for two buffers in one launch (the backward's dWp and
// dWd partials: one launch latency instead of two), each column summed in row order (deterministic).
//  - a (dWp: few rows, at most DSC_DWP_MAX_SPLITS, but K C columns, a million on the last block): a thread
//    per 4 consecutive columns (one 16-byte load per row where the columns allow), looping over the rows;
//    a block = 1024 columns, so the launch has cdiv(K C, 1024) blocks for a, not K C / 32;
//  - b (dWd: up to 1024 rows of C 9 columns): a block = 32 columns (lanes: coalesced rows) x 8 row strides
//    (warps), the 8 warp sums added in order through shared memory.
// Blocks [0, colsum_blocks_a(a.cols)) serve a, the rest b.
DSC_HD int64_t colsum_blocks_a(int64_t cols) { return (cols + 1023) / 1024; }
DSC_HD int64_t colsum_blocks_b(int64_t cols) { return (cols + 31) / 32; }

template <class TO>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(256) colsum_kernel(const ColsumJob<TO> a, const ColsumJob<TO> b) {
  DSC_SHARED(ColsumSmem, s);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t blocks_a = colsum_blocks_a(a.cols);
  if (static_cast<int64_t>(blockIdx.x) < blocks_a) {
    const int64_t col = (static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x) * 4;
    if (col >= a.cols) return;  // (no barrier on this path)
    float sm[4] = {0.f, 0.f, 0.f, 0.f};
    if (a.cols % 4 == 0) {  // rows 16-byte aligned (the partial buffers are)
      // Four rows' loads issued before their sums (added in row order): one row at a time, b3's 49 rows were
      // 49 memory latencies in a row on 16 blocks (SIMULATED, 27,535 cycles).
      const float* pc = a.part + col;
      int64_t r = 0;
      for (; r + 4 <= a.rows; r += 4) {
        f4 v[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) v[i] = *reinterpret_cast<const f4*>(pc + (r + i) * a.cols);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          sm[0] += v[i].x;
          sm[1] += v[i].y;
          sm[2] += v[i].z;
          sm[3] += v[i].w;
        }
      }
      for (; r < a.rows; ++r) {
        const f4 v = *reinterpret_cast<const f4*>(pc + r * a.cols);
        sm[0] += v.x;
        sm[1] += v.y;
        sm[2] += v.z;
        sm[3] += v.w;
      }
    } else {
      for (int64_t r = 0; r < a.rows; ++r)
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (col + j < a.cols) sm[j] += a.part[r * a.cols + col + j];
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (col + j < a.cols) a.out[col + j] = Cvt<TO>::store(sm[j]);
    return;
  }
  const int64_t col = (static_cast<int64_t>(blockIdx.x) - blocks_a) * 32 + lane;
  float sm = 0.f;
  if (col < b.cols) {  // four rows' loads before their sums, as for a
    int64_t r = warp;
    for (; r + 24 < b.rows; r += 32) {
      float v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) v[i] = b.part[(r + 8 * i) * b.cols + col];
#pragma unroll
      for (int i = 0; i < 4; ++i) sm += v[i];
    }
    for (; r < b.rows; r += 8) sm += b.part[r * b.cols + col];
  }
  s.v[warp][lane] = sm;
  DSC_SYNC(8);
  if (warp == 0 && col < b.cols) {
    float t = 0.f;
    for (int w = 0; w < 8; ++w) t += s.v[w][lane];
    b.out[col] = Cvt<TO>::store(t);
  }
}

}  // namespace dsc
