// Torch side of the op family, shared by the CUDA extension (csrc/native_cuda.cpp) and the CPU
// emulator extension (csrc/emu/emu_ext.cpp): argument checks, outputs, workspace, tensor -> Problem.
// `Tr` supplies: Policy (launch policy), Half / BF16 (device storage types), Guard (device guard),
// kDevice (c10::DeviceType) and kPrefix (error message prefix).
#pragma once

// The tensor class and the six ATen functions used, not <ATen/ATen.h> (whose every-operator headers, and the
// Tensor operators' through them, were most of a binding unit's compile time): arithmetic is spelt as methods.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "binding/schemas.h"
#include "kernels/plan.cuh"

namespace dsc_bind {

using at::Tensor;
using std::optional;

template <class Tr>
struct Ops {
  static bool channels_last(const Tensor& x) {
    return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  }
  static at::MemoryFormat format(const Tensor& x) {
    return channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  }
  static dsc::Str4 strides(const Tensor& t) { return dsc::Str4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

  static void check_x(const Tensor& x, int64_t stride, int64_t dilation) {
    TORCH_CHECK(x.dim() == 4, Tr::kPrefix, "x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
    TORCH_CHECK(x.device().type() == Tr::kDevice, Tr::kPrefix, "x must be on ", Tr::kDevice, ", got ", x.device());
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
                Tr::kPrefix, "x must be float32, float16 or bfloat16, got ", x.scalar_type());
    TORCH_CHECK(x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast), Tr::kPrefix,
                "x must be contiguous in NCHW or channels_last; got strides ", x.strides());
    TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, Tr::kPrefix, "x must have non-zero height and width");
    TORCH_CHECK(stride == 1 || stride == 2, Tr::kPrefix, "stride must be 1 or 2, got ", stride);
    TORCH_CHECK(dilation >= 1 && dilation <= (1 << 20), Tr::kPrefix,
                "dilation must be between 1 and 1048576 (2^20), got ", dilation);
    // The kernels address within one image (and tile) with 32-bit offsets and number pixels with 32 bits;
    // whole tensors may exceed 2^31 elements (64-bit image bases).
    TORCH_CHECK(x.size(1) * x.size(2) * x.size(3) < (int64_t(1) << 31), Tr::kPrefix,
                "x must have fewer than 2^31 elements per image (C*H*W), got ", x.size(1) * x.size(2) * x.size(3));
    TORCH_CHECK(x.size(0) * ((x.size(2) - 1) / stride + 1) * ((x.size(3) - 1) / stride + 1) < (int64_t(1) << 31),
                Tr::kPrefix, "the output must have fewer than 2^31 pixels (N*Ho*Wo)");
  }
  static void check_weights(const Tensor& x, const Tensor& dw, const Tensor& pw) {
    const int64_t C = x.size(1);
    TORCH_CHECK(dw.dim() == 4 && dw.size(0) == C && dw.size(1) == 1 && dw.size(2) == 3 && dw.size(3) == 3, Tr::kPrefix,
                "dw_weight must have shape (", C, ", 1, 3, 3), got ", dw.sizes());
    TORCH_CHECK(pw.dim() == 2 && pw.size(1) == C, Tr::kPrefix, "pw_weight must have shape (K, ", C, "), got ",
                pw.sizes());
    for (auto [name, t] : {std::pair<const char*, const Tensor*>{"dw_weight", &dw}, {"pw_weight", &pw}}) {
      TORCH_CHECK(t->scalar_type() == x.scalar_type(), Tr::kPrefix, name, " must have x's dtype ", x.scalar_type(),
                  ", got ", t->scalar_type());
      TORCH_CHECK(t->device() == x.device(), Tr::kPrefix, name, " must be on x's device ", x.device(), ", got ",
                  t->device());
      TORCH_CHECK(t->is_contiguous(), Tr::kPrefix, name, " must be contiguous");
    }
  }
  static void check_channel(const char* name, const optional<Tensor>& t, const Tensor& x, int64_t K) {
    if (!t.has_value()) return;
    TORCH_CHECK(t->dim() == 1 && t->size(0) == K, Tr::kPrefix, name, " must have shape (", K, ",), got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == at::kFloat, Tr::kPrefix, name, " must be float32, got ", t->scalar_type());
    TORCH_CHECK(t->device() == x.device(), Tr::kPrefix, name, " must be on x's device ", x.device(), ", got ",
                t->device());
  }
  // The inputs the training forward and backward share; returns K.
  static int64_t check_train(const Tensor& x, const Tensor& dw, const Tensor& pw, const optional<Tensor>& bias,
                             const optional<Tensor>& bn_weight, const optional<Tensor>& bn_bias, int64_t stride,
                             int64_t dilation) {
    check_x(x, stride, dilation);
    check_weights(x, dw, pw);
    const int64_t K = pw.size(0);
    check_channel("bias", bias, x, K);
    check_channel("bn_weight", bn_weight, x, K);
    check_channel("bn_bias", bn_bias, x, K);
    TORCH_CHECK(bn_weight.has_value() == bn_bias.has_value(), Tr::kPrefix,
                "bn_weight and bn_bias must be given together or both be None");
    return K;
  }
  static void check_stats(const Tensor& mean, const Tensor& var, const Tensor& x, int64_t K) {
    check_channel("mean", mean, x, K);
    check_channel("var", var, x, K);
  }
  // [K] vectors may be views; a contiguous copy of K floats is cheap (activations are never copied).
  static optional<Tensor> contig(const optional<Tensor>& t) {
    return t.has_value() ? optional<Tensor>(t->contiguous()) : std::nullopt;
  }
  static void check_act(const char* name, const Tensor& t, const Tensor& x, at::IntArrayRef shape) {
    TORCH_CHECK(t.sizes() == shape, Tr::kPrefix, name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), Tr::kPrefix, name, " must have x's dtype ", x.scalar_type(),
                ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), Tr::kPrefix, name, " must be on x's device ", x.device(), ", got ",
                t.device());
  }

  static dsc::Problem problem(const Tensor& x, const Tensor& dw, const Tensor& pw, int64_t stride, int64_t dilation) {
    dsc::Problem p{};
    dsc::set_geometry(p, x.size(0), x.size(1), pw.size(0), x.size(2), x.size(3), static_cast<int>(stride),
                      static_cast<int>(dilation));
    p.cl = channels_last(x) ? 1 : 0;
    p.x = x.data_ptr();
    p.xs = strides(x);
    p.wd = dw.data_ptr();
    p.wp = pw.data_ptr();
    return p;
  }
  static const float* ptr(const optional<Tensor>& t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }

  static Tensor act_like(const Tensor& x, int64_t K, const dsc::Problem& p) {
    return at::empty({p.N, K, p.Ho, p.Wo}, x.options().memory_format(format(x)));
  }
  static Tensor workspace(const Tensor& x, int64_t floats) {
    return at::empty({floats > 0 ? floats : 1}, x.options().dtype(at::kFloat));
  }

  template <class F>
  static void by_dtype(const Tensor& x, F&& f) {
    switch (x.scalar_type()) {
      case at::kFloat:
        f(float{});
        break;
      case at::kHalf:
        f(typename Tr::Half{});
        break;
      case at::kBFloat16:
        f(typename Tr::BF16{});
        break;
      default:
        TORCH_CHECK(false, Tr::kPrefix, "unsupported dtype ", x.scalar_type());
    }
  }

  static Tensor forward_eval(const Tensor& x, const Tensor& dw, const Tensor& pw, const Tensor& bias, int64_t stride,
                             int64_t dilation) {
    check_x(x, stride, dilation);
    check_weights(x, dw, pw);
    check_channel("bias", bias, x, pw.size(0));
    typename Tr::Guard guard(x.device());
    dsc::Problem p = problem(x, dw, pw, stride, dilation);
    Tensor out = act_like(x, p.K, p);
    if (out.numel() == 0) return out;
    if (x.size(1) == 0) return out.copy_(bias.view({1, -1, 1, 1}).expand_as(out)).relu_();
    p.mode = dsc::kEval;
    const Tensor bias_c = bias.contiguous();
    p.bias = bias_c.data_ptr<float>();
    p.out = out.data_ptr();
    p.os = strides(out);
    Tensor ws = workspace(x, dsc::forward_ws_floats(p));
    by_dtype(x, [&](auto t) { dsc::forward<typename Tr::Policy, decltype(t)>(p, ws.data_ptr<float>()); });
    return out;
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> forward_train(const Tensor& x, const Tensor& dw, const Tensor& pw,
                                                                  const optional<Tensor>& bias,
                                                                  const optional<Tensor>& bn_weight,
                                                                  const optional<Tensor>& bn_bias, int64_t stride,
                                                                  int64_t dilation, double eps, bool save_y) {
    const int64_t K = check_train(x, dw, pw, bias, bn_weight, bn_bias, stride, dilation);
    typename Tr::Guard guard(x.device());
    dsc::Problem p = problem(x, dw, pw, stride, dilation);
    TORCH_CHECK(p.M > 1, Tr::kPrefix, "training needs more than 1 value per channel, got N*Ho*Wo = ", p.M);
    TORCH_CHECK(x.size(1) > 0 && K > 0, Tr::kPrefix, "x must have C > 0 and pw_weight K > 0 in training");
    // Recompute mode keeps no y, so the conv pass writes y into out's storage and the normalize pass
    // (each element read, then written, by one thread) turns it into out in place: one activation-sized
    // allocation at the forward's peak instead of two.
    Tensor out = act_like(x, K, p), y = save_y ? act_like(x, K, p) : out;
    Tensor mean = at::empty({K}, x.options().dtype(at::kFloat)), var = at::empty_like(mean);
    p.mode = dsc::kTrain;
    const auto bias_c = contig(bias), gamma_c = contig(bn_weight), beta_c = contig(bn_bias);
    p.bias = ptr(bias_c);
    p.gamma = ptr(gamma_c);
    p.beta = ptr(beta_c);
    p.eps = static_cast<float>(eps);
    p.y = y.data_ptr();
    p.ys = strides(y);
    p.out = out.data_ptr();
    p.os = strides(out);
    p.mean = mean.data_ptr<float>();
    p.var = var.data_ptr<float>();
    Tensor ws = workspace(x, dsc::forward_ws_floats(p));
    by_dtype(x, [&](auto t) { dsc::forward<typename Tr::Policy, decltype(t)>(p, ws.data_ptr<float>()); });
    return {out, save_y ? y : x.new_empty({0}), mean, var};
  }

  // y = pw(dw(x)) + bias into dst (recompute mode): the forward kernel in y-only mode.
  static void rebuild_y(const dsc::Problem& p, const Tensor& x, const Tensor& dst) {
    dsc::Problem q = p;
    q.mode = dsc::kYOnly;
    q.y = dst.data_ptr();
    q.ys = strides(dst);
    Tensor qws = workspace(x, dsc::forward_ws_floats(q));
    by_dtype(x, [&](auto t) { dsc::forward<typename Tr::Policy, decltype(t)>(q, qws.data_ptr<float>()); });
  }

  // The convolution gradients output_mask asks for, their pointers in p and the others' bits in p.unwanted (the
  // launcher skips their work); an unwanted one is an empty tensor of its dtype.
  static std::tuple<Tensor, Tensor, Tensor> conv_grads(dsc::Problem& p, const Tensor& x, const Tensor& dw,
                                                       const Tensor& pw, std::array<bool, 3> output_mask) {
    // dWd without dx still needs somewhere for dsconv_bwd_dx to store dx: a scratch tensor, dropped on return.
    Tensor dx =
        output_mask[0] || output_mask[1] ? at::empty_like(x, x.options().memory_format(format(x))) : x.new_empty({0});
    Tensor ddw = output_mask[1] ? at::empty_like(dw) : dw.new_empty({0});
    Tensor dpw = output_mask[2] ? at::empty_like(pw) : pw.new_empty({0});
    p.dx = output_mask[0] || output_mask[1] ? dx.data_ptr() : nullptr;
    p.dwd = output_mask[1] ? ddw.data_ptr() : nullptr;
    p.dwp = output_mask[2] ? dpw.data_ptr() : nullptr;
    p.unwanted =
        (output_mask[0] ? 0 : dsc::kGradX) | (output_mask[1] ? 0 : dsc::kGradDw) | (output_mask[2] ? 0 : dsc::kGradPw);
    return {dx, ddw, dpw};
  }

  // Shared tail of both backward ops: p.mode and p.act / p.as set by the caller.
  static std::tuple<Tensor, Tensor, Tensor> run_backward(dsc::Problem& p, const Tensor& x, const Tensor& dw,
                                                         const Tensor& pw, const Tensor& grad_out, Tensor& dbias,
                                                         Tensor& dgamma, Tensor& dbeta,
                                                         std::array<bool, 3> output_mask) {
    auto [dx, ddw, dpw] = conv_grads(p, x, dw, pw, output_mask);
    p.dout = grad_out.data_ptr();
    p.dos = strides(grad_out);
    p.dbias = dbias.data_ptr<float>();
    p.dgamma = dgamma.data_ptr<float>();
    p.dbeta = dbeta.data_ptr<float>();
    Tensor ws = workspace(x, dsc::backward_ws_floats(p));
    by_dtype(x, [&](auto t) { dsc::backward<typename Tr::Policy, decltype(t)>(p, ws.data_ptr<float>()); });
    return {output_mask[0] ? dx : x.new_empty({0}), ddw, dpw};  // (a scratch dx is freed after the launch)
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> backward_eval(const Tensor& grad_out, const Tensor& out,
                                                                  const Tensor& x, const Tensor& dw, const Tensor& pw,
                                                                  int64_t stride, int64_t dilation,
                                                                  std::array<bool, 3> output_mask) {
    check_x(x, stride, dilation);
    check_weights(x, dw, pw);
    typename Tr::Guard guard(x.device());
    dsc::Problem p = problem(x, dw, pw, stride, dilation);
    const std::vector<int64_t> shape{p.N, p.K, p.Ho, p.Wo};
    check_act("grad_out", grad_out, x, shape);
    check_act("out", out, x, shape);
    Tensor dbias = at::zeros({p.K}, x.options().dtype(at::kFloat));
    if (x.numel() == 0 || p.K == 0)
      return {output_mask[0] ? at::zeros_like(x) : x.new_empty({0}),
              output_mask[1] ? at::zeros_like(dw) : dw.new_empty({0}),
              output_mask[2] ? at::zeros_like(pw) : pw.new_empty({0}),
              p.K == 0 || p.N == 0
                  ? dbias
                  : at::where(out.le(0), at::zeros({}, dbias.options()), grad_out.to(at::kFloat)).sum({0, 2, 3})};
    Tensor dgamma = at::empty_like(dbias), dbeta = at::empty_like(dbias);
    p.mode = dsc::kEval;
    p.act = out.data_ptr();
    p.as = strides(out);
    auto [dx, ddw, dpw] = run_backward(p, x, dw, pw, grad_out, dbias, dgamma, dbeta, output_mask);
    return {dx, ddw, dpw, dbias};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_train(
      const Tensor& grad_out, const Tensor& x, const Tensor& dw, const Tensor& pw, const optional<Tensor>& bias,
      const optional<Tensor>& bn_weight, const optional<Tensor>& bn_bias, const optional<Tensor>& y, const Tensor& mean,
      const Tensor& var, int64_t stride, int64_t dilation, double eps, std::array<bool, 3> output_mask) {
    const int64_t K = check_train(x, dw, pw, bias, bn_weight, bn_bias, stride, dilation);
    check_stats(mean, var, x, K);
    typename Tr::Guard guard(x.device());
    dsc::Problem p = problem(x, dw, pw, stride, dilation);
    TORCH_CHECK(p.M > 1 && x.size(1) > 0 && K > 0, Tr::kPrefix, "backward_train needs N*Ho*Wo > 1, C > 0 and K > 0");
    const std::vector<int64_t> shape{p.N, K, p.Ho, p.Wo};
    check_act("grad_out", grad_out, x, shape);
    const auto bias_c = contig(bias), gamma_c = contig(bn_weight), beta_c = contig(bn_bias);
    const Tensor mean_c = mean.contiguous(), var_c = var.contiguous();
    p.bias = ptr(bias_c);
    p.gamma = ptr(gamma_c);
    p.beta = ptr(beta_c);
    p.eps = static_cast<float>(eps);
    p.mean = const_cast<float*>(mean_c.data_ptr<float>());
    p.var = const_cast<float*>(var_c.data_ptr<float>());
    Tensor y_use;
    if (y.has_value() && y->numel() > 0) {
      check_act("y", *y, x, shape);
      y_use = *y;
    } else {
      // Recompute mode: rebuild y = pw(dw(x)) + bias with the forward kernel (depthwise output still
      // never leaves the chip); only this temporary lives for the duration of the backward.
      y_use = act_like(x, K, p);
      rebuild_y(p, x, y_use);
    }
    Tensor dbias = at::empty({K}, x.options().dtype(at::kFloat));
    Tensor dgamma = at::empty_like(dbias), dbeta = at::empty_like(dbias);
    p.mode = dsc::kTrain;
    p.act = y_use.data_ptr();
    p.as = strides(y_use);
    auto [dx, ddw, dpw] = run_backward(p, x, dw, pw, grad_out, dbias, dgamma, dbeta, output_mask);
    return {dx, ddw, dpw, dbias, dgamma, dbeta};
  }

  // -- the split passes of synchronised batch norm (fused_dsconv/distributed.py merges the per-channel
  // values over processes between them; the op layer handles empty inputs before these are called) --

  // Pass 1: y (a temporary when !save_y: dsconv_fwd always stores it) and its batch statistics.
  static std::tuple<Tensor, Tensor, Tensor> forward_stats(const Tensor& x, const Tensor& dw, const Tensor& pw,
                                                          const optional<Tensor>& bias, int64_t stride,
                                                          int64_t dilation, bool save_y) {
    const int64_t K = check_train(x, dw, pw, bias, std::nullopt, std::nullopt, stride, dilation);
    typename Tr::Guard guard(x.device());
    dsc::Problem p = problem(x, dw, pw, stride, dilation);
    TORCH_CHECK(p.M > 0 && x.size(1) > 0 && K > 0, Tr::kPrefix, "forward_stats needs N*Ho*Wo > 0, C > 0 and K > 0");
    Tensor y = act_like(x, K, p);
    Tensor mean = at::empty({K}, x.options().dtype(at::kFloat)), var = at::empty_like(mean);
    const auto bias_c = contig(bias);
    p.mode = dsc::kTrain;
    p.bias = ptr(bias_c);
    p.eps = 1.f;  // bn_stats also writes bn_relu's scale / shift, unused here: any eps keeps them finite
    p.y = y.data_ptr();
    p.ys = strides(y);
    p.mean = mean.data_ptr<float>();
    p.var = var.data_ptr<float>();
    Tensor ws = workspace(x, dsc::forward_ws_floats(p));
    by_dtype(x, [&](auto t) { dsc::forward_stats<typename Tr::Policy, decltype(t)>(p, ws.data_ptr<float>()); });
    return {save_y ? y : x.new_empty({0}), mean, var};
  }

  // Pass 2: out = relu((y - mean) a + beta) with the given statistics; y absent: rebuilt into out's storage
  // and normalised in place (as forward_train's recompute mode).
  static Tensor forward_normalize(const Tensor& x, const Tensor& dw, const Tensor& pw, const optional<Tensor>& bias,
                                  const optional<Tensor>& y, const Tensor& mean, const Tensor& var,
                                  const optional<Tensor>& bn_weight, const optional<Tensor>& bn_bias, int64_t stride,
                                  int64_t dilation, double eps) {
    const int64_t K = check_train(x, dw, pw, bias, bn_weight, bn_bias, stride, dilation);
    check_stats(mean, var, x, K);
    typename Tr::Guard guard(x.device());
    dsc::Problem p = problem(x, dw, pw, stride, dilation);
    TORCH_CHECK(p.M > 0 && x.size(1) > 0 && K > 0, Tr::kPrefix, "forward_normalize needs N*Ho*Wo > 0, C > 0 and K > 0");
    Tensor out = act_like(x, K, p), src = out;
    const auto bias_c = contig(bias);
    p.bias = ptr(bias_c);
    if (y.has_value() && y->numel() > 0) {
      check_act("y", *y, x, {p.N, K, p.Ho, p.Wo});
      src = y->contiguous(format(x));  // bn_relu reads y and writes out as rows of one layout
    } else {
      rebuild_y(p, x, out);
    }
    p.mode = dsc::kTrain;
    p.y = src.data_ptr();
    p.ys = strides(src);
    p.out = out.data_ptr();
    p.os = strides(out);
    // bn_relu's per-channel scale a = gamma / sqrt(var + eps) and shift beta - mean a, where bn_stats puts them.
    Tensor ws = workspace(x, dsc::fwd_ss_offset(p) + 2 * K);
    Tensor a = var.to(at::kFloat).add(eps).rsqrt();
    if (bn_weight.has_value()) a = a.mul(*bn_weight);
    Tensor b = mean.neg().mul(a);
    if (bn_bias.has_value()) b = b.add(*bn_bias);
    ws.narrow(0, dsc::fwd_ss_offset(p), K).copy_(a);
    ws.narrow(0, dsc::fwd_ss_offset(p) + K, K).copy_(b);
    by_dtype(x, [&](auto t) { dsc::normalize<typename Tr::Policy, decltype(t)>(p, ws.data_ptr<float>()); });
    return out;
  }

  // The geometry bn_bwd_reduce / finalize need is y's alone: a stride-1 problem of y's size.
  static dsc::Problem act_problem(const Tensor& y) {
    dsc::Problem p{};
    dsc::set_geometry(p, y.size(0), 1, y.size(1), y.size(2), y.size(3), 1, 1);
    p.cl = channels_last(y) ? 1 : 0;
    return p;
  }

  // (sum dz, sum dz yhat) over this call's pixels: bn_bwd_reduce + bn_bwd_finalize, whose dbeta / dgamma they
  // are (an affine-free BN runs as gamma 1, beta 0: the same z, and finalize then writes both sums).
  static std::tuple<Tensor, Tensor> backward_reduce(const Tensor& grad_out, const Tensor& y, const Tensor& mean,
                                                    const Tensor& var, const optional<Tensor>& bn_weight,
                                                    const optional<Tensor>& bn_bias, double eps) {
    TORCH_CHECK(y.dim() == 4, Tr::kPrefix, "y must be 4-D [N, K, Ho, Wo], got ", y.dim(), "-D");
    TORCH_CHECK(y.device().type() == Tr::kDevice, Tr::kPrefix, "y must be on ", Tr::kDevice, ", got ", y.device());
    TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kHalf || y.scalar_type() == at::kBFloat16,
                Tr::kPrefix, "y must be float32, float16 or bfloat16, got ", y.scalar_type());
    TORCH_CHECK(y.is_contiguous() || y.is_contiguous(at::MemoryFormat::ChannelsLast), Tr::kPrefix,
                "y must be contiguous in NCHW or channels_last");
    const int64_t K = y.size(1);
    check_channel("bn_weight", bn_weight, y, K);
    check_channel("bn_bias", bn_bias, y, K);
    check_stats(mean, var, y, K);
    TORCH_CHECK(bn_weight.has_value() == bn_bias.has_value(), Tr::kPrefix,
                "bn_weight and bn_bias must be given together or both be None");
    check_act("grad_out", grad_out, y, y.sizes());
    typename Tr::Guard guard(y.device());
    dsc::Problem p = act_problem(y);
    TORCH_CHECK(p.M > 0 && K > 0, Tr::kPrefix, "backward_reduce needs N*Ho*Wo > 0 and K > 0");
    const Tensor gamma_c = bn_weight.has_value() ? bn_weight->contiguous() : at::ones_like(mean, at::kFloat);
    const Tensor beta_c = bn_bias.has_value() ? bn_bias->contiguous() : at::zeros_like(mean, at::kFloat);
    const Tensor mean_c = mean.contiguous(), var_c = var.contiguous();
    Tensor sum_dz = at::empty({K}, y.options().dtype(at::kFloat));
    Tensor sum_dz_yhat = at::empty_like(sum_dz), dbias = at::empty_like(sum_dz);
    p.mode = dsc::kTrain;
    p.gamma = gamma_c.data_ptr<float>();
    p.beta = beta_c.data_ptr<float>();
    p.eps = static_cast<float>(eps);
    p.mean = const_cast<float*>(mean_c.data_ptr<float>());
    p.var = const_cast<float*>(var_c.data_ptr<float>());
    p.dout = grad_out.data_ptr();
    p.dos = strides(grad_out);
    p.act = y.data_ptr();
    p.as = strides(y);
    p.dbias = dbias.data_ptr<float>();
    p.dgamma = sum_dz_yhat.data_ptr<float>();
    p.dbeta = sum_dz.data_ptr<float>();
    Tensor ws = workspace(y, dsc::bwd_ws(p).coef + 8 * K);  // the partials and the coefficients only
    by_dtype(y, [&](auto t) { dsc::backward_sums<typename Tr::Policy, decltype(t)>(p, ws.data_ptr<float>()); });
    return {sum_dz, sum_dz_yhat};
  }

  // dx, dwd, dwp through dy = A (dz - mean_dz - yhat mean_dz_yhat) (A = gamma r, r = 1 / sqrt(var + eps)): dy's
  // coefficients (mu, A, beta, b2 = -A r mean_dz_yhat, c2 = -A mean_dz) where bn_bwd_finalize puts them, then
  // the backward's convolution stages.
  static std::tuple<Tensor, Tensor, Tensor> backward_apply(const Tensor& grad_out, const Tensor& x, const Tensor& dw,
                                                           const Tensor& pw, const Tensor& y, const Tensor& mean,
                                                           const Tensor& var, const optional<Tensor>& bn_weight,
                                                           const optional<Tensor>& bn_bias, const Tensor& mean_dz,
                                                           const Tensor& mean_dz_yhat, int64_t stride, int64_t dilation,
                                                           double eps, std::array<bool, 3> output_mask) {
    const int64_t K = check_train(x, dw, pw, std::nullopt, bn_weight, bn_bias, stride, dilation);
    for (auto [name, t] : {std::pair<const char*, const Tensor*>{"mean", &mean},
                           {"var", &var},
                           {"mean_dz", &mean_dz},
                           {"mean_dz_yhat", &mean_dz_yhat}})
      check_channel(name, *t, x, K);
    typename Tr::Guard guard(x.device());
    dsc::Problem p = problem(x, dw, pw, stride, dilation);
    TORCH_CHECK(p.M > 0 && x.size(1) > 0 && K > 0, Tr::kPrefix, "backward_apply needs N*Ho*Wo > 0, C > 0 and K > 0");
    const std::vector<int64_t> shape{p.N, K, p.Ho, p.Wo};
    check_act("grad_out", grad_out, x, shape);
    check_act("y", y, x, shape);
    auto [dx, ddw, dpw] = conv_grads(p, x, dw, pw, output_mask);
    p.mode = dsc::kTrain;
    p.dout = grad_out.data_ptr();
    p.dos = strides(grad_out);
    p.act = y.data_ptr();
    p.as = strides(y);
    const dsc::BwdWs L = dsc::bwd_ws(p);
    Tensor ws = workspace(x, L.total);
    Tensor r = var.to(at::kFloat).add(eps).rsqrt(), A = bn_weight.has_value() ? bn_weight->mul(r) : r;
    Tensor coef = ws.narrow(0, L.coef, 8 * K).view({K, 8});
    coef.select(1, 0).copy_(mean);
    coef.select(1, 1).copy_(A);
    if (bn_bias.has_value())
      coef.select(1, 2).copy_(*bn_bias);
    else
      coef.select(1, 2).zero_();
    coef.select(1, 3).copy_(A.neg().mul(r).mul(mean_dz_yhat));
    coef.select(1, 4).copy_(A.neg().mul(mean_dz));
    by_dtype(x, [&](auto t) { dsc::backward_convs<typename Tr::Policy, decltype(t)>(p, ws.data_ptr<float>()); });
    return {output_mask[0] ? dx : x.new_empty({0}), ddw, dpw};
  }
};

#define DSC_IMPLS(m, Tr)                                                \
  m.impl("forward_eval", &::dsc_bind::Ops<Tr>::forward_eval);           \
  m.impl("forward_train", &::dsc_bind::Ops<Tr>::forward_train);         \
  m.impl("backward_eval", &::dsc_bind::Ops<Tr>::backward_eval);         \
  m.impl("backward_train", &::dsc_bind::Ops<Tr>::backward_train);       \
  m.impl("forward_stats", &::dsc_bind::Ops<Tr>::forward_stats);         \
  m.impl("forward_normalize", &::dsc_bind::Ops<Tr>::forward_normalize); \
  m.impl("backward_reduce", &::dsc_bind::Ops<Tr>::backward_reduce);     \
  m.impl("backward_apply", &::dsc_bind::Ops<Tr>::backward_apply)

}  // namespace dsc_bind
