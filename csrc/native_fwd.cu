// Forward kernels of the CUDA build (all dtypes; dilations 1..4 specialised + runtime path).
#include "binding/cuda_policy.cuh"

DSC_DEFINE_LAUNCHER(forward, float)
DSC_DEFINE_LAUNCHER(forward, __half)
DSC_DEFINE_LAUNCHER(forward, __nv_bfloat16)
