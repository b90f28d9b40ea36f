// CUDA launcher of quantnoise::block_noise: checks, device guard, current stream, launch check.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "block_noise_cuda.h"
#include "block_noise_kernels.cuh"
#include "quantnoise/checks.h"
#include "quantnoise/noise_host.h"
#include "quantnoise/noise_rows.h"

namespace quantnoise {
namespace {

// What both directions do around their kernel: device guard, a contiguous weight, its output (returned
// untouched when empty), the seed's device pointer and the current stream, then the launch check.
template <typename Launch>
at::Tensor over_weight(const at::Tensor& weight, const at::Tensor& seed, Launch&& launch) {
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = weight.contiguous();
  at::Tensor out = at::empty_like(w, at::MemoryFormat::Contiguous);
  if (w.numel() == 0) return out;
  // A seed on the GPU is read in-kernel (args.rng's keys are then 0), never synced to the host.
  const int64_t* seed_on_device = seed.device().is_cpu() ? nullptr : seed.const_data_ptr<int64_t>();
  launch(w, out, seed_on_device, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor block_noise_cuda(const at::Tensor& weight,  // [out, ...] float
                            const at::Tensor& seed,    // [] or [1] int64, CPU or weight's device
                            double p, int64_t block_size, int64_t offset, bool rescale,
                            bool /*straight_through: the autograd formula's (ops/noise.py)*/, c10::string_view noise,
                            const std::optional<at::Tensor>& centroids, const std::optional<at::Tensor>& scale,
                            const std::optional<at::Tensor>& zero_point, int64_t quant_min, int64_t quant_max,
                            const std::optional<at::Tensor>& rows) {
  const NoiseArgs args = make_noise_args("block_noise", weight, seed, p, block_size, offset, rescale, noise, centroids,
                                         scale, zero_point, quant_min, quant_max);
  return noised_weight_cuda(weight, seed, args, checked_noise_rows("block_noise", rows, weight));
}

at::Tensor block_noise_backward_cuda(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& seed, double p,
                                     int64_t block_size, int64_t offset, bool rescale, bool straight_through,
                                     c10::string_view noise, const std::optional<at::Tensor>& centroids,
                                     const std::optional<at::Tensor>& scale,
                                     const std::optional<at::Tensor>& zero_point, int64_t quant_min, int64_t quant_max,
                                     const std::optional<at::Tensor>& rows) {
  const NoiseArgs args = make_noise_args("block_noise_backward", weight, seed, p, block_size, offset, rescale, noise,
                                         centroids, scale, zero_point, quant_min, quant_max);
  const at::Tensor r = check_noise_grad_args(grad, weight, rows);
  return over_weight(
      weight, seed, [&](const at::Tensor& w, at::Tensor& out, const int64_t* seed_on_device, cudaStream_t stream) {
        const at::Tensor g = grad.contiguous();
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "block_noise_backward_cuda", [&] {
          with_noise_kind<scalar_t, at::opmath_type<scalar_t>>(args, [&](const auto& kind) {
            launch_block_noise_backward(g.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                        out.mutable_data_ptr<scalar_t>(), w.numel(), block_size, w.numel() / w.size(0),
                                        args.rng, seed_on_device, straight_through, kind, stream,
                                        r.defined() ? r.const_data_ptr<int64_t>() : nullptr);
          });
        });
      });
}

}  // namespace

at::Tensor noised_weight_cuda(const at::Tensor& weight, const at::Tensor& seed, const NoiseArgs& args,
                              const at::Tensor& rows) {
  return over_weight(
      weight, seed, [&](const at::Tensor& w, at::Tensor& out, const int64_t* seed_on_device, cudaStream_t stream) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "block_noise_cuda", [&] {
          with_noise_kind<scalar_t, at::opmath_type<scalar_t>>(args, [&](const auto& kind) {
            launch_block_noise(w.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), w.numel(),
                               args.block_size, w.numel() / w.size(0), args.rng, seed_on_device, kind, stream,
                               rows.defined() ? rows.const_data_ptr<int64_t>() : nullptr);
          });
        });
      });
}

TORCH_LIBRARY_IMPL(quantnoise, CUDA, m) {
  m.impl("block_noise", &block_noise_cuda);
  m.impl("block_noise_backward", &block_noise_backward_cuda);
}

}  // namespace quantnoise
