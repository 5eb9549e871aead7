// The W8A8 linear kernel (linear_a8.h) for AVX-512 VNNI: one vpdpbusd multiplies 64 activation bytes by
// 64 weight bytes into 16 int32 sums, so a block of the packed layout (8 weight rows of 64 columns) is 8
// loads and 8 instructions per activation row, with no conversion (the float kernel widens every weight
// to fp32 first). Only this file's functions carry the ISA; linear.cpp calls them only on CPUs that have
// it.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC bug 105593, as in isa_avx512.cpp
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>

#include "linear_a8.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#endif

namespace fastllm::cpu::vnni {

#define UNROLL _Pragma("GCC unroll 16")

// B activation rows against one tile: B * 8 accumulators (+ 8 for the weight sums when kSum), B
// activation registers and one weight register, within the 32 zmm registers.
template <int B, bool kSum>
inline void tile(const uint8_t* x, int64_t ldx, const int8_t* t, int64_t blocks, int32_t* dot, int32_t* wsum) {
  constexpr int R = kPackRows;
  __m512i acc[B][R], sum[R];
  const __m512i ones = _mm512_set1_epi8(1);
  // Unrolled explicitly: left to GCC, the accumulators lived on the stack (see linear_kernel.h).
  UNROLL for (int r = 0; r < R; ++r) {
    sum[r] = _mm512_setzero_si512();
    UNROLL for (int b = 0; b < B; ++b) acc[b][r] = _mm512_setzero_si512();
  }
  for (int64_t c = 0; c < blocks; ++c) {
    const int8_t* blk = t + c * (R * kPackCols);
    __m512i xv[B];
    UNROLL for (int b = 0; b < B; ++b) xv[b] = _mm512_loadu_si512(x + b * ldx + c * kPackCols);
    UNROLL for (int r = 0; r < R; ++r) {
      const __m512i wv = _mm512_loadu_si512(blk + r * kPackCols);
      UNROLL for (int b = 0; b < B; ++b) acc[b][r] = _mm512_dpbusd_epi32(acc[b][r], xv[b], wv);
      if constexpr (kSum) sum[r] = _mm512_dpbusd_epi32(sum[r], ones, wv);
    }
  }
  UNROLL for (int r = 0; r < R; ++r) {
    if constexpr (kSum) wsum[r] = _mm512_reduce_add_epi32(sum[r]);
    UNROLL for (int b = 0; b < B; ++b) dot[b * R + r] = _mm512_reduce_add_epi32(acc[b][r]);
  }
}

inline void rows(const Job& j, int64_t t0, int64_t t1) {
  constexpr int R = kPackRows;
  const int64_t blocks = j.K / kPackCols;
  const int8_t* w = static_cast<const int8_t*>(j.w);
  int32_t dot[3 * R], wsum[R];
  for (int64_t t = t0; t < t1; ++t) {
    const int8_t* tl = w + t * R * j.K;
    const int64_t n = t * R;
    const int rows = static_cast<int>(j.N - n < R ? j.N - n : R);
    // The first pass also sums the weight rows (two activation rows at most: the registers); the tile
    // is in L1 for the passes after it.
    const int first = j.M >= 2 ? 2 : 1;
    if (first == 2)
      tile<2, true>(j.xq, j.K, tl, blocks, dot, wsum);
    else
      tile<1, true>(j.xq, j.K, tl, blocks, dot, wsum);
    store_a8(j, 0, first, n, rows, dot, wsum);
    for (int64_t m0 = first; m0 < j.M; m0 += 3) {
      const uint8_t* x = j.xq + m0 * j.K;
      const int b = j.M - m0 < 3 ? static_cast<int>(j.M - m0) : 3;
      if (b == 3)
        tile<3, false>(x, j.K, tl, blocks, dot, nullptr);
      else if (b == 2)
        tile<2, false>(x, j.K, tl, blocks, dot, nullptr);
      else
        tile<1, false>(x, j.K, tl, blocks, dot, nullptr);
      store_a8(j, m0, b, n, rows, dot, wsum);
    }
  }
}

}  // namespace fastllm::cpu::vnni

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

void fastllm::cpu::rows_a8_vnni(const Job& job, int64_t t0, int64_t t1) { vnni::rows(job, t0, t1); }
#else
void fastllm::cpu::rows_a8_vnni(const Job&, int64_t, int64_t) {}  // never called: no VNNI on this target
#endif
