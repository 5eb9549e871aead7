// The small-M linear kernel for bf16 weights and bf16 activations on CPUs with AVX512-BF16: one vdpbf16ps
// multiplies 32 weights by 32 activations and adds the products in pairs into 16 fp32 sums. The AVX-512 kernel
// (linear_kernel.h) widens every weight to fp32 first (a zero-extension, a shift and an FMA per 16 weights), which
// held a bf16 weight stream at 15-19 GB/s where fp32 weights streamed at 28 (2 cores, DRAM-bound loop over 400 MB
// of weights); here a weight vector costs one load and one instruction per activation row.
//
// The sums: products of two bf16 values are exact in fp32 and are accumulated in fp32, in another order than the
// other copies (two products per lane and step, then the lanes); the instruction flushes denormal inputs and
// outputs to zero (bf16 denormals are below 1.2e-38). Only this file's functions carry the ISA; linear.cpp calls
// them only on CPUs that have it, for bf16 x bf16 calls of fewer than 4 activation rows and for every call on
// VNNI-2 weights; every other call of the "avx512bf16" ISA goes to the AVX-512 copy.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC bug 105593, as in isa_avx512.cpp
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>

#include "linear_job.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#endif

namespace fastllm::cpu::bf16dp {

#define UNROLL _Pragma("GCC unroll 16")

constexpr int kLanes = 32;  // bf16 values per vector

inline __m512bh load(const uint16_t* p) { return (__m512bh)_mm512_loadu_si512(p); }
inline __m512bh load(const uint16_t* p, __mmask32 k) { return (__m512bh)_mm512_maskz_loadu_epi16(k, p); }

#include "linear_store.h"
#include "store16_avx512.h"

// ---- nn.Linear's (N, K) layout ----

// dot[b * R + r] = sum_k x[b, k] w[r, k]: B activation rows against R weight rows, 32 columns a step, the
// last step masked (both operands read as zeros past K).
template <int B, int R>
inline void dot_rows(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t ldw, int64_t K, float* dot) {
  __m512 acc[B][R];
  UNROLL for (int b = 0; b < B; ++b) UNROLL for (int r = 0; r < R; ++r) acc[b][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    __m512bh wv[R];
    UNROLL for (int r = 0; r < R; ++r) wv[r] = load(w + r * ldw + k);
    UNROLL for (int b = 0; b < B; ++b) {
      const __m512bh xv = load(x + b * ldx + k);
      UNROLL for (int r = 0; r < R; ++r) acc[b][r] = _mm512_dpbf16_ps(acc[b][r], xv, wv[r]);
    }
  }
  if (k < K) {
    const __mmask32 m = static_cast<__mmask32>((uint64_t{1} << (K - k)) - 1);
    __m512bh wv[R];
    UNROLL for (int r = 0; r < R; ++r) wv[r] = load(w + r * ldw + k, m);
    UNROLL for (int b = 0; b < B; ++b) {
      const __m512bh xv = load(x + b * ldx + k, m);
      UNROLL for (int r = 0; r < R; ++r) acc[b][r] = _mm512_dpbf16_ps(acc[b][r], xv, wv[r]);
    }
  }
  UNROLL for (int b = 0; b < B; ++b) UNROLL for (int r = 0; r < R; ++r) dot[b * R + r] = _mm512_reduce_add_ps(acc[b][r]);
}

// Weight rows per tile for B activation rows: B * R accumulators, R weights and one activation vector within the
// 32 registers (linear_kernel.h's rows_for).
constexpr int rows_for(int b) { return b <= 2 ? 8 : 6; }

// Activation rows [0, B) times weight rows [n0, n1): tiles of R rows, then single rows.
template <int B>
inline void rows_b(const Job& j, int64_t n0, int64_t n1) {
  constexpr int R = rows_for(B);
  const uint16_t* w = static_cast<const uint16_t*>(j.w);
  float dot[B * R];
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    dot_rows<B, R>(j.xb, j.K, w + n * j.ldw, j.ldw, j.K, dot);
    store_tile<B, R>(j, 0, n, dot);
  }
  for (; n < n1; ++n) {
    dot_rows<B, 1>(j.xb, j.K, w + n * j.ldw, j.ldw, j.K, dot);
    store_tile<B, 1>(j, 0, n, dot);
  }
}

