// The two spellings a kernel body (.cuh) needs that differ between nvcc and the emulation
// harness (csrc/emu/cuda_emu.h, which defines them itself when it compiles a .cuh with g++):
//   QN_LAUNCH_KERNEL(grid, block, smem_bytes, stream, kernel<T...>)(args...);  // kernel<<<...>>>(args...)
//   QN_DYNAMIC_SHARED(T, name);  // extern __shared__ T name[] (dynamic shared memory)
// The kernel is the last macro argument so template arguments with commas need no parentheses.
#pragma once

#include <algorithm>
#include <cstdint>

#include "quantnoise/dispatch.h"

#if defined(__CUDACC__)
#define QN_LAUNCH_KERNEL(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#define QN_DYNAMIC_SHARED(T, name)                                  \
  extern __shared__ __align__(16) unsigned char qn_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(qn_dynamic_smem_)
#elif !defined(QN_CUDA_EMU)
#error "a CUDA kernel body (.cuh) is compiled by nvcc, or by g++ after csrc/emu/cuda_emu.h"
#endif

// The grid-stride loop of a one-dimensional kernel, 64-bit: I takes this thread's global index,
// then steps by the number of threads in the grid, while I < N.
//   QN_GRID_STRIDE_LOOP(i, numel) { out[i] = ...; }
#define QN_GRID_STRIDE_LOOP(I, N)                                                 \
  for (int64_t I = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,   \
               qn_grid_stride_##I = static_cast<int64_t>(blockDim.x) * gridDim.x; \
       I < (N); I += qn_grid_stride_##I)

namespace quantnoise {

// Blocks of a grid-stride dimension (a kernel that loops over what the grid leaves, by
// QN_GRID_STRIDE_LOOP or `+= gridDim.y`): grid_blocks(work, per_block, max_blocks) on a GPU. The
// emulated build also caps it at QN_EMU_GRID_STRIDE_CAP when set (cuda_emu.h), so tests take a
// second grid-stride step with small work. A grid that must cover its work exactly (one block per
// output tile) calls grid_blocks and is never shrunk.
inline unsigned grid_stride_blocks(int64_t work, int64_t per_block, int64_t max_blocks = kMaxGridStrideBlocks) {
#if defined(QN_CUDA_EMU)
  max_blocks = std::min<int64_t>(max_blocks, ::qn_emu::grid_stride_cap());
#endif
  return grid_blocks(work, per_block, max_blocks);
}

}  // namespace quantnoise
