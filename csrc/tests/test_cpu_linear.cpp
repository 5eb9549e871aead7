// Unit tests of the CPU small-M linear kernel (csrc/cpu): every instruction set this CPU has, every weight
// type, row-major and packed (bf16 also VNNI-2), odd shapes, 1..11 activation rows, 1..3 threads, against a double-precision
// reference; and the thread pool on its own.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "linear.h"
#include "pool.h"

using fastllm::cpu::DType;
using fastllm::cpu::kPackCols;
using fastllm::cpu::kPackRows;

namespace {

uint16_t to_bf16(float f) {  // round to nearest even
  uint32_t b;
  std::memcpy(&b, &f, 4);
  b += 0x7fffu + ((b >> 16) & 1u);
  return static_cast<uint16_t>(b >> 16);
}

float from_bf16(uint16_t h) {
  const uint32_t b = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// (N, K) weights (int8 codes, bf16 bits or fp32) in the packed layout of linear.h.
template <class T>
std::vector<T> pack(const std::vector<T>& w8, int64_t N, int64_t K) {
  const int64_t Kp = (K + kPackCols - 1) / kPackCols * kPackCols;
  const int64_t Np = (N + kPackRows - 1) / kPackRows * kPackRows;
  std::vector<T> packed(Np * Kp, T(0));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      packed[((n / kPackRows) * (Kp / kPackCols) + k / kPackCols) * (kPackRows * kPackCols) +
             (n % kPackRows) * kPackCols + k % kPackCols] = w8[n * K + k];
  return packed;
}

// The VNNI layout (linear.h): codes + 128, [Np / 16][Kp / 4][16][4], zero codes (128) as padding.
std::vector<uint8_t> pack_vnni(const std::vector<int8_t>& w8, int64_t N, int64_t K) {
  using fastllm::cpu::kVnniCols, fastllm::cpu::kVnniRows;
  const int64_t Kp = (K + kVnniCols - 1) / kVnniCols * kVnniCols;
  const int64_t Np = (N + kVnniRows - 1) / kVnniRows * kVnniRows;
  std::vector<uint8_t> packed(Np * Kp, uint8_t{128});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      packed[((n / kVnniRows) * (Kp / kVnniCols) + k / kVnniCols) * (kVnniRows * kVnniCols) +
             (n % kVnniRows) * kVnniCols + k % kVnniCols] = static_cast<uint8_t>(w8[n * K + k] + 128);
  return packed;
}

// The VNNI-2 layout of bf16 weights (linear.h): [Np / 16][Kp / 2][16][2], zeros as padding.
std::vector<uint16_t> pack_vnni2(const std::vector<uint16_t>& w16, int64_t N, int64_t K) {
  using fastllm::cpu::kVnni2Cols, fastllm::cpu::kVnniRows;
  const int64_t Kp = (K + kVnni2Cols - 1) / kVnni2Cols * kVnni2Cols;
  const int64_t Np = (N + kVnniRows - 1) / kVnniRows * kVnniRows;
  std::vector<uint16_t> packed(Np * Kp, 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      packed[((n / kVnniRows) * (Kp / kVnni2Cols) + k / kVnni2Cols) * (kVnniRows * kVnni2Cols) +
             (n % kVnniRows) * kVnni2Cols + k % kVnni2Cols] = w16[n * K + k];
  return packed;
}

struct Case {
  int64_t M, N, K;
  DType x_dtype, w_dtype;
  bool packed, bias;
  int threads;
  bool vnni2 = false;  // packed bf16 weights in the VNNI-2 layout
};

// Runs one case; returns the largest |y - y_ref| / (sum_k |x w| + |bias| + 1e-30) over the outputs.
double run_case(const Case& c, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  const int64_t M = c.M, N = c.N, K = c.K;
  std::vector<float> x(M * K), w(N * K), bias(N), scale(N, 1.0f);
  for (auto& v : x) v = normal(rng);
  for (auto& v : w) v = normal(rng);
  for (auto& v : bias) v = normal(rng);
  // what the kernel sees, in its storage types (and the values they hold, for the reference)
  std::vector<uint16_t> x16(M * K), w16(N * K), b16(N);
  std::vector<int8_t> w8(N * K);
  if (c.x_dtype == DType::bf16) {
    for (int64_t i = 0; i < M * K; ++i) x[i] = from_bf16(x16[i] = to_bf16(x[i]));
    for (int64_t i = 0; i < N; ++i) bias[i] = from_bf16(b16[i] = to_bf16(bias[i]));
  }
  if (c.w_dtype == DType::bf16)
    for (int64_t i = 0; i < N * K; ++i) w[i] = from_bf16(w16[i] = to_bf16(w[i]));
  if (c.w_dtype == DType::i8) {
    for (int64_t n = 0; n < N; ++n) {
      scale[n] = 0.01f * (1 + n % 7);
      for (int64_t k = 0; k < K; ++k) {
        w8[n * K + k] = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
        w[n * K + k] = w8[n * K + k];
      }
    }
  }
  const std::vector<int8_t> packed = pack(w8, N, K);
  const std::vector<uint16_t> packed16 = c.vnni2 ? pack_vnni2(w16, N, K) : pack(w16, N, K);
  const std::vector<float> packed32 = pack(w, N, K);

  fastllm::cpu::LinearArgs a;
  a.x = c.x_dtype == DType::f32 ? static_cast<const void*>(x.data()) : x16.data();
  a.x_dtype = c.x_dtype;
  a.M = M, a.K = K, a.ldx = K;
  a.w = c.w_dtype == DType::f32    ? static_cast<const void*>(c.packed ? packed32.data() : w.data())
        : c.w_dtype == DType::bf16 ? static_cast<const void*>(c.packed ? packed16.data() : w16.data())
                                   : static_cast<const void*>(c.packed ? packed.data() : w8.data());
  a.w_dtype = c.w_dtype;
  a.w_packed = c.packed;
  a.w_vnni2 = c.vnni2;
  a.N = N, a.ldw = K;
  a.scale = scale.data();
  a.bias = !c.bias ? nullptr : c.x_dtype == DType::f32 ? static_cast<const void*>(bias.data()) : b16.data();
  std::vector<float> y(M * N, NAN);
  std::vector<uint16_t> y16(M * N, 0xffff);
  a.y = c.x_dtype == DType::f32 ? static_cast<void*>(y.data()) : y16.data();
  a.ldy = N;
  fastllm::cpu::linear(a, c.threads);

  double worst = 0;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = static_cast<double>(x[m * K + k]) * w[n * K + k] * scale[n];
        ref += p;
        mag += std::fabs(p);
      }
      if (c.bias) ref += bias[n], mag += std::fabs(bias[n]);
      const double got = c.x_dtype == DType::f32 ? y[m * N + n] : from_bf16(y16[m * N + n]);
      const double err = std::fabs(got - ref) / (mag + 1e-30);
      worst = std::isnan(got) ? 1e30 : std::max(worst, err);
    }
  }
  return worst;
}

