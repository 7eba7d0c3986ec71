// The shared tile-GEMM piece: a register-blocked fp32 micro-kernel over operands staged in shared
// memory, used by dsconv_fwd (y = Wp t), dsconv_bwd_dt (dt = Wp^T dy) and dsconv_bwd_dwp (dWp = dy t^T). Torch-free.
//
// A thread owns an 8 (rows) x 4 (columns) block of the block tile: rows ty*4..+3 and BM/2 + ty*4..+3,
// columns tx*4..+3. Per reduction step it reads two float4 of A and one float4 of B (128-bit shared
// loads) for 32 FMAs; the split rows keep a warp's A reads on two addresses (broadcast).
#pragma once

#include "common.cuh"

namespace dsc {

// acc += A^T B over STEPS reduction steps (A rows at a + s lda, B rows at b + s ldb); the thread's second
// four rows start `half` rows after its first (BM / 2 for a BM-row tile). The fragments of step s + 1 are
// loaded before the FMAs of step s (double buffering through registers, 12 more registers), so the
// shared-memory latency overlaps 32 FMAs even where instructions issue in program order (the simulator runs
// PTX as cicc orders it; ptxas would otherwise be the one to hoist the loads). PRE = false loads each step's
// fragments just before its FMAs instead: 12 registers fewer, for a kernel at its register limit.
template <int STEPS, bool PRE = true>
DSC_DEVICE void mma_8x4_steps_h(float (&acc)[8][4], const float* a, int half, int lda, const float* b, int ldb, int ty,
                                int tx) {
  const float* pa = a + ty * 4;
  const float* pa2 = pa + half;
  const float* pb = b + tx * 4;
  f4 a0 = *reinterpret_cast<const f4*>(pa), a1 = *reinterpret_cast<const f4*>(pa2);
  f4 bb = *reinterpret_cast<const f4*>(pb);
#pragma unroll
  for (int st = 0; st < STEPS; ++st) {
    f4 na0 = a0, na1 = a1, nb = bb;
    if (!PRE && st > 0) {
      a0 = *reinterpret_cast<const f4*>(pa + st * lda);
      a1 = *reinterpret_cast<const f4*>(pa2 + st * lda);
      bb = *reinterpret_cast<const f4*>(pb + st * ldb);
    }
    if (PRE && st + 1 < STEPS) {
      na0 = *reinterpret_cast<const f4*>(pa + (st + 1) * lda);
      na1 = *reinterpret_cast<const f4*>(pa2 + (st + 1) * lda);
      nb = *reinterpret_cast<const f4*>(pb + (st + 1) * ldb);
    }
    const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
    const float bv[4] = {bb.x, bb.y, bb.z, bb.w};
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
    if (PRE) {
      a0 = na0;
      a1 = na1;
      bb = nb;
    }
  }
}
template <int BM, int STEPS>
DSC_DEVICE void mma_8x4_steps(float (&acc)[8][4], const float* a, int lda, const float* b, int ldb, int ty, int tx) {
  mma_8x4_steps_h<STEPS>(acc, a, BM / 2, lda, b, ldb, ty, tx);
}

// Two 8 x 4 blocks side by side, one per BP-pixel tile of a pair (B columns tx * 4 .. + 3 and bh + tx * 4
// .. + 3), sharing the A fragments: an 8 x 8 register block per thread, 64 FMAs per two A and two B float4
// loads where mma_8x4_steps_h does 32 per three; the block's Wp chunk feeds twice the pixels. PRE as there.
template <int STEPS, bool PRE = true>
DSC_DEVICE void mma_8x4x2_steps_h(float (&acc0)[8][4], float (&acc1)[8][4], const float* a, int half, int lda,
                                  const float* b, int bh, int ldb, int ty, int tx) {
  const float* pa = a + ty * 4;
  const float* pa2 = pa + half;
  const float* pb = b + tx * 4;
  const float* pb2 = pb + bh;
  f4 a0 = *reinterpret_cast<const f4*>(pa), a1 = *reinterpret_cast<const f4*>(pa2);
  f4 b0 = *reinterpret_cast<const f4*>(pb), b1 = *reinterpret_cast<const f4*>(pb2);
#pragma unroll
  for (int st = 0; st < STEPS; ++st) {
    f4 na0 = a0, na1 = a1, nb0 = b0, nb1 = b1;
    if (!PRE && st > 0) {
      a0 = *reinterpret_cast<const f4*>(pa + st * lda);
      a1 = *reinterpret_cast<const f4*>(pa2 + st * lda);
      b0 = *reinterpret_cast<const f4*>(pb + st * ldb);
      b1 = *reinterpret_cast<const f4*>(pb2 + st * ldb);
    }
    if (PRE && st + 1 < STEPS) {
      na0 = *reinterpret_cast<const f4*>(pa + (st + 1) * lda);
      na1 = *reinterpret_cast<const f4*>(pa2 + (st + 1) * lda);
      nb0 = *reinterpret_cast<const f4*>(pb + (st + 1) * ldb);
      nb1 = *reinterpret_cast<const f4*>(pb2 + (st + 1) * ldb);
    }
    const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
    const float bv0[4] = {b0.x, b0.y, b0.z, b0.w}, bv1[4] = {b1.x, b1.y, b1.z, b1.w};
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        acc0[i][j] += av[i] * bv0[j];
        acc1[i][j] += av[i] * bv1[j];
      }
    if (PRE) {
      a0 = na0;
      a1 = na1;
      b0 = nb0;
      b1 = nb1;
    }
  }
}

// Row of the tile that acc[i][*] belongs to (second four rows `half` after the first).
DSC_HD int mma_row_h(int half, int ty, int i) { return (i < 4 ? 0 : half) + ty * 4 + (i & 3); }
template <int BM>
DSC_HD int mma_row(int ty, int i) {
  return mma_row_h(BM / 2, ty, i);
}

template <class T>
struct Vec4;  // 4 consecutive storage elements as one load (16 bytes fp32, 8 bytes fp16 / bf16)

template <>
struct Vec4<float> {
  static DSC_DEVICE void load(const float* p, float (&v)[4]) {
    const f4 q = DSC_LDG(reinterpret_cast<const f4*>(p));
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
  }
  static DSC_DEVICE void store(float* p, const float (&v)[4]) {
    *reinterpret_cast<f4*>(p) = f4{v[0], v[1], v[2], v[3]};
  }
};

template <class T>
struct Vec4 {
  static DSC_DEVICE void load(const T* p, float (&v)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = Cvt<T>::ldg(p + i);  // 2-byte types: 4 loads (L1 merges them)
  }
  static DSC_DEVICE void store(T* p, const float (&v)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) p[i] = Cvt<T>::store(v[i]);
  }
};

// Loads n (<= 4) consecutive elements of p into v (the rest 0): one vector load when allowed.
template <class T>
DSC_DEVICE void load4(const T* p, int n, bool vec, float (&v)[4]) {
  if (vec && n == 4) {
    Vec4<T>::load(p, v);
    return;
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = i < n ? Cvt<T>::ldg(p + i) : 0.f;
}

}  // namespace dsc
