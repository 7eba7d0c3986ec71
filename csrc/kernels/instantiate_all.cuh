// Explicit instantiation of every kernel variant the launcher can launch, torch-free, so that the
// compile report (tools/report_cuda.py) compiles exactly the extension's kernels with NVRTC 12.x (sm_61)
// and nvcc (sm_75, sm_86) without torch headers.
#pragma once

#include "fused.cuh"

#define DSC_INST_FWD(T, Tl, S, D) \
  template __global__ void dsc::dsconv_fwd_kernel<T, dsc::Tl, S, D>(const dsc::Problem, float*);

#define DSC_INST_SD(T, S, D)              \
  DSC_INST_FWD(T, TileRect8x8, S, D)      \
  DSC_INST_FWD(T, TileRect8x16, S, D)     \
  DSC_INST_FWD(T, TileSpan64, S, D)

#define DSC_INST_TD(T, D)                                                      \
  DSC_INST_SD(T, 1, D)                                                         \
  DSC_INST_SD(T, 2, D)                                                         \
  template __global__ void dsc::dwp_kernel<T, D>(const dsc::Problem, float*);  \
  template __global__ void dsc::dt_kernel<T, D>(const dsc::Problem, float*);   \
  template __global__ void dsc::dx_kernel<T, D>(const dsc::Problem, const float*);

#define DSC_INST_T(T)                                                                          \
  DSC_INST_FWD(T, TileRect8x8, 1, 0)                                                           \
  DSC_INST_FWD(T, TileRect8x16, 1, 0)                                                          \
  DSC_INST_FWD(T, TileRect8x8, 2, 0)                                                           \
  DSC_INST_FWD(T, TileRect8x16, 2, 0)                                                          \
  template __global__ void dsc::dwp_kernel<T, 0>(const dsc::Problem, float*);                  \
  template __global__ void dsc::dt_kernel<T, 0>(const dsc::Problem, float*);                   \
  template __global__ void dsc::dx_kernel<T, 0>(const dsc::Problem, const float*);             \
  DSC_INST_TD(T, 1)                                                                            \
  DSC_INST_TD(T, 2)                                                                            \
  DSC_INST_TD(T, 3)                                                                            \
  DSC_INST_TD(T, 4)                                                                            \
  template __global__ void dsc::bn_relu_kernel<T>(const dsc::Problem, int64_t, int64_t);       \
  template __global__ void dsc::bwd_reduce_kernel<T>(const dsc::Problem, float*);              \
  template __global__ void dsc::colsum_kernel<T>(const float*, int64_t, int64_t, T*);

template __global__ void dsc::bn_stats_kernel<0>(const dsc::Problem, const float*);
template __global__ void dsc::bn_bwd_finalize_kernel<0>(const dsc::Problem, float*);

DSC_INST_T(float)
DSC_INST_T(__half)
DSC_INST_T(__nv_bfloat16)
