// What every CPU kernel shares (owned by linear.cpp): the instruction set picked at run time and the
// process-wide thread pool.
#pragma once

#include <cstdint>

#include "attention.h"
#include "pool.h"

namespace fastllm::cpu {

using AttendFn = void (*)(const DecodeAttnArgs&, int64_t item, int64_t rows, float* scratch);

// The decode attention work item of the current instruction set (isa()).
AttendFn attend_fn();

// task(ctx, i) on `threads` threads of the pool, i = 0 on the caller (ThreadPool::run); one run at a time
// in the process.
void run_on_pool(int threads, ThreadPool::Task task, void* ctx);

// Whether fastllm.kernels.cpu.decode_threads set the kernels' thread count aside (api.h: set_threads): torch's
// own ops then run on one thread, so the pool's threads have the cores to themselves between kernel calls.
bool cores_set_aside();

}  // namespace fastllm::cpu
