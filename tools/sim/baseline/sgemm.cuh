// SIMT SGEMM for the unfused baseline's 1x1 convolution (the role cuDNN / cuBLAS play for PyTorch):
// C[M, N] = sum_k A(m, k) B(k, n), fp32, one BM x BN tile per block, 8 x 8 outputs per thread (two 4 x 4
// quadrants, so that both operands come from shared memory as float4), BK = 8, the next k-tile prefetched
// into registers while the current one is multiplied (one barrier per k-tile), shared rows padded by 4
// floats against bank conflicts of the transposing stores.
//   A(m, k) = TA ? A[k lda + m] : A[m lda + k];   B(k, n) = TB ? B[n ldb + k] : B[k ldb + n]
//   grid (cdiv(N, BN), cdiv(M, BM), batch x ksplit): blockIdx.z picks the batch entry (strides sA, sB, sC) and
//   the K slice; with `reduce` > 1 one block also sums over that many batch entries (strides sA, sB) into one C.
//   Split-K (ksplit > 1, as cuBLAS does for skinny problems): slice s of the k-tiles writes its partial to
//   C + s M N (a workspace), and splitk_reduce_kernel sums the slices in a fixed order.
#pragma once

#include <cuda_runtime.h>

namespace base {

constexpr int kBK = 8;

template <int BM, int BN, bool TA, bool TB>
// Two 128x128 blocks per SM (at most 128 registers per thread) keep 16 warps resident on a GP102.
__global__ void __launch_bounds__(BM * BN / 64, BM * BN >= 128 * 128 ? 2 : 1)
sgemm_kernel(int M, int N, int K, const float* __restrict__ A, int lda, long long sA, const float* __restrict__ B,
             int ldb, long long sB, float* __restrict__ C, long long sC, int reduce, int ksplit) {
  constexpr int T = BM * BN / 64;          // threads
  constexpr int TX = BN / 8;               // threads along n
  constexpr int LA = BM * kBK / T;         // A elements each thread stages per k-tile
  constexpr int LB = BN * kBK / T;
  static_assert(LA >= 1 && LB >= 1 && (BM * kBK) % T == 0 && (BN * kBK) % T == 0, "tile / thread mismatch");
  __shared__ __align__(16) float As[2][kBK][BM + 4];
  __shared__ __align__(16) float Bs[2][kBK][BN + 4];
  const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const long long z = blockIdx.z / ksplit;
  const int slice = blockIdx.z % ksplit;
  C += z * sC + (long long)slice * M * N;
  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

  const int kt_per = (K + kBK - 1) / kBK, all = kt_per * reduce, per = (all + ksplit - 1) / ksplit;
  const int first = slice * per, total = (first + per < all ? first + per : all) - first;
  float ra[LA], rb[LB];
  auto load = [&](int tt) {
    const int t = first + tt, r = t / kt_per, k0 = (t - r * kt_per) * kBK;
    const float* Ab = A + (z * reduce + r) * sA;
    const float* Bb = B + (z * reduce + r) * sB;
#pragma unroll
    for (int l = 0; l < LA; ++l) {
      const int e = tid + l * T;
      const int mm = TA ? e % BM : e / kBK, kk = TA ? e / BM : e % kBK;
      const int m = m0 + mm, k = k0 + kk;
      ra[l] = (m < M && k < K) ? (TA ? Ab[(long long)k * lda + m] : Ab[(long long)m * lda + k]) : 0.f;
    }
#pragma unroll
    for (int l = 0; l < LB; ++l) {
      const int e = tid + l * T;
      const int nn = TB ? e / kBK : e % BN, kk = TB ? e % kBK : e / BN;
      const int n = n0 + nn, k = k0 + kk;
      rb[l] = (n < N && k < K) ? (TB ? Bb[(long long)n * ldb + k] : Bb[(long long)k * ldb + n]) : 0.f;
    }
  };
  auto stage = [&](int buf) {
#pragma unroll
    for (int l = 0; l < LA; ++l) {
      const int e = tid + l * T;
      As[buf][TA ? e / BM : e % kBK][TA ? e % BM : e / kBK] = ra[l];
    }
#pragma unroll
    for (int l = 0; l < LB; ++l) {
      const int e = tid + l * T;
      Bs[buf][TB ? e % kBK : e / BN][TB ? e / kBK : e % BN] = rb[l];
    }
  };

  load(0);
  stage(0);
  __syncthreads();
  for (int t = 0; t < total; ++t) {
    const int buf = t & 1;
    if (t + 1 < total) load(t + 1);
#pragma unroll
    for (int k = 0; k < kBK; ++k) {
      float a[8], b[8];
      const float4 a0 = *reinterpret_cast<const float4*>(&As[buf][k][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4*>(&As[buf][k][ty * 4 + BM / 2]);
      const float4 b0 = *reinterpret_cast<const float4*>(&Bs[buf][k][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&Bs[buf][k][tx * 4 + BN / 2]);
      a[0] = a0.x; a[1] = a0.y; a[2] = a0.z; a[3] = a0.w; a[4] = a1.x; a[5] = a1.y; a[6] = a1.z; a[7] = a1.w;
      b[0] = b0.x; b[1] = b0.y; b[2] = b0.z; b[3] = b0.w; b[4] = b1.x; b[5] = b1.y; b[6] = b1.z; b[7] = b1.w;
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
    }
    if (t + 1 < total) stage(buf ^ 1);  // the other buffer: last read before the previous barrier
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int m = m0 + ty * 4 + (i & 3) + (i >> 2) * (BM / 2);
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int n = n0 + tx * 4 + (j & 3) + (j >> 2) * (BN / 2);
      if (n < N) C[(long long)m * N + n] = acc[i][j];
    }
  }
}

// Sums the ksplit partial products of a split-K GEMM (fixed order), one thread per output.
__global__ void __launch_bounds__(256) splitk_reduce_kernel(const float* __restrict__ part, int ksplit, long long mn,
                                                           float* __restrict__ C) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < mn; i += (long long)gridDim.x * blockDim.x) {
    float s = 0.f;
    for (int k = 0; k < ksplit; ++k) s += part[k * mn + i];
    C[i] = s;
  }
}

// Tile shapes a launch may use (a library's heuristic picks among its kernels per problem).
struct GemmTile {
  int bm, bn, ctas_per_sm;  // resident blocks per SM on a GP102: sm_61 ptxas gives 128-199 registers per thread
};
constexpr GemmTile kTiles[] = {{128, 128, 2}, {128, 64, 3}, {64, 64, 5}, {64, 32, 9}};

// The tile and split-K factor with the least estimated time on `sms` SMs: the busiest SM's blocks times one
// block's k-loop (tile area x k-tiles), slowed when fewer than 8 warps (two per scheduler) hide the FFMA
// latency; a split adds its reduction (a launch and one pass over the partials). Ties go to the larger tile.
struct GemmPlan {
  GemmTile tile;
  int ksplit;
};
inline GemmPlan pick_plan(int M, int N, int K, int batch, int reduce, int sms) {
  GemmPlan best{kTiles[0], 1};
  double best_t = 1e300;
  const long long ktiles = (long long)((K + kBK - 1) / kBK) * reduce;
  for (const GemmTile& t : kTiles) {
    for (int split = 1; split <= 16; split *= 2) {
      if (split > 1 && (ktiles / split < 8 || batch > 1)) break;  // short slices: no; batched GEMMs: no split
      const long long blocks = (long long)((M + t.bm - 1) / t.bm) * ((N + t.bn - 1) / t.bn) * batch * split;
      const long long per_sm = (blocks + sms - 1) / sms;
      const long long resident = per_sm < t.ctas_per_sm ? per_sm : t.ctas_per_sm;
      const double warps = (double)resident * (t.bm * t.bn / 64) / 32.0;
      const double eff = warps >= 8.0 ? 1.0 : warps / 8.0;
      double time = (double)per_sm * t.bm * t.bn * ((ktiles + split - 1) / split) * kBK / 128.0 / eff;
      if (split > 1) time += 5000.0 + (double)split * M * N * batch / (sms * 32.0);
      if (time < best_t * (1 - 1e-9)) {
        best_t = time;
        best = GemmPlan{t, split};
      }
    }
  }
  return best;
}

}  // namespace base
