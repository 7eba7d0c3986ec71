// FFMA-throughput probe of the simulator (tools/sim/README.md, "SGEMM efficiency"): pure FFMA loops, no
// memory traffic in the loop, enough independent accumulators and warps to hide the FMA latency, that
// differ only in how many distinct registers each FFMA reads. Run under gpusim, the cycles per FFMA show
// what the core model (operand collectors, register banks) lets a SIMT SGEMM reach, apart from its loads.
//   usage: ffma_probe MODE [ITERS] [BLOCKS] [THREADS]
//   MODE  r1: acc = acc * c + d   (1 register source, 2 immediates)
//         r2: acc = acc * b + d   (2 register sources)
//         r3: acc = a * b + acc   (3 register sources: a SIMT SGEMM's FFMA, on an 8 x 8 accumulator tile
//                                  from a[8], b[8], the 64-FFMA k-step of an 8x8 thread tile)
// Every thread's result is checked on the host (same fmaf sequence), then PASS / FAIL.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../sim_common.cuh"

namespace {

[[maybe_unused]] constexpr float kC = 0.999f, kD = 1e-3f;  // 0f3F7FBE77, 0f3A83126F in the PTX below

// 64 independent accumulators, each updated once per loop trip in every mode: consecutive FFMAs never
// depend on each other (the PTX is simulated in nvcc's order, unscheduled), and the loop overhead is the
// same 3-4 instructions per 64 FFMAs in every mode.
template <int MODE>
__host__ __device__ inline void step(float (&acc)[64], const float (&a)[8], const float (&b)[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float& c = acc[i * 8 + j];
#ifdef __CUDA_ARCH__
      // Inline PTX: NVVM would move the constants into registers, turning r1 and r2 into 3-register FFMAs.
      if (MODE == 0) asm("fma.rn.f32 %0, %0, 0f3F7FBE77, 0f3A83126F;" : "+f"(c));  // kC, kD
      if (MODE == 1) asm("fma.rn.f32 %0, %0, %1, 0f3A83126F;" : "+f"(c) : "f"(b[j]));
      if (MODE == 2) asm("fma.rn.f32 %0, %1, %2, %0;" : "+f"(c) : "f"(a[i]), "f"(b[j]));
#else
      if (MODE == 0) c = std::fmaf(c, kC, kD);
      if (MODE == 1) c = std::fmaf(c, b[j], kD);
      if (MODE == 2) c = std::fmaf(a[i], b[j], c);
#endif
    }
}

template <int MODE>
__host__ __device__ inline float run(const float* in, int t, int iters) {
  float acc[64], a[8], b[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) a[i] = in[(t + i) & 1023], b[i] = in[(t + 8 + i) & 1023];
#pragma unroll
  for (int k = 0; k < 64; ++k) acc[k] = in[(t + 16 + k) & 1023];
#pragma unroll 1
  for (int it = 0; it < iters; ++it) step<MODE>(acc, a, b);
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < 64; ++k) s += acc[k];
  return s;
}

template <int MODE>
__global__ void __launch_bounds__(256) ffma_kernel(const float* __restrict__ in, float* __restrict__ out,
                                                   int iters) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  out[t] = run<MODE>(in, t, iters);
}

// The same arithmetic on the host, in the same order (fmaf rounds once on both sides).
float host_result(int mode, const std::vector<float>& in, int t, int iters) {
  return mode == 0 ? run<0>(in.data(), t, iters) : mode == 1 ? run<1>(in.data(), t, iters) : run<2>(in.data(), t, iters);
}

}  // namespace

int main(int argc, char** argv) {
  const char* modes[] = {"r1", "r2", "r3"};
  int mode = -1;
  for (int m = 0; m < 3 && argc > 1; ++m)
    if (std::strcmp(argv[1], modes[m]) == 0) mode = m;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 64;
  const int blocks = argc > 3 ? std::atoi(argv[3]) : 56;
  const int threads = argc > 4 ? std::atoi(argv[4]) : 256;
  if (mode < 0 || iters < 1 || blocks < 1 || threads < 32 || threads > 256 || threads % 32) {
    std::printf("usage: %s r1|r2|r3 [ITERS>=1] [BLOCKS>=1] [THREADS: 32..256, a multiple of 32]\n", argv[0]);
    return 2;
  }
  const int n = blocks * threads;
  sim::Rng rng(5);
  std::vector<float> in(1024);
  for (auto& v : in) v = (float)(0.5 * rng.uniform());
  sim::DevBuf<float> din(in.size()), dout(n);
  din.put(in);
  const long long ffma = 64LL * iters * n;
  std::printf("[sim] launch 0 ffma_probe %s grid=%d block=%d iters=%d ffma=%lld\n", modes[mode], blocks, threads,
              iters, ffma);
  void (*kernels[])(const float*, float*, int) = {ffma_kernel<0>, ffma_kernel<1>, ffma_kernel<2>};
  sim::launch(kernels[mode], dim3(blocks), dim3(threads), (const float*)din.p, dout.p, iters);
  sim::sync();
  const std::vector<float> out = dout.get();
  int bad = 0;
  for (int t = 0; t < n; t += (t < 64 ? 1 : 97)) {
    const float r = host_result(mode, in, t, iters);
    if (!(std::fabs(r - out[t]) <= 1e-5f * std::fmax(1.f, std::fabs(r)))) ++bad;
  }
  std::printf("[check] ffma_probe %s: %d mismatches -> %s\n", modes[mode], bad, bad ? "BAD" : "ok");
  std::printf("ffma_probe: 1 outputs checked -> %s\n", bad ? "FAIL" : "PASS");
  return bad ? 1 : 0;
}
