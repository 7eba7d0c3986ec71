// Backward kernels of the CUDA build, fp32 storage.
#include "binding/cuda_policy.cuh"

DSC_DEFINE_LAUNCHER(backward, float)
DSC_DEFINE_LAUNCHER(backward_sums, float)
DSC_DEFINE_LAUNCHER(backward_convs, float)
