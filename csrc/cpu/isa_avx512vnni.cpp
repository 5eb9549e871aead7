// The W8A8 linear kernels (linear_a8.h) for AVX-512 VNNI: one vpdpbusd multiplies 64 activation bytes by
// 64 weight bytes into 16 int32 sums, with no conversion (the float kernel widens every weight to fp32
// first). Tiled weights: a block (8 weight rows of 64 columns) is 8 loads and 8 instructions per
// activation row, and each row's 16 partial sums are added horizontally at the end. VNNI-layout weights:
// a vector holds 4 columns of 16 weight rows, multiplied by 4 activation codes broadcast, so the 16 lanes
// are 16 outputs. Only this file's functions carry the ISA; linear.cpp calls them only on CPUs that have
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

// ---- VNNI-layout weights (linear.h: kVnniRows x kVnniCols blocks, codes + 128) ----

constexpr int kRows = kVnniRows;

#include "store16_avx512.h"

// Row m's outputs n .. n + rows - 1 (rows <= 16) from the 16 sums of (w + 128) q in acc, the operations of
// store_vnni (linear_a8.cpp) in vector form: the same fp32 multiplies and add, so the same bits.
inline void store(const Job& j, int64_t m, int64_t n, int rows, __m512i acc) {
  const __mmask16 k = rows >= kRows ? __mmask16(0xffff) : __mmask16((1u << rows) - 1);
  const __m512i dot = _mm512_sub_epi32(acc, _mm512_set1_epi32(kA8Offset * j.xsum[m]));
  const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(j.sx[m]));
  store16(j, m, n, rows, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, j.scale + n)));
}

// Activation rows [m0, m0 + B) against T consecutive tiles from tile t: B * T accumulators of 16 outputs
// and T weight registers; per 4 columns, T vector loads, B broadcasts and B * T vpdpbusd.
template <int B, int T>
inline void vnni_tiles(const Job& j, int64_t m0, int64_t t) {
  const int64_t groups = j.K / kVnniCols, stride = int64_t{kRows} * j.K;
  const uint8_t* w = static_cast<const uint8_t*>(j.w) + t * stride;
  const int8_t* x = reinterpret_cast<const int8_t*>(j.xq) + m0 * j.K;
  __m512i acc[B][T];
  UNROLL for (int b = 0; b < B; ++b) UNROLL for (int i = 0; i < T; ++i) acc[b][i] = _mm512_setzero_si512();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i wv[T];
    UNROLL for (int i = 0; i < T; ++i) wv[i] = _mm512_loadu_si512(w + i * stride + g * 64);
    UNROLL for (int b = 0; b < B; ++b) {
      int32_t four;
      __builtin_memcpy(&four, x + b * j.K + g * kVnniCols, 4);
      const __m512i xb = _mm512_set1_epi32(four);
      UNROLL for (int i = 0; i < T; ++i) acc[b][i] = _mm512_dpbusd_epi32(acc[b][i], wv[i], xb);
    }
  }
  // Through memory: with the epilogue reading the registers, GCC kept every accumulator on the stack inside
  // the loop above (a store per vpdpbusd, objdump).
  alignas(64) int32_t sums[B][T][kRows];
  UNROLL for (int b = 0; b < B; ++b) UNROLL for (int i = 0; i < T; ++i) _mm512_store_si512(sums[b][i], acc[b][i]);
  for (int i = 0; i < T; ++i) {
    const int64_t n = (t + i) * kRows;
    const int rows = static_cast<int>(j.N - n < kRows ? j.N - n : kRows);
    for (int b = 0; b < B; ++b) store(j, m0 + b, n, rows, _mm512_load_si512(sums[b][i]));
  }
}

// Tiles per pass: B * T accumulators + T weight registers + one broadcast within the 32 registers.
template <int B>
constexpr int tiles_for() {
  return B <= 4 ? 4 : 3;
}

// Activation rows [m0, m0 + B) against tiles [t, end).
template <int B>
inline void vnni_group(const Job& j, int64_t m0, int64_t t, int64_t end) {
  constexpr int T = tiles_for<B>();
  for (; t + T <= end; t += T) vnni_tiles<B, T>(j, m0, t);
  const int64_t left = end - t;
  if (left == 3) vnni_tiles<B, 3>(j, m0, t);
  else if (left == 2) vnni_tiles<B, 2>(j, m0, t);
  else if (left == 1) vnni_tiles<B, 1>(j, m0, t);
}

