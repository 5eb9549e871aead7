// Running a few pieces of one encode call on threads of their own (a text's groups of pieces, a giant
// piece's parts): plain std::threads, started per call (~50 us), which is why the callers only split work
// of a few milliseconds or more.
#pragma once

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

}  // namespace fastllm
