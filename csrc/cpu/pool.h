// A small persistent thread pool for the CPU kernels. run(task, ctx) calls task(ctx, 0) on the calling
// thread and task(ctx, i) on every worker that joins in time, and returns once the caller's call has
// returned and no worker is inside the task. Workers are optional helpers: the task must split its
// work dynamically (e.g. chunks taken from an atomic counter), so that the caller finishes it alone
// when a worker is descheduled (a loaded machine) instead of waiting for its static share.
//
// A decode step calls the kernels a few hundred times per token, tens of microseconds apart, so a
// worker spins (with pause) for a short while after each task before it sleeps on a condition
// variable; while the calls keep coming, handing out a task costs one atomic store, not a wake-up.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace fastllm::cpu {

class ThreadPool {
 public:
  using Task = void (*)(void* ctx, int index);

  // threads >= 1 counts the caller; spin_us: how long an idle worker spins before it sleeps.
  explicit ThreadPool(int threads, int spin_us = 500);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Not reentrant: one run at a time per pool (callers serialize).
  void run(Task task, void* ctx);

  // Asks worker 1, while it waits for the next run, to bring [p, p + bytes) into its cache with prefetch
  // instructions, 4 KB at a time, from the start; a run takes precedence (the worker joins it between two blocks)
  // and the prefetch goes on after it. Replaces the one asked before; bytes 0 cancels it. Prefetches never fault:
  // p may be any address, e.g. a weight freed since (the kernels' next-weight guess, linear.cpp).
  void prefetch(const void* p, size_t bytes);

 private:
  void work(int index);

  std::vector<std::thread> workers_;
  const int spin_us_;
  std::atomic<uint64_t> epoch_{0};    // bumped once per run; workers wait for it to change
  std::atomic<int> active_{0};        // workers between "joining" and leaving a run
  std::atomic<bool> finished_{true};  // the caller is done with the current run: no more joiners
  std::atomic<Task> task_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::mutex mu_;
  std::condition_variable wake_;
  int sleeping_ = 0;  // guarded by mu_
  std::atomic<bool> stop_{false};
  // The prefetch asked for: [pf_next_, pf_end_), both guarded by pf_mu_ (a few locks a call; the worker one per
  // 4 KB block).
  void prefetch_block();
  std::mutex pf_mu_;
  uintptr_t pf_next_ = 0, pf_end_ = 0;
  std::atomic<bool> pf_pending_{false};
};

}  // namespace fastllm::cpu