void test_linear() {
  std::mt19937 rng(1234);
  const char* isas[] = {"avx512bf16", "avx512", "avx2", "generic"};
  int tested = 0;
  for (const char* isa : isas) {
    if (!fastllm::cpu::force_isa(isa)) continue;
    ++tested;
    for (int64_t M : {1, 2, 3, 4, 5, 8, 9, 11})
      for (DType xd : {DType::f32, DType::bf16})
        for (int variant = 0; variant < 7; ++variant) {  // f32, bf16, i8 weights: row-major, packed; bf16 VNNI-2
          const bool packed = variant >= 3, vnni2 = variant == 6;
          const DType wd = vnni2 || variant % 3 == 1 ? DType::bf16 : variant % 3 == 0 ? DType::f32 : DType::i8;
          if (vnni2 && xd != DType::bf16) continue;  // bf16 x bf16 only
          for (auto [N, K] : {std::pair<int64_t, int64_t>{37, 19}, {203, 130}, {9, 64}, {1, 1}, {70, 257}}) {
            const Case c{M, N, K, xd, wd, packed, (M + N) % 2 == 0, 1 + static_cast<int>((M + K) % 3), vnni2};
            const double err = run_case(c, rng);
            // fp32 sums of <= 257 terms: relative to sum |terms|, a few ulps; bf16 output: its rounding
            const double tol = xd == DType::f32 ? 2e-6 : 1.0 / 256;
            if (err > tol)
              std::fprintf(stderr, "  %s M=%lld N=%lld K=%lld x=%d w=%d packed=%d vnni2=%d: rel err %g\n", isa,
                           static_cast<long long>(M), static_cast<long long>(N), static_cast<long long>(K),
                           static_cast<int>(xd), static_cast<int>(wd), packed, vnni2, err);
            CHECK(err <= tol);
          }
        }
  }
  CHECK(tested >= 1);
  CHECK(fastllm::cpu::force_isa(""));
  CHECK(!fastllm::cpu::force_isa("no-such-isa"));
}

