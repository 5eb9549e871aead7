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
  static reg add(reg a, reg b) {
    for (int i = 0; i < L; ++i) a.v[i] += b.v[i];
    return a;
  }
  static reg max(reg a, reg b) {  // b where a is NaN
    for (int i = 0; i < L; ++i) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
    return a;
  }
  static float hmax(reg a) {
    float m = a.v[0];
    for (int i = 1; i < L; ++i) m = a.v[i] > m ? a.v[i] : m;
    return m;
  }
  static reg exp_minus(reg x, reg m) {  // exp(x - m), 0 where x is -inf
    for (int i = 0; i < L; ++i) x.v[i] = x.v[i] == -__builtin_inff() ? 0.0f : __builtin_expf(x.v[i] - m.v[i]);
    return x;
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

// VNNI-2 bf16 weights (linear.h), tiles [t0, t1): per tile and activation row, the 16 rows' sums in fp32, a pair
// of columns a step (its two products added first, as vdpbf16ps adds them).
inline void vnni2_rows(const Job& j, int64_t t0, int64_t t1) {
  const uint16_t* w = static_cast<const uint16_t*>(j.w);
  const int64_t groups = j.K / kVnni2Cols;
  for (int64_t t = t0; t < t1; ++t) {
    const uint16_t* tile = w + t * kVnniRows * j.K;
    const int64_t n = t * kVnniRows;
    const int rows = static_cast<int>(j.N - n < kVnniRows ? j.N - n : kVnniRows);
    for (int64_t m = 0; m < j.M; ++m) {
      const float* x = j.x + m * j.K;
      float dot[kVnniRows] = {};
      for (int64_t g = 0; g < groups; ++g) {
        const uint16_t* v = tile + g * kVnniRows * kVnni2Cols;
        for (int r = 0; r < kVnniRows; ++r)
          dot[r] += x[2 * g] * bf16_to_f32(v[2 * r]) + x[2 * g + 1] * bf16_to_f32(v[2 * r + 1]);
      }
      store_tile<1, kVnniRows>(j, m, n, dot, rows);
    }
  }
}

}  // namespace fastllm::cpu::generic

void fastllm::cpu::rows_vnni2_generic(const Job& job, int64_t t0, int64_t t1) { generic::vnni2_rows(job, t0, t1); }
void fastllm::cpu::rows_generic(const Job& job, int64_t n0, int64_t n1) { generic::run_rows(job, n0, n1); }
void fastllm::cpu::attend_generic(const DecodeAttnArgs& args, int64_t item, int64_t rows, float* scratch) {
  generic::run_attend(args, item, rows, scratch);
}
