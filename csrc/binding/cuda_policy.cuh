// Launch policy of the CUDA build: current stream of the current (guarded) device, every launch checked.
// Included by the launcher translation units only (csrc/native_fwd.cu, csrc/native_bwd_*.cu), which
// instantiate the launchers of binding/cuda_launchers.h side by side in a parallel build (MAX_JOBS).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include "binding/cuda_launchers.h"
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
