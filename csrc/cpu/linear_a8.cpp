// W8A8 linear layers (linear_a8.h): the activation quantizer, the output stores and the portable kernel.
#include "linear_a8.h"

#include <cmath>

#include "bf16.h"

#if defined(__linux__) && defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace fastllm::cpu {
namespace {

float load(const void* x, DType dtype, int64_t i) {
  return dtype == DType::f32 ? static_cast<const float*>(x)[i] : widen(static_cast<const uint16_t*>(x)[i]);
}

// One row, in loops the compiler vectorizes (no libm calls): codes round half to even by the 1.5 * 2^23
// trick, exact for |v| <= 127 in the default rounding mode (the operands are clamped first, which
// commutes with rounding at the +-127 bounds).
template <class T>
void quantize_row(const T* x, int64_t K, int64_t Kp, int32_t offset, uint8_t* q, float* sx, int32_t* xsum) {
  float amax = 0.0f;
  uint32_t finite = 1;
  for (int64_t k = 0; k < K; ++k) {
    const float a = std::fabs(widen(x[k]));
    finite &= a <= 3.4028235e38f;  // false for inf and NaN
    amax = a > amax ? a : amax;
  }
  const float s = finite ? amax / 127.0f : NAN;
  *sx = s;
  if (xsum != nullptr) *xsum = 0;
  if (!(s > 0.0f)) {  // zeros, or a row with NaN / inf
    for (int64_t k = 0; k < Kp; ++k) q[k] = static_cast<uint8_t>(offset);
    return;
  }
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  int32_t sum = 0;
  for (int64_t k = 0; k < K; ++k) {
    float v = widen(x[k]) / s;
    v = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
    const int32_t r = static_cast<int32_t>((v + kRound) - kRound);
    sum += r;
    q[k] = static_cast<uint8_t>(r + offset);  // offset 0: the int8 code's two's-complement byte
  }
  for (int64_t k = K; k < Kp; ++k) q[k] = static_cast<uint8_t>(offset);
  if (xsum != nullptr) *xsum = sum;
}

}  // namespace

void quantize_rows(const void* x, DType dtype, int64_t M, int64_t K, int64_t ldx, int64_t Kp, int32_t offset,
                   uint8_t* xq, float* sx, int32_t* xsum) {
  for (int64_t m = 0; m < M; ++m) {
    int32_t* sum = xsum == nullptr ? nullptr : xsum + m;
    if (dtype == DType::f32)
      quantize_row(static_cast<const float*>(x) + m * ldx, K, Kp, offset, xq + m * Kp, sx + m, sum);
    else
      quantize_row(static_cast<const uint16_t*>(x) + m * ldx, K, Kp, offset, xq + m * Kp, sx + m, sum);
  }
}

void store_a8(const Job& j, int64_t m0, int B, int64_t n, int rows, const int32_t* dot, const int32_t* wsum) {
  for (int r = 0; r < rows; ++r) {
    float bias = 0.0f;
    if (j.bias != nullptr) bias = load(j.bias, j.y_dtype, n + r);
    for (int b = 0; b < B; ++b) {
      const int32_t acc = dot[b * kPackRows + r] - kA8Offset * wsum[r];
      const float v = static_cast<float>(acc) * j.sx[m0 + b] * j.scale[n + r] + bias;
      const int64_t at = (m0 + b) * j.ldy + n + r;
      if (j.y_dtype == DType::f32)
        static_cast<float*>(j.y)[at] = v;
      else
        static_cast<uint16_t*>(j.y)[at] = to_bf16(v);
    }
  }
}

void rows_a8_generic(const Job& j, int64_t t0, int64_t t1) {
  constexpr int R = kPackRows;
  const int64_t blocks = j.K / kPackCols;
  const int8_t* w = static_cast<const int8_t*>(j.w);
  int32_t dot[R], wsum[R];
  for (int64_t t = t0; t < t1; ++t) {
    const int8_t* tile = w + t * R * j.K;
    const int64_t n = t * R;
    const int rows = static_cast<int>(j.N - n < R ? j.N - n : R);
    for (int r = 0; r < R; ++r) {
      int32_t s = 0;
      for (int64_t c = 0; c < blocks; ++c)
        for (int i = 0; i < kPackCols; ++i) s += tile[(c * R + r) * kPackCols + i];
      wsum[r] = s;
    }
    for (int64_t m = 0; m < j.M; ++m) {
      const uint8_t* x = j.xq + m * j.K;
      for (int r = 0; r < R; ++r) {
        int32_t s = 0;
        for (int64_t c = 0; c < blocks; ++c)
          for (int i = 0; i < kPackCols; ++i) s += int32_t{x[c * kPackCols + i]} * tile[(c * R + r) * kPackCols + i];
        dot[r] = s;
      }
      store_a8(j, m, 1, n, rows, dot, wsum);
    }
  }
}

void store_vnni(const Job& j, int64_t m, int64_t n, int rows, const int32_t* acc) {
  const int32_t offset = kA8Offset * j.xsum[m];
  for (int r = 0; r < rows; ++r) {
    float v = static_cast<float>(acc[r] - offset) * j.sx[m] * j.scale[n + r];
    if (j.bias != nullptr) v += load(j.bias, j.y_dtype, n + r);
    const int64_t at = m * j.ldy + n + r;
    if (j.y_dtype == DType::f32)
      static_cast<float*>(j.y)[at] = v;
    else
      static_cast<uint16_t*>(j.y)[at] = to_bf16(v);
  }
}

void rows_vnni_generic(const Job& j, int64_t t0, int64_t t1) {
  constexpr int R = kVnniRows, C = kVnniCols;
  const int64_t groups = j.K / C;
  const uint8_t* w = static_cast<const uint8_t*>(j.w);
  int32_t acc[R];
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* tile = w + t * R * j.K;
    const int64_t n = t * R;
    const int rows = static_cast<int>(j.N - n < R ? j.N - n : R);
    for (int64_t m = 0; m < j.M; ++m) {
      const int8_t* x = reinterpret_cast<const int8_t*>(j.xq) + m * j.K;
      for (int r = 0; r < R; ++r) acc[r] = 0;
      for (int64_t g = 0; g < groups; ++g)
        for (int r = 0; r < R; ++r)
          for (int i = 0; i < C; ++i) acc[r] += int32_t{tile[(g * R + r) * C + i]} * x[g * C + i];
      store_vnni(j, m, n, rows, acc);
    }
  }
}

// AMX-INT8 in CPUID (leaf 7: EDX bits 24 and 25, AMX-TILE and AMX-INT8) and the tile data state granted to this
// process by Linux (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, once; refused on kernels before 5.16 and
// where a hypervisor hides the state): until then a tile instruction faults.
bool amx_usable() {
#if defined(__linux__) && defined(__x86_64__)
  static const bool usable = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1) || !((d >> 25) & 1)) return false;
    constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
  }();
  return usable;
#else
  return false;
#endif
}

}  // namespace fastllm::cpu