inline void vnni_rows(const Job& j, int64_t t0, int64_t t1) {
  // Blocks of tiles small enough to stay in L2 while every group of 8 activation rows passes over them.
  constexpr int64_t kBlock = 12;
  for (int64_t tb = t0; tb < t1; tb += kBlock) {
    const int64_t te = tb + kBlock < t1 ? tb + kBlock : t1;
    for (int64_t m0 = 0; m0 < j.M; m0 += 8) {
      switch (j.M - m0 < 8 ? j.M - m0 : 8) {
        case 1: vnni_group<1>(j, m0, tb, te); break;
        case 2: vnni_group<2>(j, m0, tb, te); break;
        case 3: vnni_group<3>(j, m0, tb, te); break;
        case 4: vnni_group<4>(j, m0, tb, te); break;
        case 5: vnni_group<5>(j, m0, tb, te); break;
        case 6: vnni_group<6>(j, m0, tb, te); break;
        case 7: vnni_group<7>(j, m0, tb, te); break;
        default: vnni_group<8>(j, m0, tb, te); break;
      }
    }
  }
}

// ---- The activation quantizer (linear_a8.h: quantize_rows) a vector at a time: the same fp32 operations (max of
// |x|, one division by the scale, clamp, round half to even by adding and subtracting 1.5 * 2^23), so the same codes,
// scales and sums. The portable loops were ~3 ns an element (GPT-2 at batch 8: 1.6 ms of a 13 ms step). ----

inline __m512 load_masked(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
inline __m512 load_masked(const uint16_t* p, __mmask16 k) {  // bf16: the top half of the fp32
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p)), 16));
}

inline __mmask16 first(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

template <class T>
inline void quantize_row(const T* x, int64_t K, int64_t Kp, int32_t offset, uint8_t* q, float* sx, int32_t* xsum) {
  const __m512 magnitude = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const __m512 largest = _mm512_set1_ps(3.4028235e38f);
  __m512 amax = _mm512_setzero_ps();
  __mmask16 bad = 0;  // lanes that met an infinity or a NaN
  for (int64_t k = 0; k < K; k += 16) {
    const __m512 a = _mm512_and_ps(load_masked(x + k, first(K - k)), magnitude);
    bad |= _mm512_cmp_ps_mask(a, largest, _CMP_NLE_UQ);
    amax = _mm512_max_ps(amax, a);
  }
  const float s = bad == 0 ? _mm512_reduce_max_ps(amax) / 127.0f : __builtin_nanf("");
  *sx = s;
  if (xsum != nullptr) *xsum = 0;
  if (!(s > 0.0f)) {  // zeros, or a row with NaN / inf
    __builtin_memset(q, offset, static_cast<size_t>(Kp));
    return;
  }
  const __m512 scale = _mm512_set1_ps(s), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  const __m512 round = _mm512_set1_ps(12582912.0f);  // 1.5 * 2^23
  const __m512i shift = _mm512_set1_epi32(offset);
  __m512i sum = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 m = first(K - k);
    const __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(load_masked(x + k, m), scale), lo), hi);
    const __m512i r = _mm512_cvtps_epi32(_mm512_sub_ps(_mm512_add_ps(v, round), round));  // integral: exact
    sum = _mm512_add_epi32(sum, r);  // 0 in the lanes past K
    _mm_mask_storeu_epi8(q + k, m, _mm512_cvtepi32_epi8(_mm512_add_epi32(r, shift)));
  }
  if (Kp > K) __builtin_memset(q + K, offset, static_cast<size_t>(Kp - K));
  if (xsum != nullptr) *xsum = _mm512_reduce_add_epi32(sum);
}

