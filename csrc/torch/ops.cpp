// fastllm's CPU kernels as torch operators: `torch.ops.fastllm_cpu.<name>`, with the schemas of the
// `fastllm::<name>` ops of kernels/_ops_inference.py, whose CPU implementations are Python (the
// launcher's checks, then the kernel through pybind11). A decode step makes ~60 such calls a token and
// the Python in each costs 20-40 us once the weights streamed since the previous call have evicted the
// interpreter's state from the caches; these run the kernel straight from the dispatcher, also from a
// graph compiled by inductor.
//
// Each operator takes its fast path only for a call it has checked completely (the kernels trust every
// pointer and size they get), the checks of the Python launcher in C++. Every other call, a malformed
// one included, goes to the `fastllm::` op, whose Python checks raise the precise error or run the
// reference: the two ops return the same bits for every input.
//
// Built and loaded on demand by fastllm.kernels.cpu.native against the installed torch; the kernels
// themselves come from fastllm._cpu through csrc/cpu/api.h (bound once by `_bind`).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "../cpu/api.h"

namespace {

using at::Tensor;
using fastllm::cpu::DType;
using OptTensor = std::optional<Tensor>;

const fastllm::cpu::Api* kernels = nullptr;

constexpr int64_t kMaxRows = 8;         // kernels/cpu/linear.py MAX_M: row-major float weights
constexpr int64_t kMaxRowsPacked = 16;  // MAX_M_PACKED: packed weights

void bind(int64_t address) {
  const auto* table = reinterpret_cast<const fastllm::cpu::Api*>(address);
  TORCH_CHECK(table != nullptr && table->version == fastllm::cpu::kApiVersion,
              "fastllm_cpu: fastllm._cpu's kernel table does not match this build (rebuild both)");
  kernels = table;
}

int threads() {
  const int t = kernels->threads();
  return t > 0 ? t : at::get_num_threads();
}

// Where the attention kernels run their work: outside decode_threads on torch's intra-op threads, which spin after
// each torch op of a compiled step (the kernels' own pool would compete with them for the cores: attention.h).
void on_torch_threads(int n, void (*task)(void* ctx, int index), void* ctx) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) task(ctx, static_cast<int>(i));
  });
}

fastllm::cpu::ParallelRun attention_runner() { return kernels->threads() > 0 ? nullptr : on_torch_threads; }

bool float_cpu(const Tensor& t) {
  return t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16);
}

// The activations or queries of a fast call: fp32 or bf16 on the CPU, with the kernels bound.
bool kernel_input(const Tensor& t) { return kernels != nullptr && float_cpu(t); }

DType dtype_code(const Tensor& t) { return t.scalar_type() == at::kFloat ? DType::f32 : DType::bf16; }

bool integral_cpu(const Tensor& t) {
  return t.device().is_cpu() && at::isIntegralType(t.scalar_type(), /*includeBool=*/false);
}

// The last dimension contiguous (or of one element), as the Python launchers require.
bool unit_last(const Tensor& t) { return t.stride(-1) == 1 || t.size(-1) <= 1; }

// bias: absent, or (N,) in x's dtype on the CPU.
bool bias_fits(const OptTensor& bias, const Tensor& x, int64_t N) {
  return !bias.has_value() || (bias->device().is_cpu() && bias->scalar_type() == x.scalar_type() &&
                               bias->dim() == 1 && bias->size(0) == N);
}

template <class Sig>
c10::TypedOperatorHandle<Sig> python_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// ---- linears ----------------------------------------------------------------------------------------

// y (..., N) = x (..., K) W^T (* scale) (+ bias) on the kernel; x, W and bias already checked.
Tensor run_linear(const Tensor& x, const Tensor& w, DType w_dtype, bool packed, int64_t ldw, const float* scale,
                  const OptTensor& bias, int64_t N, bool quantize_x, bool vnni2 = false) {
  const int64_t K = x.size(-1);
  const Tensor x2 = x.reshape({-1, K}).contiguous();  // (M, K)
  const int64_t M = x2.size(0);
  Tensor y = at::empty({M, N}, x.options());
  Tensor b = bias.has_value() ? bias->contiguous() : Tensor();
  fastllm::cpu::LinearArgs a;
  a.x = x2.data_ptr();
  a.x_dtype = dtype_code(x);
  a.M = M;
  a.K = K;
  a.ldx = K;
  a.w = w.data_ptr();
  a.w_dtype = w_dtype;
  a.w_packed = packed;
  a.N = N;
  a.ldw = ldw;
  a.scale = scale;
  a.bias = b.defined() ? b.data_ptr() : nullptr;
  a.y = y.data_ptr();
  a.ldy = N;
  a.quantize_x = quantize_x;
  a.w_vnni2 = vnni2;
  kernels->linear(a, threads());
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return y.view(shape);
}

