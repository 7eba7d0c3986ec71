// The problem every kernel of the joint block sees: geometry, pointers, strides, the tile classes the
// launcher picks per layer, and the fp32 workspace layouts. Torch-free (see common.cuh).
//
// Notation: x [N, C, H, W], Wd [C, 9], Wp [K, C], t = dw(x) [N, C, Ho, Wo], y = Wp t + bias [N, K, Ho, Wo],
// M = N Ho Wo output pixels. Stage names are shared with the Triton kernels (fused_dsconv/triton_kernels/):
// dsconv_fwd, bn_stats, bn_relu, bn_bwd_reduce, dsconv_bwd_dt, dsconv_bwd_dwp, dsconv_bwd_dx, colsum.
#pragma once

#include "common.cuh"

namespace dsc {

enum Mode : int { kEval = 0, kTrain = 1, kYOnly = 2 };
// Backward gradients a caller does not want (Problem::unwanted bits, the op's output_mask negated): a
// zero-initialised Problem computes all three.
enum Grad : int { kGradX = 1, kGradDw = 2, kGradPw = 4 };

// Pixel tiles of the tiled kernels (dsconv_fwd, dsconv_bwd_dt). A tile is BP output pixels:
//   rect: TH x TW pixels of one image (tiles numbered n-major, then tile row, then tile column);
//   span: BP consecutive pixels of the flattened (n, ho, wo) order, so on small images a tile spans
//         images and no GEMM column is wasted on padding (8x8 tiles waste 23% on 7x7 and 14x14 maps).
enum TileClass : int {
  kTileRect8x8 = 0,   // 128 output channels x 8x8 pixels
  kTileRect8x16 = 1,  // 64 output channels x 8x16 pixels (K <= 64 on large maps)
  kTileSpan64 = 2,    // 128 output channels x 64 consecutive pixels (small maps: plan.cuh span_tiles)
  kTileSpan128 = 3,   // 64 channels x 128 consecutive pixels (dsconv_bwd_dt when C <= 64)
};

// Division by a runtime divisor d < 2^31 for numerators n < 2^31 without a division instruction
// (Granlund-Montgomery: q = (umulhi(n, m) + n) >> s), set up on the host once per call.
struct FastDiv {
  uint32_t d, m, s;
};
DSC_HD FastDiv fast_div(uint32_t d) {
  uint32_t s = 0;
  while (s < 31 && (1u << s) < d) ++s;
  const uint64_t m = ((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1;
  return FastDiv{d, static_cast<uint32_t>(m), s};
}
DSC_HD uint32_t fdiv(const FastDiv& f, uint32_t n) {
#if DSC_GPU && defined(__CUDA_ARCH__)
  const uint32_t hi = __umulhi(n, f.m);
#else
  const uint32_t hi = static_cast<uint32_t>((static_cast<uint64_t>(n) * f.m) >> 32);
#endif
  return (hi + n) >> f.s;
}

// A tiling of the output pixels (set_geometry): class, count, rect tiles per image row and per image.
struct Tiling {
  int cls;
  int64_t ntiles, tiles_w, tiles_img;
};

// Everything a launch needs: geometry, raw pointers (storage dtype T behind the void*), strides.
struct Problem {
  int64_t N, C, K, H, W, Ho, Wo, M;  // M = N * Ho * Wo
  int stride, dil;
  int cl;  // 1: x and every activation-shaped output are channels_last, else NCHW (both contiguous)
  int mode;
  float eps;
  int unwanted;  // backward: Grad bits of the gradients not to compute (launch.cuh backward_convs); 0: all

  // Pixel tilings (set_geometry): ft for dsconv_fwd (by K), wt for dsconv_bwd_dwp (64-pixel tiles),
  // bt for dsconv_bwd_dt (span tiles, by C: it needs no window).
  Tiling ft, wt, bt;
  int span;        // 1: span tiles (plan.cuh span_tiles)
  int fsplit;      // dsconv_fwd: blocks the input channels are split over (> 1 when too few tiles fill the GPU)
  int fpair;       // dsconv_fwd on span tiles: 1 = a block owns two consecutive tiles (plan.cuh)
  int64_t csplit;  // input channels per split (a multiple of 8)
  FastDiv div_hw, div_wo, div_k;  // by Ho*Wo, Wo, K
  FastDiv div_hp, div_cwin;       // span tiles: by H + 2d and W + 2d (padded image height, window row)
  int vec_wp;                     // 1: Wp rows may be read 4 elements at a time (C % 4 == 0, base 16-byte aligned)

  // Backward (set_geometry): partial rows of bn_bwd_reduce (pixel groups of rgroup_px), of dsconv_bwd_dwp
  // (splits of the wt tiles) and of dsconv_bwd_dx (groups of its 8x8 input tiles).
  int64_t rgroups, rgroup_px;
  int splits;
  int bsplit;      // dsconv_bwd_dt: blocks the output channels are split over (small maps), dt partial planes
  int64_t ksplit;  // output channels per split (a multiple of 8)
  int64_t xtiles_w, xtiles_img, xtiles, xgroups;
  int dyws;   // 1: bn_bwd_dy forms dy once into the workspace for dsconv_bwd_dt and dsconv_bwd_dwp (plan.cuh)
  int dwide;  // 1: dsconv_bwd_dwp on span tiles in 128 x 128 blocks of dWp, 8 x 8 per thread (plan.cuh)

  const void* x;
  Str4 xs;
  const void* wd;      // [C, 9]
  const void* wp;      // [K, C]
  const float* bias;   // [K] or null
  const float* gamma;  // [K] or null
  const float* beta;   // [K] or null

  void* y;  // forward: y (train / y-only)
  Str4 ys;
  void* out;  // forward: out
  Str4 os;
  float* mean;  // forward train: written; backward train: read
  float* var;

  const void* dout;
  Str4 dos;
  const void* act;  // backward: y (train) or out (eval)
  Str4 as;
  void* dx;
  void* dwd;
  void* dwp;
  float* dbias;
  float* dgamma;
  float* dbeta;
};

// Compile-time shape of a tile class: BK output channels x BP pixels per block, an 8 (k) x 4 (pixel)
// register micro-tile per thread, so BK / 8 x BP / 4 threads.
template <int BK_, int TH_, int TW_, bool SPAN_>
struct TileShape {
  static constexpr int BK = BK_, TH = TH_, TW = TW_, BP = TH_ * TW_;
  static constexpr bool SPAN = SPAN_;
  static constexpr int TY = BK / 8, TX = BP / 4, THREADS = TY * TX;
};
using TileRect8x8 = TileShape<128, 8, 8, false>;
using TileRect8x16 = TileShape<64, 8, 16, false>;
using TileSpan64 = TileShape<128, 8, 8, true>;
using TileSpan128 = TileShape<64, 8, 16, true>;

constexpr int kSpanHalo = 800;          // span tiles: staged input floats per channel (host-checked bound)
constexpr int kSpanRowsMax = 128;       // span tiles: staged rows (host-checked bound)
constexpr int kDwpK = 128, kDwpC = 64;  // dsconv_bwd_dwp's block of dWp: output x input channels
constexpr int kDwpWideC = 128;          // ... its input channels where Problem::dwide

// First output row / column of rect tile t (t < 2^32: grid y * z). 32-bit division: a 64-bit one is a
// subroutine call on the GPU.
struct RectTile {
  int64_t n;
  int ho0, wo0;
};
template <int TH, int TW>
DSC_HD RectTile rect_tile(const Tiling& tl, int64_t t) {
  const uint32_t per = static_cast<uint32_t>(tl.tiles_img), tw = static_cast<uint32_t>(tl.tiles_w);
  const uint32_t t32 = static_cast<uint32_t>(t), n = t32 / per, r = t32 - n * per, th = r / tw;
  return RectTile{static_cast<int64_t>(n), static_cast<int>(th) * TH, static_cast<int>(r - th * tw) * TW};
}

// Valid output pixels of tile t of tiling tl.
DSC_HD int64_t tile_count(const Problem& p, const Tiling& tl, int64_t t) {
  if (tl.cls == kTileSpan64 || tl.cls == kTileSpan128) {
    const int64_t bp = tl.cls == kTileSpan64 ? 64 : 128, left = p.M - t * bp;
    return left < bp ? left : bp;
  }
  const int th = 8, tw = tl.cls == kTileRect8x16 ? 16 : 8;
  const uint32_t per = static_cast<uint32_t>(tl.tiles_img), tws = static_cast<uint32_t>(tl.tiles_w);
  const uint32_t r = static_cast<uint32_t>(t) % per, ty = r / tws;
  const int64_t ho0 = static_cast<int64_t>(ty) * th, wo0 = static_cast<int64_t>(r - ty * tws) * tw;
  const int64_t h = p.Ho - ho0 < th ? p.Ho - ho0 : th, w = p.Wo - wo0 < tw ? p.Wo - wo0 : tw;
  return h * w;
}

// The (pixel tile, channel block) a block of a tiled kernel works on. The channel block is the grid's
// x axis, so the blocks that each re-read one tile's inputs run back to back and find them in L2.
// Tiles span y and z (grid.y <= 65535); blocks past the last tile return at once (launch.cuh).
struct TileBlock {
  int64_t tile, block;
};
#if !defined(DSC_HOST_ONLY)  // block indices exist in kernels only
DSC_DEVICE TileBlock tile_block() {
  return TileBlock{static_cast<int64_t>(blockIdx.y) + static_cast<int64_t>(blockIdx.z) * gridDim.y,
                   static_cast<int64_t>(blockIdx.x)};
}
#endif

// Forward workspace (fp32): training [mean | M2] tile partials, [ft.ntiles, K] each, and [scale | shift],
// [K] each; then, with the input channels split (fsplit > 1), the partial tiles
// [fsplit][ft.ntiles][K blocks][BK x BP]; then, for span tiles, t [C][ft.ntiles x 64] (every part 16-byte
// aligned).
constexpr int64_t kFwdPartTile = 8192;  // BK x BP of every forward tile class (a partial tile, floats)
static_assert(TileRect8x8::BK * TileRect8x8::BP == kFwdPartTile &&
                  TileRect8x16::BK * TileRect8x16::BP == kFwdPartTile &&
                  TileSpan64::BK * TileSpan64::BP == kFwdPartTile,
              "one partial-tile size for every forward tile class");
// Training: [mean | M2] tile partials, then the per-channel normalisation (scale | shift) of bn_relu.
DSC_HD int64_t fwd_ss_offset(const Problem& p) { return (2 * p.ft.ntiles * p.K + 3) / 4 * 4; }
DSC_HD int64_t fwd_part_offset(const Problem& p) {
  return p.mode == kTrain ? fwd_ss_offset(p) + (2 * p.K + 3) / 4 * 4 : 0;
}
// Span tiles: then the depthwise output t of dsconv_dw, [C][ntiles x 64] (pixel-tile padding included).
DSC_HD int64_t fwd_t_offset(const Problem& p) {
  const int64_t bk = p.ft.cls == kTileRect8x16 ? 64 : 128, kblocks = (p.K + bk - 1) / bk;
  return fwd_part_offset(p) + (p.fsplit > 1 ? p.fsplit * p.ft.ntiles * kblocks * kFwdPartTile : 0);
}
DSC_HD int64_t fwd_ws_floats(const Problem& p) {
  return fwd_t_offset(p) + (p.ft.cls == kTileSpan64 ? p.C * p.ft.ntiles * 64 : 0);
}

// Backward workspace (fp32), offsets in floats: [3][rgroups][K] BN-gradient partials | [K][8] per-channel
// dy coefficients | [splits][K][C] dWp partials | [xgroups][C * 9] dWd partials | dt [bsplit][N, C, Ho, Wo]
// in x's layout (one plane per output-channel split of dsconv_bwd_dt, summed by dsconv_bwd_dx) | span tiles:
// dsconv_dw's t [C][wt.ntiles x 64] for dsconv_bwd_dwp | with p.dyws: dy [N, K, Ho, Wo] in the activations'
// layout (bn_bwd_dy).
struct BwdWs {
  int64_t red, coef, dwp, dwd, dt, t, dy, total;
};
DSC_HD BwdWs bwd_ws(const Problem& p) {
  BwdWs w;
  w.red = 0;
  w.coef = w.red + (3 * p.rgroups * p.K + 3) / 4 * 4;  // 16-byte aligned: read as float4
  w.dwp = w.coef + 8 * p.K;
  // (With one split dsconv_bwd_dwp stores dWp itself and its partial rows go unused: skipping them with a
  // select here took dsconv_bwd_dx, which reads this layout, from 75 to 92 registers on sm_75.)
  w.dwd = w.dwp + static_cast<int64_t>(p.splits) * p.K * p.C;
  w.dt = w.dwd + p.xgroups * p.C * 9;
  w.t = (w.dt + p.bsplit * p.N * p.C * p.Ho * p.Wo + 3) / 4 * 4;  // 16-byte aligned: read as float4
  w.dy = (w.t + (p.wt.cls == kTileSpan64 ? p.C * p.wt.ntiles * 64 : 0) + 3) / 4 * 4;
  w.total = w.dy + (p.dyws ? p.K * p.M : 0);
  return w;
}

// Strides of the fp32 dy workspace (bn_bwd_dy): the activations' layout, dense.
DSC_HD Str4 dy_strides(const Problem& p) {
  if (p.cl) return Str4{p.Ho * p.Wo * p.K, 1, p.Wo * p.K, p.K};
  return Str4{p.K * p.Ho * p.Wo, p.Ho * p.Wo, p.Wo, 1};
}

// Strides of the fp32 dt workspace: x's layout at output size.
DSC_HD Str4 dt_strides(const Problem& p) {
  if (p.cl) return Str4{p.Ho * p.Wo * p.C, 1, p.Wo * p.C, p.C};
  return Str4{p.C * p.Ho * p.Wo, p.Ho * p.Wo, p.Wo, 1};
}

}  // namespace dsc
