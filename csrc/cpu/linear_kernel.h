// The body of the small-M linear kernel, written once over a vector type V and included by one .cpp
// per instruction set (isa_avx512.cpp, isa_avx2.cpp, isa_generic.cpp), each of which defines
// V and compiles this file for its ISA inside its own namespace. Include only after V is defined and
// only inside that namespace; this header includes nothing but linear_store.h, which includes nothing (the ISA
// files include what they need first, so no standard-library template is instantiated with ISA-specific code).
//
// V provides: reg (a vector of V::L floats), zero(), load(p) for p = const float* | const uint16_t*
// (bf16 bits) | const int8_t*, each widened to fp32, fma(a, b, c) = a * b + c, hsum(a).
//
// Work unit: a tile of B activation rows (x, fp32) times R weight rows. Per step of L columns the tile
// loads R weight vectors (converted once) and B activation vectors and does B * R FMAs into B * R
// accumulators held in registers; every weight byte is read from memory once per call, whatever B is.

// The loops over the tile's accumulators are unrolled explicitly: left to GCC, the accumulator arrays of a
// 3 x 8 tile lived on the stack (every multiply-add stored its result back: measured with objdump).
#define FASTLLM_UNROLL _Pragma("GCC unroll 16")

#include "linear_store.h"  // bf16 <-> fp32, store_tile

// Activation rows per tile and weight rows per tile for B activation rows, keeping B * R accumulators
// plus R weight and one activation register within the register file (32 vector registers for
// AVX-512, 16 for AVX2).
constexpr int kMaxB = V::kRegs >= 32 ? 8 : 4;

constexpr int rows_for(int b) {
  return V::kRegs >= 32 ? (b == 1 ? 8 : b == 2 ? 8 : b == 3 ? 6 : b <= 5 ? 4 : b <= 7 ? 3 : 2)
                        : (b <= 2 ? 4 : b == 3 ? 3 : 2);
}

// acc[b][r] = sum_k x[b, k] * w[r, k] over all K columns; the last partial vector of columns goes
// through zero-padded copies (both operands padded, so the padding adds exact zeros).
//
template <class WT, int B, int R>
inline void tile_dot(const float* x, int64_t ldx, const WT* w, int64_t ldw, int64_t K, float* out) {
  typename V::reg acc[B][R];
  FASTLLM_UNROLL for (int b = 0; b < B; ++b) FASTLLM_UNROLL for (int r = 0; r < R; ++r) acc[b][r] = V::zero();
  int64_t k = 0;
  for (; k + V::L <= K; k += V::L) {
    typename V::reg wv[R];
    FASTLLM_UNROLL for (int r = 0; r < R; ++r) wv[r] = V::load(w + r * ldw + k);
    FASTLLM_UNROLL for (int b = 0; b < B; ++b) {
      typename V::reg xv = V::load(x + b * ldx + k);
      FASTLLM_UNROLL for (int r = 0; r < R; ++r) acc[b][r] = V::fma(xv, wv[r], acc[b][r]);
    }
  }
  if (k < K) {
    const int64_t n = K - k;
    alignas(64) WT wt[V::L];
    alignas(64) float xt[V::L];
    typename V::reg wv[R];
    for (int r = 0; r < R; ++r) {
      for (int i = 0; i < V::L; ++i) wt[i] = i < n ? w[r * ldw + k + i] : WT(0);
      wv[r] = V::load(wt);
    }
    for (int b = 0; b < B; ++b) {
      for (int i = 0; i < V::L; ++i) xt[i] = i < n ? x[b * ldx + k + i] : 0.0f;
      typename V::reg xv = V::load(xt);
      for (int r = 0; r < R; ++r) acc[b][r] = V::fma(xv, wv[r], acc[b][r]);
    }
  }
  for (int b = 0; b < B; ++b)
    for (int r = 0; r < R; ++r) out[b * R + r] = V::hsum(acc[b][r]);
}

// Activation rows [m0, m0 + B) times weight rows [n0, n1): tiles of R rows, then single rows.
template <class WT, int B>
inline void rows_b(const Job& j, int64_t m0, int64_t n0, int64_t n1) {
  constexpr int R = rows_for(B);
  const WT* w = static_cast<const WT*>(j.w);
  const float* x = j.x + m0 * j.K;
  float dot[B * R];
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    tile_dot<WT, B, R>(x, j.K, w + n * j.ldw, j.ldw, j.K, dot);
    store_tile<B, R>(j, m0, n, dot);
  }
  for (; n < n1; ++n) {
    tile_dot<WT, B, 1>(x, j.K, w + n * j.ldw, j.ldw, j.K, dot);
    store_tile<B, 1>(j, m0, n, dot);
  }
}

template <class WT>
inline void rows_chunk(const Job& j, int64_t m0, int64_t n0, int64_t n1) {
  const int64_t b = j.M - m0 < kMaxB ? j.M - m0 : kMaxB;
  if (b == 1) return rows_b<WT, 1>(j, m0, n0, n1);
  if (b == 2) return rows_b<WT, 2>(j, m0, n0, n1);
  if (b == 3) return rows_b<WT, 3>(j, m0, n0, n1);
  if (b == 4) return rows_b<WT, 4>(j, m0, n0, n1);
  if constexpr (kMaxB == 8) {
    if (b == 5) return rows_b<WT, 5>(j, m0, n0, n1);
    if (b == 6) return rows_b<WT, 6>(j, m0, n0, n1);
    if (b == 7) return rows_b<WT, 7>(j, m0, n0, n1);
    return rows_b<WT, 8>(j, m0, n0, n1);
  }
}

