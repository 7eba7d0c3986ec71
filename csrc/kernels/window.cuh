// The staged input window of a pixel tile and the depthwise chunk computed from it: shared by
// dsconv_fwd (t feeds y = Wp t) and dsconv_bwd_dwp (t feeds dWp = dy t^T). Torch-free.
//
// Window of one tile, per channel:
//   rect, dilation D > 0: the dense window, (TH-1)S + 2D + 1 rows x (TW-1)S + 2D + 1 columns, zero outside
//     the image; tap (i, j) of pixel (ph, pw) sits at (ph S + i D, pw S + j D);
//   rect, runtime dilation (D = 0): the 3 tap rows of every pixel row, gathered (3 TH x 3 TW), so any
//     dilation fits; tap (i, j) of (ph, pw) sits at (i TH + ph, j TW + pw);
//   span: the zero-padded rows (H + 2D per image) from the tile's first pixel's top tap row to its last
//     pixel's bottom tap row, W + 2D columns each; tap (i, j) of (n, ho, wo) sits at padded row
//     n (H + 2D) + ho S + i D - first, column wo S + j D. Used with D > 0 only.
// Every tap of every pixel lands on a staged value (zero padding included): no bounds checks per tap.
#pragma once

#include "problem.cuh"

namespace dsc {

// Floats per channel of the window of tile shape Tl at stride S, dilation D (0: runtime).
template <class Tl, int S, int D>
constexpr int window_floats() {
  return Tl::SPAN ? kSpanHalo
                  : (D > 0 ? ((Tl::TH - 1) * S + 2 * D + 1) * ((Tl::TW - 1) * S + 2 * D + 1) : 9 * Tl::TH * Tl::TW);
}

// BC_ channels staged per chunk (the kernels pick it so that their buffers fit in shared memory).
template <class Tl, int S, int D, int BC_>
struct Window {
  static constexpr int RH = Tl::SPAN ? 0 : (D > 0 ? (Tl::TH - 1) * S + 2 * D + 1 : 3 * Tl::TH);
  static constexpr int CW = Tl::SPAN ? 0 : (D > 0 ? (Tl::TW - 1) * S + 2 * D + 1 : 3 * Tl::TW);
  static constexpr int HALO = window_floats<Tl, S, D>();  // floats per channel
  static constexpr int BC = BC_;
  // Offset of tap (i, j) from the pixel's tap (0, 0), rect windows (span: i D (W + 2D) + j D at run time).
  static constexpr int TAP_R = D > 0 ? D * CW : Tl::TH * CW;
  static constexpr int TAP_C = D > 0 ? D : Tl::TW;

  static constexpr int NT = 256;                  // threads of the kernels that stage windows
  static constexpr int E = (HALO + NT - 1) / NT;  // NCHW staging: window elements per thread and channel
  static_assert(Tl::THREADS == NT, "window staging assumes 256 threads");

  // Per block: where the tile's window lies.
  int64_t xn = 0;             // n * xs.n of the tile's (first) image: every staged offset is relative to it
  int h0 = 0, w0 = 0;         // rect: window origin (dense) or first output row / column (gathered)
  int cw = CW;                // window row length
  int rows = RH;              // staged rows
  uint32_t first = 0;         // span: padded row of the first staged row
  uint32_t g0 = 0, last = 0;  // span: first and last pixel of the tile (flattened)
  int off[E];                 // NCHW: offset (from xn, channel 0) of this thread's window elements, -1 outside x

