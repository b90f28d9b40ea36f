// CPU kernel of quantnoise::block_noise (DESIGN §3.1): one pass, no mask tensor.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "block_noise_cpu.h"
#include "quantnoise/checks.h"
#include "quantnoise/cpu_alloc.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/pq.h"

namespace quantnoise {
namespace {

// out[b] = noised(b) ? 0 : scale * in[b] for the local blocks b of a chunk whose first block
// has global index `first`. Groups of four global blocks share one Philox call. kBlock > 0
// (QN_DISPATCH_BLOCK_SIZE) makes the block length a compile-time constant, so the loop over a
// block unrolls into a few vector instructions; kBlock == 0 handles any length.
template <typename scalar_t, int64_t kBlock>
void drop_blocks(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, int64_t first, int64_t n_blocks,
                 int64_t runtime_block, const BlockRng& rng, double scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t block_size = kBlock > 0 ? kBlock : runtime_block;
  const opmath_t s = static_cast<opmath_t>(scale);
  const int64_t g_first = first / kBlocksPerDraw, g_last = (first + n_blocks - 1) / kBlocksPerDraw;
  // ~32 KiB of weight per task: small enough to balance, large enough to amortise.
  const int64_t grain = std::max<int64_t>(1, 8192 / (kBlocksPerDraw * block_size));
  at::parallel_for(g_first, g_last + 1, grain, [&](int64_t g_begin, int64_t g_end) {
    for (int64_t g = g_begin; g < g_end; ++g) {
      const U32x4 lanes = rng.draw_group(g);
      const int64_t b_end = std::min(first + n_blocks, (g + 1) * kBlocksPerDraw);
      for (int64_t b = std::max(first, g * kBlocksPerDraw); b < b_end; ++b) {
        const scalar_t* __restrict__ src = in + (b - first) * block_size;
        scalar_t* __restrict__ dst = out + (b - first) * block_size;
        // A dropped block is written as zeros (not 0 * w, which is NaN for an infinite w).
        if (rng.noised(lanes, b)) {
          for (int64_t i = 0; i < block_size; ++i) dst[i] = scalar_t(0);
        } else {
          for (int64_t i = 0; i < block_size; ++i) dst[i] = static_cast<scalar_t>(s * static_cast<opmath_t>(src[i]));
        }
      }
    }
  });
}

// noise="centroid": out[b] = noised(b) ? C[nearest(in[b])] : in[b] (s = 1), C [K][bs].
template <typename scalar_t>
void centroid_blocks(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, int64_t n_blocks, int64_t block_size,
                     const scalar_t* __restrict__ C, int64_t K, const BlockRng& rng) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t n_groups = (n_blocks + kBlocksPerDraw - 1) / kBlocksPerDraw;
  // A noised block costs K * block_size distance terms: small grains keep the threads balanced.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, K * block_size * kBlocksPerDraw));
  at::parallel_for(0, n_groups, grain, [&](int64_t g_begin, int64_t g_end) {
    for (int64_t g = g_begin; g < g_end; ++g) {
      const U32x4 lanes = rng.draw_group(g);
      const int64_t b_end = std::min(n_blocks, (g + 1) * kBlocksPerDraw);
      for (int64_t b = g * kBlocksPerDraw; b < b_end; ++b) {
        const scalar_t* src = in + b * block_size;
        if (rng.noised(lanes, b)) src = C + nearest_centroid<opmath_t>(src, C, K, block_size) * block_size;
        std::copy(src, src + block_size, out + b * block_size);
      }
    }
  });
}

at::Tensor block_noise_cpu(const at::Tensor& weight,  // [out, ...] float
                           const at::Tensor& seed,    // [] or [1] int64
                           double p, int64_t block_size, int64_t offset, bool rescale,
                           bool /*straight_through: the autograd formula's (ops/noise.py)*/, c10::string_view noise,
                           const std::optional<at::Tensor>& centroids) {
  check_block_noise_args(weight, seed, p, block_size, rescale, noise);
  check_block_noise_centroids(weight, block_size, noise, centroids);
  const at::Tensor w = weight.contiguous();
  at::Tensor out = empty_cpu_output(w.sizes(), w.options());
  if (noise == "centroid") {
    if (w.numel() == 0) return out;
    const at::Tensor C = centroids->contiguous();
    const BlockRng rng = make_block_rng(seed_value_on_cpu(seed), offset, p);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "block_noise_centroid_cpu", [&] {
      centroid_blocks<scalar_t>(w.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), w.numel() / block_size,
                                block_size, C.const_data_ptr<scalar_t>(), C.size(0), rng);
    });
    return out;
  }
  drop_blocks_cpu(w, out, 0, block_size, make_block_rng(seed_value_on_cpu(seed), offset, p),
                  rescale ? 1.0 / (1.0 - p) : 1.0);
  return out;
}

}  // namespace

void drop_blocks_cpu(const at::Tensor& in, at::Tensor& out, int64_t first_block, int64_t block_size,
                     const BlockRng& rng, double scale) {
  if (in.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "drop_blocks_cpu", [&] {
    QN_DISPATCH_BLOCK_SIZE(block_size, kBlock, [&] {
      drop_blocks<scalar_t, kBlock>(in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), first_block,
                                    in.numel() / block_size, block_size, rng, scale);
    });
  });
}

TORCH_LIBRARY_IMPL(quantnoise, CPU, m) { m.impl("block_noise", &block_noise_cpu); }

}  // namespace quantnoise
