// Unit tests of the CPU decode attention kernel (csrc/cpu/attention.h): every instruction set this CPU
// has, fp32 and bf16, rings that wrap, windows and sinks, GQA, several new queries per row, ALiBi and
// relative-position biases, 1..3 threads, against a double-precision reference written from the
// contract (positions, not slots: it finds each position's slot by the ring formula); and MLA's form over
// a paged pool with the log-sum-exp output.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "attention.h"
#include "check.h"

using fastllm::cpu::DecodeAttnArgs;
using fastllm::cpu::DType;

namespace {

float round_bf16(float f, uint16_t* out) {  // round to nearest even; returns the value it holds
  uint32_t b;
  std::memcpy(&b, &f, 4);
  b += 0x7fffu + ((b >> 16) & 1u);
  *out = static_cast<uint16_t>(b >> 16);
  b &= 0xffff0000u;
  std::memcpy(&f, &b, 4);
  return f;
}

struct Case {
  int64_t B, Tq, H, Hkv, D, Dv, C, window, sinks;
  bool biases;
  DType dtype;
  int threads;
  bool own_threads = false;  // run on the caller's runner (on_threads) instead of the kernels' pool
};

// A caller's runner for decode_attention (the torch operators pass torch's intra-op threads): one thread a task.
void on_threads(int n, void (*task)(void* ctx, int index), void* ctx) {
  std::vector<std::thread> threads;
  for (int i = 1; i < n; ++i) threads.emplace_back(task, ctx, i);
  task(ctx, 0);
  for (auto& t : threads) t.join();
}

// Largest |o - o_ref| over the outputs of one case (inputs drawn from rng).
double run_case(const Case& c, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  const int64_t nq = c.B * c.Tq * c.H * c.D, nk = c.B * c.C * c.Hkv * c.D, nv = c.B * c.C * c.Hkv * c.Dv;
  std::vector<float> q(nq), k(nk), v(nv), alibi(c.H), rel(c.H * 5);
  std::vector<uint16_t> q16(nq), k16(nk), v16(nv);
  for (auto* x : {&q, &k, &v, &rel})
    for (auto& f : *x) f = normal(rng);
  for (auto& f : alibi) f = std::abs(normal(rng)) * 0.3f;
  if (c.dtype == DType::bf16) {
    for (int64_t i = 0; i < nq; ++i) q[i] = round_bf16(q[i], &q16[i]);
    for (int64_t i = 0; i < nk; ++i) k[i] = round_bf16(k[i], &k16[i]);
    for (int64_t i = 0; i < nv; ++i) v[i] = round_bf16(v[i], &v16[i]);
  }
  std::vector<int64_t> lens(c.B);
  const int64_t top = c.window > 0 ? 3 * c.C : c.C;
  for (auto& n : lens) n = std::uniform_int_distribution<int64_t>(0, top)(rng);
  const bool bf = c.dtype == DType::bf16;
  std::vector<float> o(c.B * c.Tq * c.H * c.Dv);
  std::vector<uint16_t> o16(o.size());
  DecodeAttnArgs a;
  a.dtype = c.dtype;
  a.B = c.B, a.Tq = c.Tq, a.H = c.H, a.Hkv = c.Hkv, a.C = c.C, a.D = c.D, a.Dv = c.Dv;
  a.q = bf ? static_cast<const void*>(q16.data()) : q.data();
  a.q_sb = c.Tq * c.H * c.D, a.q_st = c.H * c.D, a.q_sh = c.D;
  a.k = bf ? static_cast<const void*>(k16.data()) : k.data();
  a.k_sb = c.C * c.Hkv * c.D, a.k_sc = c.Hkv * c.D, a.k_sh = c.D;
  a.v = bf ? static_cast<const void*>(v16.data()) : v.data();
  a.v_sb = c.C * c.Hkv * c.Dv, a.v_sc = c.Hkv * c.Dv, a.v_sh = c.Dv;
  a.seqlens = lens.data();
  a.window = c.window;
  a.sinks = c.sinks;
  a.scale = 1.0f / std::sqrt(static_cast<float>(c.D));
  a.alibi = c.biases ? alibi.data() : nullptr;
  a.rel_bias = c.biases ? rel.data() : nullptr;
  a.rel_len = 5;
  a.o = bf ? static_cast<void*>(o16.data()) : o.data();
  fastllm::cpu::decode_attention(a, c.threads, c.own_threads ? on_threads : nullptr);
  double worst = 0;
  const int64_t G = c.H / c.Hkv, ring = c.C - c.sinks;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t t = 0; t < c.Tq; ++t)
      for (int64_t h = 0; h < c.H; ++h) {
        const int64_t qpos = lens[b] - c.Tq + t, kv = h / G;
        std::vector<double> score, out(c.Dv, 0.0);
        std::vector<int64_t> slots;
        for (int64_t s = 0; s <= qpos; ++s) {
          const int64_t dist = qpos - s;
          if (c.window > 0 && dist >= c.window && s >= c.sinks) continue;
          const int64_t slot = s < c.sinks ? s : c.sinks + (s - c.sinks) % ring;
          double x = 0;
          for (int64_t d = 0; d < c.D; ++d)
            x += double(q[((b * c.Tq + t) * c.H + h) * c.D + d]) * k[((b * c.C + slot) * c.Hkv + kv) * c.D + d];
          x *= a.scale;
          if (c.biases) x += -double(alibi[h]) * dist + rel[h * 5 + (dist < 5 ? dist : 4)];
          score.push_back(x);
          slots.push_back(slot);
        }
        double m = -INFINITY, sum = 0;
        for (double x : score) m = std::max(m, x);
        for (size_t j = 0; j < score.size(); ++j) {
          const double p = std::exp(score[j] - m);
          sum += p;
          for (int64_t d = 0; d < c.Dv; ++d) out[d] += p * v[((b * c.C + slots[j]) * c.Hkv + kv) * c.Dv + d];
        }
        for (int64_t d = 0; d < c.Dv; ++d) {
          const int64_t at = ((b * c.Tq + t) * c.H + h) * c.Dv + d;
          uint32_t bits = static_cast<uint32_t>(o16[at]) << 16;
          float got = o[at];
          if (bf) std::memcpy(&got, &bits, 4);
          worst = std::max(worst, std::abs(got - (sum > 0 ? out[d] / sum : 0.0)));
        }
      }
  return worst;
}

