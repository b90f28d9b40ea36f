// The noise arguments every Quant-Noise op takes (block_noise, noisy_linear and its input
// gradient), checked once and turned into the kind's functor (noise_kinds.h) by the CPU, CUDA and
// emulated launchers alike (host only, uses ATen; defined in csrc/host/noise_host.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <utility>

#include "quantnoise/blocks.h"
#include "quantnoise/cpu_features.h"
#include "quantnoise/noise_kinds.h"

namespace quantnoise {

struct NoiseArgs {
  NoiseKind kind;
  int64_t block_size;
  BlockRng rng;           // keys 0 when the seed is on the GPU (the kernel reads it)
  double drop_scale;      // drop: what kept blocks are multiplied by (1/(1-p) or 1)
  at::Tensor centroids;   // centroid: [K, block_size], contiguous, weight's dtype
  at::Tensor scale;       // fake_quant: float32 [1] or [out], contiguous
  at::Tensor zero_point;  // fake_quant: int32, scale's shape, contiguous
  int64_t quant_min, quant_max;
  CpuIsa isa = CpuIsa::kPortable;  // CPU kernels: the path (cpu_isa(), read once per op call)
};

// Checks every noise argument of `op` on `weight` (messages "quantnoise::<op>: <arg> must ...,
// got <value>") and returns them ready for the kernels. noise is "drop", "fake_quant" or
// "centroid"; centroids go with "centroid" only, scale/zero_point with "fake_quant" only, whose
// grid [quant_min, quant_max] spans 2 to 8 bits; scale > 0 and finite and zero_point in the grid
// are checked on the CPU (on a GPU that would cost a sync: the observers guarantee them).
NoiseArgs make_noise_args(std::string_view op, const at::Tensor& weight, const at::Tensor& seed, double p,
                          int64_t block_size, int64_t offset, bool rescale, std::string_view noise,
                          const std::optional<at::Tensor>& centroids, const std::optional<at::Tensor>& scale,
                          const std::optional<at::Tensor>& zero_point, int64_t quant_min, int64_t quant_max);

// Calls fn(kind) with the functor of args.kind for scalar_t (opmath_t: float, double for double);
// fn's return type must not depend on the kind.
template <typename scalar_t, typename opmath_t, typename Fn>
decltype(auto) with_noise_kind(const NoiseArgs& args, Fn&& fn) {
  switch (args.kind) {
    case NoiseKind::kFakeQuant:
      return fn(FakeQuantNoise<opmath_t>{args.scale.const_data_ptr<float>(), args.zero_point.const_data_ptr<int32_t>(),
                                         args.scale.numel(), static_cast<int32_t>(args.quant_min),
                                         static_cast<int32_t>(args.quant_max)});
    case NoiseKind::kCentroid:
      return fn(CentroidNoise<scalar_t, opmath_t>{args.centroids.const_data_ptr<scalar_t>(), args.centroids.size(0),
                                                  args.block_size});
    case NoiseKind::kDrop:
    default:
      return fn(DropNoise<opmath_t>{static_cast<opmath_t>(args.drop_scale)});
  }
}

}  // namespace quantnoise
