// The outputs of 16 consecutive weight rows held in the lanes of one AVX-512 vector (the VNNI W8A8 kernel, the
// VNNI-2 bf16 kernel): + bias, stored as fp32 or as bf16 rounded to nearest even, the operations of linear_store.h's
// store_tile in vector form (the same fp32 add, the same rounding), so the same bits. Like linear_store.h it includes
// nothing: each file includes it inside its per-ISA namespace, after <immintrin.h> and linear_job.h.

// y[m, n .. n + rows - 1] = v + bias[n ..] (rows <= 16 lanes stored).
inline void store16(const Job& j, int64_t m, int64_t n, int rows, __m512 v) {
  const __mmask16 k = rows >= 16 ? __mmask16(0xffff) : __mmask16((1u << rows) - 1);
  const bool f32 = j.y_dtype == DType::f32;
  if (j.bias != nullptr) {
    __m512 b;
    if (f32) {
      b = _mm512_maskz_loadu_ps(k, static_cast<const float*>(j.bias) + n);
    } else {
      const __m256i h = _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(j.bias) + n);
      b = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    v = _mm512_add_ps(v, b);
  }
  if (f32) return _mm512_mask_storeu_ps(static_cast<float*>(j.y) + m * j.ldy + n, k, v);
  // bf16, rounded to nearest even; a NaN keeps its sign and top payload bits, made quiet (bf16.h's to_bf16).
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i even = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), even)), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
  _mm256_mask_storeu_epi16(static_cast<uint16_t*>(j.y) + m * j.ldy + n, k, _mm512_cvtepi32_epi16(r));
}
