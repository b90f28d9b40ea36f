// Output allocation for CPU kernels that write large tensors in one pass.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cstdint>

namespace quantnoise {

// A fresh contiguous tensor. Large ones are advised to use transparent huge pages before their
// first touch: a 64 MiB output otherwise costs 16k page faults, which take longer than writing
// it (and the torch allocator returns such blocks to the OS on free, so every call pays again).
// The advice is a hint only; where THP is off it does nothing.
inline at::Tensor empty_cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options.memory_format(at::MemoryFormat::Contiguous));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t end = begin + static_cast<uintptr_t>(out.nbytes());
  const uintptr_t aligned_begin = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t aligned_end = end & ~(kHuge - 1);
  if (aligned_end > aligned_begin) {
    (void)madvise(reinterpret_cast<void*>(aligned_begin), aligned_end - aligned_begin, MADV_HUGEPAGE);
  }
#endif
  return out;
}

}  // namespace quantnoise
