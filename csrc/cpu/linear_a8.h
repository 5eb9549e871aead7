// W8A8 linear layers (LinearArgs::quantize_x): packed int8 weights times activation rows quantized to
// int8 on the fly, per row and symmetric (scale = max |x| / 127, codes round half to even), the dot
// products exact in int32. vpdpbusd multiplies unsigned by signed bytes, so one side carries an offset
// of 128 that a sum of the other side's codes takes back out:
// - tiled weights (i8, linear.h's packed layout): the activation codes are stored as q + 128 and the
//   kernel sums each weight row, sum_k (q + 128) w = dot + 128 * sum_k w; each of the 8 rows of a tile
//   accumulates in its own vector, summed horizontally at the end;
// - VNNI weights (u8, linear.h's kVnniRows x kVnniCols layout, stored as w + 128): the activation codes
//   stay signed, 4 of them broadcast against 16 weight rows per instruction, sum_k q (w + 128) = dot +
//   128 * sum_k q, the row sum computed once by the quantizer. 16 outputs per vector, no horizontal sums:
//   ~2.7x the tiled kernel's multiply-adds per cycle at 8 rows.
// The output y = float(dot) * sx[m] * scale[n] + bias[n], in that order (the reference,
// kernels/reference/linear.py, computes the same fp32 operations, so the copies agree to the bit).
#pragma once

#include <cstdint>

#include "linear_job.h"

namespace fastllm::cpu {

constexpr int32_t kA8Offset = 128;

// Quantizes x (M, K) f32 or bf16 (row stride ldx) into xq (M, Kp) codes + offset (kA8Offset or 0: int8
// bytes), zero codes past K, sx (M,) and, when xsum is not null, each row's sum of codes: a row that holds
// a NaN or an infinity gets sx = NaN and zero codes (its outputs are NaN).
void quantize_rows(const void* x, DType dtype, int64_t M, int64_t K, int64_t ldx, int64_t Kp, int32_t offset,
                   uint8_t* xq, float* sx, int32_t* xsum);
// The same in AVX-512 (isa_avx512vnni.cpp, called with the VNNI kernels): the same results.
void quantize_rows_vnni(const void* x, DType dtype, int64_t M, int64_t K, int64_t ldx, int64_t Kp, int32_t offset,
                        uint8_t* xq, float* sx, int32_t* xsum);

// Stores one pass over a tile: dot[b * 8 + r] (the u8 x s8 sums of activation rows m0 .. m0 + B - 1 and
// weight rows n .. n + rows - 1) and wsum[r] (each weight row's sum of codes).
void store_a8(const Job& job, int64_t m0, int B, int64_t n, int rows, const int32_t* dot, const int32_t* wsum);

// Weight tiles [t0, t1) for all M activation rows: portable C++, and AVX-512 VNNI (isa_avx512vnni.cpp,
// only on CPUs that have it). Same integers, same results.
void rows_a8_generic(const Job& job, int64_t t0, int64_t t1);
void rows_a8_vnni(const Job& job, int64_t t0, int64_t t1);

// VNNI-layout weights: tiles [t0, t1) of kVnniRows rows for all M activation rows, portable, AVX-512 VNNI
// and AVX2 (isa_avx2_a8.cpp: vpmaddwd on widened weights, for CPUs without VNNI). store_vnni stores row m's
// outputs n .. n + rows - 1 from acc (the sums of (w + 128) q).
void store_vnni(const Job& job, int64_t m, int64_t n, int rows, const int32_t* acc);
void rows_vnni_generic(const Job& job, int64_t t0, int64_t t1);
void rows_vnni_vnni(const Job& job, int64_t t0, int64_t t1);
void rows_vnni_avx2(const Job& job, int64_t t0, int64_t t1);
// The same on AMX tiles (isa_avx512vnni.cpp) for 2 to 16 rows, on CPUs with AMX-INT8 whose OS gave this process the
// tile state (amx_usable): the same integers, the same results.
void rows_vnni_amx(const Job& job, int64_t t0, int64_t t1);
bool amx_usable();

}  // namespace fastllm::cpu
