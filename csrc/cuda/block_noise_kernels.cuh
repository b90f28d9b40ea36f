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

// The element-wise kinds (drop, fake_quant: noise_kinds.h), one kernel for both. One thread per
// element, grid-stride, 64-bit indices. Each thread redraws its block's lane and builds its row's
// parameters (Philox is ~40 integer ops; the kernel is bound by memory, not by that).
// Kind's opmath_t is float for half/bfloat16/float and double for double.
template <typename scalar_t, typename Kind>
__global__ void block_noise_elementwise_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                               int64_t numel, int64_t block_size, int64_t row_len, BlockRng rng,
                                               const int64_t* __restrict__ seed_on_device, Kind kind) {
  if (seed_on_device != nullptr) {  // seed lives on the GPU: read it here, never sync the host
    const uint64_t s = static_cast<uint64_t>(*seed_on_device);
    rng.key0 = static_cast<uint32_t>(s);
    rng.key1 = static_cast<uint32_t>(s >> 32);
  }
  QN_GRID_STRIDE_LOOP(i, numel) {
    const auto row = kind.row(i / row_len);
    out[i] = rng.block_noised(i / block_size) ? row.noised(in[i]) : row.kept(in[i]);
  }
}

// noise="centroid": one thread per weight block, grid-stride. A noised block becomes its nearest
// centroid (pq.h: the same squared-L2 sums and tie rule as the CPU kernel), a kept one is copied.
// The codebook C [K][bs] is staged in dynamic shared memory when use_smem_c (else read via L1).
template <typename scalar_t, typename opmath_t>
__global__ void block_noise_centroid_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                            int64_t n_blocks, int64_t block_size, const scalar_t* __restrict__ C,
                                            int64_t K, bool use_smem_c, BlockRng rng,
                                            const int64_t* __restrict__ seed_on_device) {
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
    if (rng.block_noised(b)) src = Cr + nearest_centroid<opmath_t>(src, Cr, K, block_size) * block_size;
    for (int64_t d = 0; d < block_size; ++d) out[b * block_size + d] = src[d];
  }
}

constexpr int64_t kCentroidMaxSmemC = 32 * 1024;  // codebook bytes staged in shared memory

template <typename scalar_t, typename opmath_t>
void launch_block_noise_centroid(const scalar_t* in, scalar_t* out, int64_t n_blocks, int64_t block_size,
                                 const scalar_t* C, int64_t K, BlockRng rng, const int64_t* seed_on_device,
                                 cudaStream_t stream) {
  const int64_t c_bytes = K * block_size * static_cast<int64_t>(sizeof(scalar_t));
  const bool use_smem_c = c_bytes <= kCentroidMaxSmemC;
  QN_LAUNCH_KERNEL(grid_blocks(n_blocks, kThreadsPerBlock), kThreadsPerBlock,
                   use_smem_c ? static_cast<size_t>(c_bytes) : 0, stream,
                   block_noise_centroid_kernel<scalar_t, opmath_t>)
  (in, out, n_blocks, block_size, C, K, use_smem_c, rng, seed_on_device);
}

// Launch configuration, shared by the CUDA launcher (block_noise.cu) and the emulated one
// (csrc/emu/block_noise_emu.cpp): both run exactly this grid.
template <typename scalar_t, typename Kind>
void launch_block_noise_elementwise(const scalar_t* in, scalar_t* out, int64_t numel, int64_t block_size,
                                    int64_t row_len, BlockRng rng, const int64_t* seed_on_device, const Kind& kind,
                                    cudaStream_t stream) {
  QN_LAUNCH_KERNEL(grid_blocks(numel, kThreadsPerBlock), kThreadsPerBlock, 0, stream,
                   block_noise_elementwise_kernel<scalar_t, Kind>)
  (in, out, numel, block_size, row_len, rng, seed_on_device, kind);
}

// Any kind (noise_kinds.h): the element-wise kernel, or the block kernel for centroid noise.
// weight holds numel entries in rows of row_len.
template <typename scalar_t, typename Kind>
void launch_block_noise(const scalar_t* in, scalar_t* out, int64_t numel, int64_t block_size, int64_t row_len,
                        BlockRng rng, const int64_t* seed_on_device, const Kind& kind, cudaStream_t stream) {
  if constexpr (Kind::kElementwise) {
    launch_block_noise_elementwise(in, out, numel, block_size, row_len, rng, seed_on_device, kind, stream);
  } else {
    launch_block_noise_centroid<scalar_t, typename Kind::opmath_type>(in, out, numel / block_size, block_size, kind.C,
                                                                      kind.K, rng, seed_on_device, stream);
  }
}

}  // namespace quantnoise
