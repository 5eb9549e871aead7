// Dispatch of the small-M linear kernel: widens bf16 activations to fp32, splits the weight rows over
// the threads of the process-wide pool. Also the home of what all CPU kernels share (runtime.h): the
// instruction set, picked once from the CPU's features, and the pool.
#include "linear.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "api.h"
#include "bf16.h"
#include "linear_a8.h"
#include "linear_job.h"
#include "pool.h"
#include "runtime.h"

namespace fastllm::cpu {
namespace {

using RowsFn = void (*)(const Job&, int64_t, int64_t);

struct Isa {
  const char* name;
  RowsFn rows;
  AttendFn attend;
  bool supported;
};

Isa isa_table(int i) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
#else
  const bool avx512 = false, avx2 = false, bf16 = false;
#endif
  // "avx512bf16" is "avx512" with bf16 x bf16 calls on vdpbf16ps (isa_avx512bf16.cpp).
  const Isa table[] = {{"avx512bf16", rows_avx512bf16, attend_avx512, bf16},
                       {"avx512", rows_avx512, attend_avx512, avx512},
                       {"avx2", rows_avx2, attend_avx2, avx2},
                       {"generic", rows_generic, attend_generic, true}};
  return table[i];
}
constexpr int kIsas = 4;

int best_isa() {
  for (int i = 0; i < kIsas; ++i)
    if (isa_table(i).supported) return i;
  return kIsas - 1;
}

std::atomic<int> current_isa{best_isa()};

// Whether the AVX-512 VNNI copies run: the CPU has VNNI and an "avx512" ISA is in use.
bool vnni_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool vnni = __builtin_cpu_supports("avx512vnni");
  return vnni && std::strncmp(isa(), "avx512", 6) == 0;
#else
  return false;
#endif
}

// The W8A8 kernels (tiled or VNNI-layout weights): VNNI with the AVX-512 copies on CPUs that have it (VNNI-layout
// weights at 2-16 rows on AMX tiles under the "avx512bf16" ISA where AMX is usable), the AVX2 copy for VNNI-layout
// weights with the AVX2 ones, else the portable ones.
RowsFn a8_rows(bool vnni_layout, int64_t M) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (vnni_layout && M >= 2 && M <= 16 && std::strcmp(isa(), "avx512bf16") == 0 && amx_usable()) return rows_vnni_amx;
  if (vnni_isa()) return vnni_layout ? rows_vnni_vnni : rows_a8_vnni;
  if (vnni_layout && std::strcmp(isa(), "generic") != 0) return rows_vnni_avx2;
#endif
  return vnni_layout ? rows_vnni_generic : rows_a8_generic;
}

// The activation quantizer that goes with them: AVX-512 where the VNNI kernels run, else portable (same results).
using QuantizeFn = void (*)(const void*, DType, int64_t, int64_t, int64_t, int64_t, int32_t, uint8_t*, float*, int32_t*);
QuantizeFn a8_quantizer() { return vnni_isa() ? quantize_rows_vnni : quantize_rows; }

// Below this many weight elements per thread a call runs on the caller alone: handing out the work
// would cost more than it saves.
constexpr int64_t kMinWeightsPerThread = 1 << 16;

// The work of one call in chunks of `chunk` items, taken from `next` by whichever thread is free.
struct Split {
  const Job* job;
  RowsFn rows;
  int64_t items, chunk;
  std::atomic<int64_t> next{0};
};

void run_chunks(void* ctx, int) {
  Split& s = *static_cast<Split*>(ctx);
  for (;;) {
    const int64_t n0 = s.next.fetch_add(1, std::memory_order_relaxed) * s.chunk;
    if (n0 >= s.items) return;
    s.rows(*s.job, n0, std::min(s.items, n0 + s.chunk));
  }
}

// The process-wide pool, rebuilt when the thread count changes or in a forked child (whose copy of the
// pool has no threads behind it; that copy is leaked, never joined).
std::mutex pool_mu;
ThreadPool* pool = nullptr;
pid_t pool_pid = 0;

ThreadPool& pool_for(int threads) {
  if (pool == nullptr || pool_pid != getpid() || pool->size() != threads) {
    if (pool != nullptr && pool_pid == getpid()) delete pool;
    pool = new ThreadPool(threads);
    pool_pid = getpid();
  }
  return *pool;
}

}  // namespace

const char* isa() { return isa_table(current_isa.load()).name; }

AttendFn attend_fn() { return isa_table(current_isa.load()).attend; }

void run_on_pool(int threads, ThreadPool::Task task, void* ctx) {
  std::lock_guard<std::mutex> lock(pool_mu);
  pool_for(std::max(threads, 1)).run(task, ctx);
}