// All M (<= 3: linear.cpp) activation rows times weight rows [n0, n1).
inline void rows(const Job& j, int64_t n0, int64_t n1) {
  if (j.M == 1) return rows_b<1>(j, n0, n1);
  if (j.M == 2) return rows_b<2>(j, n0, n1);
  rows_b<3>(j, n0, n1);
}

// ---- packed tiles (linear.h: blocks of kPackRows rows x kPackCols columns, K padded with zeros) ----

// B activation rows (zero-padded to K, as the weights are) against T consecutive tiles read side by side:
// B * T * 8 accumulators; dot[(i * B + b) * 8 + r] for tile i. One row reads 3 tiles at once: three streams
// of weights in flight where one ran at ~11 GB/s a core (GPT-2's shapes from DRAM on 2 cores: 21 -> 24 GB/s).
template <int B, int T>
inline void packed_tiles(const uint16_t* x, int64_t ldx, const uint16_t* tile, int64_t stride, int64_t blocks,
                         float* dot) {
  constexpr int R = kPackRows;
  __m512 acc[T][B][R];
  UNROLL for (int i = 0; i < T; ++i) UNROLL for (int b = 0; b < B; ++b) UNROLL for (int r = 0; r < R; ++r)
    acc[i][b][r] = _mm512_setzero_ps();
  for (int64_t c = 0; c < blocks; ++c) {
    UNROLL for (int u = 0; u < kPackCols / kLanes; ++u) {
      __m512bh xv[B];
      UNROLL for (int b = 0; b < B; ++b) xv[b] = load(x + b * ldx + c * kPackCols + u * kLanes);
      UNROLL for (int i = 0; i < T; ++i) UNROLL for (int r = 0; r < R; ++r) {
        const __m512bh wv = load(tile + i * stride + c * (R * kPackCols) + r * kPackCols + u * kLanes);
        UNROLL for (int b = 0; b < B; ++b) acc[i][b][r] = _mm512_dpbf16_ps(acc[i][b][r], xv[b], wv);
      }
    }
  }
  UNROLL for (int i = 0; i < T; ++i) UNROLL for (int b = 0; b < B; ++b) UNROLL for (int r = 0; r < R; ++r)
    dot[(i * B + b) * R + r] = _mm512_reduce_add_ps(acc[i][b][r]);
}

// Activation rows [m0, m0 + B) against tiles [t, t + T).
template <int B, int T>
inline void packed_pass(const Job& j, int64_t m0, int64_t t) {
  constexpr int R = kPackRows;
  float dot[T * B * R];
  const int64_t stride = R * j.K;
  packed_tiles<B, T>(j.xb + m0 * j.K, j.K, static_cast<const uint16_t*>(j.w) + t * stride, stride, j.K / kPackCols, dot);
  for (int i = 0; i < T; ++i) {
    const int64_t n = (t + i) * R;
    store_tile<B, R>(j, m0, n, dot + i * B * R, static_cast<int>(j.N - n < R ? j.N - n : R));
  }
}

// Tiles [t0, t1) for all M (<= 3: linear.cpp) activation rows: one row 3 tiles at a time, more rows one tile at a
// time.
inline void rows_packed(const Job& j, int64_t t0, int64_t t1) {
  int64_t t = t0;
  if (j.M == 1)
    for (; t + 3 <= t1; t += 3) packed_pass<1, 3>(j, 0, t);
  for (; t < t1; ++t) {
    if (j.M == 1) packed_pass<1, 1>(j, 0, t);
    else if (j.M == 2) packed_pass<2, 1>(j, 0, t);
    else packed_pass<3, 1>(j, 0, t);
  }
}

// ---- VNNI-2 tiles (linear.h: 16 rows x 2 columns per vector; outputs through store16_avx512.h) ----

