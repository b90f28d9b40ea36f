// CPU block-noise primitive shared by the block_noise and noisy_linear CPU kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include "quantnoise/blocks.h"

namespace quantnoise {

// out = drop-noise(in) for the blocks [first_block, first_block + in.numel() / block_size) of
// the whole weight: in and out are contiguous, same shape and dtype; `first_block` is the
// global index of in's first block, so a chunk gets exactly the mask of the full tensor.
void drop_blocks_cpu(const at::Tensor& in, at::Tensor& out, int64_t first_block, int64_t block_size,
                     const BlockRng& rng, double scale);

}  // namespace quantnoise