  // Sets the geometry of tile `tile` and, for span tiles, fills row[r] = offset of staged row r from xn
  // (-1: padding; < 2^31, host-checked). Callers publish row[] with a barrier before prepare().
  DSC_DEVICE void setup(const Problem& p, const Tiling& tl, int64_t tile, int* row, int tid) {
    if (!Tl::SPAN) {
      const RectTile rt = rect_tile<Tl::TH, Tl::TW>(tl, tile);
      xn = rt.n * p.xs.n;
      h0 = D > 0 ? rt.ho0 * S - D : rt.ho0;
      w0 = D > 0 ? rt.wo0 * S - D : rt.wo0;
    } else {
      // Pixels g = tile * BP + q of the flattened (n, ho, wo) order; M < 2^31 (host-checked).
      const uint32_t hp = static_cast<uint32_t>(p.H + 2 * D);
      g0 = static_cast<uint32_t>(tile) * Tl::BP;
      last = (p.M - g0 < Tl::BP ? static_cast<uint32_t>(p.M) : g0 + Tl::BP) - 1;
      first = padded_row(p, g0);
      rows = static_cast<int>(padded_row(p, last) + 2 * D - first + 1);
      cw = static_cast<int>(p.W + 2 * D);
      const uint32_t n0 = first / hp;
      xn = static_cast<int64_t>(n0) * p.xs.n;
      for (int r = tid; r < rows; r += NT) {
        const uint32_t pr = first + r, n = fdiv(p.div_hp, pr);
        const int h = static_cast<int>(pr - n * hp) - D;
        row[r] = (h >= 0 && h < p.H) ? static_cast<int>((n - n0) * p.xs.n + h * p.xs.h) : -1;
      }
    }
  }
  // Offset from xn (channel 0) of window element rq, or -1 where it is zero padding.
  DSC_DEVICE int src(const Problem& p, const int* row, int rq) const {
    const int r = Tl::SPAN ? static_cast<int>(fdiv(p.div_cwin, rq)) : rq / CW, q = rq - r * cw;
    if (Tl::SPAN) {
      const int ro = row[r], w = q - D;
      return (ro >= 0 && w >= 0 && w < p.W) ? ro + w * static_cast<int>(p.xs.w) : -1;
    }
    const int d = D > 0 ? D : p.dil;
    const int h = D > 0 ? h0 + r : (h0 + r % Tl::TH) * S - d + (r / Tl::TH) * d;
    const int w = D > 0 ? w0 + q : (w0 + q % Tl::TW) * S - d + (q / Tl::TW) * d;
    return (h >= 0 && h < p.H && w >= 0 && w < p.W) ? h * static_cast<int>(p.xs.h) + w * static_cast<int>(p.xs.w) : -1;
  }
  // NCHW: this thread's window element offsets, once per tile (the channel loop then only adds c xs.c).
  DSC_DEVICE void prepare(const Problem& p, const int* row, int tid) {
#pragma unroll
    for (int j = 0; j < E; ++j) {
      const int rq = tid + j * NT;
      off[j] = rq < rows * cw ? src(p, row, rq) : -1;
    }
  }
  // Padded row of pixel g's top tap row (span tiles).
  static DSC_DEVICE uint32_t padded_row(const Problem& p, uint32_t g) {
    const uint32_t n = fdiv(p.div_hw, g), r = g - n * static_cast<uint32_t>(p.Ho * p.Wo);
    return n * static_cast<uint32_t>(p.H + 2 * D) + fdiv(p.div_wo, r) * S;
  }
  // Offset of slot q's tap (0, 0) in the window (past the tile's end: any staged pixel).
  DSC_DEVICE int base(const Problem& p, int q) const {
    if (!Tl::SPAN) {
      const int ph = q / Tl::TW, pw = q % Tl::TW;
      return D > 0 ? ph * S * CW + pw * S : ph * CW + pw;
    }
    const uint32_t g = g0 + q, gg = g <= last ? g : last;
    const uint32_t n = fdiv(p.div_hw, gg), r = gg - n * static_cast<uint32_t>(p.Ho * p.Wo);
    const uint32_t ho = fdiv(p.div_wo, r), wo = r - ho * static_cast<uint32_t>(p.Wo);
    return static_cast<int>(n * static_cast<uint32_t>(p.H + 2 * D) + ho * S - first) * cw + static_cast<int>(wo) * S;
  }
  DSC_DEVICE int tap_r() const { return Tl::SPAN ? D * cw : TAP_R; }

