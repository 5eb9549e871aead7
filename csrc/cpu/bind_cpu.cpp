// fastllm._cpu: the Python binding of the CPU kernels. Only glue: the caller (kernels/cpu/linear.py)
// validates every shape, dtype, stride and device and passes raw data pointers; this file releases the
// GIL around the work.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "linear.h"

namespace py = pybind11;
using fastllm::cpu::DType;

namespace {

const void* ptr(uintptr_t p) { return reinterpret_cast<const void*>(p); }

void linear(uintptr_t x, int x_dtype, int64_t M, int64_t K, int64_t ldx, uintptr_t w, int w_dtype, bool w_packed,
            int64_t N, int64_t ldw, uintptr_t scale, uintptr_t bias, uintptr_t y, int64_t ldy, int threads) {
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
  py::gil_scoped_release release;
  fastllm::cpu::linear(a, threads);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fastllm's CPU kernels (private: call fastllm.kernels.cpu, which validates the arguments)";
  m.def("linear", &linear, "y = x W^T * scale + bias for small M; raw pointers, see csrc/cpu/linear.h");
  m.attr("PACK_ROWS") = fastllm::cpu::kPackRows;
  m.attr("PACK_COLS") = fastllm::cpu::kPackCols;
  m.def("isa", &fastllm::cpu::isa, "the instruction set the kernels run with");
  m.def(
      "force_isa", [](const std::string& name) { return fastllm::cpu::force_isa(name.c_str()); },
      "force an instruction set ('' = best); False if the CPU lacks it");
}
