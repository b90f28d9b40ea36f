// The two spellings a kernel body (.cuh) needs that differ between nvcc and the emulation
// harness (csrc/emu/cuda_emu.h, which defines them itself when it compiles a .cuh with g++):
//   QN_LAUNCH_KERNEL(grid, block, smem_bytes, stream, kernel<T...>)(args...);  // kernel<<<...>>>(args...)
//   QN_DYNAMIC_SHARED(T, name);  // extern __shared__ T name[] (dynamic shared memory)
// The kernel is the last macro argument so template arguments with commas need no parentheses.
#pragma once

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
