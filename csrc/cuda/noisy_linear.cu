// CUDA launchers of quantnoise::noisy_linear and its input gradient. On the GPU the noised
// weight is materialised (one kernel, one pass: noised_weight_cuda) and fed to cuBLAS; that
// pass is cheap next to the GEMMs. Same mask as block_noise. (The CPU kernels, which never
// materialise it, are cpu/noisy_linear.cpp.)
#include <ATen/core/Tensor.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <torch/library.h>

#include "block_noise_cuda.h"
#include "quantnoise/checks.h"
#include "quantnoise/noise_host.h"

namespace quantnoise {
namespace {

at::Tensor noisy_linear_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const at::Tensor& seed, double p, int64_t block_size, int64_t offset, bool rescale,
                             bool /*straight_through: the autograd formula's (ops/noisy.py)*/, c10::string_view noise,
                             const std::optional<at::Tensor>& centroids, const std::optional<at::Tensor>& scale,
                             const std::optional<at::Tensor>& zero_point, int64_t quant_min, int64_t quant_max) {
  check_noisy_linear_args(input, weight, bias);
  const NoiseArgs args = make_noise_args("noisy_linear", weight, seed, p, block_size, offset, rescale, noise, centroids,
                                         scale, zero_point, quant_min, quant_max);
  return at::linear(input, noised_weight_cuda(weight, seed, args), bias);
}

at::Tensor noisy_linear_backward_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                                            const at::Tensor& seed, double p, int64_t block_size, int64_t offset,
                                            bool rescale, c10::string_view noise,
                                            const std::optional<at::Tensor>& centroids,
                                            const std::optional<at::Tensor>& scale,
                                            const std::optional<at::Tensor>& zero_point, int64_t quant_min,
                                            int64_t quant_max) {
  check_noisy_linear_backward_args(grad_output, weight);
  const NoiseArgs args = make_noise_args("noisy_linear_backward_input", weight, seed, p, block_size, offset, rescale,
                                         noise, centroids, scale, zero_point, quant_min, quant_max);
  return at::matmul(grad_output, noised_weight_cuda(weight, seed, args));
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CUDA, m) {
  m.impl("noisy_linear", &noisy_linear_cuda);
  m.impl("noisy_linear_backward_input", &noisy_linear_backward_input_cuda);
}

}  // namespace quantnoise
