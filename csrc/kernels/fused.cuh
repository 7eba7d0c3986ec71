// Kernels of the fused joint block: 3x3 depthwise (dilation d, padding d, stride s) -> 1x1 pointwise
// -> batch norm -> ReLU. Torch-free: included by the CUDA extension, the NVRTC sm_61 check and the
// CPU emulator. One header per stage (design notes: docs/cuda.md):
//   problem.cuh     Problem, tile classes, workspace layout
//   tile_gemm.cuh   the register-blocked micro-GEMM shared by the forward, dt and dWp kernels
//   window.cuh      the staged input window + depthwise chunk shared by the forward and dWp kernels
//   reductions.cuh  deterministic warp trees, Chan merge, colsum
//   forward.cuh     dsconv_fwd, bn_stats, bn_relu
//   backward.cuh    bn_bwd_reduce, bn_bwd_finalize, dsconv_bwd_dt, dsconv_bwd_dwp, dsconv_bwd_dx
#pragma once

#if defined(DSC_HOST_ONLY)
#error "the kernels need nvcc, NVRTC or the emulator; a DSC_HOST_ONLY translation unit includes plan.cuh"
#endif

#include "problem.cuh"
#include "tile_gemm.cuh"
#include "reductions.cuh"
#include "forward.cuh"
#include "window.cuh"
#include "backward.cuh"
