// Forward kernels of the CUDA build (all dtypes; dilations 1..4 specialised + runtime path).
#include "binding/cuda_policy.cuh"

DSC_DEFINE_LAUNCHER(forward, float)
DSC_DEFINE_LAUNCHER(forward_conv, float)
DSC_DEFINE_LAUNCHER(forward_stats, float)
DSC_DEFINE_LAUNCHER(normalize, float)
DSC_DEFINE_LAUNCHER(forward, __half)
DSC_DEFINE_LAUNCHER(forward_conv, __half)
DSC_DEFINE_LAUNCHER(forward_stats, __half)
DSC_DEFINE_LAUNCHER(normalize, __half)
DSC_DEFINE_LAUNCHER(forward, __nv_bfloat16)
DSC_DEFINE_LAUNCHER(forward_conv, __nv_bfloat16)
DSC_DEFINE_LAUNCHER(forward_stats, __nv_bfloat16)
DSC_DEFINE_LAUNCHER(normalize, __nv_bfloat16)

int dsc_kernel_binary_version() {
  cudaFuncAttributes attr;
  if (cudaFuncGetAttributes(&attr, dsc::bn_relu_kernel<float>) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the "no kernel image" error
    return -1;
  }
  return attr.binaryVersion;
}
