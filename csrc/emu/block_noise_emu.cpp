// Emulated CUDA launcher of quantnoise::block_noise: cuda/block_noise.cu itself (see launcher.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <type_traits>

#include "../cuda/block_noise_cuda.h"
#include "quantnoise/checks.h"
//
#include "launcher.h"

#define CUDA QN_EMU_DISPATCH_KEY
#include "../cuda/block_noise.cu"
#undef CUDA

// Test-only: the launcher's device-seed branch. Under emulation every tensor is a CPU tensor,
// so block_noise.cu always sees a host seed; this launches the same kernels as block_noise.cu
// does for a seed on the weight's device (keys left to the kernel, which reads *seed itself),
// for test_cuda_vs_cpu.py to compare with the CPU op.
namespace quantnoise {
namespace {

at::Tensor block_noise_device_seed(const at::Tensor& weight, const at::Tensor& seed, double p, int64_t block_size,
                                   int64_t offset, bool rescale, c10::string_view noise,
                                   const std::optional<at::Tensor>& centroids) {
  check_block_noise_args(weight, seed, p, block_size, rescale, noise);
  check_block_noise_centroids(weight, block_size, noise, centroids);
  const at::Tensor w = weight.contiguous();
  at::Tensor out = at::empty_like(w, at::MemoryFormat::Contiguous);
  const BlockRng rng = make_block_rng(0, offset, p);
  const int64_t* seed_ptr = seed.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "block_noise_device_seed", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* in = w.const_data_ptr<scalar_t>();
    if (noise == "centroid") {
      const at::Tensor C = centroids->contiguous();
      launch_block_noise_centroid<scalar_t, opmath_t>(in, out.mutable_data_ptr<scalar_t>(), w.numel() / block_size,
                                                      block_size, C.const_data_ptr<scalar_t>(), C.size(0), rng,
                                                      seed_ptr, nullptr);
    } else {
      const auto scale = static_cast<opmath_t>(rescale ? 1.0 / (1.0 - p) : 1.0);
      launch_block_noise_drop<scalar_t, opmath_t>(in, out.mutable_data_ptr<scalar_t>(), w.numel(), block_size, rng,
                                                  seed_ptr, scale, nullptr);
    }
  });
  return out;
}

}  // namespace
}  // namespace quantnoise

TORCH_LIBRARY_FRAGMENT(quantnoise_emu_test, m) {
  m.def(
      "block_noise_device_seed(Tensor weight, Tensor seed, float p, int block_size, int offset, bool rescale, "
      "str noise, Tensor? centroids) -> Tensor",
      &quantnoise::block_noise_device_seed);
}
