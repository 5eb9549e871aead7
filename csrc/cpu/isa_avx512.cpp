// The CPU kernels (small-M linear, decode attention) compiled for AVX-512 (F, BW, VL, DQ) + FMA: 16
// fp32 lanes, 32 registers. Only this file's functions carry the ISA; linear.cpp picks them only on
// CPUs that have it.
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 reductions start from _mm512_undefined_ps and warn about it (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>

#include "attention.h"
#include "linear_job.h"
#include "sampling.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#endif

namespace fastllm::cpu::avx512 {

struct V {
  using reg = __m512;
  static constexpr int L = 16;
  static constexpr int kRegs = 32;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load(const uint16_t* p) {  // bf16: the 16 bits are the top half of the fp32
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static reg load(const int8_t* p) {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
  }
  static reg set1(float f) { return _mm512_set1_ps(f); }
  static void store(float* p, reg a) { _mm512_storeu_ps(p, a); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  // The larger of a and b; b where a is NaN (as `a > b ? a : b`).
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static float hmax(reg a) { return _mm512_reduce_max_ps(a); }
  static float hsum(reg a) { return _mm512_reduce_add_ps(a); }
  // exp(x - m) for x <= m, 0 where x is -inf, NaN where x or m is (attention_kernel.h, attn_exp): 2^n times a
  // polynomial (attention.h, kExpPoly), scaled by vscalefps (underflow to
  // subnormals and 0 rounded as by expf).
  static reg exp_minus(reg x, reg m) {
    const __mmask16 seen = _mm512_cmp_ps_mask(x, set1(-__builtin_inff()), _CMP_NEQ_UQ);
    const reg t = _mm512_max_ps(set1(-104.0f), _mm512_sub_ps(x, m));  // exp(-104) rounds to 0; NaN stays
    const reg n = _mm512_roundscale_ps(_mm512_mul_ps(t, set1(kExpLog2e)), _MM_FROUND_TO_NEAREST_INT);
    const reg r = _mm512_fnmadd_ps(n, set1(kExpLn2Lo), _mm512_fnmadd_ps(n, set1(kExpLn2Hi), t));
    reg p = set1(kExpPoly[0]);
    for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, set1(kExpPoly[i]));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), set1(1.0f));
    return _mm512_maskz_mov_ps(seen, _mm512_scalef_ps(p, n));
  }
  static void hsum4(reg a, reg b, reg c, reg d, float* out) {  // out[i] = the sum of the i-th vector
    const reg ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xee));
    const reg cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xee));
    reg t = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xdd));  // 128-bit: a b c d
    t = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4e));
    t = _mm512_add_ps(t, _mm512_permute_ps(t, 0xb1));
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, t);
    out[0] = lanes[0], out[1] = lanes[4], out[2] = lanes[8], out[3] = lanes[12];
  }
};

#include "linear_kernel.h"
#include "attention_kernel.h"

// ---- Greedy decoding (sampling.h: greedy_rows) a vector at a time: the max and whether a NaN is present in one
// pass, then the first index holding the max (with a NaN present, the first NaN), the lanes past V read as -inf.
// The portable passes took ~34 us for GPT-2's 50257 fp32 logits on one core. ----

inline __m512 load_row(const float* p, __mmask16 k) { return _mm512_mask_loadu_ps(V::set1(-__builtin_inff()), k, p); }
inline __m512 load_row(const uint16_t* p, __mmask16 k) {
  const __m512i bits = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p)), 16);
  return _mm512_mask_mov_ps(V::set1(-__builtin_inff()), k, _mm512_castsi512_ps(bits));
}

template <class T>
int greedy_row(const T* z, int64_t n, int64_t* out) {
  const auto lanes = [n](int64_t v) { return n - v >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - v)) - 1); };
  __m512 m = V::set1(-__builtin_inff());
  __mmask16 nan = 0;
  for (int64_t v = 0; v < n; v += 16) {
    const __m512 x = load_row(z + v, lanes(v));
    nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    m = _mm512_max_ps(x, m);  // m where x is NaN
  }
  const float top = _mm512_reduce_max_ps(m);
  *out = n;
  for (int64_t v = 0; v < n; v += 16) {
    const __m512 x = load_row(z + v, lanes(v));
    const __mmask16 hit = lanes(v) & (nan ? _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q)
                                          : _mm512_cmp_ps_mask(x, V::set1(top), _CMP_EQ_OQ));
    if (hit != 0) {
      *out = v + __builtin_ctz(hit);
      break;
    }
  }
  if (nan) return kFlagNan;
  if (top == __builtin_inff()) return kFlagPosInf;
  if (top == -__builtin_inff()) return kFlagNegInfRow;
  return 0;
}

}  // namespace fastllm::cpu::avx512

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

void fastllm::cpu::rows_avx512(const Job& job, int64_t n0, int64_t n1) { avx512::run_rows(job, n0, n1); }
void fastllm::cpu::attend_avx512(const DecodeAttnArgs& args, int64_t item, int64_t rows, float* scratch) {
  avx512::run_attend(args, item, rows, scratch);
}
int fastllm::cpu::greedy_rows_avx512(const void* logits, DType dtype, int64_t B, int64_t V, int64_t ld, int64_t* out) {
  int flags = 0;
  for (int64_t b = 0; b < B; ++b) {
    if (dtype == DType::f32)
      flags |= avx512::greedy_row(static_cast<const float*>(logits) + b * ld, V, out + b);
    else
      flags |= avx512::greedy_row(static_cast<const uint16_t*>(logits) + b * ld, V, out + b);
  }
  return flags;
}
#else
// never called: isa() is never "avx512"
void fastllm::cpu::rows_avx512(const Job&, int64_t, int64_t) {}
void fastllm::cpu::attend_avx512(const DecodeAttnArgs&, int64_t, int64_t, float*) {}
int fastllm::cpu::greedy_rows_avx512(const void*, DType, int64_t, int64_t, int64_t, int64_t*) { return 0; }
#endif
