// Host stand-ins for the device storage types __half / __nv_bfloat16 (2 bytes, same bit layout as
// c10::Half / c10::BFloat16), with round-to-nearest-even conversions, for the emulator build.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace emu {

struct half {
  uint16_t bits;
};
struct bf16 {
  uint16_t bits;
};

inline float half_to_float(half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, 2);
  return static_cast<float>(f);
}
inline half float_to_half(float v) {
  const _Float16 f = static_cast<_Float16>(v);  // IEEE round-to-nearest-even
  half h;
  std::memcpy(&h.bits, &f, 2);
  return h;
}
inline float bf16_to_float(bf16 b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline bf16 float_to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  bf16 b;
  if (std::isnan(v)) {
    b.bits = static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  } else {
    u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even
    b.bits = static_cast<uint16_t>(u >> 16);
  }
  return b;
}

}  // namespace emu

namespace dsc {
template <>
struct Cvt<emu::half> {
  static inline float load(emu::half v) { return emu::half_to_float(v); }
  static inline emu::half store(float v) { return emu::float_to_half(v); }
  static inline float ldg(const emu::half* p) { return emu::half_to_float(*p); }
};
template <>
struct Cvt<emu::bf16> {
  static inline float load(emu::bf16 v) { return emu::bf16_to_float(v); }
  static inline emu::bf16 store(float v) { return emu::float_to_bf16(v); }
  static inline float ldg(const emu::bf16* p) { return emu::bf16_to_float(*p); }
};
}  // namespace dsc
