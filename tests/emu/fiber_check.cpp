// The emulator's own semantics (csrc/emu/emu.h, fiber build), checked by tests/test_emu_harness.py.
#include "emu/emu.h"

#include <cstdio>
#include <string>
#include <vector>

static int check(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what);
  return ok ? 0 : 1;
}

// Each thread writes its slot, (maybe) a barrier, then reads a slot another thread wrote.
static std::vector<float> exchange(bool with_barrier) {
  std::vector<float> out(512);
  emu::launch(emu::dim3(2), emu::dim3(256), [&] {
    float* sh = static_cast<float*>(emu::shared_arena(256 * sizeof(float)));
    sh[threadIdx.x] = static_cast<float>(threadIdx.x + 1000 * blockIdx.x);
    if (with_barrier) __syncthreads();
    out[blockIdx.x * 256 + threadIdx.x] = sh[255 - threadIdx.x];
  });
  return out;
}

int main() {
  int bad = 0;
  std::vector<float> a = exchange(true);
  bool ok = true;
  for (unsigned b = 0; b < 2; ++b)
    for (unsigned t = 0; t < 256; ++t) ok &= a[b * 256 + t] == static_cast<float>(255 - t + 1000 * b);
  bad += check(ok, "barrier orders shared-memory writes before reads");

  std::vector<float> r = exchange(false);
  bool poisoned = r[0] != r[0];  // thread 0 ran to its read before thread 255 wrote: the 0xFF poison (NaN)
  bad += check(poisoned, "a missing barrier reads the poison, deterministically");

  std::vector<float> s(64);
  emu::launch(emu::dim3(1), emu::dim3(64), [&] {
    float v = static_cast<float>(threadIdx.x);
    for (int m = 16; m; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    s[threadIdx.x] = v;
  });
  bad += check(s[0] == 496.f && s[31] == 496.f && s[32] == 1520.f && s[63] == 1520.f, "xor shuffle sums a warp");

  // Threads that return drop out of the barrier, as on a GPU.
  int after = 0;
  emu::launch(emu::dim3(1), emu::dim3(64), [&] {
    if (threadIdx.x >= 10) return;
    __syncthreads();
    __syncthreads();
    ++after;
  });
  bad += check(after == 10, "returned threads drop out of __syncthreads");

  std::string msg;
  try {
    emu::launch(emu::dim3(1), emu::dim3(64), [&] {
      if (threadIdx.x < 10)
        __syncwarp();
      else
        __syncthreads();
    });
  } catch (const std::exception& e) {
    msg = e.what();
  }
  bad += check(msg.find("emu: deadlock") == 0, "a barrier that cannot complete raises instead of hanging");

  std::string thrown;
  try {
    emu::launch(emu::dim3(3), emu::dim3(32), [&] {
      if (blockIdx.x == 1 && threadIdx.x == 5) throw std::runtime_error("kernel trap");
      __syncthreads();
    });
  } catch (const std::exception& e) {
    thrown = e.what();
  }
  bad += check(thrown == "kernel trap", "an exception in one thread reaches the launcher");
  return bad;
}
