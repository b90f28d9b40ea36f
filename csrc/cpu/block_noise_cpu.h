// CPU block-noise primitive shared by the block_noise and noisy_linear CPU kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include "quantnoise/noise_host.h"

namespace quantnoise {

// out = the noise of args (any kind) on the blocks [first_block, first_block + in.numel() /
// block_size) of the whole weight, whose rows hold row_len entries: in and out are contiguous,
// same shape and dtype; `first_block` is the global index of in's first block, so a chunk gets
// exactly the mask (and the per-row parameters) of the full tensor.
void noise_blocks_cpu(const at::Tensor& in, at::Tensor& out, int64_t first_block, int64_t row_len,
                      const NoiseArgs& args);

}  // namespace quantnoise
