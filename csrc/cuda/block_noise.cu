// CUDA launcher of quantnoise::block_noise: checks, device guard, current stream, launch check.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "block_noise_kernels.cuh"
#include "quantnoise/checks.h"

namespace quantnoise {
namespace {

at::Tensor block_noise_cuda(const at::Tensor& weight,  // [out, ...] float
                            const at::Tensor& seed,    // [] or [1] int64, CPU or weight's device
                            double p, int64_t block_size, int64_t offset, bool rescale, bool straight_through,
                            c10::string_view noise, const std::optional<at::Tensor>& centroids) {
  (void)straight_through;
  check_block_noise_args(weight, seed, p, block_size, rescale, noise);
  check_block_noise_centroids(weight, block_size, noise, centroids);
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = weight.contiguous();
  at::Tensor out = at::empty_like(w, at::MemoryFormat::Contiguous);
  if (w.numel() == 0) return out;
  const bool seed_on_host = seed.device().is_cpu();
  const BlockRng rng = make_block_rng(seed_on_host ? seed_value_on_cpu(seed) : 0, offset, p);
  const int64_t* seed_ptr = seed_on_host ? nullptr : seed.const_data_ptr<int64_t>();
  if (noise == "centroid") {
    const at::Tensor C = centroids->contiguous();
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "block_noise_centroid_cuda", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      launch_block_noise_centroid<scalar_t, opmath_t>(w.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                                      w.numel() / block_size, block_size, C.const_data_ptr<scalar_t>(),
                                                      C.size(0), rng, seed_ptr, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
  }
  const double scale = rescale ? 1.0 / (1.0 - p) : 1.0;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "block_noise_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    launch_block_noise_drop<scalar_t, opmath_t>(w.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                                w.numel(), block_size, rng, seed_ptr, static_cast<opmath_t>(scale),
                                                stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// noisy_linear on CUDA: the noised weight is materialised (one kernel, one pass) and fed to
// cuBLAS; on the GPU that pass is cheap next to the GEMMs. Same mask as block_noise.
at::Tensor noisy_linear_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const at::Tensor& seed, double p, int64_t block_size, int64_t offset, bool rescale,
                             bool straight_through) {
  check_noisy_linear_args(input, weight, bias, seed, p, block_size, rescale);
  return at::linear(
      input, block_noise_cuda(weight, seed, p, block_size, offset, rescale, straight_through, "drop", std::nullopt),
      bias);
}

at::Tensor noisy_linear_backward_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                                            const at::Tensor& seed, double p, int64_t block_size, int64_t offset,
                                            bool rescale) {
  check_noisy_linear_backward_args(grad_output, weight, seed, p, block_size, rescale);
  return at::matmul(grad_output,
                    block_noise_cuda(weight, seed, p, block_size, offset, rescale, true, "drop", std::nullopt));
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CUDA, m) {
  m.impl("block_noise", &block_noise_cuda);
  m.impl("noisy_linear", &noisy_linear_cuda);
  m.impl("noisy_linear_backward_input", &noisy_linear_backward_input_cuda);
}

}  // namespace quantnoise
