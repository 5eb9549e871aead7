// The C++ entry points of fastllm._cpu that other native code calls: a table of function pointers the
// module exports as a capsule (`fastllm._cpu._api`). fastllm's torch operators (csrc/torch/ops.cpp, a
// separate library built against libtorch) take the kernels from it, so the kernels are compiled once,
// with their per-ISA flags, and both libraries run them on one thread pool.
#pragma once

#include "attention.h"
#include "linear.h"
#include "sampling.h"

namespace fastllm::cpu {

// Bumped whenever a struct below or the table changes layout: the operator library refuses a mismatch.
constexpr int kApiVersion = 5;

struct Api {
  int version;
  void (*linear)(const LinearArgs& args, int threads);
  void (*decode_attention)(const DecodeAttnArgs& args, int threads, ParallelRun run);
  // The thread count `fastllm.kernels.cpu.decode_threads` set aside for the kernels; 0 outside it (the
  // caller then uses torch's intra-op count, as the Python launchers do).
  int (*threads)();
  decltype(&greedy_rows) greedy;
};

const Api* api();

// Sets what Api::threads returns (fastllm.kernels.cpu.decode_threads on entry and exit).
void set_threads(int threads);

}  // namespace fastllm::cpu
