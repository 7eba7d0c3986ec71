// Torch-free emulator test program for ThreadSanitizer (built by CMakeLists.txt, run by ctest).
// Runs the real launcher + kernels (fp32) on small problems through the emulator and checks the
// forward results against naive loops; every other output is checked for being finite (the shared
// memory arena is poisoned with NaN, so a read of unwritten shared memory shows up).
//
// Barriers: built with DSC_BARRIER_HOOK, every DSC_SYNC(id) of the kernels calls dsc_barrier_hook(id).
//   emu_tsan                 runs every barrier and prints the ids that ran ("barriers run: ...");
//   emu_tsan --drop ID       skips barrier ID in every block: TSan must report the data race it leaves
//                            (ctest runs this once per id in csrc/kernels/, see CMakeLists.txt).
// The drop is a run-time choice, so one build covers every barrier: TSan sees the race because a
// skipped barrier leaves no happens-before edge, whatever the compiler could prove.
// Tiles past grid.y spill into grid.z (launch.cuh): with 3 here instead of CUDA's 65535, the stride-1
// cases below (4 tiles) run the split and the early return of surplus blocks under TSan/ASan. dWp
// partials are capped at 2 so that a dwp_kernel block loops over more than one tile.
#define DSC_TILE_GRID_Y 3
#define DSC_DWP_MAX_SPLITS 2
#include "emu/emu.h"
#include "kernels/common.cuh"
#include "emu/policy.h"
#include "kernels/launch.cuh"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr int kMaxBarrierId = 1024;
int g_drop = -1;  // set once in main, before any kernel thread starts
std::atomic<bool> g_ran[kMaxBarrierId];

}  // namespace

bool dsc_barrier_hook(int id) {
  if (id == g_drop) return false;
  // Relaxed: records coverage without adding a happens-before edge that could hide a race. A drop run
  // records nothing at all.
  if (g_drop < 0 && id >= 0 && id < kMaxBarrierId) g_ran[id].store(true, std::memory_order_relaxed);
  return true;
}

