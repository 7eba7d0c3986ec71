// Simulation host program for the fused kernels: drives the torch-free launchers of
// csrc/kernels/launch.cuh (dsc::forward / dsc::backward on a dsc::Problem) exactly as the extension's op
// layer does (csrc/binding/ops_impl.h), then checks every output against a float64 CPU reference.
// Build and run: tools/sim/README.md. Prints one "[sim] launch" line per kernel launch (the simulator's
// log names the kernels in the same order) and a final PASS / FAIL line.
#include <cstdio>
#include <vector>

#include "sim_common.cuh"
// The simulator runs this program's compute_75 PTX on a GP102 (Pascal) model whose register counts come from
// ptxas for sm_61: kernels with sm_61-specific launch bounds take them here too (csrc/kernels/backward.cuh).
#define DSC_TARGET_SM61 1
#include "kernels/launch.cuh"
#include "ref_block.h"

using namespace sim;

namespace {

dsc::Str4 str4(const Tensor4& t) { return dsc::Str4{t.sn(), t.sc(), t.sh(), t.sw()}; }

template <class T>
int run(const Args& a) {
  const bool cl = a.layout == "nhwc";
  const double tol = Host<T>::tol;
  Rng rng(a.seed);
  RefIn in{Tensor4(a.N, a.C, a.H, a.W, cl),
           std::vector<double>(a.C * 9),
           std::vector<double>(a.K * a.C),
           {},
           {},
           {},
           {},
           {},
           a.stride,
           a.dil,
           1e-5,
           a.K};
  fill<T>(in.x.v, rng, 1.0);
  fill<T>(in.wd, rng, 1.0 / 3.0);
  fill<T>(in.wp, rng, 1.0 / std::sqrt((double)a.C));
  const bool eval = a.mode == "eval";
  if (eval) {  // the eval op takes Wp and bias with the batch norm already folded in (block.py)
    in.bias.resize(a.K);
    for (auto& v : in.bias) v = (double)(float)(0.2 * rng.uniform());
  } else {  // training: no conv bias (the paper's convs have none), affine batch norm
    in.gamma.resize(a.K);
    in.beta.resize(a.K);
    for (auto& v : in.gamma) v = (double)(float)(1.0 + 0.5 * rng.uniform());
    for (auto& v : in.beta) v = (double)(float)(0.5 * rng.uniform());
  }

  dsc::Problem p{};
  dsc::set_geometry(p, a.N, a.C, a.K, a.H, a.W, a.stride, a.dil);
  if (a.plan_batch > 0) {
    // A plan probe: the kernel variants and cuts the launcher picks at batch plan_batch and input plan_hw
    // (the block's own size: paired forward tiles, no channel splits, dsconv_dw's groups of 8, dWp's wide
    // blocks, dy stored once), run on this smaller shape. Each block then does a block's work of that batch,
    // on fewer blocks: the counts the cost model scales to it. dWp's pixel splits and the reduction groups
    // follow the pixels, so they stay this shape's own.
    const int64_t hw = a.plan_hw > 0 ? a.plan_hw : a.H, ww = a.plan_hw > 0 ? a.plan_hw : a.W;
    dsc::Problem q{};
    dsc::set_geometry(q, a.plan_batch, a.C, a.K, hw, ww, a.stride, a.dil);
    if (q.span != p.span) {
      std::printf("--plan-batch %lld: the tile class differs from this shape's\n", (long long)a.plan_batch);
      return 2;
    }
    p.fpair = q.fpair;
    p.fsplit = q.fsplit;
    p.csplit = q.csplit;
    p.bsplit = q.bsplit;
    p.ksplit = q.ksplit;
    // dsconv_dw's channel groups (launch.cuh dw_grid_y): those of the plan batch's grid
    const int64_t threads2 = q.ft.ntiles * dsc::TileSpan64::BP * dsc::cdiv(q.C, 2);
    if (threads2 > dsc::dw_pair_threads()) dsc::dw_pair_threads() = 0;
    p.dwide = q.dwide;
    p.dyws = q.dyws;
    // dsconv_bwd_dx's tile groups: as many 8x8 input tiles per block as the plan batch gives a block (up to
    // all of this shape's), so that a block's set-up and its dWd reduction are paid once per block of tiles,
    // as there. On this shape's own cut each block took one tile, and the cost model carried the per-block
    // part (54% of b1's dx instructions, SIMULATED) to batch 32, whose blocks take 98 tiles each on b1.
    const int64_t tpb = dsc::cdiv(q.xtiles, q.xgroups);
    p.xgroups = dsc::cdiv(p.xtiles, tpb < p.xtiles ? tpb : p.xtiles);
  }
  p.cl = cl ? 1 : 0;
  p.eps = (float)in.eps;
  const int64_t Ho = p.Ho, Wo = p.Wo;
  std::printf("[sim] fused %s %s %s N=%lld C=%lld K=%lld H=%lld W=%lld stride=%d dilation=%d\n", a.mode.c_str(),
              Host<T>::name, a.layout.c_str(), (long long)a.N, (long long)a.C, (long long)a.K, (long long)a.H,
              (long long)a.W, a.stride, a.dil);

  DevBuf<T> dx_in(in.x.size()), dwd(a.C * 9), dwp(a.K * a.C);
  dx_in.put(to_storage<T>(in.x));
  dwd.put(to_storage<T>(in.wd));
  dwp.put(to_storage<T>(in.wp));
  DevBuf<float> dbias(a.K), dgamma(a.K), dbeta(a.K), dmean(a.K), dvar(a.K);
  if (!in.bias.empty()) dbias.put(std::vector<float>(in.bias.begin(), in.bias.end()));
  if (!in.gamma.empty()) {
    dgamma.put(std::vector<float>(in.gamma.begin(), in.gamma.end()));
    dbeta.put(std::vector<float>(in.beta.begin(), in.beta.end()));
  }
  p.x = dx_in.p;
  p.xs = str4(in.x);
  p.wd = dwd.p;
  p.wp = dwp.p;
  p.bias = in.bias.empty() ? nullptr : dbias.p;
  p.gamma = in.gamma.empty() ? nullptr : dgamma.p;
  p.beta = in.gamma.empty() ? nullptr : dbeta.p;
  const Tensor4 like_y(a.N, a.K, Ho, Wo, cl);
  DevBuf<T> dy_buf(like_y.size()), dout_buf(like_y.size());
  p.y = dy_buf.p;
  p.ys = str4(like_y);
  p.out = dout_buf.p;
  p.os = str4(like_y);
  p.mean = dmean.p;
  p.var = dvar.p;

  Checker chk;
  RefFwd f = a.check || (a.mode == "bwd" && !dry_run()) ? ref_forward(in, !eval) : RefFwd{in.x, in.x, in.x, {}, {}};
  if (a.mode == "eval" || a.mode == "train" || a.mode == "step") {
    p.mode = eval ? dsc::kEval : dsc::kTrain;
    DevBuf<float> ws(dsc::forward_ws_floats(p));
    dsc::forward<SimPolicy, T>(p, ws.p);
    sync();
    if (a.check) {
      chk.cmp("out", from_storage<T>(dout_buf.get(), like_y).v, f.out.v, tol);
      if (!eval) {
        chk.cmp("y", from_storage<T>(dy_buf.get(), like_y).v, f.y.v, tol);
        chk.cmp("mean", from_storage<float>(dmean.get(), a.K), f.mean, tol, 1e-2);
        chk.cmp("var", from_storage<float>(dvar.get(), a.K), f.var, tol);
      }
    }
  }
  if (a.mode == "step" || a.mode == "bwd") {
    if (a.mode == "bwd") {  // backward alone: its forward inputs come from the host reference
      dy_buf.put(to_storage<T>(f.y));
      dmean.put(std::vector<float>(f.mean.begin(), f.mean.end()));
      dvar.put(std::vector<float>(f.var.begin(), f.var.end()));
    }
    // The reference backward starts from what the device holds (y rounded to T, its own mean and var),
    // so that rounding of y moves no ReLU boundary between the two.
    if (a.check) f.y = from_storage<T>(dy_buf.get(), like_y);
    if (a.check) f.mean = from_storage<float>(dmean.get(), a.K);
    if (a.check) f.var = from_storage<float>(dvar.get(), a.K);
    for (int64_t k = 0; a.check && k < a.K; ++k) {
      const double r = 1.0 / std::sqrt(f.var[k] + in.eps);
      for (int64_t n = 0; n < a.N; ++n)
        for (int64_t q = 0; q < Ho * Wo; ++q) {
          const int64_t i = (n * a.K + k) * Ho * Wo + q;
          const double z = (f.y.v[i] - f.mean[k]) * r * in.gamma[k] + in.beta[k];
          f.out.v[i] = z < 0 ? 0.0 : z;
        }
    }
    Tensor4 gout(a.N, a.K, Ho, Wo, cl);
    fill<T>(gout.v, rng, 1.0);
    DevBuf<T> g(gout.size()), ddx(in.x.size()), dgwd(a.C * 9), dgwp(a.K * a.C);
    DevBuf<float> gb(a.K), gg(a.K), gbe(a.K);
    g.put(to_storage<T>(gout));
    p.mode = dsc::kTrain;
    p.dout = g.p;
    p.dos = str4(gout);
    p.act = dy_buf.p;
    p.as = str4(like_y);
    p.dx = ddx.p;
    p.dwd = dgwd.p;
    p.dwp = dgwp.p;
    p.dbias = gb.p;
    p.dgamma = gg.p;
    p.dbeta = gbe.p;
    DevBuf<float> ws(dsc::backward_ws_floats(p));
    dsc::backward<SimPolicy, T>(p, ws.p);
    sync();
    if (a.check) {
      const RefBwd b = ref_backward(in, f, gout, true);
      chk.cmp("dx", from_storage<T>(ddx.get(), in.x).v, b.dx.v, tol);
      chk.cmp("dwd", from_storage<T>(dgwd.get(), a.C * 9), b.dwd, tol);
      chk.cmp("dwp", from_storage<T>(dgwp.get(), a.K * a.C), b.dwp, tol);
      chk.cmp("dgamma", from_storage<float>(gg.get(), a.K), b.dgamma, tol);
      chk.cmp("dbeta", from_storage<float>(gbe.get(), a.K), b.dbeta, tol);
      double floor = 0;
      for (double v : b.dbeta) floor = std::fmax(floor, std::fabs(v));
      chk.cmp("dbias", from_storage<float>(gb.get(), a.K), b.dbias, tol, floor);
    }
  }
  if (!a.check) {
    std::printf("fused: outputs not checked (%s)\n", dry_run() ? "--dry: nothing ran" : "--no-check");
    return 0;
  }
  return chk.verdict("fused");
}

}  // namespace

// One storage type per binary (SIM_DTYPE 0 f32, 1 f16, 2 bf16): the simulator parses the PTX of every
// kernel in the binary at start-up, and GPGPU-Sim's PTX parser rejects the bf16 conversions' PTX.
#ifndef SIM_DTYPE
#define SIM_DTYPE 0
#endif
#if SIM_DTYPE == 0
using SimT = float;
#elif SIM_DTYPE == 1
using SimT = __half;
#else
using SimT = __nv_bfloat16;
#endif

int main(int argc, char** argv) {
  const Args a = parse(argc, argv, "The fused kernels of csrc/kernels (launch.cuh).");
  if (a.dtype != Host<SimT>::name) {
    std::printf("error: this binary is built for --dtype %s (SIM_DTYPE), got --dtype %s\n", Host<SimT>::name,
                a.dtype.c_str());
    return 2;
  }
  return run<SimT>(a);
}
