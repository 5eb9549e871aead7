// The CPU kernels (small-M linear, decode attention) compiled for AVX2 + FMA: 8 fp32 lanes, 16
// registers. Only this file's functions carry the ISA; linear.cpp picks them only on CPUs that have it.
#include <immintrin.h>

#include <cstdint>

#include "attention.h"
#include "linear_job.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace fastllm::cpu::avx2 {

struct V {
  using reg = __m256;
  static constexpr int L = 8;
  static constexpr int kRegs = 16;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg load(const uint16_t* p) {  // bf16: the 16 bits are the top half of the fp32
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static reg load(const int8_t* p) {
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
  }
  static reg set1(float f) { return _mm256_set1_ps(f); }
  static void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  // The larger of a and b; b where a is NaN (as `a > b ? a : b`).
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static float hmax(reg a) {
    const __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 t = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(t, _mm_shuffle_ps(t, t, 1)));
  }
  // exp(x - m) for x <= m, 0 where x is -inf, NaN where x or m is (attention_kernel.h, attn_exp): 2^n times a
  // polynomial (attention.h, kExpPoly); below exp(-87) (no subnormals) it stays at
  // ~1e-38 where expf goes on down to 0.
  static reg exp_minus(reg x, reg m) {
    const reg seen = _mm256_cmp_ps(x, set1(-__builtin_inff()), _CMP_NEQ_UQ);
    const reg t = _mm256_max_ps(set1(-87.0f), _mm256_sub_ps(x, m));  // 2^n stays normal; NaN stays
    constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const reg n = _mm256_round_ps(_mm256_mul_ps(t, set1(kExpLog2e)), kNearest);
    const reg r = _mm256_fnmadd_ps(n, set1(kExpLn2Lo), _mm256_fnmadd_ps(n, set1(kExpLn2Hi), t));
    reg p = set1(kExpPoly[0]);
    for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, set1(kExpPoly[i]));
    p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), set1(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(seen, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
  }
  static float hsum(reg a) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));  // 4 lanes
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));                                   // 2 lanes
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
  }
  static void hsum4(reg a, reg b, reg c, reg d, float* out) {  // out[i] = the sum of the i-th vector
    const reg ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);  // pairs, per 128-bit half
    const reg abcd = _mm256_hadd_ps(ab, cd);                          // per half: a b c d
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
  }
};

#include "linear_kernel.h"
#include "attention_kernel.h"

}  // namespace fastllm::cpu::avx2

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

void fastllm::cpu::rows_avx2(const Job& job, int64_t n0, int64_t n1) { avx2::run_rows(job, n0, n1); }
void fastllm::cpu::attend_avx2(const DecodeAttnArgs& args, int64_t item, int64_t rows, float* scratch) {
  avx2::run_attend(args, item, rows, scratch);
}
#else
// never called: isa() is never "avx2"
void fastllm::cpu::rows_avx2(const Job&, int64_t, int64_t) {}
void fastllm::cpu::attend_avx2(const DecodeAttnArgs&, int64_t, int64_t, float*) {}
#endif