// Activation rows [m0, m0 + B) against T consecutive tiles from tile t: B * T accumulators of 16 outputs and T
// weight registers; per 2 columns, T vector loads, B broadcasts and B * T vdpbf16ps. T tiles are T streams of
// weights in flight: 2 cores reading 400 MB of (3072, 768) weights, one row, 8-12 tiles read 27.5-30 GB/s where the
// 8-row tiles read 24-27 three at a time (a standalone loop, both layouts alternating).
template <int B, int T>
inline void vnni2_tiles(const Job& j, int64_t m0, int64_t t) {
  const int64_t groups = j.K / kVnni2Cols, stride = int64_t{kVnniRows} * j.K;
  const uint16_t* w = static_cast<const uint16_t*>(j.w) + t * stride;
  const uint16_t* x = j.xb + m0 * j.K;
  __m512 acc[B][T];
  UNROLL for (int b = 0; b < B; ++b) UNROLL for (int i = 0; i < T; ++i) acc[b][i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512bh wv[T];
    UNROLL for (int i = 0; i < T; ++i) wv[i] = load(w + i * stride + g * (kVnniRows * kVnni2Cols));
    UNROLL for (int b = 0; b < B; ++b) {
      int32_t two;
      __builtin_memcpy(&two, x + b * j.K + g * kVnni2Cols, 4);
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(two);
      UNROLL for (int i = 0; i < T; ++i) acc[b][i] = _mm512_dpbf16_ps(acc[b][i], wv[i], xv);
    }
  }
  // Through memory, as in isa_avx512vnni.cpp (GCC otherwise keeps the accumulators on the stack in the loop).
  alignas(64) float sums[B][T][kVnniRows];
  UNROLL for (int b = 0; b < B; ++b) UNROLL for (int i = 0; i < T; ++i) _mm512_store_ps(sums[b][i], acc[b][i]);
  for (int i = 0; i < T; ++i) {
    const int64_t n = (t + i) * kVnniRows;
    const int rows = static_cast<int>(j.N - n < kVnniRows ? j.N - n : kVnniRows);
    for (int b = 0; b < B; ++b) store16(j, m0 + b, n, rows, _mm512_load_ps(sums[b][i]));
  }
}

// Activation rows [m0, m0 + B) against tiles [t, end).
template <int B>
inline void vnni2_group(const Job& j, int64_t m0, int64_t t, int64_t end) {
  constexpr int T = vnni2_pass_tiles(B);
  for (; t + T <= end; t += T) vnni2_tiles<B, T>(j, m0, t);
  switch (end - t) {
    case 11: return vnni2_tiles<B, 11>(j, m0, t);
    case 10: return vnni2_tiles<B, 10>(j, m0, t);
    case 9: return vnni2_tiles<B, 9>(j, m0, t);
    case 8: return vnni2_tiles<B, 8>(j, m0, t);
    case 7: return vnni2_tiles<B, 7>(j, m0, t);
    case 6: return vnni2_tiles<B, 6>(j, m0, t);
    case 5: return vnni2_tiles<B, 5>(j, m0, t);
    case 4: return vnni2_tiles<B, 4>(j, m0, t);
    case 3: return vnni2_tiles<B, 3>(j, m0, t);
    case 2: return vnni2_tiles<B, 2>(j, m0, t);
    case 1: return vnni2_tiles<B, 1>(j, m0, t);
    default: return;
  }
}

// Tiles [t0, t1) for all M rows: blocks of tiles small enough to stay in L2 while every group of 4 activation rows
// passes over them (one group, the usual decode call, reads each tile once from memory).
inline void vnni2_rows(const Job& j, int64_t t0, int64_t t1) {
  const int64_t block = j.M <= 4 ? t1 - t0 : 12;
  for (int64_t tb = t0; tb < t1; tb += block) {
    const int64_t te = tb + block < t1 ? tb + block : t1;
    for (int64_t m0 = 0; m0 < j.M; m0 += 4) {
      switch (j.M - m0 < 4 ? j.M - m0 : 4) {
        case 1: vnni2_group<1>(j, m0, tb, te); break;
        case 2: vnni2_group<2>(j, m0, tb, te); break;
        case 3: vnni2_group<3>(j, m0, tb, te); break;
        default: vnni2_group<4>(j, m0, tb, te); break;
      }
    }
  }
}

}  // namespace fastllm::cpu::bf16dp

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

void fastllm::cpu::rows_avx512bf16(const Job& job, int64_t n0, int64_t n1) {
  if (job.xb == nullptr) return rows_avx512(job, n0, n1);  // not a bf16 x bf16 call
  if (job.packed) return bf16dp::rows_packed(job, n0, n1);
  bf16dp::rows(job, n0, n1);
}
void fastllm::cpu::rows_vnni2_avx512bf16(const Job& job, int64_t t0, int64_t t1) { bf16dp::vnni2_rows(job, t0, t1); }
#else
// never called: isa() is never "avx512bf16"
void fastllm::cpu::rows_avx512bf16(const Job&, int64_t, int64_t) {}
void fastllm::cpu::rows_vnni2_avx512bf16(const Job&, int64_t, int64_t) {}
#endif
