// Backward kernels of the CUDA build, fp16 and bf16 storage.
#include "binding/cuda_policy.cuh"

DSC_DEFINE_LAUNCHER(backward, __half)
DSC_DEFINE_LAUNCHER(backward_sums, __half)
DSC_DEFINE_LAUNCHER(backward_convs, __half)
DSC_DEFINE_LAUNCHER(backward, __nv_bfloat16)
DSC_DEFINE_LAUNCHER(backward_sums, __nv_bfloat16)
DSC_DEFINE_LAUNCHER(backward_convs, __nv_bfloat16)
