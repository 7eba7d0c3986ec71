// CUTLASS's SIMT SGEMM (the kernel cuBLAS-class libraries run for fp32 on Pascal) on the simulator, as the
// yardstick for the baseline's own SGEMM (tools/sim/baseline/sgemm.cuh). Same problem and check as
// `unfused_sim --gemm M N K`: C[M, N] = A[M, K] B[K, N], all row-major, uniform [-1, 1) inputs.
// Build: headers from the `nvidia-cutlass` wheel (cutlass_library/source/include), see tools/sim/README.md.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cutlass/gemm/device/gemm.h"

#include "../sim_common.cuh"

using Row = cutlass::layout::RowMajor;
// Threadblock 128x128x8, warp 32x64x8, 2 stages: CUTLASS's default SIMT SGEMM (DefaultGemmConfiguration
// for OpClassSimt), the shape of its 00_basic_gemm example and of cuBLAS's "128x128" Maxwell/Pascal kernels.
using Gemm = cutlass::gemm::device::Gemm<
    float, Row, float, Row, float, Row, float, cutlass::arch::OpClassSimt, cutlass::arch::Sm50,
    cutlass::gemm::GemmShape<128, 128, 8>, cutlass::gemm::GemmShape<32, 64, 8>, cutlass::gemm::GemmShape<1, 1, 1>,
    cutlass::epilogue::thread::LinearCombination<float, 1, float, float>,
    cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>, 2>;

int main(int argc, char** argv) {
  if (argc != 4) {
    std::printf("usage: %s M N K\n", argv[0]);
    return 2;
  }
  const int M = std::atoi(argv[1]), N = std::atoi(argv[2]), K = std::atoi(argv[3]);
  if (M < 1 || N < 1 || K < 1) {
    std::printf("error: M, N, K must be >= 1 (got %d %d %d)\n", M, N, K);
    return 2;
  }
  sim::Rng rng(11);
  std::vector<float> a((size_t)M * K), b((size_t)K * N);
  for (auto& v : a) v = (float)rng.uniform();
  for (auto& v : b) v = (float)rng.uniform();
  sim::DevBuf<float> da(a.size()), db(b.size()), dc((size_t)M * N);
  da.put(a);
  db.put(b);
  Gemm::Arguments args({M, N, K}, {da.p, K}, {db.p, N}, {dc.p, N}, {dc.p, N}, {1.f, 0.f});
  Gemm op;
  const cutlass::Status can = op.can_implement(args);
  if (can != cutlass::Status::kSuccess) {
    std::printf("CUTLASS cannot implement: %s\n", cutlassGetStatusString(can));
    return 1;
  }
  std::printf("[sim] launch 0 cutlass simt sgemm 128x128x8 warp 32x64x8 stages 2 M=%d N=%d K=%d\n", M, N, K);
  const cutlass::Status st = op(args);
  if (st != cutlass::Status::kSuccess) {
    std::printf("CUTLASS launch failed: %s\n", cutlassGetStatusString(st));
    return 1;
  }
  sim::sync();
  const std::vector<float> c = dc.get();
  double err = 0, mx = 0;
  for (int s = 0; s < 4096; ++s) {
    const int m = (int)((s * 7919LL) % M), n = (int)((s * 104729LL) % N);
    double r = 0;
    for (int k = 0; k < K; ++k) r += (double)a[(size_t)m * K + k] * b[(size_t)k * N + n];
    err = std::fmax(err, std::fabs(r - c[(size_t)m * N + n]));
    mx = std::fmax(mx, std::fabs(r));
  }
  const bool ok = err <= 1e-4 * std::fmax(mx, 1.0);
  std::printf("[check] cutlass gemm M=%d N=%d K=%d sampled max_err=%.3g max|ref|=%.3g -> %s\n", M, N, K, err, mx,
              ok ? "ok" : "BAD");
  std::printf("cutlass_sgemm: 1 outputs checked -> %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
