// CPU kernel of quantnoise::block_noise (DESIGN §3.1): one pass, no mask tensor, one loop for
// every noise kind (the functors of quantnoise/noise_kinds.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "block_noise_cpu.h"
#include "quantnoise/cpu_alloc.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/noise_host.h"

namespace quantnoise {
namespace {

// out[b] = noised(b) ? φ(in[b]) : kept(in[b]) for the local blocks b of a chunk whose first
// block has global index `first` (row_len / block_size blocks per row of the whole weight).
// Groups of four global blocks share one Philox call. kBlock > 0 (QN_DISPATCH_BLOCK_SIZE) makes
// the block length a compile-time constant, so the loop over a block unrolls into a few vector
// instructions; kBlock == 0 handles any length.
template <typename scalar_t, int64_t kBlock, typename Kind>
void noise_blocks(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, int64_t first, int64_t n_blocks,
                  int64_t runtime_block, int64_t blocks_per_row, const BlockRng& rng, const Kind& kind) {
  const int64_t block_size = kBlock > 0 ? kBlock : runtime_block;
  const int64_t g_first = first / kBlocksPerDraw, g_last = (first + n_blocks - 1) / kBlocksPerDraw;
  // ~32 KiB of weight per task; centroid noise costs K distances per noised block: smaller grains.
  int64_t grain = std::max<int64_t>(1, 8192 / (kBlocksPerDraw * block_size));
  if constexpr (!Kind::kElementwise) grain = std::max<int64_t>(1, 65536 / (kBlocksPerDraw * block_size * kind.K));
  at::parallel_for(g_first, g_last + 1, grain, [&](int64_t g_begin, int64_t g_end) {
    const int64_t b_begin = std::max(first, g_begin * kBlocksPerDraw);
    int64_t r = b_begin / blocks_per_row, row_end = (r + 1) * blocks_per_row;
    auto row = kind.row(r);
    for (int64_t g = g_begin; g < g_end; ++g) {
      const U32x4 lanes = rng.draw_group(g);
      const int64_t b_end = std::min(first + n_blocks, (g + 1) * kBlocksPerDraw);
      for (int64_t b = std::max(first, g * kBlocksPerDraw); b < b_end; ++b) {
        if (b == row_end) {  // blocks never straddle rows: block_size divides the row
          row = kind.row(++r);
          row_end += blocks_per_row;
        }
        noise_block<decltype(row), scalar_t, Kind::kElementwise>(
            row, in + (b - first) * block_size, out + (b - first) * block_size, block_size, rng.noised(lanes, b));
      }
    }
  });
}

at::Tensor block_noise_cpu(const at::Tensor& weight,  // [out, ...] float
                           const at::Tensor& seed,    // [] or [1] int64
                           double p, int64_t block_size, int64_t offset, bool rescale,
                           bool /*straight_through: the autograd formula's (ops/noise.py)*/, c10::string_view noise,
                           const std::optional<at::Tensor>& centroids, const std::optional<at::Tensor>& scale,
                           const std::optional<at::Tensor>& zero_point, int64_t quant_min, int64_t quant_max) {
  const NoiseArgs args = make_noise_args("block_noise", weight, seed, p, block_size, offset, rescale, noise, centroids,
                                         scale, zero_point, quant_min, quant_max);
  const at::Tensor w = weight.contiguous();
  at::Tensor out = empty_cpu_output(w.sizes(), w.options());
  noise_blocks_cpu(w, out, 0, w.numel() / std::max<int64_t>(1, w.size(0)), args);
  return out;
}

}  // namespace

void noise_blocks_cpu(const at::Tensor& in, at::Tensor& out, int64_t first_block, int64_t row_len,
                      const NoiseArgs& args) {
  if (in.numel() == 0) return;
  const int64_t block_size = args.block_size;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "block_noise_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    with_noise_kind<scalar_t, opmath_t>(args, [&](const auto& kind) {
      QN_DISPATCH_BLOCK_SIZE(block_size, kBlock, [&] {
        noise_blocks<scalar_t, kBlock>(in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), first_block,
                                       in.numel() / block_size, block_size, row_len / block_size, args.rng, kind);
      });
    });
  });
}

TORCH_LIBRARY_IMPL(quantnoise, CPU, m) { m.impl("block_noise", &block_noise_cpu); }

}  // namespace quantnoise
