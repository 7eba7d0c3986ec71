// CUDA implementations of torch.ops.fused_dsconv_native.*: the shared torch binding
// (csrc/binding/ops_impl.h) over the torch-free launchers, launched on the current stream of x's
// device under a device guard, every launch checked (csrc/binding/cuda_policy.cuh). Host code only,
// compiled by the host compiler: it sees the launch plan (kernels/plan.cuh) and the launchers'
// declarations; the launchers and kernels are compiled by nvcc in csrc/native_fwd.cu and
// csrc/native_bwd_*.cu.
#define DSC_HOST_ONLY 1

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "binding/cuda_launchers.h"
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
  return dsc_kernel_binary_version();
}

}  // namespace

void* dsc_current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void dsc_launch_grid_error(int64_t gx, int64_t gy, int64_t gz) {
  TORCH_CHECK(false, "fused_dsconv_native: launch grid (", gx, ", ", gy, ", ", gz,
              ") out of range for this problem size");
}

void dsc_check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

TORCH_LIBRARY_IMPL(fused_dsconv_native, CUDA, m) { DSC_IMPLS(m, CudaTraits); }

// No tensor arguments, so a catch-all kernel (defined here, where the CUDA runtime is).
TORCH_LIBRARY_FRAGMENT(fused_dsconv_native, m) {
  m.def("kernel_binary_version(int device) -> int", &kernel_binary_version);
}
