"""Build fastllm and its required C++ extensions: `fastllm._bpe` (the tokenizer, csrc/*.cpp) and
`fastllm._cpu` (the CPU kernels, csrc/cpu/*.cpp).

The C++ sources and flags have one home: the globs and flags below. CMakeLists.txt builds the same cores
(every source except the `bind*.cpp` Python bindings) for the C++ unit tests and the sanitizer build.
A compiler error fails the install: the extensions are not optional. The CPU kernels are compiled for
the baseline target; csrc/cpu/isa_*.cpp carry their instruction sets per function and are picked
at run time from the CPU's features, so one build runs on any x86-64 (and the portable copy elsewhere).
"""

from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import find_packages, setup

ParallelCompile("FASTLLM_BUILD_JOBS").install()  # compile the C++ files in parallel (all cores by default)

kernel_packages = ["fastllm.kernels"] + ["fastllm.kernels." + p for p in find_packages("kernels")]

flags = ["-O3", "-Wall", "-Wextra", "-fvisibility=hidden"]
exts = [
    Pybind11Extension(
        "fastllm._bpe", sorted(glob("csrc/*.cpp")), include_dirs=["csrc"], cxx_std=17, extra_compile_args=flags
    ),
    Pybind11Extension(
        "fastllm._cpu", sorted(glob("csrc/cpu/*.cpp")), include_dirs=["csrc/cpu"], cxx_std=17, extra_compile_args=flags
    ),
]

setup(
    packages=find_packages(include=["fastllm", "fastllm.*"]) + kernel_packages,
    package_dir={"fastllm.kernels": "kernels"},
    package_data={"fastllm": ["assets/*", "assets/default/*"]},
    ext_modules=exts,
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