// All M activation rows times weight rows [n0, n1). With more than kMaxB activation rows the weight
// rows go in blocks small enough to stay in L2 while every chunk of activation rows passes over them.
template <class WT>
inline void rows(const Job& j, int64_t n0, int64_t n1) {
  if (j.M <= kMaxB) return rows_chunk<WT>(j, 0, n0, n1);
  constexpr int64_t kBlock = 32;
  for (int64_t nb = n0; nb < n1; nb += kBlock) {
    const int64_t ne = nb + kBlock < n1 ? nb + kBlock : n1;
    for (int64_t m0 = 0; m0 < j.M; m0 += kMaxB) rows_chunk<WT>(j, m0, nb, ne);
  }
}

// ---- packed weights (linear.h: kPackRows x kPackCols blocks; int8 codes, bf16 or fp32) ----
// A tile is 8 rows; its blocks follow each other in memory, so the tile is one sequential stream (the
// row-major layout read 8 rows of 768 bytes side by side, which ran at a third of DRAM bandwidth for
// int8; bf16 rows of 2 KB at ~75% of the packed speed).
// Per block every step loads one vector of each row and B activation vectors; B * 8 accumulators.
template <class WT, int B>
inline void packed_tile(const float* x, int64_t ldx, const WT* tile, int64_t blocks, float* out) {
  constexpr int R = kPackRows;
  typename V::reg acc[B][R];
  FASTLLM_UNROLL for (int b = 0; b < B; ++b) FASTLLM_UNROLL for (int r = 0; r < R; ++r) acc[b][r] = V::zero();
  for (int64_t c = 0; c < blocks; ++c) {
    const WT* blk = tile + c * (R * kPackCols);
    const float* xc = x + c * kPackCols;
    FASTLLM_UNROLL for (int u = 0; u < kPackCols / V::L; ++u) {
      typename V::reg xv[B];
      FASTLLM_UNROLL for (int b = 0; b < B; ++b) xv[b] = V::load(xc + b * ldx + u * V::L);
      FASTLLM_UNROLL for (int r = 0; r < R; ++r) {
        const typename V::reg wv = V::load(blk + r * kPackCols + u * V::L);
        FASTLLM_UNROLL for (int b = 0; b < B; ++b) acc[b][r] = V::fma(xv[b], wv, acc[b][r]);
      }
    }
  }
  for (int b = 0; b < B; ++b)
    for (int r = 0; r < R; ++r) out[b * R + r] = V::hsum(acc[b][r]);
}

// Activation rows per pass over a tile: B * 8 accumulators + B activations + 1 weight register. With
// more rows the tile (8 * K bytes, in L1/L2 after the first pass) is read again per group.
constexpr int kPackedB = V::kRegs >= 32 ? 3 : 1;

template <class WT>
inline void rows_packed(const Job& j, int64_t t0, int64_t t1) {
  constexpr int R = kPackRows;
  const int64_t blocks = j.ldw / kPackCols;
  const WT* w = static_cast<const WT*>(j.w);
  float dot[kPackedB * R];
  for (int64_t t = t0; t < t1; ++t) {
    const WT* tile = w + t * R * j.ldw;
    const int64_t n = t * R;
    const int rows = static_cast<int>(j.N - n < R ? j.N - n : R);
    for (int64_t m0 = 0; m0 < j.M; m0 += kPackedB) {
      const float* x = j.x + m0 * j.K;
      const int64_t b = j.M - m0 < kPackedB ? j.M - m0 : kPackedB;
      if (b == 1) {
        packed_tile<WT, 1>(x, j.K, tile, blocks, dot);
        store_tile<1, R>(j, m0, n, dot, rows);
      } else if constexpr (kPackedB >= 2) {
        if (b == 2) {
          packed_tile<WT, 2>(x, j.K, tile, blocks, dot);
          store_tile<2, R>(j, m0, n, dot, rows);
        } else {
          packed_tile<WT, kPackedB>(x, j.K, tile, blocks, dot);
          store_tile<kPackedB, R>(j, m0, n, dot, rows);
        }
      }
    }
  }
}

inline void run_rows(const Job& j, int64_t n0, int64_t n1) {
  if (j.packed) {  // n0, n1 count tiles
    switch (j.w_dtype) {
      case DType::f32: return rows_packed<float>(j, n0, n1);
      case DType::bf16: return rows_packed<uint16_t>(j, n0, n1);
      case DType::i8: return rows_packed<int8_t>(j, n0, n1);
      case DType::u8: return;  // W8A8 only (linear_a8.h)
    }
  }
  switch (j.w_dtype) {
    case DType::f32: return rows<float>(j, n0, n1);
    case DType::bf16: return rows<uint16_t>(j, n0, n1);
    case DType::i8: return rows<int8_t>(j, n0, n1);
    case DType::u8: return;
  }
}
