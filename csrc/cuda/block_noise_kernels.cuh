// CUDA kernel body of quantnoise::block_noise. No ATen here: the emulation harness
// (csrc/emu/) compiles this file with g++ and runs it on CPU threads.
#pragma once

#include <algorithm>
#include <cstdint>

#include "quantnoise/blocks.h"
#include "quantnoise/cuda_compat.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/noise_kinds.h"
#include "quantnoise/pq.h"

namespace quantnoise {

// The Philox block key of block `block` in row r (row_len entries) of a tensor that holds rows
// rows[r] of the whole weight (block_noise's `rows`; nullptr: the whole weight itself).
QN_INLINE int64_t block_key(int64_t block, int64_t r, int64_t blocks_per_row, const int64_t* rows) {
  return rows == nullptr ? block : rows[r] * blocks_per_row + (block - r * blocks_per_row);
}

// The element-wise kinds (drop, fake_quant: noise_kinds.h), one kernel for both. One thread per
// element, grid-stride, 64-bit indices. Each thread redraws its block's lane and builds its row's
// parameters (Philox is ~40 integer ops; the kernel is bound by memory, not by that).
// Kind's opmath_t is float for half/bfloat16/float and double for double.
template <typename scalar_t, typename Kind>
__global__ void block_noise_elementwise_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                               int64_t numel, int64_t block_size, int64_t row_len, BlockRng rng,
                                               const int64_t* __restrict__ seed_on_device, Kind kind,
                                               const int64_t* __restrict__ rows) {
  if (seed_on_device != nullptr) {  // seed lives on the GPU: read it here, never sync the host
    const uint64_t s = static_cast<uint64_t>(*seed_on_device);
    rng.key0 = static_cast<uint32_t>(s);
    rng.key1 = static_cast<uint32_t>(s >> 32);
  }
  QN_GRID_STRIDE_LOOP(i, numel) {
    const int64_t r = i / row_len;
    const auto row = kind.row(r);
    const bool noised = rng.block_noised(block_key(i / block_size, r, row_len / block_size, rows));
    out[i] = noised ? row.noised(in[i]) : row.kept(in[i]);
  }
}

// The backward of every kind (noise_kinds.h's noise_grad): one thread per element, grid-stride;
// the mask is drawn only for the dropout-style gradient.
template <typename scalar_t, typename Kind>
__global__ void block_noise_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ w,
                                            scalar_t* __restrict__ out, int64_t numel, int64_t block_size,
                                            int64_t row_len, BlockRng rng, const int64_t* __restrict__ seed_on_device,
                                            bool straight_through, Kind kind, const int64_t* __restrict__ rows) {
  if (seed_on_device != nullptr) {
    const uint64_t s = static_cast<uint64_t>(*seed_on_device);
    rng.key0 = static_cast<uint32_t>(s);
    rng.key1 = static_cast<uint32_t>(s >> 32);
  }
  QN_GRID_STRIDE_LOOP(i, numel) {
    const int64_t r = i / row_len;
    const bool noised = !straight_through && rng.block_noised(block_key(i / block_size, r, row_len / block_size, rows));
    out[i] = noise_grad(kind.row(r), grad[i], w[i], noised, straight_through);
  }
}

template <typename scalar_t, typename Kind>
void launch_block_noise_backward(const scalar_t* grad, const scalar_t* w, scalar_t* out, int64_t numel,
                                 int64_t block_size, int64_t row_len, BlockRng rng, const int64_t* seed_on_device,
                                 bool straight_through, const Kind& kind, cudaStream_t stream,
                                 const int64_t* rows = nullptr) {
  QN_LAUNCH_KERNEL(grid_stride_blocks(numel, kThreadsPerBlock), kThreadsPerBlock, 0, stream,
                   block_noise_backward_kernel<scalar_t, Kind>)
  (grad, w, out, numel, block_size, row_len, rng, seed_on_device, straight_through, kind, rows);
}