// The packed layouts of (N, K): tiles (ceil(N / 8), ceil(K / 64), 8, 64), VNNI (ceil(N / 16), ceil(K / 4), 16, 4),
// VNNI-2 (ceil(N / 16), ceil(K / 2), 16, 2).
template <int64_t R = fastllm::cpu::kPackRows, int64_t C = fastllm::cpu::kPackCols>
bool packed_shape(const Tensor& packed, int64_t N, int64_t K) {
  return packed.dim() == 4 && packed.size(0) == (N + R - 1) / R && packed.size(1) == (K + C - 1) / C &&
         packed.size(2) == R && packed.size(3) == C;
}

// Decode-sized calls with float activations (the fast path of the Python op; larger M goes to torch).
bool decode_rows(const Tensor& x, int64_t max_rows) {
  return kernel_input(x) && x.dim() >= 1 && x.size(-1) > 0 && x.numel() > 0 && x.numel() <= max_rows * x.size(-1);
}

using PackedSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&);

template <bool kQuantizeX>
Tensor int8_linear(const Tensor& x, const Tensor& packed, const Tensor& scale, const OptTensor& bias) {
  const int64_t N = scale.dim() == 1 ? scale.size(0) : 0;
  // The VNNI layout (uint8) serves W8A8 only; weight-only calls with it take the Python op's reference path.
  const bool vnni = kQuantizeX && packed.scalar_type() == at::kByte;
  const bool layout_fits =
      vnni ? packed_shape<fastllm::cpu::kVnniRows, fastllm::cpu::kVnniCols>(packed, N, x.size(-1))
           : packed.scalar_type() == at::kChar && packed_shape(packed, N, x.size(-1));
  const bool fast = decode_rows(x, kMaxRowsPacked) && N > 0 && scale.device().is_cpu() &&
                    scale.scalar_type() == at::kFloat && scale.is_contiguous() && packed.device().is_cpu() &&
                    layout_fits && bias_fits(bias, x, N);
  if (!fast) {
    static const auto op = python_op<PackedSig>(kQuantizeX ? "fastllm::w8a8_linear" : "fastllm::int8_linear");
    return op.call(x, packed, scale, bias);
  }
  const Tensor w = packed.contiguous();
  return run_linear(x, w, vnni ? DType::u8 : DType::i8, true, 0, scale.data_ptr<float>(), bias, N, kQuantizeX);
}

Tensor linear(const Tensor& x, const Tensor& weight, const OptTensor& bias) {
  const bool fast = decode_rows(x, kMaxRows) && weight.device().is_cpu() && weight.scalar_type() == x.scalar_type() &&
                    weight.dim() == 2 && weight.size(0) > 0 && weight.size(1) == x.size(-1) &&
                    bias_fits(bias, x, weight.size(0));
  if (!fast) {
    static const auto op = python_op<Tensor(const Tensor&, const Tensor&, const OptTensor&)>("fastllm::linear");
    return op.call(x, weight, bias);
  }
  const Tensor w = weight.stride(1) != 1 || weight.stride(0) < weight.size(1) ? weight.contiguous() : weight;
  return run_linear(x, w, dtype_code(x), false, w.stride(0), nullptr, bias, w.size(0), false);
}

