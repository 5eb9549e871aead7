// What every copy of the small-M linear kernel stores its sums with: bf16 <-> fp32 and the output of a tile of
// dot products, scale, bias and rounding. Like linear_kernel.h (which includes it) it includes nothing and is
// included inside a per-ISA namespace after linear_job.h: each instruction set compiles its own copy (see bf16.h
// for why these must not be shared inline functions).

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {  // round to nearest even, NaN stays NaN
  uint32_t bits;
  __builtin_memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// y[m0 + b, n + r] = dot * scale[n + r] + bias[n + r], stored in the output dtype.
template <int B, int R>
inline void store_tile(const Job& j, int64_t m0, int64_t n, const float* dot, int rows = R) {
  for (int r = 0; r < rows; ++r) {
    const float s = j.w_dtype == DType::i8 ? j.scale[n + r] : 1.0f;
    float bias = 0.0f;
    if (j.bias != nullptr)
      bias = j.y_dtype == DType::f32 ? static_cast<const float*>(j.bias)[n + r]
                                     : bf16_to_f32(static_cast<const uint16_t*>(j.bias)[n + r]);
    for (int b = 0; b < B; ++b) {
      const float v = dot[b * R + r] * s + bias;
      const int64_t at = (m0 + b) * j.ldy + n + r;
      if (j.y_dtype == DType::f32)
        static_cast<float*>(j.y)[at] = v;
      else
        static_cast<uint16_t*>(j.y)[at] = f32_to_bf16(v);
    }
  }
}
