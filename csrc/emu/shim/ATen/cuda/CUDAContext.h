// Emulation shim (test-only): what a csrc/cuda/*.cu launcher uses from the CUDA context, for
// compiling the launcher itself on the CPU (see csrc/emu/pq_emu.cpp).
#pragma once

#include "cuda_emu.h"

namespace at::cuda {
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace at::cuda

#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