// x (..., G, K), weight (G, N, K) -> (..., G, N): fastllm::grouped_linear (kernels/cpu/linear.py grouped_linear).
Tensor grouped_linear(const Tensor& x, const Tensor& weight, const OptTensor& bias) {
  const int64_t G = x.dim() >= 2 ? x.size(-2) : 0, K = x.size(-1);
  const int64_t N = weight.dim() == 3 ? weight.size(1) : 0;
  const bool fast = kernel_input(x) && x.dim() >= 2 && G > 0 && K > 0 && N > 0 && x.numel() <= kMaxRows * G * K &&
                    weight.device().is_cpu() && weight.scalar_type() == x.scalar_type() && weight.dim() == 3 &&
                    weight.size(0) == G && weight.size(2) == K &&
                    (!bias.has_value() || (bias->device().is_cpu() && bias->scalar_type() == x.scalar_type() &&
                                           bias->dim() == 2 && bias->size(0) == G && bias->size(1) == N));
  if (!fast) {
    static const auto op = python_op<Tensor(const Tensor&, const Tensor&, const OptTensor&)>("fastllm::grouped_linear");
    return op.call(x, weight, bias);
  }
  const bool strided_ok = weight.stride(2) == 1 && weight.stride(1) >= K && weight.stride(0) >= N * weight.stride(1);
  const Tensor w = strided_ok ? weight : weight.contiguous();
  const Tensor x2 = x.reshape({-1, G * K}).contiguous();  // (M, G K)
  const int64_t M = x2.size(0);
  Tensor y = at::empty({M, G * N}, x.options());
  const Tensor b = bias.has_value() ? bias->contiguous() : Tensor();
  fastllm::cpu::LinearArgs a;
  a.x = x2.data_ptr();
  a.x_dtype = dtype_code(x);
  a.M = M;
  a.K = K;
  a.ldx = G * K;
  a.w = w.data_ptr();
  a.w_dtype = dtype_code(x);
  a.N = N;
  a.ldw = w.stride(1);
  a.bias = b.defined() ? b.data_ptr() : nullptr;
  a.y = y.data_ptr();
  a.ldy = G * N;
  a.groups = G;
  a.w_group_stride = w.stride(0);
  kernels->linear(a, threads());
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return y.view(shape);
}

Tensor linear_packed(const Tensor& x, const Tensor& packed, const OptTensor& bias, int64_t out_features) {
  // VNNI-2 (bf16 only) or tiles; told by the shape, as the Python op tells them.
  const bool vnni2 = x.scalar_type() == at::kBFloat16 &&
                     packed_shape<fastllm::cpu::kVnniRows, fastllm::cpu::kVnni2Cols>(packed, out_features, x.size(-1));
  const bool fast = decode_rows(x, kMaxRowsPacked) && out_features > 0 && packed.device().is_cpu() &&
                    packed.scalar_type() == x.scalar_type() &&
                    (vnni2 || packed_shape(packed, out_features, x.size(-1))) && bias_fits(bias, x, out_features);
  if (!fast) {
    static const auto op =
        python_op<Tensor(const Tensor&, const Tensor&, const OptTensor&, int64_t)>("fastllm::linear_packed");
    return op.call(x, packed, bias, out_features);
  }
  const Tensor w = packed.contiguous();
  return run_linear(x, w, dtype_code(x), true, 0, nullptr, bias, out_features, false, vnni2);
}

// ---- decode attention -------------------------------------------------------------------------------

// cache_seqlens (an integer (B,) CPU tensor of values >= 0) as the (B,) int64 the kernel reads, or nullopt.
// int32 and int64 (the models' and users' dtypes) are read in place: a tensor conversion costs ~5 us a call,
// 12+ calls a decode step.
using Lens = std::vector<int64_t>;
std::optional<Lens> seqlens(const Tensor& cache_seqlens, int64_t B) {
  if (!integral_cpu(cache_seqlens) || cache_seqlens.dim() != 1 || cache_seqlens.size(0) != B) return std::nullopt;
  Lens lens(static_cast<size_t>(B));
  auto read = [&](const auto* n, int64_t stride) {
    for (int64_t b = 0; b < B; ++b) lens[b] = n[b * stride];
  };
  const int64_t stride = cache_seqlens.stride(0);
  if (cache_seqlens.scalar_type() == at::kInt) {
    read(cache_seqlens.data_ptr<int32_t>(), stride);
  } else if (cache_seqlens.scalar_type() == at::kLong) {
    read(cache_seqlens.data_ptr<int64_t>(), stride);
  } else {
    const Tensor n = cache_seqlens.to(at::kLong).contiguous();
    read(n.data_ptr<int64_t>(), 1);
  }
  for (int64_t n : lens)
    if (n < 0) return std::nullopt;
  return lens;
}

