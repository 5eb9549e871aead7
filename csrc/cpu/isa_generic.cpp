// The CPU kernels (small-M linear, decode attention) in portable C++ (any CPU): 8-float "vectors" the compiler maps onto
// whatever SIMD the baseline target has.
#include <cstdint>

#include "attention.h"
#include "linear_job.h"

namespace fastllm::cpu::generic {

struct V {
  static constexpr int L = 8;
  static constexpr int kRegs = 16;
  struct reg {
    float v[L];
  };
  static reg zero() { return reg{}; }
  static reg load(const float* p) {
    reg r;
    for (int i = 0; i < L; ++i) r.v[i] = p[i];
    return r;
  }
  static reg load(const uint16_t* p) {  // bf16: the 16 bits are the top half of the fp32
    reg r;
    for (int i = 0; i < L; ++i) {
      const uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
      __builtin_memcpy(&r.v[i], &bits, 4);
    }
    return r;
  }
  static reg load(const int8_t* p) {
    reg r;
    for (int i = 0; i < L; ++i) r.v[i] = static_cast<float>(p[i]);
    return r;
  }
  static reg set1(float f) {
    reg r;
    for (int i = 0; i < L; ++i) r.v[i] = f;
    return r;
  }
  static void store(float* p, reg a) {
    for (int i = 0; i < L; ++i) p[i] = a.v[i];
  }
  static reg fma(reg a, reg b, reg c) {
    for (int i = 0; i < L; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
  }
  static float hsum(reg a) {
    float s = 0.0f;
    for (int i = 0; i < L; ++i) s += a.v[i];
    return s;
  }
  static void hsum4(reg a, reg b, reg c, reg d, float* out) {
    out[0] = hsum(a), out[1] = hsum(b), out[2] = hsum(c), out[3] = hsum(d);
  }
};

#include "linear_kernel.h"
#include "attention_kernel.h"

}  // namespace fastllm::cpu::generic

void fastllm::cpu::rows_generic(const Job& job, int64_t n0, int64_t n1) { generic::run_rows(job, n0, n1); }
void fastllm::cpu::attend_generic(const DecodeAttnArgs& args, int64_t item, float* scratch) {
  generic::run_attend(args, item, scratch);
}
