#include "pool.h"

#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FASTLLM_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define FASTLLM_PAUSE() asm volatile("yield")
#else
#define FASTLLM_PAUSE() ((void)0)
#endif

namespace fastllm::cpu {

ThreadPool::ThreadPool(int threads, int spin_us) : spin_us_(spin_us) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { work(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
  }
  epoch_.fetch_add(1, std::memory_order_release);
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run(Task task, void* ctx) {
  if (workers_.empty()) return task(ctx, 0);
  task_.store(task);
  ctx_.store(ctx);
  finished_.store(false);
  epoch_.fetch_add(1);  // seq_cst: publishes task_, ctx_, finished_
  {
    // A worker that checked the epoch before the bump and is about to sleep holds mu_ until it waits,
    // so taking mu_ here orders this notify after its wait: no wake-up is lost.
    std::lock_guard<std::mutex> lock(mu_);
    if (sleeping_ > 0) wake_.notify_all();
  }
  task(ctx, 0);
  // Close the run, then wait for the workers inside it. A worker joins by incrementing active_ before
  // it reads finished_ (both seq_cst): either it sees finished_ and stays out, or this loop sees it.
  finished_.store(true);
  for (int spins = 0; active_.load() != 0; ++spins) {
    if (spins < 4096)
      FASTLLM_PAUSE();
    else
      std::this_thread::yield();  // a descheduled worker needs this core to finish its chunk
  }
}

void ThreadPool::prefetch(const void* p, size_t bytes) {
  if (workers_.empty()) return;
  std::lock_guard<std::mutex> lock(pf_mu_);
  pf_next_ = reinterpret_cast<uintptr_t>(p);
  pf_end_ = pf_next_ + bytes;
  pf_pending_.store(bytes > 0, std::memory_order_release);
}

// The next 4 KB block of the prefetch asked for (none once it is done or cancelled).
void ThreadPool::prefetch_block() {
  constexpr uintptr_t kBlock = 4096;
  uintptr_t p, end;
  {
    std::lock_guard<std::mutex> lock(pf_mu_);
    p = pf_next_;
    end = p + kBlock < pf_end_ ? p + kBlock : pf_end_;
    pf_next_ = end;
    if (end >= pf_end_) pf_pending_.store(false, std::memory_order_relaxed);
  }
#if defined(__x86_64__) || defined(__i386__)
  for (; p < end; p += 64) _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1);
#elif defined(__GNUC__)
  for (; p < end; p += 64) __builtin_prefetch(reinterpret_cast<const void*>(p), 0, 2);
#endif
}

void ThreadPool::work(int index) {
  uint64_t seen = 0;
  for (;;) {
    auto start = std::chrono::steady_clock::now();
    for (int spins = 0; epoch_.load(std::memory_order_acquire) == seen; ++spins) {
      if (index == 1 && pf_pending_.load(std::memory_order_acquire)) {
        prefetch_block();
        start = std::chrono::steady_clock::now();  // busy, not idle
        continue;
      }
      FASTLLM_PAUSE();
      if ((spins & 255) != 255) continue;
      if (std::chrono::steady_clock::now() - start < std::chrono::microseconds(spin_us_)) continue;
      std::unique_lock<std::mutex> lock(mu_);
      ++sleeping_;
      wake_.wait(lock, [&] { return stop_.load() || epoch_.load(std::memory_order_acquire) != seen; });
      --sleeping_;
      break;
    }
    if (stop_.load()) return;
    seen = epoch_.load();
    active_.fetch_add(1);
    // task_ and ctx_ are those of the run now open, if any (the caller changes them only while no
    // worker is active); a worker late for its run may so join the next one, which is just as good.
    if (!finished_.load()) task_.load()(ctx_.load(), index);
    active_.fetch_sub(1);
  }
}

}  // namespace fastllm::cpu
