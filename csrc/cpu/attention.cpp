// Dispatch of the decode attention kernel: work items (batch row, group of query rows) taken from an
// atomic counter by the threads of the pool, each thread with its own scratch.
#include "attention.h"

#include <algorithm>
#include <atomic>
#include <memory>

#include "runtime.h"

namespace fastllm::cpu {
namespace {

// Below this many multiply-adds in all (scores and p * v) per thread a call runs on fewer threads. Inside
// decode_threads (cores_set_aside), or on the caller's runner, splitting small calls pays: GPT-2 W8A8 batch 1, 12
// heads at 16-144 keys, 5.97 -> 5.34 ms per token (alternating runs). Otherwise torch's OpenMP threads may be
// spinning after a torch op and a woken pool competes with them for the cores: GPT-2 fp32 compiled batch 1 13.9
// -> 17.2 ms per token with 2^14 there; at prompt 512 its attention took 665 us a layer on two pool threads, ~320
// on one and ~330 on two of torch's own threads (ops.cpp passes them as the runner: no worse than one thread in
// the model at 600-880 keys; two uncontested threads, the pool's inside decode_threads, ran 600-8000 keys alone at
// 1.8-1.9x one thread's speed).
constexpr int64_t kMinWorkPerThread = 1 << 17;
constexpr int64_t kMinWorkPerThreadSetAside = 1 << 14;

struct Items {
  const DecodeAttnArgs* args;
  AttendFn attend;
  int64_t items, rows, scratch_floats;
  float* scratch;  // scratch_floats per thread index
  std::atomic<int64_t> next{0};
};

void run_items(void* ctx, int index) {
  Items& s = *static_cast<Items*>(ctx);
  float* scratch = s.scratch + index * s.scratch_floats;
  for (;;) {
    const int64_t item = s.next.fetch_add(1, std::memory_order_relaxed);
    if (item >= s.items) return;
    s.attend(*s.args, item, s.rows, scratch);
  }
}

}  // namespace

int64_t decode_attention_scratch(const DecodeAttnArgs& a) {
  const int64_t pad = 16;  // attention_kernel.h's attn_padded
  // queries, accumulators and scores per row, then two int64 offsets per key
  const int64_t cap = attn_key_capacity(a);
  return kAttnRows * ((a.D + pad - 1) / pad * pad + (a.Dv + pad - 1) / pad * pad + cap) + 4 * cap;
}

void decode_attention(const DecodeAttnArgs& a, int threads, ParallelRun run) {
  if (a.B <= 0 || a.Tq <= 0 || a.H <= 0) return;
  int64_t longest = 0;
  for (int64_t b = 0; b < a.B; ++b) longest = std::max(longest, std::min(a.seqlens[b], attn_key_capacity(a)));
  const int64_t work = a.B * a.Tq * a.H * longest * (a.D + a.Dv);
  const int64_t min_work = run != nullptr || cores_set_aside() ? kMinWorkPerThreadSetAside : kMinWorkPerThread;
  const int64_t want = std::min<int64_t>(std::max(threads, 1), std::max<int64_t>(1, work / min_work));
  // Work items: up to kAttnRows query rows (query, head) of one batch row, neighbouring kv heads together; as few
  // rows per item as give each thread an item (GPT-2, 12 heads on 2 threads: 6 + 6, not 8 + 4).
  const int64_t R = a.H * a.Tq, items_per_row = (want + a.B - 1) / a.B;
  const int64_t rows = std::min<int64_t>(kAttnRows, (R + items_per_row - 1) / items_per_row);
  const int64_t items = a.B * ((R + rows - 1) / rows);
  const int n = static_cast<int>(std::min<int64_t>(want, items));
  // The pool keeps the size the linear kernels use (resizing it restarts its threads); a thread index
  // of it that finds no item left just returns.
  const int pool = n <= 1 ? 1 : run != nullptr ? n : std::max(threads, 1);
  const int64_t per = decode_attention_scratch(a);
  std::unique_ptr<float[]> scratch(new float[static_cast<size_t>(per * pool)]);
  Items s{&a, attend_fn(), items, rows, per, scratch.get()};
  if (pool == 1) return run_items(&s, 0);
  if (run != nullptr) return run(pool, run_items, &s);
  run_on_pool(pool, run_items, &s);
}

}  // namespace fastllm::cpu
