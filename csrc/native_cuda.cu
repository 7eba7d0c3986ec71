// CUDA implementations of torch.ops.fused_dsconv_native.*: the shared torch binding
// (csrc/binding/ops_impl.h) over the torch-free launcher, launched on the current stream of x's
// device under a device guard, every launch checked (csrc/binding/cuda_policy.cuh). The kernels
// themselves are compiled in csrc/native_fwd.cu and csrc/native_bwd_*.cu.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "binding/cuda_policy.cuh"
#include "binding/ops_impl.h"

DSC_CUDA_LAUNCHERS(DSC_EXTERN_LAUNCHER)

namespace {

struct CudaTraits {
  using Policy = CudaPolicy;
  using Half = __half;
  using BF16 = __nv_bfloat16;
  using Guard = c10::cuda::CUDAGuard;
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;
  static constexpr const char* kPrefix = "fused_dsconv_native: ";
};

int64_t kernel_binary_version(int64_t device) {
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  cudaFuncAttributes attr;
  if (cudaFuncGetAttributes(&attr, dsc::bn_relu_kernel<float>) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the "no kernel image" error
    return -1;
  }
  return attr.binaryVersion;
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_dsconv_native, CUDA, m) { DSC_IMPLS(m, CudaTraits); }

// No tensor arguments, so a catch-all kernel (defined here, where the CUDA runtime is).
TORCH_LIBRARY_FRAGMENT(fused_dsconv_native, m) {
  m.def("kernel_binary_version(int device) -> int", &kernel_binary_version);
}
