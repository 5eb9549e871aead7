// Decode attention on the CPU: Tq new queries per row against a ring-buffer KV cache, the layout and
// semantics of fastllm.kernels.swa_decode (kernels/_attention.py; kernels/reference/attention.py is the
// oracle). Position s < sinks lives in slot s, a later s in slot sinks + (s - sinks) % (C - sinks).
// Query t of row b sits at position L_b - Tq + t (L_b = seqlens[b], the new tokens already cached) and
// attends to the positions s <= its own with qpos - s < window (every one when window <= 0) and to the
// sink positions s < sinks; a query at a negative position outputs zeros. Only the slots of those
// positions are read (slots never written may hold NaN).
//
// MLA decode (fastllm.kernels.mla_decode) is the same computation with one kv head shared by all H
// query heads, k = the whole latent row [c_kv, k_rope] and v = its first R values (v points into k's
// rows), no window and no sinks; its pages (block_table) and log-sum-exp output are options here.
//
// A work item takes up to kAttnRows (query, head) rows of one batch row, neighbouring kv heads together: it scores
// each key once per row, reading a key position's heads side by side (GQA rows of one kv head share its keys),
// takes the softmax in fp32 (two passes over the scores: max, then exp and sum)
// and accumulates p * v in fp32; q, the caches and o are fp32 or bf16 (one dtype), ALiBi slopes and
// relative-position biases fp32. The caller (kernels/cpu/attention.py) checks shapes, strides and the
// ring's capacity (C >= window + sinks + Tq - 1 once it has wrapped) before passing pointers.
#pragma once

#include <cstdint>

#include "linear.h"

namespace fastllm::cpu {

struct DecodeAttnArgs {
  DType dtype = DType::f32;  // of q, k, v and o: f32 or bf16
  int64_t B = 0, Tq = 0, H = 0, Hkv = 0, C = 0, D = 0, Dv = 0;
  const void* q = nullptr;  // (B, Tq, H, D), strides in elements, the last one 1
  int64_t q_sb = 0, q_st = 0, q_sh = 0;
  const void* k = nullptr;  // (B, C, Hkv, D)
  int64_t k_sb = 0, k_sc = 0, k_sh = 0;
  const void* v = nullptr;  // (B, C, Hkv, Dv)
  int64_t v_sb = 0, v_sc = 0, v_sh = 0;
  const int64_t* seqlens = nullptr;  // (B,) tokens per row, the Tq new ones included; 0 <= L_b
  int64_t window = 0;                // <= 0: no window
  int64_t sinks = 0;                 // 0 <= sinks < C
  float scale = 1.0f;
  const float* alibi = nullptr;     // (H,) or null: score -= slope[h] * (qpos - s)
  const float* rel_bias = nullptr;  // (H, rel_len) or null: score += rel_bias[h, min(qpos - s, rel_len - 1)]
  int64_t rel_len = 0;
  // Paged cache (null: rows of B slots as above): position s of row b lives in page
  // block_table[b * bt_stride + s / page_size], row s % page_size; k_sb and v_sb are then page strides.
  // Paged caches have no ring (window <= 0, sinks 0); the caller checks every page index named.
  const int64_t* block_table = nullptr;
  int64_t bt_stride = 0, pages_per_row = 0, page_size = 0;
  void* o = nullptr;      // (B, Tq, H, Dv) contiguous
  float* lse = nullptr;   // (B, Tq, H) contiguous or null: max + log(sum exp) of the scaled scores (-inf: no key)
};

// Most keys one row can have: its slots, or its pages' rows.
inline int64_t attn_key_capacity(const DecodeAttnArgs& a) {
  return a.block_table != nullptr ? a.pages_per_row * a.page_size : a.C;
}

// The vector exponentials of the softmax (the ISAs' V::exp_minus): x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 in a
// short high part and a low one, so n ln 2 is exact), e^r = 1 + r + r^2 p(r) with p of degree 5 (Cephes' expf: within
// 2 ulp), then scaled by 2^n.
constexpr float kExpLog2e = 1.44269504088896341f, kExpLn2Hi = 0.693359375f, kExpLn2Lo = -2.12194440e-4f;
constexpr float kExpPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                               4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

// Query rows per work item: up to this many (query, head) pairs of one batch row, neighbouring kv heads together.
constexpr int kAttnRows = 8;

// fp32 scratch one work item needs (the caller gives each thread its own).
int64_t decode_attention_scratch(const DecodeAttnArgs& args);

// Runs task(ctx, i) for i in [0, threads) and returns when all have returned, on threads of the caller's choice.
using ParallelRun = void (*)(int threads, void (*task)(void* ctx, int index), void* ctx);

// Runs on `threads` threads: the caller and threads - 1 workers of the pool the linear kernels use, or, with
// `run`, the threads it runs its tasks on (fastllm's torch operators pass torch's intra-op pool there outside
// decode_threads: its threads spin after each torch op of a compiled step, and woken pool workers would compete
// with them for the cores).
void decode_attention(const DecodeAttnArgs& args, int threads, ParallelRun run = nullptr);

// One work item (attention_kernel.h), one copy per instruction set (isa_*.cpp).
void attend_avx512(const DecodeAttnArgs& args, int64_t item, int64_t rows, float* scratch);
void attend_avx2(const DecodeAttnArgs& args, int64_t item, int64_t rows, float* scratch);
void attend_generic(const DecodeAttnArgs& args, int64_t item, int64_t rows, float* scratch);

}  // namespace fastllm::cpu