namespace {

struct Case {
  int64_t N, C, K, H, W;
  int stride, dil;
  bool cl;
};

int run(const Case& cs) {
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int64_t N = cs.N, C = cs.C, K = cs.K, H = cs.H, W = cs.W;
  std::vector<float> x(N * C * H * W), wd(C * 9), wp(K * C), bias(K), gamma(K), beta(K);
  for (auto& v : x) v = nd(rng) + 0.5f;
  for (auto& v : wd) v = nd(rng) / 3.f;
  for (auto& v : wp) v = nd(rng) / std::sqrt(float(C));
  for (auto& v : bias) v = nd(rng);
  for (auto& v : gamma) v = 1.f + 0.1f * nd(rng);
  for (auto& v : beta) v = 0.5f * nd(rng);

  dsc::Problem p{};
  dsc::set_geometry(p, N, C, K, H, W, cs.stride, cs.dil);
  const int64_t Ho = p.Ho, Wo = p.Wo;
  p.cl = cs.cl;
  p.xs = cs.cl ? dsc::Str4{H * W * C, 1, W * C, C} : dsc::Str4{C * H * W, H * W, W, 1};
  const dsc::Str4 ys = cs.cl ? dsc::Str4{Ho * Wo * K, 1, Wo * K, K} : dsc::Str4{K * Ho * Wo, Ho * Wo, Wo, 1};
  // x in storage order of the chosen layout
  std::vector<float> xs(x.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) xs[dsc::at4(p.xs, n, c, h, w)] = x[((n * C + c) * H + h) * W + w];
  p.x = xs.data();
  p.wd = wd.data();
  p.wp = wp.data();
  p.bias = bias.data();
  p.gamma = gamma.data();
  p.beta = beta.data();
  p.eps = 1e-5f;

  // naive y (double)
  std::vector<double> yref(N * K * Ho * Wo);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t ho = 0; ho < Ho; ++ho)
      for (int64_t wo = 0; wo < Wo; ++wo) {
        std::vector<double> t(C, 0.0);
        for (int64_t c = 0; c < C; ++c)
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
              const int64_t h = ho * cs.stride - cs.dil + i * cs.dil, w = wo * cs.stride - cs.dil + j * cs.dil;
              if (h >= 0 && h < H && w >= 0 && w < W) t[c] += double(x[((n * C + c) * H + h) * W + w]) * wd[c * 9 + i * 3 + j];
            }
        for (int64_t k = 0; k < K; ++k) {
          double v = bias[k];
          for (int64_t c = 0; c < C; ++c) v += double(wp[k * C + c]) * t[c];
          yref[((n * K + k) * Ho + ho) * Wo + wo] = v;
        }
      }

  const int64_t nout = N * K * Ho * Wo;
  std::vector<float> y(nout), out(nout), mean(K), var(K), out_eval(nout);
  double err = 0.0;
  // eval
  p.mode = dsc::kEval;
  p.out = out_eval.data();
  p.os = ys;
  dsc::forward<EmuPolicy, float>(p, nullptr);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t ho = 0; ho < Ho; ++ho)
        for (int64_t wo = 0; wo < Wo; ++wo) {
          const double e = std::max(0.0, yref[((n * K + k) * Ho + ho) * Wo + wo]);
          err = std::max(err, std::fabs(out_eval[dsc::at4(ys, n, k, ho, wo)] - e));
        }
  // train
  std::vector<float> ws(dsc::forward_ws_floats([&] { auto q = p; q.mode = dsc::kTrain; return q; }()));
  p.mode = dsc::kTrain;
  p.y = y.data();
  p.ys = ys;
  p.out = out.data();
  p.mean = mean.data();
  p.var = var.data();
  dsc::forward<EmuPolicy, float>(p, ws.data());
  for (int64_t k = 0; k < K; ++k) {
    double m = 0, q = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < Ho * Wo; ++i) m += yref[(n * K + k) * Ho * Wo + i];
    m /= double(p.M);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < Ho * Wo; ++i) q += std::pow(yref[(n * K + k) * Ho * Wo + i] - m, 2);
    err = std::max({err, std::fabs(mean[k] - m), std::fabs(var[k] - q / double(p.M))});
  }
  // recompute mode (ops_impl.h): y written into out's own storage and normalised in place must give
  // the same out bit for bit, with no race between the conv pass and the in-place normalise.
  std::vector<float> out_inplace(nout), mean2(K), var2(K);
  {
    dsc::Problem q = p;
    q.y = q.out = out_inplace.data();
    q.mean = mean2.data();
    q.var = var2.data();
    dsc::forward<EmuPolicy, float>(q, ws.data());
  }
  const bool inplace_same = out_inplace == out;
  // backward (train, then eval): outputs must be finite
  std::vector<float> dout(nout), dx(N * C * H * W), dwd(C * 9), dwp(K * C), dbias(K), dgamma(K), dbeta(K);
  for (auto& v : dout) v = nd(rng);
  p.dout = dout.data();
  p.dos = ys;
  p.dx = dx.data();
  p.dwd = dwd.data();
  p.dwp = dwp.data();
  p.dbias = dbias.data();
  p.dgamma = dgamma.data();
  p.dbeta = dbeta.data();
  p.act = y.data();
  p.as = ys;
  std::vector<float> bws(dsc::backward_ws_floats(p));
  dsc::backward<EmuPolicy, float>(p, bws.data());
  bool finite = true;
  for (const auto* v : {&dx, &dwd, &dwp, &dbias, &dgamma, &dbeta})
    for (float f : *v) finite = finite && std::isfinite(f);
  p.mode = dsc::kEval;
  p.act = out_eval.data();
  dsc::backward<EmuPolicy, float>(p, bws.data());
  for (const auto* v : {&dx, &dwd, &dwp, &dbias})
    for (float f : *v) finite = finite && std::isfinite(f);

  std::printf("case N=%lld C=%lld K=%lld H=%lld W=%lld s=%d d=%d cl=%d: max err %.3e, finite %d, in-place out "
              "identical %d\n", (long long)N, (long long)C, (long long)K, (long long)H, (long long)W, cs.stride, cs.dil,
              int(cs.cl), err, int(finite), int(inplace_same));
  return (err < 1e-3 && finite && inplace_same) ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::strcmp(argv[1], "--drop") == 0) {
    g_drop = std::atoi(argv[2]);
    if (g_drop <= 0 || g_drop >= kMaxBarrierId) {
      std::fprintf(stderr, "--drop needs a barrier id in [1, %d)\n", kMaxBarrierId);
      return 2;
    }
  } else if (argc != 1) {
    std::fprintf(stderr, "usage: %s [--drop BARRIER_ID]\n", argv[0]);
    return 2;
  }
  int bad = 0;
  // C = 20: two depthwise chunks in the forward (exercises the end-of-chunk barrier).
  bad += run(Case{1, 20, 5, 9, 10, 1, 1, false});
  bad += run(Case{1, 20, 5, 9, 10, 2, 5, true});
  // K = 70: two K tiles in the forward and two K chunks in the dt kernel; d = 9: the gathered halo.
  bad += run(Case{1, 20, 70, 9, 10, 1, 9, false});
  if (g_drop > 0) {
    // Reached only if TSan stayed silent (halt_on_error stops the program at the first report).
    std::printf("barrier %d dropped and no data race reported\n", g_drop);
    return 1;
  }
  std::printf("barriers run:");
  for (int id = 0; id < kMaxBarrierId; ++id)
    if (g_ran[id].load(std::memory_order_relaxed)) std::printf(" %d", id);
  std::printf("\n");
  std::printf(bad ? "FAILED\n" : "OK\n");
  return bad;
}
