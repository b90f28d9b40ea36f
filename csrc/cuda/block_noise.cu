// CUDA launcher of quantnoise::block_noise: checks, device guard, current stream, launch check.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "block_noise_cuda.h"
#include "block_noise_kernels.cuh"
#include "quantnoise/checks.h"

namespace quantnoise {
namespace {

// A noised copy of weight: guard, contiguous input, fresh output, the block draw (a seed on the
// GPU is read in-kernel, never synced to the host), then launch(in, out, rng, seed_on_device,
// stream) per float dtype, launch-checked.
template <typename Launch>
at::Tensor noised_copy(const at::Tensor& weight, const at::Tensor& seed, int64_t offset, double p, Launch&& launch) {
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = weight.contiguous();
  at::Tensor out = at::empty_like(w, at::MemoryFormat::Contiguous);
  if (w.numel() == 0) return out;
  const bool seed_on_host = seed.device().is_cpu();
  const BlockRng rng = make_block_rng(seed_on_host ? seed_value_on_cpu(seed) : 0, offset, p);
  const int64_t* seed_on_device = seed_on_host ? nullptr : seed.const_data_ptr<int64_t>();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "block_noise_cuda", [&] {
    launch(w.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), rng, seed_on_device, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor block_noise_cuda(const at::Tensor& weight,  // [out, ...] float
                            const at::Tensor& seed,    // [] or [1] int64, CPU or weight's device
                            double p, int64_t block_size, int64_t offset, bool rescale,
                            bool /*straight_through: the autograd formula's (ops/noise.py)*/, c10::string_view noise,
                            const std::optional<at::Tensor>& centroids) {
  check_block_noise_args(weight, seed, p, block_size, rescale, noise);
  check_block_noise_centroids(weight, block_size, noise, centroids);
  if (noise != "centroid") return block_noise_drop_cuda(weight, seed, p, block_size, offset, rescale);
  const at::Tensor C = centroids->contiguous();
  return noised_copy(
      weight, seed, offset, p,
      [&](const auto* in, auto* out, const BlockRng& rng, const int64_t* seed_on_device, cudaStream_t stream) {
        using scalar_t = std::remove_pointer_t<decltype(out)>;
        launch_block_noise_centroid<scalar_t, at::opmath_type<scalar_t>>(in, out, weight.numel() / block_size,
                                                                         block_size, C.const_data_ptr<scalar_t>(),
                                                                         C.size(0), rng, seed_on_device, stream);
      });
}

}  // namespace

at::Tensor block_noise_drop_cuda(const at::Tensor& weight, const at::Tensor& seed, double p, int64_t block_size,
                                 int64_t offset, bool rescale) {
  const double scale = rescale ? 1.0 / (1.0 - p) : 1.0;
  return noised_copy(
      weight, seed, offset, p,
      [&](const auto* in, auto* out, const BlockRng& rng, const int64_t* seed_on_device, cudaStream_t stream) {
        using scalar_t = std::remove_pointer_t<decltype(out)>;
        using opmath_t = at::opmath_type<scalar_t>;
        launch_block_noise_drop<scalar_t, opmath_t>(in, out, weight.numel(), block_size, rng, seed_on_device,
                                                    static_cast<opmath_t>(scale), stream);
      });
}

TORCH_LIBRARY_IMPL(quantnoise, CUDA, m) { m.impl("block_noise", &block_noise_cuda); }

}  // namespace quantnoise
