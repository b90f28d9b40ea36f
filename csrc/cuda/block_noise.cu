// CUDA launcher of quantnoise::block_noise: checks, device guard, current stream, launch check.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "block_noise_kernels.cuh"
#include "quantnoise/checks.h"

namespace quantnoise {
namespace {

at::Tensor block_noise_cuda(const at::Tensor& weight,  // [out, ...] float
                            const at::Tensor& seed,    // [] or [1] int64, CPU or weight's device
                            double p, int64_t block_size, int64_t offset, bool rescale, bool straight_through,
                            c10::string_view noise) {
  (void)straight_through;
  check_block_noise_args(weight, seed, p, block_size, rescale, noise);
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = weight.contiguous();
  at::Tensor out = at::empty_like(w, at::MemoryFormat::Contiguous);
  if (w.numel() == 0) return out;
  const bool seed_on_host = seed.device().is_cpu();
  const BlockRng rng = make_block_rng(seed_on_host ? seed_value_on_cpu(seed) : 0, offset, p);
  const int64_t* seed_ptr = seed_on_host ? nullptr : seed.const_data_ptr<int64_t>();
  const double scale = rescale ? 1.0 / (1.0 - p) : 1.0;
  constexpr int threads = 256;
  const int64_t blocks = std::min<int64_t>((w.numel() + threads - 1) / threads, int64_t{1} << 20);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "block_noise_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    block_noise_drop_kernel<scalar_t, opmath_t><<<blocks, threads, 0, stream>>>(
        w.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), w.numel(), block_size, rng, seed_ptr,
        static_cast<opmath_t>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CUDA, m) { m.impl("block_noise", &block_noise_cuda); }

}  // namespace quantnoise