namespace {

// A decode step reads its weights in the same order every token, with other work between them (norms, attention,
// the graph's and the interpreter's own work) during which the pool's worker waits and DRAM idles. So each weight
// remembers the one read after it last time, and once its call is done, the worker prefetches that one's first
// kPrefetchBytes into its L2 while it waits; the next call starts with them in cache. Medians of 5-8 runs alternating
// in one process: GPT-2 W8A8 batch 1 5.32 -> 5.19 ms a token, batch 8 11.16 -> 11.00, bf16 batch 1 11.20 -> 10.98,
// SWA-MLA 262M bf16 24.31 -> 24.03.
struct NextWeight {
  const void* w;
  size_t bytes;
};
std::unordered_map<const void*, NextWeight> next_weight;  // guarded by pool_mu, as last_weight
const void* last_weight = nullptr;
constexpr size_t kPrefetchBytes = size_t{1} << 20;  // of the worker's 2 MB L2 here; 0.5-2 MB measured alike

void run_weight_on_pool(int threads, Split* split, const void* w, size_t bytes) {
  std::lock_guard<std::mutex> lock(pool_mu);
  ThreadPool& pool = pool_for(std::max(threads, 1));
  if (next_weight.size() > 4096) next_weight.clear();  // many models, or weights replaced: start over
  if (last_weight != nullptr && last_weight != w) next_weight[last_weight] = {w, bytes};
  last_weight = w;
  pool.run(run_chunks, split);
  const auto next = next_weight.find(w);
  if (next == next_weight.end())
    pool.prefetch(nullptr, 0);
  else
    pool.prefetch(next->second.w, std::min(next->second.bytes, kPrefetchBytes));
}

}  // namespace

bool force_isa(const char* name) {
  if (name == nullptr || *name == '\0') {
    current_isa.store(best_isa());
    return true;
  }
  for (int i = 0; i < kIsas; ++i) {
    if (std::strcmp(isa_table(i).name, name) != 0) continue;
    if (!isa_table(i).supported) return false;
    current_isa.store(i);
    return true;
  }
  return false;
}

namespace {
std::atomic<int> api_threads{0};
int get_threads() { return api_threads.load(std::memory_order_relaxed); }
}  // namespace

bool cores_set_aside() { return get_threads() > 0; }

void set_threads(int threads) { api_threads.store(threads > 0 ? threads : 0, std::memory_order_relaxed); }

const Api* api() {
  static const Api table{kApiVersion, &linear, &decode_attention, &get_threads, &greedy_rows};
  return &table;
}

namespace {

int64_t dtype_bytes(DType d) { return d == DType::f32 ? 4 : d == DType::bf16 ? 2 : 1; }

// The groups of a grouped call (LinearArgs::groups), each a call of its own on one thread, spread over the pool:
// a group's weight is a few hundred KB (MLA: 16 heads x (128, 256) bf16, 64 KB), too little to split.
struct Groups {
  const LinearArgs* args;
  std::atomic<int64_t> next{0};
};

void run_groups(void* ctx, int) {
  Groups& s = *static_cast<Groups*>(ctx);
  const LinearArgs& a = *s.args;
  const int64_t xb = dtype_bytes(a.x_dtype), wb = dtype_bytes(a.w_dtype);
  for (;;) {
    const int64_t g = s.next.fetch_add(1, std::memory_order_relaxed);
    if (g >= a.groups) return;
    LinearArgs one = a;
    one.groups = 1;
    one.x = static_cast<const char*>(a.x) + g * a.K * xb;
    one.w = static_cast<const char*>(a.w) + g * a.w_group_stride * wb;
    if (a.scale != nullptr) one.scale = a.scale + g * a.N;
    if (a.bias != nullptr) one.bias = static_cast<const char*>(a.bias) + g * a.N * xb;
    one.y = static_cast<char*>(a.y) + g * a.N * xb;
    linear(one, 1);
  }
}

}  // namespace

