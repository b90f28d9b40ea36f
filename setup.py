"""Build quantnoise_kernels._C: the CPU kernels always, the CUDA kernels when asked or possible.

Environment:
  QUANTNOISE_CUDA=1   require the CUDA build (error if it cannot be built); =0 forces CPU only.
                      Unset: CUDA is built when torch is a CUDA build and a toolkit is found.
  CUDA_HOME           the CUDA toolkit (set it explicitly: a wrapper `nvcc` on PATH misleads torch).
  TORCH_CUDA_ARCH_LIST  target architectures, e.g. "9.0" (required when no GPU is visible).
  MAX_JOBS            parallel compile jobs (torch's ninja build honours it).
  DEBUG=1             -O0 -g instead of -O3.
  QUANTNOISE_SANITIZE=1  -fsanitize=address,undefined (make test-asan; load with libasan preloaded).
"""

import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
# Source folders, relative to ROOT (setuptools rejects absolute source paths in an editable
# install). CMakeLists.txt globs the same ones.
CPU_SOURCES = ["csrc/*.cpp", "csrc/host/*.cpp", "csrc/cpu/*.cpp"]
CUDA_SOURCES = ["csrc/cuda/*.cu"]


def sources(patterns: list[str]) -> list[str]:
    """The files matching the patterns, relative to ROOT, sorted."""
    return sorted(os.path.relpath(p, ROOT) for pattern in patterns for p in glob.glob(os.path.join(ROOT, pattern)))


def want_cuda() -> bool:
    """Decide the CUDA build without needing a GPU (torch.version.cuda, not is_available())."""
    requested = os.environ.get("QUANTNOISE_CUDA", "")
    if requested == "0":
        return False
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build (install a CUDA build of torch)")
    if cpp_extension.CUDA_HOME is None:
        problems.append("no CUDA toolkit found (set CUDA_HOME, e.g. CUDA_HOME=/usr/local/cuda)")
    if requested == "1" and problems:
        raise RuntimeError("QUANTNOISE_CUDA=1 but the CUDA extension cannot be built: " + "; ".join(problems))
    if requested == "1" and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        raise RuntimeError("QUANTNOISE_CUDA=1 without a visible GPU: set TORCH_CUDA_ARCH_LIST, e.g. '9.0'")
    return not problems


def extension() -> cpp_extension.CppExtension:
    debug = os.environ.get("DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3", "-g0", "-DNDEBUG"]
    cpu_sources = sources(CPU_SOURCES)
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    # QUANTNOISE_SANITIZE=1: AddressSanitizer + UBSan build for `make test-asan` (never for wheels).
    sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize=vptr"]
    if os.environ.get("QUANTNOISE_SANITIZE", "0") == "1":
        opt = ["-O1", "-g1"] + sanitize  # -g1: line numbers in reports, cheap to compile
    args = {"cxx": opt + ["-Wall", "-fopenmp"]}  # at::parallel_for is OpenMP in the header
    link = ["-fopenmp"] + (sanitize if os.environ.get("QUANTNOISE_SANITIZE", "0") == "1" else [])
    if not want_cuda():
        return cpp_extension.CppExtension(
            "quantnoise_kernels._C",
            cpu_sources,
            include_dirs=include_dirs,
            extra_compile_args=args,
            extra_link_args=link,
            py_limited_api=True,
        )
    # cuBLAS/cuSPARSE headers of pip-installed CUDA live in site-packages/nvidia/cu13/include.
    nvidia = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia")
    include_dirs += sorted(glob.glob(os.path.join(nvidia, "cu*", "include")))
    # nvcc has no -g0: hand it to the host compiler.
    nvcc_opt = ["-O0", "-g"] if debug else ["-O3", "-DNDEBUG", "-Xcompiler", "-g0"]
    args["nvcc"] = nvcc_opt + ["--expt-relaxed-constexpr"]
    return cpp_extension.CUDAExtension(
        "quantnoise_kernels._C",
        cpu_sources + sources(CUDA_SOURCES),
        include_dirs=include_dirs,
        extra_compile_args=args,
        extra_link_args=link,
        py_limited_api=True,
    )


setup(
    packages=find_packages(include=["quantnoise_kernels", "quantnoise_kernels.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
