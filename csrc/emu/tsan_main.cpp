// Torch-free emulator test program for ThreadSanitizer (built by CMakeLists.txt, run by ctest).
// Runs the real launcher + kernels (fp32) on small problems through the emulator and checks the
// forward and backward results against naive float64 loops (the shared memory arena is poisoned with
// NaN, so a read of unwritten shared memory shows up as an error).
//
// Barriers: built with DSC_BARRIER_HOOK, every DSC_SYNC(id) of the kernels calls dsc_barrier_hook(id).
//   emu_tsan                 runs every barrier and prints the ids that ran ("barriers run: ...");
//   emu_tsan --drop ID       skips barrier ID in every block: TSan must report the data race it leaves
//                            (ctest runs this once per id in csrc/kernels/, see CMakeLists.txt).
// The drop is a run-time choice, so one build covers every barrier: TSan sees the race because a
// skipped barrier leaves no happens-before edge, whatever the compiler could prove.
// Tiles past grid.y spill into grid.z (launch.cuh): with 3 here instead of CUDA's 65535, the stride-1
// cases below (4 tiles) run the split and the early return of surplus blocks under TSan/ASan. dWp
// partials are capped at 2 so that a dwp_kernel block loops over more than one tile. dsconv_fwd pairs span
// tiles from 2 single-tile blocks on: the first case below runs a whole pair, the C = 70 case a pair
// without its second tile and split over input channels, the C = 130 case a single tile.
// Template dilations 1, 2 and 3 only, the ones the cases below run (5 and 9 take the runtime-dilation
// kernels, as 4 would here): each one compiled and never run costs a sixth of the sanitizer builds.
#define DSC_KERNEL_DILATIONS ((1 << 1) | (1 << 2) | (1 << 3))
#define DSC_TILE_GRID_Y 3
#define DSC_DWP_MAX_SPLITS 2
#define DSC_FWD_PAIR_BLOCKS 2
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

