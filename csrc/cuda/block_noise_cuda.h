// CUDA block-noise primitive shared by the block_noise and noisy_linear CUDA launchers (the twin
// of cpu/block_noise_cpu.h).
#pragma once

#include <ATen/core/Tensor.h>

namespace quantnoise {

// A new contiguous tensor: weight with noise="drop" (block_noise's forward), on weight's device
// and the current stream. The caller has checked the arguments (check_block_noise_args).
at::Tensor block_noise_drop_cuda(const at::Tensor& weight, const at::Tensor& seed, double p, int64_t block_size,
                                 int64_t offset, bool rescale);

}  // namespace quantnoise
