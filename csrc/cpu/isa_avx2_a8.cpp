// The W8A8 linear kernel (linear_a8.h) for VNNI-layout weights on CPUs with AVX2 but no AVX-512 VNNI (Zen 2
// and 3, Intel before Ice Lake): the portable loop ran at a third of the weight-only kernel's speed there.
// AVX2 has no unsigned x signed byte dot product that cannot saturate (vpmaddubsw sums two products into
// 16 bits: 2 * 255 * 127 overflows), so the weight bytes are widened to 16 bits and vpmaddwd multiplies
// them by 4 activation codes broadcast: exact int32 sums of 2 products each, the same integers as the
// AVX-512 VNNI kernel. A 64-byte group (16 weight rows x 4 columns) is 4 widened quarters of 4 rows; each
// row's two partial sums are added once, after the K loop. The epilogue is store_vnni's (linear_a8.cpp,
// compiled without FMA contraction): the reference's fp32 operations, so the same bits.
#include <immintrin.h>

#include <cstdint>

#include "linear_a8.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace fastllm::cpu::avx2_a8 {

#define UNROLL _Pragma("GCC unroll 16")

constexpr int kRows = kVnniRows;

// Activation rows [m0, m0 + B) against T consecutive tiles from tile t. Accumulator [b][i][q] holds, per
// row 4q .. 4q + 3 of tile i, the sums over columns 0-1 and 2-3 of each group (8 lanes).
template <int B, int T>
inline void tiles(const Job& j, int64_t m0, int64_t t) {
  const int64_t groups = j.K / kVnniCols, stride = int64_t{kRows} * j.K;
  const uint8_t* w = static_cast<const uint8_t*>(j.w) + t * stride;
  const int8_t* x = reinterpret_cast<const int8_t*>(j.xq) + m0 * j.K;
  __m256i acc[B][T][4];
  UNROLL for (int b = 0; b < B; ++b) UNROLL for (int i = 0; i < T; ++i) UNROLL for (int q = 0; q < 4; ++q)
    acc[b][i][q] = _mm256_setzero_si256();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i xb[B];  // the group's 4 codes of row b as 16-bit lanes, in every 64-bit quarter
    UNROLL for (int b = 0; b < B; ++b) {
      int32_t four;
      __builtin_memcpy(&four, x + b * j.K + g * kVnniCols, 4);
      xb[b] = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(four)));
    }
    UNROLL for (int i = 0; i < T; ++i) UNROLL for (int q = 0; q < 4; ++q) {
      const auto* p = reinterpret_cast<const __m128i*>(w + i * stride + g * 64 + q * 16);
      const __m256i wq = _mm256_cvtepu8_epi16(_mm_loadu_si128(p));  // rows 4q .. 4q + 3, 4 columns each
      UNROLL for (int b = 0; b < B; ++b) acc[b][i][q] = _mm256_add_epi32(acc[b][i][q], _mm256_madd_epi16(wq, xb[b]));
    }
  }
  alignas(32) int32_t sums[kRows];
  for (int i = 0; i < T; ++i) {
    const int64_t n = (t + i) * kRows;
    const int rows = static_cast<int>(j.N - n < kRows ? j.N - n : kRows);
    for (int b = 0; b < B; ++b) {
      // hadd pairs each row's two sums: lanes r0 r1 r4 r5 | r2 r3 r6 r7 (quarters 0, 1); the 64-bit swap of the
      // middle two puts rows in order.
      const __m256i lo = _mm256_hadd_epi32(acc[b][i][0], acc[b][i][1]);
      const __m256i hi = _mm256_hadd_epi32(acc[b][i][2], acc[b][i][3]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(sums), _mm256_permute4x64_epi64(lo, 0xD8));
      _mm256_store_si256(reinterpret_cast<__m256i*>(sums + 8), _mm256_permute4x64_epi64(hi, 0xD8));
      store_vnni(j, m0 + b, n, rows, sums);
    }
  }
}

// Activation rows [m0, m0 + B) against tiles [t, end): B * T * 4 accumulators, B broadcasts and one weight
// quarter within the 16 registers.
template <int B>
inline void group(const Job& j, int64_t m0, int64_t t, int64_t end) {
  constexpr int T = B == 1 ? 3 : 1;
  for (; t + T <= end; t += T) tiles<B, T>(j, m0, t);
  for (; t < end; ++t) tiles<B, 1>(j, m0, t);
}

inline void rows(const Job& j, int64_t t0, int64_t t1) {
  // Blocks of tiles small enough to stay in L2 while every pair of activation rows passes over them.
  constexpr int64_t kBlock = 12;
  for (int64_t tb = t0; tb < t1; tb += kBlock) {
    const int64_t te = tb + kBlock < t1 ? tb + kBlock : t1;
    int64_t m0 = 0;
    for (; m0 + 2 <= j.M; m0 += 2) group<2>(j, m0, tb, te);
    if (m0 < j.M) group<1>(j, m0, tb, te);
  }
}

}  // namespace fastllm::cpu::avx2_a8

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

void fastllm::cpu::rows_vnni_avx2(const Job& job, int64_t t0, int64_t t1) { avx2_a8::rows(job, t0, t1); }
#else
// Never called: no AVX2 on this target.
void fastllm::cpu::rows_vnni_avx2(const Job&, int64_t, int64_t) {}
#endif