// ---- AMX (Sapphire Rapids and later): the same VNNI-layout weights as tile operands ----
//
// A weight tile of the layout (16 rows x kVnniCols columns a 64-byte group) is, 16 groups at a time, the B operand
// of tdpbsud as it lies in memory (16 rows of 64 bytes: 4 columns of 16 outputs each); the activation codes (M rows
// of 64 columns) are its A operand. One instruction takes 16 x 16 x 64 products into 16 outputs of every row, where
// vpdpbusd takes 16 x 4 for one row: rows beyond a few stop costing compute (GPT-2's (3072, 768) at 8 rows, weights
// in L2: 67 us on vpdpbusd). The int32 sums are those of the vpdpbusd kernel, so are the results.
#define FASTLLM_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,amx-tile,amx-int8")))

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Output tiles [t0, t1) for all M <= 16 activation rows, two tiles a step (tmm0/1: sums, tmm2: codes, tmm3/4: weights;
// tmm5-7 the same for the columns past the last whole 64).
FASTLLM_AMX inline void amx_rows(const Job& j, int64_t t0, int64_t t1) {
  const int M = static_cast<int>(j.M);
  const int64_t K = j.K, full = K / 64 * 64, tail = K - full, stride = int64_t{kRows} * K;
  TileConfig cfg{};
  cfg.palette = 1;
  cfg.rows[0] = cfg.rows[1] = cfg.rows[2] = static_cast<uint8_t>(M);
  cfg.rows[3] = cfg.rows[4] = 16;
  cfg.colsb[0] = cfg.colsb[1] = cfg.colsb[2] = cfg.colsb[3] = cfg.colsb[4] = 64;
  if (tail) {  // a tile left unused has 0 rows and 0 bytes (anything else faults)
    cfg.rows[5] = static_cast<uint8_t>(M);
    cfg.colsb[5] = static_cast<uint16_t>(tail);
    cfg.rows[6] = cfg.rows[7] = static_cast<uint8_t>(tail / kVnniCols);
    cfg.colsb[6] = cfg.colsb[7] = 64;
  }
  _tile_loadconfig(&cfg);
  const int8_t* x = reinterpret_cast<const int8_t*>(j.xq);
  const uint8_t* w = static_cast<const uint8_t*>(j.w);
  alignas(64) int32_t sums[2][16][kRows];
  for (int64_t t = t0; t < t1; t += 2) {
    const bool two = t + 1 < t1;
    const uint8_t* w0 = w + t * stride;
    const uint8_t* w1 = two ? w0 + stride : w0;  // not past the last tile
    _tile_zero(0);
    _tile_zero(1);
    // Tile numbers are immediates of the instructions (asm operands): the whole-column and tail steps are spelled
    // out. Group k / 4 of a tile starts at byte 16 * k.
    for (int64_t k = 0; k < full; k += 64) {
      _tile_loadd(2, x + k, K);
      _tile_loadd(3, w0 + 16 * k, 64);
      _tile_dpbsud(0, 2, 3);
      if (two) {
        _tile_loadd(4, w1 + 16 * k, 64);
        _tile_dpbsud(1, 2, 4);
      }
    }
    if (tail) {
      _tile_loadd(5, x + full, K);
      _tile_loadd(6, w0 + 16 * full, 64);
      _tile_dpbsud(0, 5, 6);
      if (two) {
        _tile_loadd(7, w1 + 16 * full, 64);
        _tile_dpbsud(1, 5, 7);
      }
    }
    _tile_stored(0, sums[0], 64);
    if (two) _tile_stored(1, sums[1], 64);
    for (int i = 0; i < (two ? 2 : 1); ++i) {
      const int64_t n = (t + i) * kRows;
      const int rows = static_cast<int>(j.N - n < kRows ? j.N - n : kRows);
      for (int m = 0; m < M; ++m) store(j, m, n, rows, _mm512_load_si512(sums[i][m]));
    }
  }
  _tile_release();
}

}  // namespace fastllm::cpu::vnni

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

void fastllm::cpu::rows_a8_vnni(const Job& job, int64_t t0, int64_t t1) { vnni::rows(job, t0, t1); }
void fastllm::cpu::rows_vnni_vnni(const Job& job, int64_t t0, int64_t t1) { vnni::vnni_rows(job, t0, t1); }
void fastllm::cpu::rows_vnni_amx(const Job& job, int64_t t0, int64_t t1) { vnni::amx_rows(job, t0, t1); }
void fastllm::cpu::quantize_rows_vnni(const void* x, DType dtype, int64_t M, int64_t K, int64_t ldx, int64_t Kp,
                                      int32_t offset, uint8_t* xq, float* sx, int32_t* xsum) {
  for (int64_t m = 0; m < M; ++m) {
    int32_t* sum = xsum == nullptr ? nullptr : xsum + m;
    if (dtype == DType::f32)
      vnni::quantize_row(static_cast<const float*>(x) + m * ldx, K, Kp, offset, xq + m * Kp, sx + m, sum);
    else
      vnni::quantize_row(static_cast<const uint16_t*>(x) + m * ldx, K, Kp, offset, xq + m * Kp, sx + m, sum);
  }
}
#else
// Never called: no VNNI on this target.
void fastllm::cpu::rows_a8_vnni(const Job&, int64_t, int64_t) {}
void fastllm::cpu::rows_vnni_vnni(const Job&, int64_t, int64_t) {}
void fastllm::cpu::rows_vnni_amx(const Job&, int64_t, int64_t) {}
void fastllm::cpu::quantize_rows_vnni(const void*, DType, int64_t, int64_t, int64_t, int64_t, int32_t, uint8_t*,
                                      float*, int32_t*) {}
#endif
