// CUDA block-noise primitive shared by the block_noise and noisy_linear CUDA launchers (the twin
// of cpu/block_noise_cpu.h).
#pragma once

#include <ATen/core/Tensor.h>

#include "quantnoise/noise_host.h"

namespace quantnoise {

// A new contiguous tensor: weight with the noise of args (any kind; block_noise's forward), on
// weight's device and the current stream. args comes from make_noise_args (checked); rows (from
// checked_noise_rows, or undefined) as block_noise's.
at::Tensor noised_weight_cuda(const at::Tensor& weight, const at::Tensor& seed, const NoiseArgs& args,
                              const at::Tensor& rows = {});

}  // namespace quantnoise
