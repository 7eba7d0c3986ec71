// The unfused baseline for the simulator: what PyTorch runs for Sequential(dw, pw, bn, ReLU()) in fp32 NCHW
// on a Pascal GPU, written here with the same work decomposition (docs/benchmarks.md, "The unfused
// baseline", says how each kernel stands in for PyTorch's and which way the error leans):
//   depthwise forward / input-grad / weight-grad: ATen's conv_depthwise2d kernels (DepthwiseConv2d.cu);
//   batch norm: ATen's batch_norm_collect_statistics / transform_input / backward_reduce / backward_elemt
//     (Normalization.cuh) launch shapes and loops;
//   ReLU and its backward: ATen's vectorised elementwise loop (4 floats per thread, 128 threads);
//   the 1x1 convolution: sgemm.cuh (a tuned SIMT SGEMM, the role cuDNN / cuBLAS play).
#pragma once

#include <cuda_runtime.h>

namespace base {

constexpr int kAtenThreads = 1024;  // at::cuda::detail::CUDA_NUM_THREADS
constexpr int kBnMaxBlock = 512;    // Normalization.cuh MAX_BLOCK_SIZE
constexpr int kEwThreads = 128;     // elementwise kernels: num_threads()
constexpr int kEwVec = 4;           // elementwise kernels: float4 per thread

inline int aten_blocks(long long n) { return (int)((n + kAtenThreads - 1) / kAtenThreads); }

// Normalization.cuh getNumThreads: the smallest of 32..512 that covers nElem.
inline int bn_num_threads(int n) {
  const int sizes[5] = {32, 64, 128, 256, kBnMaxBlock};
  for (int s : sizes)
    if (n <= s) return s;
  return kBnMaxBlock;
}

// (n, c, h, w) of a linear NCHW index, by divide and multiply-subtract as ATen's depthwise kernels do it.
__device__ __forceinline__ void nchw_of(int idx, int C, int H, int W, int& n, int& c, int& h, int& w) {
  int t1 = idx / W;
  w = idx - t1 * W;
  int t2 = t1 / H;
  h = t1 - t2 * H;
  t1 = t2;
  t2 = t1 / C;
  c = t1 - t2 * C;
  n = t2;
}

// ---- depthwise 3x3 (conv_depthwise2d_forward_kernel<3>): one thread per output element ----------
__global__ void __launch_bounds__(kAtenThreads)
dw_fwd_kernel(const float* __restrict__ in, float* __restrict__ out, const float* __restrict__ w, int total, int C,
              int H, int W, int Ho, int Wo, int stride, int pad, int dil) {
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += blockDim.x * gridDim.x) {
    int n, c, ho, wo;
    nchw_of(idx, C, Ho, Wo, n, c, ho, wo);
    int woff = c * 9;
    float v = 0.f;
    const int off0 = (n * C + c) * H * W;
#pragma unroll
    for (int kh = 0; kh < 3; ++kh) {
#pragma unroll
      for (int kw = 0; kw < 3; ++kw) {
        const int hi = -pad + ho * stride + kh * dil, wi = -pad + wo * stride + kw * dil;
        if (hi >= 0 && hi < H && wi >= 0 && wi < W) v += w[woff] * in[off0 + hi * W + wi];
        ++woff;
      }
    }
    out[idx] = v;
  }
}

// ---- depthwise input gradient (conv_depthwise2d_backward_kernel<3, STRIDE>): one thread per dx ----
template <int STRIDE>
__global__ void __launch_bounds__(kAtenThreads)
dw_bwd_input_kernel(const float* __restrict__ gout, float* __restrict__ gin, const float* __restrict__ w, int total,
                    int C, int H, int W, int Ho, int Wo, int pad, int dil) {
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += blockDim.x * gridDim.x) {
    int n, c, hi, wi;
    nchw_of(idx, C, H, W, n, c, hi, wi);
    float v = 0.f;
    int woff = c * 9;
    for (int kh = 0; kh < 3; ++kh) {
#pragma unroll
      for (int kw = 0; kw < 3; ++kw) {
        int ho = hi + pad - kh * dil, wo = wi + pad - kw * dil;
        if (ho % STRIDE == 0 && wo % STRIDE == 0) {
          ho /= STRIDE;
          wo /= STRIDE;
          if (ho >= 0 && ho < Ho && wo >= 0 && wo < Wo) v += w[woff] * gout[((n * C + c) * Ho + ho) * Wo + wo];
        }
        ++woff;
      }
    }
    gin[idx] = v;
  }
}

