// CPU reference of the joint block in float64 for the simulation harness: the same math as
// fused_dsconv/spec.py (depthwise 3x3, dilation d, padding d, stride s -> 1x1 -> batch norm -> ReLU)
// and its gradients, written out loop by loop so that the host programs need no torch.
#pragma once

#include <cmath>
#include <vector>

#include "sim_common.cuh"

namespace sim {

struct RefIn {
  Tensor4 x;
  std::vector<double> wd;  // [C, 9]
  std::vector<double> wp;  // [K, C]
  std::vector<double> bias;  // [K] or empty
  std::vector<double> gamma, beta;  // [K] or empty (training: affine BN; eval: unused)
  std::vector<double> scale, shift;  // eval: z = y * scale + shift per channel (BN folded or running stats)
  int stride, dil;
  double eps;
  int64_t K;
};

struct RefFwd {
  Tensor4 t, y, out;
  std::vector<double> mean, var;  // training: batch mean and biased variance
};

struct RefBwd {
  Tensor4 dx;
  std::vector<double> dwd, dwp, dbias, dgamma, dbeta;
};

inline int64_t out_size(int64_t n, int s) { return (n - 1) / s + 1; }

// train: batch statistics; else z = y * scale + shift (scale/shift empty: identity).
inline RefFwd ref_forward(const RefIn& in, bool train) {
  const Tensor4& x = in.x;
  const int64_t N = x.n, C = x.c, H = x.h, W = x.w, K = in.K;
  const int64_t Ho = out_size(H, in.stride), Wo = out_size(W, in.stride), P = Ho * Wo;
  RefFwd f{Tensor4(N, C, Ho, Wo, x.cl), Tensor4(N, K, Ho, Wo, x.cl), Tensor4(N, K, Ho, Wo, x.cl), {}, {}};
  const int s = in.stride, d = in.dil;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t ho = 0; ho < Ho; ++ho)
        for (int64_t wo = 0; wo < Wo; ++wo) {
          double a = 0;
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
              const int64_t h = ho * s - d + i * d, w = wo * s - d + j * d;
              if (h >= 0 && h < H && w >= 0 && w < W) a += x.at(n, c, h, w) * in.wd[c * 9 + i * 3 + j];
            }
          f.t.at(n, c, ho, wo) = a;
        }
  std::vector<double> acc(P);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const double b = in.bias.empty() ? 0.0 : in.bias[k];
      for (int64_t q = 0; q < P; ++q) acc[q] = b;
      for (int64_t c = 0; c < C; ++c) {
        const double wv = in.wp[k * C + c];
        const double* tp = &f.t.v[(n * C + c) * P];
        for (int64_t q = 0; q < P; ++q) acc[q] += wv * tp[q];
      }
      for (int64_t q = 0; q < P; ++q) f.y.v[(n * K + k) * P + q] = acc[q];
    }
  if (train) {
    f.mean.assign(K, 0.0);
    f.var.assign(K, 0.0);
    const double M = (double)(N * P);
    for (int64_t k = 0; k < K; ++k) {
      double sm = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t q = 0; q < P; ++q) sm += f.y.v[(n * K + k) * P + q];
      const double m = sm / M;
      double sq = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t q = 0; q < P; ++q) {
          const double e = f.y.v[(n * K + k) * P + q] - m;
          sq += e * e;
        }
      f.mean[k] = m;
      f.var[k] = sq / M;
    }
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      double sc = 1.0, sh = 0.0;
      if (train) {
        const double r = 1.0 / std::sqrt(f.var[k] + in.eps);
        sc = (in.gamma.empty() ? 1.0 : in.gamma[k]) * r;
        sh = (in.beta.empty() ? 0.0 : in.beta[k]) - f.mean[k] * sc;
      } else if (!in.scale.empty()) {
        sc = in.scale[k];
        sh = in.shift[k];
      }
      for (int64_t q = 0; q < P; ++q) {
        const double z = f.y.v[(n * K + k) * P + q] * sc + sh;
        f.out.v[(n * K + k) * P + q] = z < 0 ? 0.0 : z;
      }
    }
  return f;
}