int64_t max_len(const Lens& lens) {
  int64_t m = 0;
  for (int64_t n : lens) m = n > m ? n : m;
  return m;
}

using SwaSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, double, int64_t,
                      const OptTensor&, const OptTensor&);

Tensor swa_decode(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cache_seqlens, int64_t window,
                  double softmax_scale, int64_t sinks, const OptTensor& alibi, const OptTensor& rel_bias) {
  static const auto python = python_op<SwaSig>("fastllm::swa_decode");
  auto fallback = [&] { return python.call(q, k, v, cache_seqlens, window, softmax_scale, sinks, alibi, rel_bias); };
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4 || !kernel_input(q) || !k.device().is_cpu() ||
      !v.device().is_cpu() || k.scalar_type() != q.scalar_type() || v.scalar_type() != q.scalar_type())
    return fallback();
  const int64_t B = q.size(0), Tq = q.size(1), H = q.size(2), D = q.size(3);
  const int64_t C = v.size(1), Hkv = v.size(2), Dv = v.size(3);
  if (k.size(0) != B || k.size(1) != C || k.size(2) != Hkv || k.size(3) != D || v.size(0) != B || Hkv < 1 ||
      H % Hkv != 0 || sinks < 0 || sinks >= C || window == 0 || !unit_last(q) || !unit_last(k) || !unit_last(v))
    return fallback();
  const std::optional<Lens> lens = seqlens(cache_seqlens, B);
  if (!lens) return fallback();
  if (B > 0 && max_len(*lens) > C && (window < 0 || C < window + sinks + Tq - 1)) return fallback();  // wrapped
  Tensor slopes, bias;
  if (alibi.has_value()) {
    if (alibi->dim() != 1 || alibi->size(0) != H || !alibi->device().is_cpu()) return fallback();
    slopes = alibi->to(at::kFloat).contiguous();
  }
  if (rel_bias.has_value()) {
    if (rel_bias->dim() != 2 || rel_bias->size(0) != H || rel_bias->size(1) < 1 || !rel_bias->device().is_cpu())
      return fallback();
    bias = rel_bias->to(at::kFloat).contiguous();
  }
  Tensor o = at::empty({B, Tq, H, Dv}, q.options());  // (B, Tq, H, Dv)
  if (o.numel() == 0) return o;
  fastllm::cpu::DecodeAttnArgs a;
  a.dtype = dtype_code(q);
  a.B = B, a.Tq = Tq, a.H = H, a.Hkv = Hkv, a.C = C, a.D = D, a.Dv = Dv;
  a.q = q.data_ptr(), a.q_sb = q.stride(0), a.q_st = q.stride(1), a.q_sh = q.stride(2);
  a.k = k.data_ptr(), a.k_sb = k.stride(0), a.k_sc = k.stride(1), a.k_sh = k.stride(2);
  a.v = v.data_ptr(), a.v_sb = v.stride(0), a.v_sc = v.stride(1), a.v_sh = v.stride(2);
  a.seqlens = lens->data();
  a.window = window < 0 ? 0 : window;
  a.sinks = sinks;
  a.scale = static_cast<float>(softmax_scale);
  a.alibi = slopes.defined() ? slopes.data_ptr<float>() : nullptr;
  a.rel_bias = bias.defined() ? bias.data_ptr<float>() : nullptr;
  a.rel_len = bias.defined() ? bias.size(1) : 0;
  a.o = o.data_ptr();
  kernels->decode_attention(a, threads(), attention_runner());
  return o;
}

using MlaSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, int64_t, double,
                                          const OptTensor&);

// Whether the pages rows of these lengths use are named in the table and inside the pool.
bool pages_valid(const Tensor& table, const Lens& n, int64_t page_size, int64_t pool) {
  for (size_t b = 0; b < n.size(); ++b) {
    const int64_t used = (n[b] + page_size - 1) / page_size;
    if (used > table.size(1)) return false;
    const int64_t* pages = table.data_ptr<int64_t>() + b * table.stride(0);
    for (int64_t i = 0; i < used; ++i)
      if (pages[i] < 0 || pages[i] >= pool) return false;
  }
  return true;
}