// Block sum (cuda_utils::BlockReduceSum): warp shuffles, one value per warp through shared memory.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float block_sum(float v, float* sh) {
  const int lane = threadIdx.x % 32, wid = threadIdx.x / 32;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  v = (threadIdx.x < blockDim.x / 32) ? sh[lane] : 0.f;
  if (wid == 0) v = warp_sum(v);
  return v;
}

// ---- depthwise weight gradient (conv_depthwise2d_grad_weight_kernel): one block per (c, kh, kw),
// min(32 N, 256) threads, a warp per image, lanes striding over the output pixels. -----------------
__global__ void dw_bwd_weight_kernel(const float* __restrict__ gout, const float* __restrict__ in, float* __restrict__ gw,
                                     int N, int C, int H, int W, int Ho, int Wo, int stride, int pad, int dil) {
  __shared__ float sh[32];
  const int b = blockIdx.x, kw = b % 3, kh = (b / 3) % 3, ch = b / 9;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  const int img = Ho * Wo;
  float g = 0.f;
  for (int n = warp; n < N; n += nwarps) {
    for (int idx = lane; idx < img; idx += 32) {
      const int wo = idx % Wo, ho = idx / Wo;
      const int wi = wo * stride + kw * dil - pad, hi = ho * stride + kh * dil - pad;
      if (wi >= 0 && hi >= 0 && wi < W && hi < H)
        g += in[((n * C + ch) * H + hi) * W + wi] * gout[((n * C + ch) * Ho) * Wo + idx];
    }
  }
  g = block_sum(g, sh);
  if (threadIdx.x == 0) gw[ch * 9 + kh * 3 + kw] = g;
}

// ---- batch norm (Normalization.cuh) --------------------------------------------------------------
// Merges the (mean, M2, count) of a warp's lanes by butterfly shuffles (ATen's warpSum of Welford states).
__device__ __forceinline__ void welford_warp(float& avg, float& m2, int& n) {
  for (int i = 0; i < 5; ++i) {
    const float oa = __shfl_xor_sync(0xffffffffu, avg, 1 << i);
    const int on = __shfl_xor_sync(0xffffffffu, n, 1 << i);
    const float f = 1.f / fmaxf(1.f, (float)(n + on));
    m2 += __shfl_xor_sync(0xffffffffu, m2, 1 << i) + (avg - oa) * (avg - oa) * n * on * f;
    avg = (n * avg + on * oa) * f;
    n += on;
  }
}

// batch_norm_collect_statistics_kernel: grid = K planes, block = (tf, 512 / tf); Welford per thread, then
// warp and block merges; writes mean and the biased variance.
__global__ void bn_stats_kernel(const float* __restrict__ y, float* __restrict__ mean, float* __restrict__ var, int N,
                                int K, int HW) {
  __shared__ int sh_n[32];
  __shared__ float sh_av[64];
  const int plane = blockIdx.x, tid = threadIdx.x + threadIdx.y * blockDim.x;
  float avg = 0.f, m2 = 0.f;
  int n = 0;
  for (int b = threadIdx.y; b < N; b += blockDim.y)
    for (int x = threadIdx.x; x < HW; x += blockDim.x) {
      const float v = y[((size_t)b * K + plane) * HW + x];
      const float d1 = v - avg;
      ++n;
      avg += d1 / n;
      m2 += d1 * (v - avg);
    }
  welford_warp(avg, m2, n);
  __syncthreads();
  if (tid % 32 == 0) {
    sh_n[tid / 32] = n;
    sh_av[tid / 32 * 2] = avg;
    sh_av[tid / 32 * 2 + 1] = m2;
  }
  __syncthreads();
  const int nw = blockDim.x * blockDim.y / 32;
  if (tid < 32) {
    n = tid < nw ? sh_n[tid] : 0;
    avg = tid < nw ? sh_av[2 * tid] : 0.f;
    m2 = tid < nw ? sh_av[2 * tid + 1] : 0.f;
  }
  welford_warp(avg, m2, n);
  if (tid == 0) {
    mean[plane] = avg;
    var[plane] = m2 / (N * HW);
  }
}

