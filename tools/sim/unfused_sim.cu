// Simulation host program for the unfused baseline (fp32 NCHW): the kernel chain PyTorch runs for
// Sequential(dw, pw, bn, ReLU()) (tools/sim/baseline/), checked against the same float64 CPU reference as
// the fused program. Same command line as fused_sim.cu; also `--gemm M N K` for the SGEMM alone (the
// FMA-peak check of docs/benchmarks.md).
#include <cstdio>
#include <cstring>
#include <vector>

#include "sim_common.cuh"
#include "baseline/aten_like.cuh"
#include "baseline/sgemm.cuh"
#include "ref_block.h"

using namespace sim;

namespace {

constexpr int kSms = 28;  // GP102 (GTX 1080 Ti): the tile heuristic's target

// C = op(A) op(B) per batch entry (grid z) or summed over `reduce` entries; split-K when the plan says so.
template <bool TA, bool TB>
void gemm(int M, int N, int K, const float* A, int lda, long long sA, const float* B, int ldb, long long sB, float* C,
          long long sC, int batch, int reduce) {
  const base::GemmPlan plan = base::pick_plan(M, N, K, batch, reduce, kSms);
  const base::GemmTile t = plan.tile;
  const int split = plan.ksplit;
  if (split > 1 && batch != 1) {
    std::printf("split-K with batch %d is not supported\n", batch);
    std::exit(1);
  }
  DevBuf<float> part(split > 1 ? (size_t)split * M * N : 1);
  float* out = split > 1 ? part.p : C;
  const dim3 grid((N + t.bn - 1) / t.bn, (M + t.bm - 1) / t.bm, batch * split), block(t.bm * t.bn / 64);
  std::printf("[sim] gemm M=%d N=%d K=%d batch=%d reduce=%d tile %dx%d split-K %d\n", M, N, K, batch, reduce, t.bm,
              t.bn, split);
  bool launched = false;
#define SIM_GEMM_CASE(BM, BN)                                                                                         \
  if (!launched && t.bm == BM && t.bn == BN) {                                                                        \
    launch(base::sgemm_kernel<BM, BN, TA, TB>, grid, block, M, N, K, A, lda, sA, B, ldb, sB, out, sC, reduce, split); \
    launched = true;                                                                                                  \
  }
  SIM_GEMM_CASE(128, 128)
  SIM_GEMM_CASE(128, 64)
  SIM_GEMM_CASE(64, 64)
  SIM_GEMM_CASE(64, 32)
#undef SIM_GEMM_CASE
  if (!launched) {
    std::printf("no kernel for tile %dx%d\n", t.bm, t.bn);
    std::exit(1);
  }
  if (split > 1) {
    const long long mn = (long long)M * N;
    launch(base::splitk_reduce_kernel, dim3((unsigned)std::min<long long>((mn + 255) / 256, 4096)), dim3(256),
           (const float*)part.p, split, mn, C);
    sync();  // the workspace is freed on return
  }
}

int last_pow2(int n) {
  int p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

// The SGEMM alone: C[M, N] = A[M, K] B[K, N], checked on a sample of entries.
int run_gemm(int M, int N, int K) {
  Rng rng(11);
  std::vector<float> a((size_t)M * K), b((size_t)K * N);
  for (auto& v : a) v = (float)rng.uniform();
  for (auto& v : b) v = (float)rng.uniform();
  DevBuf<float> da(a.size()), db(b.size()), dc((size_t)M * N);
  da.put(a);
  db.put(b);
  gemm<false, false>(M, N, K, da.p, K, 0, db.p, N, 0, dc.p, 0, 1, 1);
  sync();
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
  std::printf("[check] gemm   M=%d N=%d K=%d sampled max_err=%.3g max|ref|=%.3g -> %s\n", M, N, K, err, mx,
              ok ? "ok" : "BAD");
  std::printf("unfused: 1 outputs checked -> %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

int run(const Args& a) {
  if (a.dtype != "f32" || a.layout != "nchw") {
    std::printf("error: the unfused baseline is fp32 NCHW only (got --dtype %s --layout %s)\n", a.dtype.c_str(),
                a.layout.c_str());
    return 2;
  }
  const int N = (int)a.N, C = (int)a.C, K = (int)a.K, H = (int)a.H, W = (int)a.W, s = a.stride, d = a.dil;
  const int Ho = (int)out_size(H, s), Wo = (int)out_size(W, s), P = Ho * Wo;
  const bool eval = a.mode == "eval", train = !eval;
  Rng rng(a.seed);
  RefIn in{Tensor4(N, C, H, W, false),
           std::vector<double>(C * 9),
           std::vector<double>((size_t)K * C),
           {},
           {},
           {},
           {},
           {},
           s,
           d,
           1e-5,
           K};
  fill<float>(in.x.v, rng, 1.0);
  fill<float>(in.wd, rng, 1.0 / 3.0);
  fill<float>(in.wp, rng, 1.0 / std::sqrt((double)C));
  in.gamma.resize(K);
  in.beta.resize(K);
  for (auto& v : in.gamma) v = (double)(float)(1.0 + 0.5 * rng.uniform());
  for (auto& v : in.beta) v = (double)(float)(0.5 * rng.uniform());
  std::vector<double> rmean(K), rvar(K);
  if (eval) {  // batch norm with running statistics: z = y scale + shift
    in.scale.resize(K);
    in.shift.resize(K);
    for (int k = 0; k < K; ++k) {
      rmean[k] = (double)(float)(0.1 * rng.uniform());
      rvar[k] = (double)(float)(0.5 + 0.4 * rng.uniform());
      in.scale[k] = in.gamma[k] / std::sqrt((double)(float)rvar[k] + (double)(float)in.eps);
      in.shift[k] = in.beta[k] - rmean[k] * in.scale[k];
    }
  }
  std::printf("[sim] unfused %s f32 nchw N=%d C=%d K=%d H=%d W=%d stride=%d dilation=%d\n", a.mode.c_str(), N, C, K, H,
              W, s, d);
  const size_t nx = (size_t)N * C * H * W, nt = (size_t)N * C * P, ny = (size_t)N * K * P;
  DevBuf<float> x(nx), wd(C * 9), wp((size_t)K * C), t(nt), y(ny), z(ny), out(ny), gamma(K), beta(K), mean(K), var(K);
  x.put(to_storage<float>(in.x));
  wd.put(to_storage<float>(in.wd));
  wp.put(to_storage<float>(in.wp));
  gamma.put(to_storage<float>(in.gamma));
  beta.put(to_storage<float>(in.beta));
  if (eval) {
    mean.put(to_storage<float>(rmean));
    var.put(to_storage<float>(rvar));
  }
  const float eps = (float)in.eps;
  dim3 eg, eb;
  base::bn_elemt_shape(N, K, P, eg, eb);

  Checker chk;
  const bool bwd_only = a.mode == "bwd";
  RefFwd f = a.check || (bwd_only && !dry_run()) ? ref_forward(in, train) : RefFwd{in.x, in.x, in.x, {}, {}};
  if (bwd_only) {  // backward alone (a step costs hours at full size): its forward inputs come from the host reference
    if (!dry_run()) {
      t.put(to_storage<float>(f.t));
      y.put(to_storage<float>(f.y));
      out.put(to_storage<float>(f.out));
      mean.put(std::vector<float>(f.mean.begin(), f.mean.end()));
      var.put(std::vector<float>(f.var.begin(), f.var.end()));
    }
  } else {
    // forward: depthwise, 1x1 (one GEMM per image), batch norm, ReLU
    launch(base::dw_fwd_kernel, dim3(base::aten_blocks((long long)nt)), dim3(base::kAtenThreads), x.p, t.p, wd.p,
           (int)nt, C, H, W, Ho, Wo, s, d, d);
    gemm<false, false>(K, P, C, wp.p, C, 0, t.p, P, (long long)C * P, y.p, (long long)K * P, N, 1);
    if (train) {
      const int tf = base::bn_num_threads(P);
      launch(base::bn_stats_kernel, dim3(K), dim3(tf, base::kBnMaxBlock / tf > 1 ? base::kBnMaxBlock / tf : 1), y.p,
             mean.p, var.p, N, K, P);
    }
    launch(base::bn_transform_kernel, eg, eb, y.p, z.p, mean.p, var.p, gamma.p, beta.p, eps, N, K, P);
    launch(base::relu_kernel, dim3(base::ew_blocks((int)ny)), dim3(base::kEwThreads), z.p, out.p, (int)ny);
    sync();
    if (a.check) {
      const Tensor4 like_y(N, K, Ho, Wo, false);
      chk.cmp("out", from_storage<float>(out.get(), like_y).v, f.out.v, Host<float>::tol);
      if (train) {
        chk.cmp("y", from_storage<float>(y.get(), like_y).v, f.y.v, Host<float>::tol);
        chk.cmp("mean", from_storage<float>(mean.get(), K), f.mean, Host<float>::tol, 1e-2);
        chk.cmp("var", from_storage<float>(var.get(), K), f.var, Host<float>::tol);
      }
    }
  }
  if (a.mode == "step" || bwd_only) {
    Tensor4 gout(N, K, Ho, Wo, false);
    fill<float>(gout.v, rng, 1.0);
    DevBuf<float> g(ny), dz(ny), dy(ny), dt(nt), dx(nx), dwd(C * 9), dwp((size_t)K * C), sdz(K), sdzx(K), dgam(K),
        dbet(K);
    g.put(to_storage<float>(gout));
    launch(base::relu_bwd_kernel, dim3(base::ew_blocks((int)ny)), dim3(base::kEwThreads), g.p, out.p, dz.p, (int)ny);
    const int by = std::min(last_pow2(N), base::kBnMaxBlock / 32);
    const int bx = std::min(std::max(base::bn_num_threads(P), 32), base::kBnMaxBlock / by);
    launch(base::bn_bwd_reduce_kernel, dim3(K), dim3(bx, by), y.p, dz.p, mean.p, var.p, eps, sdz.p, sdzx.p, dgam.p,
           dbet.p, N, K, P);
    launch(base::bn_bwd_elemt_kernel, eg, eb, y.p, dz.p, mean.p, var.p, eps, gamma.p, sdz.p, sdzx.p, dy.p,
           1.f / (float)((long long)N * P), N, K, P);
    // 1x1 backward: dt_n = Wp^T dy_n (per image); dWp = sum_n dy_n t_n^T
    gemm<true, false>(C, P, K, wp.p, C, 0, dy.p, P, (long long)K * P, dt.p, (long long)C * P, N, 1);
    gemm<false, true>(K, C, P, dy.p, P, (long long)K * P, t.p, P, (long long)C * P, dwp.p, 0, 1, N);
    // depthwise backward: weight gradient, then input gradient (ATen's order)
    launch(base::dw_bwd_weight_kernel, dim3(C * 9), dim3(std::min(N * 32, 256)), dt.p, x.p, dwd.p, N, C, H, W, Ho, Wo,
           s, d, d);
    if (s == 1)
      launch(base::dw_bwd_input_kernel<1>, dim3(base::aten_blocks((long long)nx)), dim3(base::kAtenThreads), dt.p, dx.p,
             wd.p, (int)nx, C, H, W, Ho, Wo, d, d);
    else
      launch(base::dw_bwd_input_kernel<2>, dim3(base::aten_blocks((long long)nx)), dim3(base::kAtenThreads), dt.p, dx.p,
             wd.p, (int)nx, C, H, W, Ho, Wo, d, d);
    sync();
    if (a.check) {
      // Reference backward from the device's forward values (as in fused_sim.cu).
      const Tensor4 like_y(N, K, Ho, Wo, false);
      f.y = from_storage<float>(y.get(), like_y);
      f.out = from_storage<float>(out.get(), like_y);
      f.mean = from_storage<float>(mean.get(), K);
      f.var = from_storage<float>(var.get(), K);
      const RefBwd b = ref_backward(in, f, gout, true);
      chk.cmp("dx", from_storage<float>(dx.get(), in.x).v, b.dx.v, Host<float>::tol);
      chk.cmp("dwd", from_storage<float>(dwd.get(), C * 9), b.dwd, Host<float>::tol);
      chk.cmp("dwp", from_storage<float>(dwp.get(), (size_t)K * C), b.dwp, Host<float>::tol);
      chk.cmp("dgamma", from_storage<float>(dgam.get(), K), b.dgamma, Host<float>::tol);
      chk.cmp("dbeta", from_storage<float>(dbet.get(), K), b.dbeta, Host<float>::tol);
    }
  }
  if (!a.check) {
    std::printf("unfused: outputs not checked (%s)\n", dry_run() ? "--dry: nothing ran" : "--no-check");
    return 0;
  }
  return chk.verdict("unfused");
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--gemm") == 0) {
      if (i + 3 >= argc) {
        std::printf("usage: %s --gemm M N K\n", argv[0]);
        return 2;
      }
      return run_gemm(std::atoi(argv[i + 1]), std::atoi(argv[i + 2]), std::atoi(argv[i + 3]));
    }
  const Args a = parse(argc, argv, "The unfused baseline (tools/sim/baseline), fp32 NCHW; or --gemm M N K.");
  if (a.plan_batch > 0) {  // (its GEMM tiles and split-K are picked per problem: no plan to borrow)
    std::printf("error: --plan-batch is for the fused program\n");
    return 2;
  }
  return run(a);
}
