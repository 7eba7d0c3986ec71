// Launch policy of the CUDA build: current stream of the current (guarded) device, every launch checked.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include "kernels/launch.cuh"

struct CudaPolicy {
  template <class K, class... A>
  static void launch(K kernel, int64_t gx, int64_t gy, int64_t gz, int threads, A... args) {
    TORCH_CHECK(gx >= 1 && gx <= 2147483647LL && gy >= 1 && gy <= 65535 && gz >= 1 && gz <= 65535,
                "fused_dsconv_native: launch grid (", gx, ", ", gy, ", ", gz, ") out of range for this problem size");
    kernel<<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz)), threads, 0,
             c10::cuda::getCurrentCUDAStream()>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// The launcher instantiations live in separate translation units (csrc/native_fwd.cu, csrc/native_bwd*.cu)
// so that a parallel build (MAX_JOBS) compiles the kernels side by side.
// forward_stats / normalize and backward_sums / backward_convs are the stages the split passes of
// synchronised batch norm call one by one.
#define DSC_CUDA_LAUNCHERS(X)     \
  DSC_CUDA_LAUNCHERS_T(X, float)  \
  DSC_CUDA_LAUNCHERS_T(X, __half) \
  DSC_CUDA_LAUNCHERS_T(X, __nv_bfloat16)
#define DSC_CUDA_LAUNCHERS_T(X, T) \
  X(forward, T)                    \
  X(forward_conv, T) X(forward_stats, T) X(normalize, T) X(backward, T) X(backward_sums, T) X(backward_convs, T)

#define DSC_EXTERN_LAUNCHER(fn, T) extern template void dsc::fn<CudaPolicy, T>(const dsc::Problem&, float*);
#define DSC_DEFINE_LAUNCHER(fn, T) template void dsc::fn<CudaPolicy, T>(const dsc::Problem&, float*);