void test_attention() {
  std::mt19937 rng(5);
  const Case shapes[] = {
      {1, 1, 12, 12, 64, 64, 160, 0, 0, false, DType::f32, 1}, {3, 1, 8, 2, 37, 29, 40, 0, 0, true, DType::f32, 1},
      {2, 3, 6, 3, 17, 17, 23, 9, 2, true, DType::f32, 1},     {2, 4, 4, 1, 20, 12, 31, 16, 3, false, DType::f32, 1},
      {3, 5, 8, 4, 33, 33, 19, 8, 4, true, DType::f32, 1},     {2, 8, 16, 1, 8, 5, 30, 20, 0, false, DType::f32, 1},
      {2, 2, 6, 1, 45, 37, 50, 0, 0, false, DType::f32, 1},  // one kv head: the shared passes with tails
  };
  for (const char* isa : {"avx512bf16", "avx512", "avx2", "generic"}) {
    if (!fastllm::cpu::force_isa(isa)) continue;
    for (Case c : shapes)
      for (DType dtype : {DType::f32, DType::bf16})
        for (int threads : {1, 2, 3, -3}) {  // -3: 3 threads of the caller's runner
          c.dtype = dtype;
          c.threads = threads < 0 ? -threads : threads;
          c.own_threads = threads < 0;
          const double err = run_case(c, rng), tol = dtype == DType::f32 ? 2e-6 : 1.6e-2;  // bf16: output rounding
          if (err > tol)
            std::fprintf(stderr, "%s B=%lld Tq=%lld H=%lld/%lld W=%lld threads=%d: error %g\n", isa,
                         static_cast<long long>(c.B), static_cast<long long>(c.Tq), static_cast<long long>(c.H),
                         static_cast<long long>(c.Hkv), static_cast<long long>(c.window), threads, err);
          CHECK(err <= tol);
        }
  }
  CHECK(fastllm::cpu::force_isa(""));
}

