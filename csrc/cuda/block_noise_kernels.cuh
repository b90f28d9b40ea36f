// CUDA kernel body of quantnoise::block_noise. No ATen here: the emulation harness
// (csrc/emu/) compiles this file with g++ and runs it on CPU threads.
#pragma once

#include <cstdint>

#include "quantnoise/blocks.h"

namespace quantnoise {

// One thread per element, grid-stride, 64-bit indices. Each thread redraws its block's lane
// (Philox is ~40 integer ops; the kernel is bound by memory, not by that).
// opmath_t is float for half/bfloat16/float and double for double.
template <typename scalar_t, typename opmath_t>
__global__ void block_noise_drop_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, int64_t numel,
                                        int64_t block_size, BlockRng rng, const int64_t* __restrict__ seed_on_device,
                                        opmath_t scale) {
  if (seed_on_device != nullptr) {  // seed lives on the GPU: read it here, never sync the host
    const uint64_t s = static_cast<uint64_t>(*seed_on_device);
    rng.key0 = static_cast<uint32_t>(s);
    rng.key1 = static_cast<uint32_t>(s >> 32);
  }
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const bool dropped = rng.block_noised(i / block_size);
    out[i] = dropped ? scalar_t(0) : static_cast<scalar_t>(scale * static_cast<opmath_t>(in[i]));
  }
}

}  // namespace quantnoise