// Gradients of the joint block for dout. train: through the batch statistics of f; else through the
// fixed per-channel affine (in.scale / in.shift, identity when empty), relu mask from f.out.
inline RefBwd ref_backward(const RefIn& in, const RefFwd& f, const Tensor4& dout, bool train) {
  const Tensor4& x = in.x;
  const int64_t N = x.n, C = x.c, H = x.h, W = x.w, K = in.K;
  const int64_t Ho = f.y.h, Wo = f.y.w, P = Ho * Wo;
  const double M = (double)(N * P);
  RefBwd b{Tensor4(N, C, H, W, x.cl), std::vector<double>(C * 9, 0.0), std::vector<double>(K * C, 0.0),
           std::vector<double>(K, 0.0), std::vector<double>(K, 0.0), std::vector<double>(K, 0.0)};
  Tensor4 dy(N, K, Ho, Wo, x.cl);
  for (int64_t k = 0; k < K; ++k) {
    if (train) {
      const double r = 1.0 / std::sqrt(f.var[k] + in.eps), g = in.gamma.empty() ? 1.0 : in.gamma[k];
      double sdz = 0, sdzh = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t q = 0; q < P; ++q) {
          const int64_t i = (n * K + k) * P + q;
          const double dz = f.out.v[i] > 0 ? dout.v[i] : 0.0, yh = (f.y.v[i] - f.mean[k]) * r;
          sdz += dz;
          sdzh += dz * yh;
        }
      b.dbeta[k] = in.beta.empty() ? 0.0 : sdz;
      b.dgamma[k] = in.gamma.empty() ? 0.0 : sdzh;
      double sdy = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t q = 0; q < P; ++q) {
          const int64_t i = (n * K + k) * P + q;
          const double dz = f.out.v[i] > 0 ? dout.v[i] : 0.0, yh = (f.y.v[i] - f.mean[k]) * r;
          dy.v[i] = g * r * (dz - sdz / M - yh * sdzh / M);
          sdy += dy.v[i];
        }
      b.dbias[k] = in.bias.empty() ? 0.0 : sdy;
    } else {
      const double sc = in.scale.empty() ? 1.0 : in.scale[k];
      double sdz = 0, sdzh = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t q = 0; q < P; ++q) {
          const int64_t i = (n * K + k) * P + q;
          const double dz = f.out.v[i] > 0 ? dout.v[i] : 0.0;
          dy.v[i] = dz * sc;
          sdz += dz;
          sdzh += dz * f.y.v[i];
        }
      b.dbias[k] = sdz * sc;  // gradient of the pre-BN bias (= of the folded bias when sc = 1)
      b.dbeta[k] = sdz;
      b.dgamma[k] = sdzh;  // unscaled; only meaningful to callers that define it
    }
  }
  // dt = Wp^T dy, dWp = dy t^T
  Tensor4 dt(N, C, Ho, Wo, x.cl);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const double* dyp = &dy.v[(n * K + k) * P];
      for (int64_t c = 0; c < C; ++c) {
        const double wv = in.wp[k * C + c];
        double* dtp = &dt.v[(n * C + c) * P];
        const double* tp = &f.t.v[(n * C + c) * P];
        double s = 0;
        for (int64_t q = 0; q < P; ++q) {
          dtp[q] += wv * dyp[q];
          s += dyp[q] * tp[q];
        }
        b.dwp[k * C + c] += s;
      }
    }
  const int s = in.stride, d = in.dil;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t ho = 0; ho < Ho; ++ho)
        for (int64_t wo = 0; wo < Wo; ++wo) {
          const double g = dt.at(n, c, ho, wo);
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
              const int64_t h = ho * s - d + i * d, w = wo * s - d + j * d;
              if (h >= 0 && h < H && w >= 0 && w < W) {
                b.dx.at(n, c, h, w) += g * in.wd[c * 9 + i * 3 + j];
                b.dwd[c * 9 + i * 3 + j] += g * x.at(n, c, h, w);
              }
            }
        }
  return b;
}

}  // namespace sim