std::tuple<Tensor, Tensor> mla_decode(const Tensor& q, const Tensor& kv, const Tensor& cache_seqlens,
                                      int64_t kv_lora_rank, double softmax_scale, const OptTensor& block_table) {
  static const auto python = python_op<MlaSig>("fastllm::mla_decode");
  auto fallback = [&] { return python.call(q, kv, cache_seqlens, kv_lora_rank, softmax_scale, block_table); };
  if (q.dim() != 4 || kv.dim() != 3 || !kernel_input(q) || !kv.device().is_cpu() || kv.scalar_type() != q.scalar_type())
    return fallback();
  const int64_t B = q.size(0), Tq = q.size(1), H = q.size(2), D = q.size(3), S = kv.size(1);
  if (kv.size(2) != D || kv_lora_rank <= 0 || kv_lora_rank > D || !unit_last(q) || !unit_last(kv)) return fallback();
  const std::optional<Lens> lens = seqlens(cache_seqlens, B);
  if (!lens) return fallback();
  Tensor table;
  if (!block_table.has_value()) {
    if (kv.size(0) != B || max_len(*lens) > S) return fallback();
  } else {
    const Tensor& bt = *block_table;
    if (bt.dim() != 2 || bt.size(0) != B || !integral_cpu(bt) || S < 1) return fallback();
    table = bt.to(at::kLong).contiguous();  // (B, max_pages)
    if (!pages_valid(table, *lens, S, kv.size(0))) return fallback();
  }
  Tensor o = at::empty({B, Tq, H, kv_lora_rank}, q.options());  // (B, Tq, H, R)
  Tensor lse = at::empty({B, Tq, H}, q.options().dtype(at::kFloat));
  if (o.numel() == 0) return {o, lse};
  fastllm::cpu::DecodeAttnArgs a;  // one kv head: k the latent row, v its first R values
  a.dtype = dtype_code(q);
  a.B = B, a.Tq = Tq, a.H = H, a.Hkv = 1, a.C = S, a.D = D, a.Dv = kv_lora_rank;
  a.q = q.data_ptr(), a.q_sb = q.stride(0), a.q_st = q.stride(1), a.q_sh = q.stride(2);
  a.k = a.v = kv.data_ptr();
  a.k_sb = a.v_sb = kv.stride(0);
  a.k_sc = a.v_sc = kv.stride(1);
  a.seqlens = lens->data();
  a.scale = static_cast<float>(softmax_scale);
  if (table.defined()) {
    a.block_table = table.data_ptr<int64_t>();
    a.bt_stride = table.stride(0);
    a.pages_per_row = table.size(1);
    a.page_size = S;
  }
  a.o = o.data_ptr();
  a.lse = lse.data_ptr<float>();
  kernels->decode_attention(a, threads(), attention_runner());
  return {o, lse};
}

// ---- sampling ----------------------------------------------------------------------------------------

using SampleSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                         const Tensor&, const OptTensor&, const OptTensor&);

// A per-row sampling parameter as `fastllm.kernels.sample` makes it: (B,) of `type` on the CPU, contiguous.
bool per_row(const Tensor& t, int64_t B, at::ScalarType type) {
  return t.device().is_cpu() && t.scalar_type() == type && t.dim() == 1 && t.size(0) == B && t.is_contiguous();
}

