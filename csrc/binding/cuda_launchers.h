// What the CUDA build's torch binding (csrc/native_cuda.cpp, host compiler) and its launcher translation
// units (csrc/native_fwd.cu, csrc/native_bwd_*.cu, nvcc) share: the launch policy's name, the list of
// launcher instantiations and the one kernel query the binding makes. Torch-free and kernel-free, so the
// binding never goes through nvcc (its torch headers cost more there than all of its host code).
#pragma once

#include <cstdint>

struct CudaPolicy;  // binding/cuda_policy.cuh

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

// The binary version (e.g. 86) the kernels run as on the current device, -1 where the build has no image
// for its architecture (defined in csrc/native_fwd.cu).
int dsc_kernel_binary_version();

// What a launch needs from torch, defined by the binding (csrc/native_cuda.cpp) so that the launcher units
// stay torch-free: the current stream of the current device (a cudaStream_t), the error for a grid out of
// CUDA's range (a c10::Error, as a TORCH_CHECK), and the check after every launch (C10_CUDA_KERNEL_LAUNCH_CHECK).
void* dsc_current_stream();
[[noreturn]] void dsc_launch_grid_error(int64_t gx, int64_t gy, int64_t gz);
void dsc_check_launch();