// The pool's contract: the caller's task call plus whichever workers join split the work (chunks from an
// atomic counter); run returns only when the work is done and no worker is inside the task, so the
// context may live on the caller's stack (ASan would see a late worker touching it).
struct Chunks {
  std::atomic<int> next{0};
  std::atomic<int> done{0};
  std::vector<std::atomic<int>>* per_thread;
};

void take_chunks(void* ctx, int i) {
  Chunks& c = *static_cast<Chunks*>(ctx);
  while (c.next.fetch_add(1) < 64) {
    c.done.fetch_add(1);
    (*c.per_thread)[i].fetch_add(1);
  }
}

void test_pool() {
  for (int threads : {1, 2, 3, 5}) {
    fastllm::cpu::ThreadPool pool(threads, 50);
    CHECK(pool.size() == threads);
    std::vector<std::atomic<int>> per_thread(threads);
    std::vector<char> buffer(3 << 20, 1);
    for (int run = 0; run < 2000; ++run) {
      // Prefetches pending between runs (worker 1 takes them while it waits): of memory of ours, of memory freed
      // since, of addresses never mapped (prefetches do not fault), far larger than a run takes to start; a run
      // still starts and ends as without them, and 0 bytes cancels one.
      if (run % 4 == 0) pool.prefetch(buffer.data() + run, buffer.size() - run);
      if (run % 4 == 1) {
        std::vector<char> freed(1 << 20, 2);
        const char* p = freed.data();
        freed = std::vector<char>();
        pool.prefetch(p, 1 << 20);
      }
      if (run % 4 == 2) pool.prefetch(reinterpret_cast<const void*>(uintptr_t{4096}), size_t{1} << 40);
      if (run % 8 == 3) pool.prefetch(nullptr, 0);
      Chunks c;
      c.per_thread = &per_thread;
      pool.run(take_chunks, &c);
      CHECK(c.done.load() == 64);
      if (run == 1000) {  // let the workers fall asleep, then wake them
        const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(5);
        while (std::chrono::steady_clock::now() < until) {
        }
      }
    }
    int total = 0;
    for (int i = 0; i < threads; ++i) total += per_thread[i].load();
    CHECK(total == 64 * 2000);
    CHECK(per_thread[0].load() > 0);
  }
}

}  // namespace

// W8A8 (linear_a8.h): the activation codes and the fp32 epilogue written out from the contract; the
// kernels (VNNI and portable, tiled and VNNI-layout weights) must match them exactly, on every ISA and
// thread count.
void test_a8() {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  for (const char* isa : {"avx512bf16", "avx512", "avx2", "generic"}) {
    if (!fastllm::cpu::force_isa(isa)) continue;
    for (auto [N, K] : {std::pair<int64_t, int64_t>{37, 19}, {203, 130}, {9, 64}, {1, 1}, {70, 257}, {130, 768}})
      for (int64_t M : {1, 2, 3, 4, 5, 8, 11, 16})
        for (int threads : {1, 3})
          for (bool vnni : {false, true}) {
          std::vector<float> x(M * K), scale(N), bias(N);
          std::vector<int8_t> w8(N * K);
          for (auto& v : x) v = normal(rng);
          for (auto& v : bias) v = normal(rng);
          for (int64_t n = 0; n < N; ++n) scale[n] = 0.01f * (1 + n % 7);
          for (auto& v : w8) v = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
          if (M > 2) x[K] = NAN;  // row 1: NaN outputs
          const std::vector<int8_t> packed = pack(w8, N, K);
          const std::vector<uint8_t> packed_vnni = pack_vnni(w8, N, K);
          fastllm::cpu::LinearArgs a;
          a.x = x.data(), a.x_dtype = DType::f32, a.M = M, a.K = K, a.ldx = K;
          a.w = vnni ? static_cast<const void*>(packed_vnni.data()) : packed.data();
          a.w_dtype = vnni ? DType::u8 : DType::i8, a.w_packed = true, a.N = N;
          a.scale = scale.data(), a.bias = bias.data(), a.quantize_x = true;
          std::vector<float> y(M * N);
          a.y = y.data(), a.ldy = N;
          fastllm::cpu::linear(a, threads);
          bool exact = true;
          for (int64_t m = 0; m < M; ++m) {
            float amax = 0;
            bool finite = true;
            for (int64_t k = 0; k < K; ++k) {
              finite = finite && std::isfinite(x[m * K + k]);
              amax = std::max(amax, std::fabs(x[m * K + k]));
            }
            const float sx = finite ? amax / 127.0f : NAN;
            for (int64_t n = 0; n < N; ++n) {
              int64_t acc = 0;
              for (int64_t k = 0; k < K && sx > 0; ++k)
                acc += static_cast<int64_t>(std::clamp(std::nearbyint(x[m * K + k] / sx), -127.0f, 127.0f)) *
                       w8[n * K + k];
              const float want = static_cast<float>(acc) * sx * scale[n] + bias[n];
              const float got = y[m * N + n];
              exact = exact && (got == want || (std::isnan(got) && std::isnan(want)));
            }
          }
          if (!exact)
            std::fprintf(stderr, "a8 %s%s M=%lld N=%lld K=%lld threads=%d: not exact\n", isa, vnni ? " vnni" : "",
                         static_cast<long long>(M), static_cast<long long>(N), static_cast<long long>(K), threads);
          CHECK(exact);
        }
  }
  CHECK(fastllm::cpu::force_isa(""));
}

