// Small-M linear layers on the CPU: y = x W^T (* scale) (+ bias) for the few rows of a decode step.
//
// At decode time a linear layer multiplies a handful of activation rows (M = batch, 1..8) by a weight
// matrix that is read once per token: the layer is bound by the bandwidth of streaming W, not by the
// flops. The kernel reads each weight row once for all M activation rows, converts it to fp32 in
// registers (int8 codes times a per-row scale, bf16 by a shift, fp32 as is) and accumulates in fp32;
// the rows of W are split over a pool of threads. Weights stay in the usual nn.Linear layout
// (N, K), row-major, so the same tensor serves the large-M prefill through torch.
//
// One ISA-specific copy of the kernel per instruction set (AVX-512, AVX2 + FMA, portable C++; AVX512-BF16
// dot products for bf16 weights times bf16 activations) is picked at run time from the CPU's features;
// every copy computes the same sums in the same order within a copy, and the copies differ from each
// other only in the order of the fp32 additions.
#pragma once

#include <cstdint>

namespace fastllm::cpu {

// u8: W8A8 weights in the VNNI layout below (only with w_packed and quantize_x).
enum class DType : int { f32 = 0, bf16 = 1, i8 = 2, u8 = 3 };

// Packed weights (int8 codes, bf16 or fp32): the (N, K) values padded with zeros to Np = ceil(N / 8) * 8 rows and
// Kp = ceil(K / 64) * 64 columns, stored as blocks [Np / 8][Kp / 64][8 rows][64 columns]: row n,
// column k is at ((n / 8) * (Kp / 64) + k / 64) * 512 + (n % 8) * 64 + k % 64. A tile of 8 rows is then
// one contiguous run of memory.
constexpr int kPackRows = 8;
constexpr int kPackCols = 64;

// The VNNI layout of W8A8 weights (linear_a8.h): codes + 128 as uint8, zero codes (128) padding the (N, K) codes
// to Np = ceil(N / 16) * 16 rows and Kp = ceil(K / 4) * 4 columns, stored as [Np / 16][Kp / 4][16 rows][4
// columns]: row n, column k is at ((n / 16) * (Kp / 4) + k / 4) * 64 + (n % 16) * 4 + k % 4. One 64-byte
// vector then holds 4 columns of 16 rows, the operand of one vpdpbusd against 4 activation bytes broadcast:
// 16 outputs accumulate in the 16 lanes, with no horizontal sums.
constexpr int kVnniRows = 16;
constexpr int kVnniCols = 4;

// The VNNI-2 layout of bf16 weights (w_vnni2): zeros padding (N, K) to Np = ceil(N / 16) * 16 rows and Kp =
// ceil(K / 2) * 2 columns, stored as [Np / 16][Kp / 2][16 rows][2 columns]: row n, column k is at ((n / 16) *
// (Kp / 2) + k / 2) * 32 + (n % 16) * 2 + k % 2. One 64-byte vector holds 2 columns of 16 rows, the operand of
// one vdpbf16ps against 2 activations broadcast: 16 outputs accumulate in the 16 lanes, with no horizontal sums,
// and few accumulators leave the registers to read many tiles side by side (isa_avx512bf16.cpp).
constexpr int kVnni2Cols = 2;

// Tiles the VNNI-2 kernel reads side by side for b (1..4) activation rows: b * T accumulators, T weight registers and
// a broadcast within 32 vector registers.
constexpr int vnni2_pass_tiles(int64_t b) { return b <= 1 ? 12 : b == 2 ? 8 : b == 3 ? 6 : 5; }

// Shapes and pointers of one call. Strides are in elements; the last dimension of every operand is
// contiguous.
struct LinearArgs {
  const void* x = nullptr;  // (M, K) f32 or bf16, row stride ldx
  DType x_dtype = DType::f32;
  int64_t M = 0, K = 0, ldx = 0;
  const void* w = nullptr;  // (N, K) f32, bf16 or i8 (codes), row stride ldw; or packed (above)
  DType w_dtype = DType::f32;
  bool w_packed = false;  // ldw is then ignored
  int64_t N = 0, ldw = 0;
  const float* scale = nullptr;  // (N,) f32 per-row scale of i8 codes; required for i8, else ignored
  const void* bias = nullptr;    // (N,) in x_dtype, or null
  void* y = nullptr;             // (M, N) in x_dtype, row stride ldy
  int64_t ldy = 0;
  // Packed i8 or u8 (the VNNI layout) only: quantize each activation row to int8 too (W8A8,
  // csrc/cpu/linear_a8.h): the dot products then run on integers (AVX-512 VNNI where the CPU has it), exact in
  // int32.
  bool quantize_x = false;
  // Packed bf16 weights in the VNNI-2 layout (above) instead of tiles.
  bool w_vnni2 = false;
  // Grouped (row-major weights, no quantize_x): `groups` independent linears of the same shape side by side (MLA's
  // per-head up projections): x (M, groups * K), group g's weight (N, K) at w + g * w_group_stride elements (row
  // stride ldw), its scale and bias at g * N, y (M, groups * N): y[:, g N : (g + 1) N] = x[:, g K : (g + 1) K] W_g^T.
  int64_t groups = 1;
  int64_t w_group_stride = 0;
};

// The instruction set the kernel runs with on this CPU: "avx512bf16" (AVX-512 with bf16 x bf16 calls on
// vdpbf16ps), "avx512", "avx2" or "generic".
const char* isa();

// Forces an instruction set (for tests): "avx512bf16", "avx512", "avx2", "generic", or "" for the best one the CPU
// has. Returns false (and changes nothing) when the CPU lacks it.
bool force_isa(const char* name);

// Runs on `threads` threads (the caller and threads - 1 workers of a process-wide pool).
void linear(const LinearArgs& args, int threads);

}  // namespace fastllm::cpu
