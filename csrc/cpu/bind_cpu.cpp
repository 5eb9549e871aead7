// fastllm._cpu: the Python binding of the CPU kernels. Only glue: the callers (kernels/cpu/*.py)
// validates every shape, dtype, stride and device and passes raw data pointers; this file releases the
// GIL around the work.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "api.h"
#include "attention.h"
#include "linear.h"
#include "sampling.h"

namespace py = pybind11;
using fastllm::cpu::DType;

namespace {

const void* ptr(uintptr_t p) { return reinterpret_cast<const void*>(p); }

void linear(uintptr_t x, int x_dtype, int64_t M, int64_t K, int64_t ldx, uintptr_t w, int w_dtype, bool w_packed,
            int64_t N, int64_t ldw, uintptr_t scale, uintptr_t bias, uintptr_t y, int64_t ldy, int threads,
            bool quantize_x, bool w_vnni2, int64_t groups, int64_t w_group_stride) {
  fastllm::cpu::LinearArgs a;
  a.x = ptr(x);
  a.x_dtype = static_cast<DType>(x_dtype);
  a.M = M;
  a.K = K;
  a.ldx = ldx;
  a.w = ptr(w);
  a.w_dtype = static_cast<DType>(w_dtype);
  a.w_packed = w_packed;
  a.N = N;
  a.ldw = ldw;
  a.scale = static_cast<const float*>(ptr(scale));
  a.bias = ptr(bias);
  a.y = reinterpret_cast<void*>(y);
  a.ldy = ldy;
  a.quantize_x = quantize_x;
  a.w_vnni2 = w_vnni2;
  a.groups = groups;
  a.w_group_stride = w_group_stride;
  py::gil_scoped_release release;
  fastllm::cpu::linear(a, threads);
}

void decode_attention(int dtype, py::tuple sizes, uintptr_t q, py::tuple q_strides, uintptr_t k, py::tuple k_strides,
                      uintptr_t v, py::tuple v_strides, uintptr_t seqlens, int64_t window, int64_t sinks, float scale,
                      uintptr_t alibi, uintptr_t rel_bias, int64_t rel_len, uintptr_t o, int threads, uintptr_t lse,
                      py::tuple paged) {
  fastllm::cpu::DecodeAttnArgs a;
  a.dtype = static_cast<DType>(dtype);
  a.B = sizes[0].cast<int64_t>();
  a.Tq = sizes[1].cast<int64_t>();
  a.H = sizes[2].cast<int64_t>();
  a.Hkv = sizes[3].cast<int64_t>();
  a.C = sizes[4].cast<int64_t>();
  a.D = sizes[5].cast<int64_t>();
  a.Dv = sizes[6].cast<int64_t>();
  a.q = ptr(q);
  a.q_sb = q_strides[0].cast<int64_t>();
  a.q_st = q_strides[1].cast<int64_t>();
  a.q_sh = q_strides[2].cast<int64_t>();
  a.k = ptr(k);
  a.k_sb = k_strides[0].cast<int64_t>();
  a.k_sc = k_strides[1].cast<int64_t>();
  a.k_sh = k_strides[2].cast<int64_t>();
  a.v = ptr(v);
  a.v_sb = v_strides[0].cast<int64_t>();
  a.v_sc = v_strides[1].cast<int64_t>();
  a.v_sh = v_strides[2].cast<int64_t>();
  a.seqlens = static_cast<const int64_t*>(ptr(seqlens));
  a.window = window;
  a.sinks = sinks;
  a.scale = scale;
  a.alibi = static_cast<const float*>(ptr(alibi));
  a.rel_bias = static_cast<const float*>(ptr(rel_bias));
  a.rel_len = rel_len;
  a.o = reinterpret_cast<void*>(o);
  a.lse = reinterpret_cast<float*>(lse);
  if (paged.size() == 4) {
    a.block_table = static_cast<const int64_t*>(ptr(paged[0].cast<uintptr_t>()));
    a.bt_stride = paged[1].cast<int64_t>();
    a.pages_per_row = paged[2].cast<int64_t>();
    a.page_size = paged[3].cast<int64_t>();
  }
  py::gil_scoped_release release;
  fastllm::cpu::decode_attention(a, threads);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fastllm's CPU kernels (private: call fastllm.kernels.cpu, which validates the arguments)";
  m.def("linear", &linear, "y = x W^T * scale + bias for small M; raw pointers, see csrc/cpu/linear.h", py::arg("x"),
        py::arg("x_dtype"), py::arg("M"), py::arg("K"), py::arg("ldx"), py::arg("w"), py::arg("w_dtype"),
        py::arg("w_packed"), py::arg("N"), py::arg("ldw"), py::arg("scale"), py::arg("bias"), py::arg("y"),
        py::arg("ldy"), py::arg("threads"), py::arg("quantize_x") = false, py::arg("w_vnni2") = false,
        py::arg("groups") = 1, py::arg("w_group_stride") = 0);
  m.def("decode_attention", &decode_attention,
        "decode attention over a ring-buffer or paged KV cache; raw pointers, see csrc/cpu/attention.h", py::arg("dtype"),
        py::arg("sizes"), py::arg("q"), py::arg("q_strides"), py::arg("k"), py::arg("k_strides"), py::arg("v"),
        py::arg("v_strides"), py::arg("seqlens"), py::arg("window"), py::arg("sinks"), py::arg("scale"),
        py::arg("alibi"), py::arg("rel_bias"), py::arg("rel_len"), py::arg("o"), py::arg("threads"),
        py::arg("lse") = 0, py::arg("paged") = py::tuple());
  m.def(
      "greedy",
      [](uintptr_t logits, int dtype, int64_t B, int64_t V, int64_t ld, uintptr_t out) {
        py::gil_scoped_release release;
        return fastllm::cpu::greedy_rows(ptr(logits), static_cast<DType>(dtype), B, V, ld,
                                         reinterpret_cast<int64_t*>(out));
      },
      "first argmax per row and the sampler's error bits; raw pointers, see csrc/cpu/sampling.h");
  // The kernels for fastllm's torch operators (csrc/torch/ops.cpp): a capsule holding csrc/cpu/api.h's table.
  m.attr("_api") = py::capsule(const_cast<fastllm::cpu::Api*>(fastllm::cpu::api()), "fastllm._cpu.api");
  m.attr("API_VERSION") = fastllm::cpu::kApiVersion;
  m.def("set_threads", &fastllm::cpu::set_threads, "the thread count the torch operators use (0: torch's)");
  m.attr("PACK_ROWS") = fastllm::cpu::kPackRows;
  m.attr("PACK_COLS") = fastllm::cpu::kPackCols;
  m.attr("VNNI_ROWS") = fastllm::cpu::kVnniRows;
  m.attr("VNNI_COLS") = fastllm::cpu::kVnniCols;
  m.attr("VNNI2_COLS") = fastllm::cpu::kVnni2Cols;
  m.def("isa", &fastllm::cpu::isa, "the instruction set the kernels run with");
  m.def(
      "force_isa", [](const std::string& name) { return fastllm::cpu::force_isa(name.c_str()); },
      "force an instruction set ('' = best); False if the CPU lacks it");
}
