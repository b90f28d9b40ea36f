// Emulated CUDA launcher of quantnoise::block_noise: cuda/block_noise.cu itself (see launcher.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../cuda/block_noise_cuda.h"
#include "quantnoise/noise_host.h"
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
                                   const std::optional<at::Tensor>& centroids, const std::optional<at::Tensor>& scale,
                                   const std::optional<at::Tensor>& zero_point, int64_t quant_min, int64_t quant_max) {
  NoiseArgs args = make_noise_args("block_noise", weight, seed, p, block_size, offset, rescale, noise, centroids, scale,
                                   zero_point, quant_min, quant_max);
  args.rng = make_block_rng(0, offset, p);  // keys left to the kernel, which reads *seed itself
  const at::Tensor w = weight.contiguous();
  at::Tensor out = at::empty_like(w, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "block_noise_device_seed", [&] {
    with_noise_kind<scalar_t, at::opmath_type<scalar_t>>(args, [&](const auto& kind) {
      launch_block_noise(w.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), w.numel(), block_size,
                         w.numel() / w.size(0), args.rng, seed.const_data_ptr<int64_t>(), kind, nullptr);
    });
  });
  return out;
}

}  // namespace
}  // namespace quantnoise

TORCH_LIBRARY_FRAGMENT(quantnoise_emu_test, m) {
  m.def(
      "block_noise_device_seed(Tensor weight, Tensor seed, float p, int block_size, int offset, bool rescale, "
      "str noise, Tensor? centroids, Tensor? scale=None, Tensor? zero_point=None, int quant_min=0, "
      "int quant_max=255) -> Tensor",
      &quantnoise::block_noise_device_seed);
}
