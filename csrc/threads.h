// Running the work of one tokenizer call on threads of their own (a batch's texts, a text's groups of
// pieces, a giant piece's parts): plain std::threads, started per call (~50 us), which is why the callers
// only split work of a few milliseconds or more.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <system_error>
#include <thread>
#include <vector>

namespace fastllm {

// Runs fn(i) for i in [0, count): 0 on this thread, the others on threads of their own (here, if no thread can
// be started). Rethrows the first exception once all have finished.
template <typename Fn>
void on_threads(size_t count, Fn fn) {
  std::vector<std::exception_ptr> error(count);
  auto run = [&](size_t i) {
    try {
      fn(i);
    } catch (...) {
      error[i] = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(count);
  size_t i = 1;
  try {
    for (; i < count; ++i) pool.emplace_back(run, i);
  } catch (const std::system_error&) {
    for (; i < count; ++i) run(i);
  }
  run(0);
  for (std::thread& t : pool) t.join();
  for (std::exception_ptr& e : error)
    if (e) std::rethrow_exception(e);
}

// Runs fn(i) for i in [0, n) on up to `threads` threads, each taking the next index when it is free (items of
// uneven cost balance). After an exception no new item starts; the first is rethrown once all have finished.
template <typename Fn>
void parallel_for(size_t n, size_t threads, Fn fn) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  on_threads(std::max<size_t>(1, std::min(threads, n)), [&](size_t) {
    try {
      for (size_t i; !failed.load() && (i = next.fetch_add(1)) < n;) fn(i);
    } catch (...) {
      failed.store(true);
      throw;
    }
  });
}

}  // namespace fastllm
