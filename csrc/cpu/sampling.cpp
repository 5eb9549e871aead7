#include "sampling.h"

#include <cmath>
#include <cstring>

#include "bf16.h"

namespace fastllm::cpu {
namespace {

// Three passes the compiler vectorizes (each loop alone: merged, they are not): the max, whether a NaN is
// present (tracked apart: whether a NaN survives a comparison depends on the operand order), and the
// first index holding the max, in chunks that stop at the first chunk holding it.
template <class T>
int greedy_row(const T* z, int64_t V, int64_t* out) {
  constexpr int kLanes = 16;
  float lane[kLanes];
  for (float& m : lane) m = -INFINITY;
  int64_t v = 0;
  for (; v + kLanes <= V; v += kLanes)
    for (int i = 0; i < kLanes; ++i) {
      const float x = widen(z[v + i]);
      lane[i] = x > lane[i] ? x : lane[i];
    }
  float m = -INFINITY;
  for (float x : lane) m = x > m ? x : m;
  for (; v < V; ++v) m = widen(z[v]) > m ? widen(z[v]) : m;
  uint32_t nan_lane[kLanes] = {};
  for (v = 0; v + kLanes <= V; v += kLanes)
    for (int i = 0; i < kLanes; ++i) nan_lane[i] |= widen(z[v + i]) != widen(z[v + i]);
  bool nan = false;
  for (uint32_t x : nan_lane) nan |= x != 0;
  for (; v < V; ++v) nan |= widen(z[v]) != widen(z[v]);
  v = 0;
  if (!nan) {
    for (; v + kLanes <= V; v += kLanes) {
      uint32_t hit = 0;
      for (int i = 0; i < kLanes; ++i) hit |= widen(z[v + i]) == m;
      if (hit) break;
    }
  }
  for (; v < V; ++v) {  // within the chunk; with a NaN present, torch.argmax returns the first NaN
    const float x = widen(z[v]);
    if (nan ? x != x : x == m) break;
  }
  *out = v;
  if (nan) return kFlagNan;
  if (m == INFINITY) return kFlagPosInf;
  if (m == -INFINITY) return kFlagNegInfRow;
  return 0;
}

}  // namespace

int greedy_rows(const void* logits, DType dtype, int64_t B, int64_t V, int64_t ld, int64_t* out) {
  if (std::strncmp(isa(), "avx512", 6) == 0) return greedy_rows_avx512(logits, dtype, B, V, ld, out);
  int flags = 0;
  for (int64_t b = 0; b < B; ++b) {
    if (dtype == DType::f32)
      flags |= greedy_row(static_cast<const float*>(logits) + b * ld, V, out + b);
    else
      flags |= greedy_row(static_cast<const uint16_t*>(logits) + b * ld, V, out + b);
  }
  return flags;
}

}  // namespace fastllm::cpu