// Grouped calls (LinearArgs::groups): each group's outputs equal, to the bit, a call of its own on that group's
// slice of x and its weight (a strided layout: groups and rows apart), bias included; fp32 and bf16, 1..3 threads.
void test_grouped() {
  std::mt19937 rng(99);
  std::normal_distribution<float> normal;
  for (DType dt : {DType::f32, DType::bf16})
    for (int threads : {1, 2, 3})
      for (auto [M, G, N, K] : {std::array<int64_t, 4>{1, 16, 24, 40}, {3, 5, 7, 9}, {8, 2, 33, 130}, {2, 1, 5, 3}}) {
        const int64_t ldw = K + 3, gs = (N + 2) * ldw, es = dt == DType::f32 ? 4 : 2;
        std::vector<float> x(M * G * K), w(G * gs), bias(G * N);
        for (auto* v : {&x, &w, &bias})
          for (auto& f : *v) f = normal(rng);
        std::vector<uint16_t> x16(x.size()), w16(w.size()), b16(bias.size());
        for (size_t i = 0; i < x.size(); ++i) x16[i] = to_bf16(x[i]);
        for (size_t i = 0; i < w.size(); ++i) w16[i] = to_bf16(w[i]);
        for (size_t i = 0; i < bias.size(); ++i) b16[i] = to_bf16(bias[i]);
        const bool f32 = dt == DType::f32;
        std::vector<char> y(M * G * N * es), one(M * N * es), xg(M * K * es);
        fastllm::cpu::LinearArgs a;
        a.x = f32 ? static_cast<const void*>(x.data()) : x16.data();
        a.x_dtype = a.w_dtype = dt;
        a.M = M, a.K = K, a.ldx = G * K;
        a.w = f32 ? static_cast<const void*>(w.data()) : w16.data();
        a.N = N, a.ldw = ldw;
        a.bias = f32 ? static_cast<const void*>(bias.data()) : b16.data();
        a.y = y.data();
        a.ldy = G * N;
        a.groups = G;
        a.w_group_stride = gs;
        fastllm::cpu::linear(a, threads);
        for (int64_t g = 0; g < G; ++g) {
          for (int64_t m = 0; m < M; ++m)  // the group's activations, contiguous
            std::memcpy(xg.data() + m * K * es, static_cast<const char*>(a.x) + (m * G * K + g * K) * es, K * es);
          fastllm::cpu::LinearArgs b = a;
          b.groups = 1;
          b.x = xg.data();
          b.ldx = K;
          b.w = static_cast<const char*>(a.w) + g * gs * es;
          b.bias = static_cast<const char*>(a.bias) + g * N * es;
          b.y = one.data();
          b.ldy = N;
          fastllm::cpu::linear(b, 1);
          for (int64_t m = 0; m < M; ++m)
            CHECK(std::memcmp(one.data() + m * N * es, y.data() + (m * G * N + g * N) * es, N * es) == 0);
        }
      }
}

int main() {
  test_linear();
  test_grouped();
  test_a8();
  test_pool();
  if (g_failures) std::fprintf(stderr, "%d checks failed\n", g_failures);
  return g_failures ? 1 : 0;
}
