// Greedy decoding on the CPU: the first index of each row's largest logit, and what is wrong with a row
// (the sampler's error bits, kernels/reference/sampling.py: FLAG_NAN, FLAG_POSINF, FLAG_NEG_INF_ROW).
// torch's argmax walks a row one element at a time (~180 us for GPT-2's 50257 logits on one core); the
// portable passes (max, NaN, first index of the max) take ~47 us from L2, the AVX-512 copy ~8.5 (one pass for
// the max and NaN, then the search).
#pragma once

#include <cstdint>

#include "linear.h"

namespace fastllm::cpu {

constexpr int kFlagNan = 1, kFlagPosInf = 2, kFlagNegInfRow = 4;

// out[b] = the first v with logits[b, v] == max_v logits[b, v] (for a row holding NaN: its first NaN,
// as torch.argmax). logits: (B, V) f32 or bf16, row stride ld; V >= 1. Returns the OR of the rows' flags.
int greedy_rows(const void* logits, DType dtype, int64_t B, int64_t V, int64_t ld, int64_t* out);
// The same in AVX-512 (isa_avx512.cpp; greedy_rows calls it under the "avx512" ISAs): the same results.
int greedy_rows_avx512(const void* logits, DType dtype, int64_t B, int64_t V, int64_t ld, int64_t* out);

}  // namespace fastllm::cpu
