// Explicit instantiation of every kernel variant the launcher can launch, torch-free, so that the
// compile report (tools/report_cuda.py) compiles exactly the extension's kernels with NVRTC 12.x (sm_61)
// and nvcc (sm_75, sm_86) without torch headers.
#pragma once

#include "fused.cuh"

#define DSC_INST_FWD(T, Tl, S, D) \
  template __global__ void dsc::dsconv_fwd_kernel<T, dsc::Tl, S, D>(const dsc::Problem, float*);
#define DSC_INST_FWD_PAIR(T, S, D) \
  template __global__ void dsc::dsconv_fwd_kernel<T, dsc::TileSpan64, S, D, true>(const dsc::Problem, float*);
#define DSC_INST_DWP(T, Tl, S, D) \
  template __global__ void dsc::dsconv_bwd_dwp_kernel<T, dsc::Tl, S, D>(const dsc::Problem, float*);
#define DSC_INST_DX(T, S, D) template __global__ void dsc::dsconv_bwd_dx_kernel<T, S, D>(const dsc::Problem, float*);

// Every (stride, dilation) pair: the rect tiles; span tiles only with a template dilation.
#define DSC_INST_SD_RECT(T, S, D)     \
  DSC_INST_FWD(T, TileRect8x8, S, D)  \
  DSC_INST_FWD(T, TileRect8x16, S, D) \
  DSC_INST_DWP(T, TileRect8x8, S, D)  \
  DSC_INST_DX(T, S, D)
#define DSC_INST_SD(T, S, D)        \
  DSC_INST_SD_RECT(T, S, D)         \
  DSC_INST_FWD(T, TileSpan64, S, D) \
  DSC_INST_FWD_PAIR(T, S, D)        \
  DSC_INST_DWP(T, TileSpan64, S, D) \
  template __global__ void dsc::dsconv_dw_kernel<T, S, D>(const dsc::Problem, float*);
#define DSC_INST_S(T, S)    \
  DSC_INST_SD_RECT(T, S, 0) \
  DSC_INST_SD(T, S, 1)      \
  DSC_INST_SD(T, S, 2)      \
  DSC_INST_SD(T, S, 3)      \
  DSC_INST_SD(T, S, 4)

#define DSC_INST_T(T)                                                                                              \
  DSC_INST_S(T, 1)                                                                                                 \
  DSC_INST_S(T, 2)                                                                                                 \
  template __global__ void dsc::dsconv_fwd_reduce_kernel<T, dsc::TileRect8x8>(const dsc::Problem, float*);         \
  template __global__ void dsc::dsconv_fwd_reduce_kernel<T, dsc::TileRect8x16>(const dsc::Problem, float*);        \
  template __global__ void dsc::dsconv_fwd_reduce_kernel<T, dsc::TileSpan64>(const dsc::Problem, float*);          \
  template __global__ void dsc::dsconv_bwd_dt_kernel<T, dsc::TileSpan64>(const dsc::Problem, float*);              \
  template __global__ void dsc::dsconv_bwd_dwp_kernel<T, dsc::TileSpan64, 1, 0, true>(const dsc::Problem, float*); \
  template __global__ void dsc::dsconv_bwd_dt_kernel<T, dsc::TileSpan128>(const dsc::Problem, float*);             \
  template __global__ void dsc::bn_relu_kernel<T>(const dsc::Problem, const float*, int64_t, int64_t);             \
  template __global__ void dsc::bn_bwd_reduce_kernel<T>(const dsc::Problem, float*);                               \
  template __global__ void dsc::bn_bwd_dy_kernel<T>(const dsc::Problem, float*);                                   \
  template __global__ void dsc::colsum_kernel<T>(const dsc::ColsumJob<T>, const dsc::ColsumJob<T>);

template __global__ void dsc::bn_stats_kernel<0>(const dsc::Problem, float*);
template __global__ void dsc::bn_bwd_finalize_kernel<0>(const dsc::Problem, float*);

DSC_INST_T(float)
DSC_INST_T(__half)
DSC_INST_T(__nv_bfloat16)
