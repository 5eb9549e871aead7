// bf16 <-> fp32 for the CPU kernels' baseline-compiled files (linear.cpp, linear_a8.cpp, sampling.cpp).
// The per-ISA files must not include it: an inline function compiled with AVX-512 in one file and at
// the baseline in another may be merged by the linker into the AVX-512 copy (linear_kernel.h has their
// own copies, inside each ISA's namespace).
#pragma once

#include <cstdint>
#include <cstring>

namespace fastllm::cpu {

inline float widen(float x) { return x; }
inline float widen(uint16_t h) {  // bf16: the 16 bits are the top half of the fp32
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t to_bf16(float f) {  // round to nearest even, NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace fastllm::cpu