// noise="centroid": one thread per weight block, grid-stride. A noised block becomes its nearest
// centroid (pq.h: the same squared-L2 sums and tie rule as the CPU kernel), a kept one is copied.
// The codebook C [K][bs] is staged in dynamic shared memory when use_smem_c (else read via L1).
template <typename scalar_t, typename opmath_t>
__global__ void block_noise_centroid_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                            int64_t n_blocks, int64_t block_size, const scalar_t* __restrict__ C,
                                            int64_t K, bool use_smem_c, BlockRng rng,
                                            const int64_t* __restrict__ seed_on_device, int64_t blocks_per_row,
                                            const int64_t* __restrict__ rows) {
  QN_DYNAMIC_SHARED(scalar_t, cs);
  if (seed_on_device != nullptr) {
    const uint64_t s = static_cast<uint64_t>(*seed_on_device);
    rng.key0 = static_cast<uint32_t>(s);
    rng.key1 = static_cast<uint32_t>(s >> 32);
  }
  if (use_smem_c) {
    for (int64_t e = threadIdx.x; e < K * block_size; e += blockDim.x) cs[e] = C[e];
    __syncthreads();
  }
  const scalar_t* Cr = use_smem_c ? cs : C;
  QN_GRID_STRIDE_LOOP(b, n_blocks) {
    const scalar_t* src = in + b * block_size;
    if (rng.block_noised(block_key(b, b / blocks_per_row, blocks_per_row, rows)))
      src = Cr + nearest_centroid<opmath_t>(src, Cr, K, block_size) * block_size;
    for (int64_t d = 0; d < block_size; ++d) out[b * block_size + d] = src[d];
  }
}

constexpr int64_t kCentroidMaxSmemC = 32 * 1024;  // codebook bytes staged in shared memory

template <typename scalar_t, typename opmath_t>
void launch_block_noise_centroid(const scalar_t* in, scalar_t* out, int64_t n_blocks, int64_t block_size,
                                 const scalar_t* C, int64_t K, BlockRng rng, const int64_t* seed_on_device,
                                 int64_t blocks_per_row, const int64_t* rows, cudaStream_t stream) {
  const int64_t c_bytes = K * block_size * static_cast<int64_t>(sizeof(scalar_t));
  const bool use_smem_c = c_bytes <= kCentroidMaxSmemC;
  QN_LAUNCH_KERNEL(grid_stride_blocks(n_blocks, kThreadsPerBlock), kThreadsPerBlock,
                   use_smem_c ? static_cast<size_t>(c_bytes) : 0, stream,
                   block_noise_centroid_kernel<scalar_t, opmath_t>)
  (in, out, n_blocks, block_size, C, K, use_smem_c, rng, seed_on_device, blocks_per_row, rows);
}

// Launch configuration, shared by the CUDA launcher (block_noise.cu) and the emulated one
// (csrc/emu/block_noise_emu.cpp): both run exactly this grid.
template <typename scalar_t, typename Kind>
void launch_block_noise_elementwise(const scalar_t* in, scalar_t* out, int64_t numel, int64_t block_size,
                                    int64_t row_len, BlockRng rng, const int64_t* seed_on_device, const Kind& kind,
                                    cudaStream_t stream, const int64_t* rows) {
  QN_LAUNCH_KERNEL(grid_stride_blocks(numel, kThreadsPerBlock), kThreadsPerBlock, 0, stream,
                   block_noise_elementwise_kernel<scalar_t, Kind>)
  (in, out, numel, block_size, row_len, rng, seed_on_device, kind, rows);
}

// Any kind (noise_kinds.h): the element-wise kernel, or the block kernel for centroid noise.
// weight holds numel entries in rows of row_len (rows: block_noise's, or nullptr).
template <typename scalar_t, typename Kind>
void launch_block_noise(const scalar_t* in, scalar_t* out, int64_t numel, int64_t block_size, int64_t row_len,
                        BlockRng rng, const int64_t* seed_on_device, const Kind& kind, cudaStream_t stream,
                        const int64_t* rows = nullptr) {
  if constexpr (Kind::kElementwise) {
    launch_block_noise_elementwise(in, out, numel, block_size, row_len, rng, seed_on_device, kind, stream, rows);
  } else {
    launch_block_noise_centroid<scalar_t, typename Kind::opmath_type>(in, out, numel / block_size, block_size, kind.C,
                                                                      kind.K, rng, seed_on_device, row_len / block_size,
                                                                      rows, stream);
  }
}

}  // namespace quantnoise
