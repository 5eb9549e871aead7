"""Build fastllm and its required C++ extension `fastllm._bpe`.

The C++ sources and flags have one home: `csrc/*.cpp` compiled with the flags below. CMakeLists.txt
builds the same core (every csrc/*.cpp except the `bind*.cpp` Python bindings) for the C++ unit tests
and the sanitizer build. A compiler error fails the install: the extension is not optional.
"""

from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import find_packages, setup

ParallelCompile("FASTLLM_BUILD_JOBS").install()  # compile the C++ files in parallel (all cores by default)

kernel_packages = ["fastllm.kernels"] + ["fastllm.kernels." + p for p in find_packages("kernels")]

ext = Pybind11Extension(
    "fastllm._bpe",
    sorted(glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3", "-Wall", "-Wextra", "-fvisibility=hidden"],
)

setup(
    packages=find_packages(include=["fastllm", "fastllm.*"]) + kernel_packages,
    package_dir={"fastllm.kernels": "kernels"},
    package_data={"fastllm": ["assets/*", "assets/default/*"]},
    ext_modules=[ext],
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