void linear(const LinearArgs& a, int threads) {
  if (a.M <= 0 || a.N <= 0) return;
  if (a.groups > 1) {
    if (a.w_packed || a.quantize_x) return;  // row-major weights only (the callers check)
    Groups s{&a};
    if (threads <= 1) return run_groups(&s, 0);
    return run_on_pool(threads, run_groups, &s);  // the pool's size kept: resizing restarts its threads
  }
  const bool packed = a.w_packed;
  const bool vnni = a.w_dtype == DType::u8;  // the VNNI layout: W8A8 only (the callers check)
  const bool a8 = packed && (a.w_dtype == DType::i8 || vnni) && a.quantize_x;
  if (vnni && !a8) return;
  const bool vnni2 = packed && a.w_vnni2;  // bf16 weights and activations (the callers check)
  if (vnni2 && (a.w_dtype != DType::bf16 || a.x_dtype != DType::bf16)) return;
  const int64_t cols = vnni ? kVnniCols : vnni2 ? kVnni2Cols : packed ? kPackCols : 1;
  const int64_t K = (a.K + cols - 1) / cols * cols;
  // W8A8: the activations as int8 codes (+ 128 against tiled weights), a scale per row, and for VNNI-layout
  // weights each row's sum of codes.
  std::vector<uint8_t> xq;
  std::vector<float> sx;
  std::vector<int32_t> xsum;
  if (a8) {
    xq.resize(static_cast<size_t>(a.M * K));
    sx.resize(static_cast<size_t>(a.M));
    if (vnni) xsum.resize(static_cast<size_t>(a.M));
    a8_quantizer()(a.x, a.x_dtype, a.M, a.K, a.ldx, K, vnni ? 0 : kA8Offset, xq.data(), sx.data(),
                  vnni ? xsum.data() : nullptr);
  }
  // bf16 x bf16 on the "avx512bf16" ISA: the activations as bf16 (M, K) contiguous, zero-padded to the packed width.
  // Calls of 4 or more rows stay on the widening kernel, in both layouts (which then keep giving the same bits):
  // from DRAM its row-major tiles of 2-4 weight rows read 7-10 GB/s there against vdpbf16ps's 6-9, packed tiles the
  // same either way (at one row: row-major 18 against 14, packed 21 against 17).
  // VNNI-2 weights take vdpbf16ps at every row count (the layout has no widening copy), or the portable kernel.
  const RowsFn isa_rows = isa_table(current_isa.load()).rows;
  const bool dp = isa_rows == rows_avx512bf16 && a.w_dtype == DType::bf16 && a.x_dtype == DType::bf16;
  std::vector<uint16_t> xb;
  if (!a8 && dp && (a.M < 4 || vnni2)) {
    xb.assign(static_cast<size_t>(a.M * K), 0);
    for (int64_t m = 0; m < a.M; ++m)
      std::memcpy(xb.data() + m * K, static_cast<const uint16_t*>(a.x) + m * a.ldx, static_cast<size_t>(a.K) * sizeof(uint16_t));
  }
  // Otherwise the activations as fp32 (M, K) contiguous, zero-padded to the packed width.
  std::vector<float> widened;
  const float* x = static_cast<const float*>(a.x);
  if (!a8 && xb.empty() && (a.x_dtype == DType::bf16 || a.ldx != K || K != a.K)) {
    widened.assign(static_cast<size_t>(a.M * K), 0.0f);
    for (int64_t m = 0; m < a.M; ++m) {
      float* dst = widened.data() + m * K;
      if (a.x_dtype == DType::f32) {
        std::memcpy(dst, static_cast<const float*>(a.x) + m * a.ldx, static_cast<size_t>(a.K) * sizeof(float));
        continue;
      }
      const uint16_t* src = static_cast<const uint16_t*>(a.x) + m * a.ldx;
      for (int64_t k = 0; k < a.K; ++k) dst[k] = widen(src[k]);
    }
    x = widened.data();
  }
  Job job{x, a.M, K, a.w, a.w_dtype, packed, a.N, packed ? K : a.ldw, a.scale, a.bias, a.y, a.x_dtype, a.ldy};
  job.vnni2 = vnni2;
  if (a8) {
    job.xq = xq.data();
    job.sx = sx.data();
    job.xsum = vnni ? xsum.data() : nullptr;
  }
  if (!xb.empty()) job.xb = xb.data();
  const RowsFn rows = a8 ? a8_rows(vnni, a.M) : vnni2 ? (dp ? rows_vnni2_avx512bf16 : rows_vnni2_generic) : isa_rows;
  // Work items: rows, or tiles of kPackRows (kVnniRows) rows when packed.
  const int64_t tile = vnni || vnni2 ? kVnniRows : kPackRows;
  const int64_t items = packed ? (a.N + tile - 1) / tile : a.N;
  const int64_t work_threads =
      std::min<int64_t>(std::max(threads, 1), std::max<int64_t>(1, a.N * a.K / kMinWeightsPerThread));
  if (work_threads <= 1) return rows(job, 0, items);
  // kChunksPerThread chunks per thread balance a loaded machine (a descheduled worker holds at most one
  // chunk); row chunks are multiples of 8 rows so that only a chunk's last tile can be partial; VNNI-2 chunks are
  // whole passes of its kernel (GPT-2's (768, 768) bf16 weight: 16 chunks of 3 tiles read 3 streams at a time).
  constexpr int64_t kChunksPerThread = 8;
  const int64_t align = vnni2 ? vnni2_pass_tiles(std::min<int64_t>(a.M, 4)) : packed ? 1 : 8;
  const int64_t chunk = ((items + work_threads * kChunksPerThread - 1) / (work_threads * kChunksPerThread) + align - 1) / align * align;
  Split split{&job, rows, items, chunk};
  const int64_t w_bytes = dtype_bytes(a.w_dtype) * (packed ? items * tile * K : a.N * a.ldw);
  run_weight_on_pool(threads, &split, a.w, static_cast<size_t>(w_bytes));
}

}  // namespace fastllm::cpu
