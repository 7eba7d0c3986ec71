// Backward kernels of the CUDA build, fp16 and bf16 storage.
#include "binding/cuda_policy.cuh"

DSC_DEFINE_LAUNCHER(backward, __half)
DSC_DEFINE_LAUNCHER(backward, __nv_bfloat16)
