// Portability layer of the torch-free kernel headers. Four builds include these headers:
//   * nvcc (the CUDA extension's launchers, csrc/*.cu) -> __CUDACC__ defined
//   * NVRTC 12.x for the sm_61 compile check           -> __CUDACC_RTC__ defined
//   * g++ C++20 emulator (csrc/emu/emu.h included first, DSC_EMU defined)
//   * the host compiler for the CUDA build's torch binding (csrc/native_cuda.cpp, DSC_HOST_ONLY defined):
//     problem.cuh and plan.cuh only, with CUDA's half types; kernels are an error there (fused.cuh)
// Nothing here includes torch or host-only code.
#pragma once

#if defined(__CUDACC_RTC__)
typedef long long int64_t;
typedef unsigned long long uint64_t;
typedef unsigned int uint32_t;
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define DSC_GPU 1
#elif defined(__CUDACC__)
#include <cstdint>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define DSC_GPU 1
#elif defined(DSC_HOST_ONLY)
#include <cstdint>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#elif defined(DSC_EMU)
#include <cstdint>
#include <cmath>
#include <cstring>
#else
#error "on the host, include csrc/emu/emu.h (which defines DSC_EMU) or define DSC_HOST_ONLY before these headers"
#endif

#if DSC_GPU
#define DSC_LDG(ptr) __ldg(ptr)  // read-only path (ld.global.nc): inputs that no kernel of the launch writes
#define DSC_DEVICE __device__ __forceinline__
#define DSC_HD __host__ __device__ __forceinline__
#define DSC_GLOBAL __global__
#define DSC_LAUNCH_BOUNDS(n) __launch_bounds__(n)
// At least m resident blocks of n threads per SM: caps registers at 65536 / (n m) (the tiled kernels ask
// for 2 blocks of 256 threads, <= 128 registers, so loads batched for latency do not take the whole file).
#define DSC_LAUNCH_BOUNDS_MIN(n, m) __launch_bounds__(n, m)
// Shared memory: one struct per kernel, so the emulator can hand out one poisoned arena for it.
#define DSC_SHARED(Type, name) __shared__ Type name
#define DSC_RSQRT(v) rsqrtf(v)
#else
#define DSC_LDG(ptr) (*(ptr))
#define DSC_DEVICE inline
#define DSC_HD inline
#define DSC_GLOBAL inline
#define DSC_LAUNCH_BOUNDS(n)
#define DSC_LAUNCH_BOUNDS_MIN(n, m)
#define DSC_SHARED(Type, name) Type& name = *static_cast<Type*>(::emu::shared_arena(sizeof(Type)))
#define DSC_RSQRT(v) (1.0f / std::sqrt(v))
#endif

// DSC_SYNC(id): every block barrier of the kernels goes through this, with an id unique across
// csrc/kernels/. The ThreadSanitizer test program (csrc/emu/tsan_main.cpp, built with DSC_BARRIER_HOOK)
// asks dsc_barrier_hook(id) first: it records which barriers ran, and drops the one chosen on its
// command line, so that TSan must report the race the missing barrier leaves (tests/test_emu_tsan.py
// runs that for every id). Real builds: __syncthreads().
#if defined(DSC_BARRIER_HOOK)
bool dsc_barrier_hook(int id);
#define DSC_SYNC(id)                           \
  do {                                         \
    if (dsc_barrier_hook(id)) __syncthreads(); \
  } while (0)
#else
#define DSC_SYNC(id) __syncthreads()
#endif

namespace dsc {

// Storage <-> fp32 conversion. Accumulation is always fp32.
template <class T>
struct Cvt;

template <>
struct Cvt<float> {
  static DSC_DEVICE float load(float v) { return v; }
  static DSC_DEVICE float store(float v) { return v; }
  static DSC_DEVICE float ldg(const float* p) { return DSC_LDG(p); }
};

#if DSC_GPU
template <>
struct Cvt<__half> {
  static DSC_DEVICE float load(__half v) { return __half2float(v); }
  static DSC_DEVICE __half store(float v) { return __float2half_rn(v); }
  static DSC_DEVICE float ldg(const __half* p) { return __half2float(__ldg(p)); }
};
// cuda_bf16.h converts in software below sm_80, so bf16 storage also works on sm_61/sm_75.
template <>
struct Cvt<__nv_bfloat16> {
  static DSC_DEVICE float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static DSC_DEVICE __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
  // __ldg has no bf16 overload before sm_80 in every toolkit: load the bits through the read-only path.
  static DSC_DEVICE float ldg(const __nv_bfloat16* p) {
    const unsigned short b = __ldg(reinterpret_cast<const unsigned short*>(p));
    return __uint_as_float(static_cast<unsigned>(b) << 16);
  }
};
#endif  // the emulator's host fp16 / bf16 specialisations: csrc/emu/numeric.h

// 16-byte vector for 128-bit shared / global accesses (the emulator's stand-in has the same layout).
#if DSC_GPU
using f4 = float4;
#else
struct alignas(16) f4 {
  float x, y, z, w;
};
#endif

// Element strides (in elements, int64) of a 4-D tensor in logical [n, c, h, w] order.
struct Str4 {
  int64_t n, c, h, w;
};

DSC_HD int64_t at4(const Str4& s, int64_t n, int64_t c, int64_t h, int64_t w) {
  return n * s.n + c * s.c + h * s.h + w * s.w;
}

DSC_HD int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ReLU that propagates NaN (fmaxf would drop it).
DSC_DEVICE float relu_nan(float v) { return v < 0.f ? 0.f : v; }

}  // namespace dsc