// MLA's form (fastllm.kernels.mla_decode): one kv head for all H query heads, k the whole latent row
// (R + Dr), v its first R values (the same memory), a paged pool addressed through a block table whose
// entries past a row's pages are garbage (-1), pages no row names holding NaN; o and the log-sum-exp.
void test_mla_paged() {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal;
  for (const char* isa : {"avx512bf16", "avx512", "avx2", "generic"}) {
    if (!fastllm::cpu::force_isa(isa)) continue;
    for (int threads : {1, 3}) {
      const int64_t B = 3, Tq = 2, H = 5, R = 24, Dr = 7, D = R + Dr, page = 16, per_row = 4, pool = B * per_row + 2;
      std::vector<float> q(B * Tq * H * D), kv(pool * page * D, NAN);
      for (auto& f : q) f = normal(rng);
      std::vector<int64_t> perm(pool), table(B * per_row, -1), lens = {37, 0, 64};
      for (int64_t i = 0; i < pool; ++i) perm[i] = i;
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < (lens[b] + page - 1) / page; ++i) {
          table[b * per_row + i] = perm[b * per_row + i];
          for (int64_t r = 0; r < page; ++r)
            for (int64_t d = 0; d < D; ++d) kv[(perm[b * per_row + i] * page + r) * D + d] = normal(rng);
        }
      std::vector<float> o(B * Tq * H * R, NAN), lse(B * Tq * H, NAN);
      DecodeAttnArgs a;
      a.B = B, a.Tq = Tq, a.H = H, a.Hkv = 1, a.C = page, a.D = D, a.Dv = R;
      a.q = q.data(), a.q_sb = Tq * H * D, a.q_st = H * D, a.q_sh = D;
      a.k = kv.data(), a.k_sb = page * D, a.k_sc = D, a.k_sh = 0;
      a.v = kv.data(), a.v_sb = page * D, a.v_sc = D, a.v_sh = 0;
      a.seqlens = lens.data();
      a.scale = 0.3f;
      a.block_table = table.data(), a.bt_stride = per_row, a.pages_per_row = per_row, a.page_size = page;
      a.o = o.data(), a.lse = lse.data();
      fastllm::cpu::decode_attention(a, threads);
      double worst = 0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < Tq; ++t)
          for (int64_t h = 0; h < H; ++h) {
            const int64_t qpos = lens[b] - Tq + t, at = (b * Tq + t) * H + h;
            std::vector<double> score;
            std::vector<const float*> rows;
            for (int64_t s = 0; s <= qpos; ++s) {
              const float* row = kv.data() + (table[b * per_row + s / page] * page + s % page) * D;
              double x = 0;
              for (int64_t d = 0; d < D; ++d) x += double(q[at * D + d]) * row[d];
              score.push_back(x * a.scale);
              rows.push_back(row);
            }
            double m = -INFINITY, sum = 0;
            for (double x : score) m = std::max(m, x);
            std::vector<double> out(R, 0.0);
            for (size_t j = 0; j < score.size(); ++j) {
              const double p = std::exp(score[j] - m);
              sum += p;
              for (int64_t d = 0; d < R; ++d) out[d] += p * rows[j][d];
            }
            if (score.empty()) {
              CHECK(std::isinf(lse[at]) && lse[at] < 0);
            } else {
              worst = std::max(worst, std::abs(lse[at] - (m + std::log(sum))));
            }
            for (int64_t d = 0; d < R; ++d)
              worst = std::max(worst, std::abs(o[at * R + d] - (sum > 0 ? out[d] / sum : 0.0)));
          }
      if (worst > 2e-5) std::fprintf(stderr, "mla paged %s threads=%d: error %g\n", isa, threads, worst);
      CHECK(worst <= 2e-5);
    }
  }
  CHECK(fastllm::cpu::force_isa(""));
}

}  // namespace

int main() {
  test_attention();
  test_mla_paged();
  if (g_failures) std::fprintf(stderr, "%d checks failed\n", g_failures);
  return g_failures ? 1 : 0;
}
