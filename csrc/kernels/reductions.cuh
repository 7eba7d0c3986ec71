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
// dWd partials: one launch latency instead of two). Block = 32 columns (lanes: coalesced rows) x 8 row
// strides (warps); the 8 warp sums are added in order. Blocks [0, cdiv(a.cols, 32)) serve a, the rest b.
template <class TO>
DSC_GLOBAL void DSC_LAUNCH_BOUNDS(256) colsum_kernel(const ColsumJob<TO> a, const ColsumJob<TO> b) {
  DSC_SHARED(ColsumSmem, s);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t blocks_a = (a.cols + 31) / 32;
  const bool in_a = static_cast<int64_t>(blockIdx.x) < blocks_a;
  // Field by field (a reference to either parameter would put both in local memory).
  const float* part = in_a ? a.part : b.part;
  const int64_t rows = in_a ? a.rows : b.rows, cols = in_a ? a.cols : b.cols;
  TO* out = in_a ? a.out : b.out;
  const int64_t col = (static_cast<int64_t>(blockIdx.x) - (in_a ? 0 : blocks_a)) * 32 + lane;
  float sm = 0.f;
  if (col < cols)
    for (int64_t r = warp; r < rows; r += 8) sm += part[r * cols + col];
  s.v[warp][lane] = sm;
  DSC_SYNC(8);
  if (warp == 0 && col < cols) {
    float t = 0.f;
    for (int w = 0; w < 8; ++w) t += s.v[w][lane];
    out[col] = Cvt<TO>::store(t);
  }
}

}  // namespace dsc
