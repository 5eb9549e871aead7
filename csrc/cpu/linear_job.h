// One call of the small-M linear kernel as the ISA-specific copies see it (plain data only: the
// copies are compiled with different instruction sets, so nothing with code may be shared in a header).
#pragma once

#include <cstdint>

#include "linear.h"

namespace fastllm::cpu {

struct Job {
  const float* x;  // (M, K) fp32, row stride K (bf16 activations are widened before the call); packed
                   // weights: K is the padded width, the padding columns of x are zeros
  int64_t M, K;
  const void* w;  // (N, K) in w_dtype, row stride ldw; or packed int8 tiles, ldw = padded K
  DType w_dtype;
  bool packed;
  int64_t N, ldw;
  const float* scale;  // (N,) per-row scale of i8 codes
  const void* bias;    // (N,) in y_dtype, or null
  void* y;             // (M, N) in y_dtype, row stride ldy
  DType y_dtype;
  int64_t ldy;
  // W8A8 (linear_a8.h): activation rows as int8 codes (M, K) with K the padded width, a scale per row; x
  // is then unused. Tiled weights (i8): the codes + 128 as bytes; VNNI weights (u8): the codes as int8
  // bytes and each row's sum of codes in xsum.
  const uint8_t* xq = nullptr;
  const float* sx = nullptr;
  const int32_t* xsum = nullptr;
  // bf16 weights times bf16 activations on the "avx512bf16" ISA: the activation rows as bf16 (M, K), zero-padded to
  // the packed width; x is then unused. Null for every other call.
  const uint16_t* xb = nullptr;
  bool vnni2 = false;  // packed bf16 weights in the VNNI-2 layout (linear.h); K is then the padded width
};

// Weight rows [n0, n1) (tiles of kPackRows rows when packed) for all M activation rows, one
// function per instruction set.
void rows_avx512(const Job& job, int64_t n0, int64_t n1);
void rows_avx512bf16(const Job& job, int64_t n0, int64_t n1);  // bf16 x bf16 with vdpbf16ps, else rows_avx512
void rows_avx2(const Job& job, int64_t n0, int64_t n1);
void rows_generic(const Job& job, int64_t n0, int64_t n1);
// VNNI-2 bf16 weights, tiles [t0, t1) of kVnniRows rows: vdpbf16ps on bf16 activations (xb) where the CPU has
// AVX512-BF16, else portable code on fp32 activations (x).
void rows_vnni2_avx512bf16(const Job& job, int64_t t0, int64_t t1);
void rows_vnni2_generic(const Job& job, int64_t t0, int64_t t1);

}  // namespace fastllm::cpu