// The greedy calls of the sampler (every row at temperature 0, no repetition penalty, valid filters, which argmax
// ignores) on the C++ argmax, as the Python op's `_greedy_cpu` does; a compiled decode step samples in its graph this
// way. Logits holding NaN, +inf or only -inf: with a nan_flag, their error bits are ORed into it and the ids returned
// (the contract of `fastllm.kernels.sample` for kernels that cannot raise: an exception thrown here would reach the
// caller of a compiled graph as inductor's "API call failed"; the engine checks the flag after each CPU step);
// without one, the call goes to the Python op, which raises the reference's error. So does every other call.
Tensor sample_philox(const Tensor& logits, const Tensor& seed, const Tensor& temperature, const Tensor& top_k,
                     const Tensor& top_p, const Tensor& min_p, const Tensor& penalty, const OptTensor& prev_tokens,
                     const OptTensor& nan_flag) {
  static const auto python = python_op<SampleSig>("fastllm::sample_philox");
  auto fallback = [&] {
    return python.call(logits, seed, temperature, top_k, top_p, min_p, penalty, prev_tokens, nan_flag);
  };
  if (kernels == nullptr || !float_cpu(logits) || logits.dim() != 2 || logits.size(1) < 1 || logits.stride(1) != 1 ||
      prev_tokens.has_value())
    return fallback();
  const int64_t B = logits.size(0), V = logits.size(1);
  if (!per_row(temperature, B, at::kFloat) || !per_row(top_k, B, at::kLong) || !per_row(top_p, B, at::kFloat) ||
      !per_row(min_p, B, at::kFloat) || !per_row(penalty, B, at::kFloat))
    return fallback();
  const float* t = temperature.data_ptr<float>();
  const float *p = top_p.data_ptr<float>(), *mp = min_p.data_ptr<float>(), *r = penalty.data_ptr<float>();
  const int64_t* k = top_k.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)  // NaN parameters fail these comparisons too
    if (!(t[b] == 0.0f && k[b] >= 0 && p[b] >= 0.0f && p[b] <= 1.0f && mp[b] >= 0.0f && mp[b] <= 1.0f && r[b] > 0.0f))
      return fallback();
  Tensor ids = at::empty({B}, logits.options().dtype(at::kLong));
  if (B == 0) return ids;
  const bool flag = nan_flag.has_value() && nan_flag->device().is_cpu() && nan_flag->scalar_type() == at::kInt &&
                    nan_flag->numel() == 1;
  int64_t* out = ids.data_ptr<int64_t>();
  if (const int bits = kernels->greedy(logits.data_ptr(), dtype_code(logits), B, V, logits.stride(0), out)) {
    if (!flag) return fallback();
    *nan_flag->data_ptr<int32_t>() |= bits;
  }
  return ids;
}

}  // namespace

TORCH_LIBRARY(fastllm_cpu, m) {
  m.def("_bind(int api) -> ()", &bind);
  m.def("int8_linear(Tensor x, Tensor packed, Tensor scale, Tensor? bias) -> Tensor");
  m.def("w8a8_linear(Tensor x, Tensor packed, Tensor scale, Tensor? bias) -> Tensor");
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("linear_packed(Tensor x, Tensor packed, Tensor? bias, int out_features) -> Tensor");
  m.def("grouped_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def(
      "swa_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens, int window, float softmax_scale, "
      "int sink_tokens, Tensor? alibi_slopes, Tensor? rel_bias) -> Tensor");
  m.def(
      "mla_decode(Tensor q, Tensor kv_cache, Tensor cache_seqlens, int kv_lora_rank, float softmax_scale, "
      "Tensor? block_table) -> (Tensor, Tensor)");
  m.def(
      "sample_philox(Tensor logits, Tensor seed, Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, "
      "Tensor repetition_penalty, Tensor? prev_tokens, Tensor(a!)? nan_flag=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastllm_cpu, CPU, m) {
  m.impl("int8_linear", &int8_linear<false>);
  m.impl("w8a8_linear", &int8_linear<true>);
  m.impl("linear", &linear);
  m.impl("linear_packed", &linear_packed);
  m.impl("grouped_linear", &grouped_linear);
  m.impl("swa_decode", &swa_decode);
  m.impl("mla_decode", &mla_decode);
  m.impl("sample_philox", &sample_philox);
}

// Inference only, like the fastllm:: ops: no autograd formula, and no autograd warning when a graph is
// traced with parameters that require grad.
TORCH_LIBRARY_IMPL(fastllm_cpu, Autograd, m) {
  for (const char* name : {"int8_linear", "w8a8_linear", "linear", "linear_packed", "grouped_linear", "swa_decode",
                           "mla_decode", "sample_philox"})
    m.impl(name, torch::CppFunction::makeFallthrough());
}
