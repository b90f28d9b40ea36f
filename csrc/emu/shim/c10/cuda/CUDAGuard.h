// Emulation shim (test-only): the device guard of a csrc/cuda/*.cu launcher is a no-op on the CPU.
#pragma once

#include <c10/core/Device.h>

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
