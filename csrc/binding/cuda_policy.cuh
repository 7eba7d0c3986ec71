// Launch policy of the CUDA build: current stream of the current (guarded) device, every launch checked.
// Included by the launcher translation units only (csrc/native_fwd.cu, csrc/native_bwd_*.cu), which
// instantiate the launchers of binding/cuda_launchers.h side by side in a parallel build (MAX_JOBS).
// Torch-free: the stream and the checks are host functions of the binding (csrc/native_cuda.cpp), so
// nvcc never parses the torch headers (c10's alone cost about 6 s per launcher unit, most of a fast
// build's host time).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "binding/cuda_launchers.h"
#include "kernels/launch.cuh"

struct CudaPolicy {
  template <class K, class... A>
  static void launch(K kernel, int64_t gx, int64_t gy, int64_t gz, int threads, A... args) {
    if (!(gx >= 1 && gx <= 2147483647LL && gy >= 1 && gy <= 65535 && gz >= 1 && gz <= 65535))
      dsc_launch_grid_error(gx, gy, gz);
    kernel<<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz)), threads, 0,
             static_cast<cudaStream_t>(dsc_current_stream())>>>(args...);
    dsc_check_launch();
  }
};