// batch_norm_transform_input_kernel: grid (K, ...), block (tf, tb); out = gamma (y - mean) invstd + beta, with
// invstd = rsqrt(var + eps) per block (the eval form; ATen's training form reads a precomputed invstd).
__global__ void bn_transform_kernel(const float* __restrict__ y, float* __restrict__ z, const float* __restrict__ mean,
                                    const float* __restrict__ var, const float* __restrict__ gamma,
                                    const float* __restrict__ beta, float eps, int N, int K, int HW) {
  const int plane = blockIdx.x;
  const float g = gamma[plane], b = beta[plane], m = mean[plane];
  const float invstd = 1.f / sqrtf(var[plane] + eps);
  const int bstep = blockDim.y * gridDim.y;
  for (int n = threadIdx.y + blockIdx.y * blockDim.y; n < N; n += bstep) {
    const float* yi = y + ((size_t)n * K + plane) * HW;
    float* zo = z + ((size_t)n * K + plane) * HW;
    for (int f = threadIdx.x; f < HW; f += blockDim.x) zo[f] = g * (yi[f] - m) * invstd + b;
  }
}

// batch_norm_backward_reduce_kernel: grid K, block (block_x, block_y): sum dz and sum dz (y - mean).
__global__ void bn_bwd_reduce_kernel(const float* __restrict__ y, const float* __restrict__ dz,
                                     const float* __restrict__ mean, const float* __restrict__ var, float eps,
                                     float* __restrict__ sum_dz, float* __restrict__ sum_dz_xmu,
                                     float* __restrict__ dgamma, float* __restrict__ dbeta, int N, int K, int HW) {
  __shared__ float sh[32];
  const int plane = blockIdx.x;
  const float m = mean[plane];
  float s1 = 0.f, s2 = 0.f;
  for (int b = threadIdx.y; b < N; b += blockDim.y)
    for (int x = threadIdx.x; x < HW; x += blockDim.x) {
      const size_t i = ((size_t)b * K + plane) * HW + x;
      const float g = dz[i];
      s1 += g;
      s2 += g * (y[i] - m);
    }
  // Block2D reduction of the pair (as two sums through the same shared buffer).
  const int tid = threadIdx.x + threadIdx.y * blockDim.x, lane = tid % 32, wid = tid / 32;
  const int nw = blockDim.x * blockDim.y / 32;
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  __syncthreads();
  if (lane == 0) sh[wid] = s1;
  __syncthreads();
  float t1 = tid < nw ? sh[lane] : 0.f;
  __syncthreads();
  if (lane == 0) sh[wid] = s2;
  __syncthreads();
  float t2 = tid < nw ? sh[lane] : 0.f;
  if (wid == 0) {
    t1 = warp_sum(t1);
    t2 = warp_sum(t2);
  }
  if (tid == 0) {
    const float invstd = 1.f / sqrtf(var[plane] + eps);
    sum_dz[plane] = t1;
    sum_dz_xmu[plane] = t2;
    dgamma[plane] = t2 * invstd;
    dbeta[plane] = t1;
  }
}