  // Stages the window of channels c0 .. c0 + BC - 1 (zeros past C) into halo[BC][HALO]. NCHW: from the
  // prepared offsets, consecutive threads along window rows; channels_last: consecutive threads along
  // channels (8 channels = 32 contiguous bytes per pixel), offsets computed per element.
  // NCHW staging split in two, so that a kernel can issue the loads of the next chunk before computing
  // on the current one and store them afterwards (double buffering through registers): load() reads the
  // chunk's BC x E elements of this thread into v, store() writes them to the window.
  template <class T>
  DSC_DEVICE void load(const Problem& p, int64_t c0, float (&v)[BC][E]) const {
    const T* __restrict__ x = static_cast<const T*>(p.x) + xn;
#pragma unroll
    for (int cc = 0; cc < BC; ++cc) {
      const bool cv = c0 + cc < p.C;
      const T* xc = x + (cv ? (c0 + cc) * p.xs.c : 0);
#pragma unroll
      for (int j = 0; j < E; ++j) {
        const bool ok = cv && off[j] >= 0;
        const float t = Cvt<T>::ldg(xc + (ok ? off[j] : 0));
        v[cc][j] = ok ? t : 0.f;
      }
    }
  }
  DSC_DEVICE void store(const float (&v)[BC][E], float (*halo)[HALO], int tid) const {
    const int win = rows * cw;
#pragma unroll
    for (int cc = 0; cc < BC; ++cc)
#pragma unroll
      for (int j = 0; j < E; ++j)
        if (tid + j * NT < win) halo[cc][tid + j * NT] = v[cc][j];
  }

  template <class T>
  DSC_DEVICE void stage(const Problem& p, const int* row, int64_t c0, float (*halo)[HALO], int tid) const {
    // Loads are unconditional, from x's first element of the image where the value is padding, and the
    // padding selected afterwards: no branch around each load (the read-only load cannot be predicated).
    const T* __restrict__ x = static_cast<const T*>(p.x) + xn;
    const int win = rows * cw;
    if (!p.cl) {
      // At most 2 channels' loads in flight at a time on windows of > 256 floats: the registers stay below the
      // 2-blocks-per-SM budget (a fully unrolled 8 x 4 batch spilled).
#pragma unroll(E > 1 ? 2 : BC)
      for (int cc = 0; cc < BC; ++cc) {
        const bool cv = c0 + cc < p.C;
        const T* xc = x + (cv ? (c0 + cc) * p.xs.c : 0);
        // The channel's E loads before its stores (each store selects the padding, so waits for its load).
        float v[E];
#pragma unroll
        for (int j = 0; j < E; ++j) v[j] = Cvt<T>::ldg(xc + (cv && off[j] >= 0 ? off[j] : 0));
#pragma unroll
        for (int j = 0; j < E; ++j)
          if (tid + j * NT < win) halo[cc][tid + j * NT] = cv && off[j] >= 0 ? v[j] : 0.f;
      }
    } else {
      for (int e = tid; e < BC * win; e += NT) {
        const int cc = e % BC, rq = e / BC, o = src(p, row, rq);
        const bool ok = c0 + cc < p.C && o >= 0;
        const float v = Cvt<T>::ldg(x + (ok ? c0 + cc + o : 0));
        halo[cc][rq] = ok ? v : 0.f;
      }
    }
  }
};

// One depthwise output from a staged window: 9 taps, the channel's 9 weights in registers; one partial sum
// per tap row, so the dependent chain is 3 multiply-adds long, not 9.
template <int TAP_C>
DSC_DEVICE float dw_tap9(const float* hc, int base, int tap_r, const float (&wv)[9]) {
  float a[3];
#pragma unroll
  for (int ti = 0; ti < 3; ++ti) {
    const float* r = hc + base + ti * tap_r;
    a[ti] = r[0] * wv[ti * 3] + r[TAP_C] * wv[ti * 3 + 1] + r[2 * TAP_C] * wv[ti * 3 + 2];
  }
  return a[0] + a[1] + a[2];
}

}  // namespace dsc