// Naive float64 backward from the stored activation act (y in training, out in eval), as the reference
// backend computes it; returns the largest error of the kernels' gradients relative to max(1, |ref|).
struct Grads {
  const std::vector<float>*dx, *dwd, *dwp, *dbias, *dgamma, *dbeta;
};
double backward_error(const Case& cs, const dsc::Problem& p, const std::vector<float>& x, const std::vector<float>& wd,
                      const std::vector<float>& wp, const std::vector<float>& act, const std::vector<float>& dout,
                      const Grads& g, bool train) {
  const int64_t N = cs.N, C = cs.C, K = cs.K, H = cs.H, W = cs.W, Ho = p.Ho, Wo = p.Wo, Q = Ho * Wo, M = p.M;
  auto yi = [&](int64_t n, int64_t k, int64_t q) { return dsc::at4(p.ys, n, k, q / Wo, q % Wo); };
  std::vector<double> dy(N * K * Q), sdz(K, 0.0), sdzy(K, 0.0), sy(K, 0.0), dbias(K, 0.0);
  for (int64_t k = 0; k < K; ++k) {
    const double r = train ? 1.0 / std::sqrt(double(p.var[k]) + p.eps) : 1.0, mu = train ? p.mean[k] : 0.0;
    const double gk = train ? p.gamma[k] : 1.0, bk = train ? p.beta[k] : 0.0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t q = 0; q < Q; ++q) {
        const double a = act[yi(n, k, q)], yh = train ? (a - mu) * r : 0.0, z = train ? gk * yh + bk : a;
        const double dz = z <= 0.0 ? 0.0 : dout[yi(n, k, q)];
        dy[(n * K + k) * Q + q] = dz;
        sdz[k] += dz;
        sdzy[k] += dz * yh;
        sy[k] += yh;
      }
    if (train)
      for (int64_t i = 0; i < N * Q; ++i) {
        const int64_t n = i / Q, q = i % Q;
        const double a = act[yi(n, k, q)], yh = (a - mu) * r;
        double& v = dy[(n * K + k) * Q + q];
        v = gk * r * (v - sdz[k] / M - yh * sdzy[k] / M);
        dbias[k] += v;
      }
    else
      dbias[k] = sdz[k];
  }
  std::vector<double> t(N * C * Q, 0.0), dt(N * C * Q, 0.0), dwd_r(C * 9, 0.0), dwp_r(K * C, 0.0),
      dx_r(N * C * H * W, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t ho = 0; ho < Ho; ++ho)
        for (int64_t wo = 0; wo < Wo; ++wo)
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
              const int64_t h = ho * cs.stride - cs.dil + i * cs.dil, w = wo * cs.stride - cs.dil + j * cs.dil;
              if (h >= 0 && h < H && w >= 0 && w < W)
                t[(n * C + c) * Q + ho * Wo + wo] += double(x[((n * C + c) * H + h) * W + w]) * wd[c * 9 + i * 3 + j];
            }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t q = 0; q < Q; ++q)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t c = 0; c < C; ++c) {
          dt[(n * C + c) * Q + q] += double(wp[k * C + c]) * dy[(n * K + k) * Q + q];
          dwp_r[k * C + c] += dy[(n * K + k) * Q + q] * t[(n * C + c) * Q + q];
        }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t ho = 0; ho < Ho; ++ho)
        for (int64_t wo = 0; wo < Wo; ++wo)
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
              const int64_t h = ho * cs.stride - cs.dil + i * cs.dil, w = wo * cs.stride - cs.dil + j * cs.dil;
              if (h < 0 || h >= H || w < 0 || w >= W) continue;
              const double gv = dt[(n * C + c) * Q + ho * Wo + wo];
              dwd_r[c * 9 + i * 3 + j] += gv * x[((n * C + c) * H + h) * W + w];
              dx_r[((n * C + c) * H + h) * W + w] += gv * wd[c * 9 + i * 3 + j];
            }
  double err = 0.0;
  auto cmp = [&](const std::vector<float>& got, auto at, const std::vector<double>& ref) {
    double e = 0.0, m = 1.0;
    for (size_t i = 0; i < ref.size(); ++i) {
      e = std::max(e, std::fabs(got[at(i)] - ref[i]));
      m = std::max(m, std::fabs(ref[i]));
    }
    err = std::max(err, e / m);
  };
  auto plain = [](size_t i) { return i; };
  cmp(
      *g.dx,
      [&](size_t i) {
        const int64_t w = i % W, h = (i / W) % H, c = (i / (W * H)) % C, n = i / (W * H * C);
        return size_t(dsc::at4(p.xs, n, c, h, w));
      },
      dx_r);
  cmp(*g.dwd, plain, dwd_r);
  cmp(*g.dwp, plain, dwp_r);
  cmp(*g.dbias, plain, dbias);
  if (train) {
    cmp(*g.dgamma, plain, sdzy);
    cmp(*g.dbeta, plain, sdz);
  }
  return err;
}

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
              if (h >= 0 && h < H && w >= 0 && w < W)
                t[c] += double(x[((n * C + c) * H + h) * W + w]) * wd[c * 9 + i * 3 + j];
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
  std::vector<float> ews(dsc::forward_ws_floats(p) + 1);
  dsc::forward<EmuPolicy, float>(p, ews.data());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t ho = 0; ho < Ho; ++ho)
        for (int64_t wo = 0; wo < Wo; ++wo) {
          const double e = std::max(0.0, yref[((n * K + k) * Ho + ho) * Wo + wo]);
          err = std::max(err, std::fabs(out_eval[dsc::at4(ys, n, k, ho, wo)] - e));
        }
  // train
  std::vector<float> ws(dsc::forward_ws_floats([&] {
    auto q = p;
    q.mode = dsc::kTrain;
    return q;
  }()));
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
  // backward (train, then eval), against naive float64 loops from the stored activation
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
  const Grads grads{&dx, &dwd, &dwp, &dbias, &dgamma, &dbeta};
  double berr = backward_error(cs, p, x, wd, wp, y, dout, grads, true);
  p.mode = dsc::kEval;
  p.act = out_eval.data();
  dsc::backward<EmuPolicy, float>(p, bws.data());
  berr = std::max(berr, backward_error(cs, p, x, wd, wp, out_eval, dout, grads, false));
  const bool finite = berr < 1e-3;

  std::printf(
      "case N=%lld C=%lld K=%lld H=%lld W=%lld s=%d d=%d cl=%d: forward max err %.3e, backward max "
      "rel err %.3e, in-place out identical %d\n",
      (long long)N, (long long)C, (long long)K, (long long)H, (long long)W, cs.stride, cs.dil, int(cs.cl), err, berr,
      int(inplace_same));
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
  // NCHW at stride 2 with a template dilation: dsconv_bwd_dx's parity classes (C = 12: a partial channel chunk).
  bad += run(Case{1, 12, 5, 9, 10, 2, 3, false});
  // K = 70: two K tiles in the forward and two K chunks in the dt kernel; d = 9: the gathered halo.
  bad += run(Case{1, 20, 70, 9, 10, 1, 9, false});
  // C = 70 on one small map: the input channels split over 2 blocks, summed by dsconv_fwd_reduce; K = 130:
  // dsconv_bwd_dt's output channels split in 2 (partial dt planes summed by dsconv_bwd_dx).
  bad += run(Case{1, 70, 130, 6, 7, 1, 2, true});
  // C = 130: dy stored once by bn_bwd_dy and read back by dsconv_bwd_dt and dsconv_bwd_dwp (plan.cuh dyws).
  bad += run(Case{1, 130, 9, 6, 6, 1, 2, false});
  // C = K = 128 on span tiles: dsconv_bwd_dwp in 128 x 128 blocks (plan.cuh dwide), 3 pixel stages.
  bad += run(Case{1, 128, 128, 6, 6, 1, 2, false});
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