// batch_norm_backward_elemt_kernel: grid (K, ...), block (tf, tb):
// dy = (dz - sum_dz / M - (y - mean) invstd^2 sum_dz_xmu / M) gamma invstd.
__global__ void bn_bwd_elemt_kernel(const float* __restrict__ y, const float* __restrict__ dz,
                                    const float* __restrict__ mean, const float* __restrict__ var, float eps,
                                    const float* __restrict__ gamma, const float* __restrict__ sum_dz,
                                    const float* __restrict__ sum_dz_xmu, float* __restrict__ dy, float norm, int N,
                                    int K, int HW) {
  const int plane = blockIdx.x;
  const float invstd = 1.f / sqrtf(var[plane] + eps);
  const float m = mean[plane], mdy = sum_dz[plane] * norm;
  const float f1 = invstd * invstd * sum_dz_xmu[plane] * norm, f2 = gamma[plane] * invstd;
  const int bstep = blockDim.y * gridDim.y;
  for (int n = threadIdx.y + blockIdx.y * blockDim.y; n < N; n += bstep) {
    const size_t o = ((size_t)n * K + plane) * HW;
    for (int f = threadIdx.x; f < HW; f += blockDim.x) dy[o + f] = (dz[o + f] - mdy - (y[o + f] - m) * f1) * f2;
  }
}

// Launch shape of transform_input / backward_elemt (batch_norm_elemt_cuda_template).
inline void bn_elemt_shape(int N, int K, int HW, dim3& grid, dim3& block) {
  const int a = bn_num_threads(HW / 4), b = bn_num_threads(HW);
  const int tf = a > (b < 64 ? b : 64) ? a : (b < 64 ? b : 64);
  const int tb = 64 / tf > 1 ? 64 / tf : 1;
  int gy = (256 * 1024) / K;
  const int need = (N + tb - 1) / tb;
  gy = gy < need ? gy : need;
  grid = dim3(K, gy < 1 ? 1 : (gy > 65535 ? 65535 : gy));
  block = dim3(tf, tb);
}

// ---- ReLU and threshold_backward (vectorised elementwise loop) ---------------------------------
__global__ void __launch_bounds__(kEwThreads) relu_kernel(const float* __restrict__ in, float* __restrict__ out, int n) {
  const int i = (blockIdx.x * blockDim.x + threadIdx.x) * kEwVec;
  if (i + kEwVec <= n) {
    float4 v = *reinterpret_cast<const float4*>(in + i);
    v.x = v.x < 0.f ? 0.f : v.x;
    v.y = v.y < 0.f ? 0.f : v.y;
    v.z = v.z < 0.f ? 0.f : v.z;
    v.w = v.w < 0.f ? 0.f : v.w;
    *reinterpret_cast<float4*>(out + i) = v;
  } else {
    for (int j = i; j < n; ++j) out[j] = in[j] < 0.f ? 0.f : in[j];
  }
}

// threshold_backward(grad, result, 0): grad where result > 0.
__global__ void __launch_bounds__(kEwThreads)
relu_bwd_kernel(const float* __restrict__ dout, const float* __restrict__ out, float* __restrict__ dz, int n) {
  const int i = (blockIdx.x * blockDim.x + threadIdx.x) * kEwVec;
  if (i + kEwVec <= n) {
    const float4 g = *reinterpret_cast<const float4*>(dout + i);
    const float4 r = *reinterpret_cast<const float4*>(out + i);
    float4 v;
    v.x = r.x <= 0.f ? 0.f : g.x;
    v.y = r.y <= 0.f ? 0.f : g.y;
    v.z = r.z <= 0.f ? 0.f : g.z;
    v.w = r.w <= 0.f ? 0.f : g.w;
    *reinterpret_cast<float4*>(dz + i) = v;
  } else {
    for (int j = i; j < n; ++j) dz[j] = out[j] <= 0.f ? 0.f : dout[j];
  }
}

inline int ew_blocks(int n) { return (n + kEwThreads * kEwVec - 1) / (kEwThreads * kEwVec); }

}  // namespace base
