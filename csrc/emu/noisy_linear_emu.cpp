// Emulated CUDA launchers of quantnoise::noisy_linear and noisy_linear_backward_input:
// cuda/noisy_linear.cu itself (see launcher.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <torch/library.h>

#include "../cuda/block_noise_cuda.h"
#include "quantnoise/checks.h"
#include "quantnoise/noise_host.h"
//
#include "launcher.h"

#define CUDA QN_EMU_DISPATCH_KEY
#include "../cuda/noisy_linear.cu"
#undef CUDA
