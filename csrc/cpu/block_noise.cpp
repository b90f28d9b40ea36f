// CPU kernels of quantnoise::block_noise and block_noise_backward (DESIGN §3.1): one pass each,
// no mask tensor, one loop for every noise kind (the functors of quantnoise/noise_kinds.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "block_noise_cpu.h"
#include "philox_x8.h"
#include "quantnoise/checks.h"
#include "quantnoise/cpu_alloc.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/noise_host.h"
#include "quantnoise/noise_rows.h"
#include "vec.h"  // QN_ALWAYS_INLINE

namespace quantnoise {
namespace {

// Calls f(row, b - shift * blocks_per_row, noised) for the global blocks b in [b_begin, b_end) in
// order (row: the kind's parameters of row r - shift for b's row r; blocks_per_row blocks per row).
// shift != 0 visits one row of the whole weight that the tensor holds as row r - shift (block_noise's
// `rows`). The draws come eight Philox groups (32 blocks) at a time from draw_x8 (philox_x8.h: the
// AVX2 path's is the only target-specific code; the loops over entries are memory-bound and stay at
// the baseline ISA); with_mask = false skips them (noised = false).
template <bool kAvx2, typename Kind, typename F>
QN_ALWAYS_INLINE void visit_blocks(int64_t b_begin, int64_t b_end, int64_t blocks_per_row, int64_t shift,
                                   const BlockRng& rng, bool with_mask, const Kind& kind, F&& f) {
  int64_t r = b_begin / blocks_per_row, row_end = (r + 1) * blocks_per_row;
  auto row = kind.row(r - shift);
  uint32_t lanes[kLanesX8];
  const uint32_t last = static_cast<uint32_t>(rng.threshold - 1);  // noised iff lane <= last (threshold > 0)
  const bool any = with_mask && rng.threshold > 0;
  const int64_t local = shift * blocks_per_row;
  for (int64_t b0 = b_begin; b0 < b_end;) {
    const int64_t g0 = b0 / kBlocksPerDraw, b1 = std::min(b_end, (g0 + kGroupsX8) * kBlocksPerDraw);
    if (any) draw_x8<kAvx2>(rng, g0, lanes);
    for (int64_t b = b0; b < b1; ++b) {
      if (b == row_end) {  // blocks never straddle rows: block_size divides the row
        row = kind.row(++r - shift);
        row_end += blocks_per_row;
      }
      f(row, b - local, any && lanes[b - g0 * kBlocksPerDraw] <= last);
    }
    b0 = b1;
  }
}

// The blocks [first, first + n_blocks) of the weight in parallel, ~32 KiB of weight per task
// (centroid noise costs K distances per noised block: smaller tasks); f as visit_blocks's. With
// rows (int64 [n_blocks / blocks_per_row]), local row i is row rows[i] of the whole weight.
template <bool kAvx2, typename Kind, typename F>
QN_ALWAYS_INLINE void parallel_blocks(int64_t first, int64_t n_blocks, int64_t block_size, int64_t blocks_per_row,
                                      const int64_t* rows, const BlockRng& rng, bool with_mask, const Kind& kind,
                                      const F& f) {
  int64_t grain = std::max<int64_t>(1, 8192 / block_size);
  if constexpr (!Kind::kElementwise) grain = std::max<int64_t>(1, 65536 / (block_size * kind.K));
  if (rows != nullptr) {
    at::parallel_for(0, n_blocks / blocks_per_row, std::max<int64_t>(1, grain / blocks_per_row),
                     [&](int64_t i0, int64_t i1) {
                       for (int64_t i = i0; i < i1; ++i) {
                         const int64_t r = rows[i];
                         visit_blocks<kAvx2>(r * blocks_per_row, (r + 1) * blocks_per_row, blocks_per_row, r - i, rng,
                                             with_mask, kind, f);
                       }
                     });
    return;
  }
  grain = (grain + kLanesX8 - 1) / kLanesX8 * kLanesX8;  // whole Philox batches per task
  at::parallel_for(first, first + n_blocks, grain, [&](int64_t begin, int64_t end) {
    visit_blocks<kAvx2>(begin, end, blocks_per_row, 0, rng, with_mask, kind, f);
  });
}

// The forward: out[b] = noised(b) ? φ(in[b]) : kept(in[b]) for the local blocks of a chunk whose
// first block has global index `first` (or rows, see parallel_blocks). kBlock > 0 (a compile-time
// block length) unrolls the loop over a block into a few vector instructions; 0: any length.
template <bool kAvx2, int64_t kBlock, typename scalar_t, typename Kind>
QN_ALWAYS_INLINE void noise_body(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, int64_t first,
                                 int64_t n_blocks, int64_t runtime_block, int64_t blocks_per_row, const int64_t* rows,
                                 const BlockRng& rng, const Kind& kind) {
  const int64_t bs = kBlock > 0 ? kBlock : runtime_block;
  parallel_blocks<kAvx2>(
      first, n_blocks, bs, blocks_per_row, rows, rng, true, kind, [&](const auto& row, int64_t b, bool noised) {
        const int64_t o = (b - first) * bs;
        noise_block<std::decay_t<decltype(row)>, scalar_t, Kind::kElementwise>(row, in + o, out + o, bs, noised);
      });
}

// The backward: out = noise_grad(g, w) entry by entry (noise_kinds.h); the mask is drawn only for
// the dropout-style gradient (the straight-through one does not depend on it).
template <bool kAvx2, int64_t kBlock, typename scalar_t, typename Kind>
QN_ALWAYS_INLINE void grad_body(const scalar_t* __restrict__ g, const scalar_t* __restrict__ w,
                                scalar_t* __restrict__ out, int64_t n_blocks, int64_t runtime_block,
                                int64_t blocks_per_row, const int64_t* rows, const BlockRng& rng, bool straight_through,
                                const Kind& kind) {
  const int64_t bs = kBlock > 0 ? kBlock : runtime_block;
  parallel_blocks<kAvx2>(0, n_blocks, bs, blocks_per_row, rows, rng, !straight_through, kind,
                         [&](const auto& row, int64_t b, bool noised) {
                           for (int64_t i = b * bs; i < (b + 1) * bs; ++i) {
                             out[i] = noise_grad(row, g[i], w[i], noised, straight_through);
                           }
                         });
}

// Calls fn(avx2, block) for args, dtype scalar_t and kind: avx2 a std::bool_constant (the AVX2
// Philox runs on the avx2 and avx512 paths), block a std::integral_constant<int64_t, kBlock> (the
// block sizes of QN_DISPATCH_BLOCK_SIZE and 1, fairseq's per-weight scalar noise; else 0).
template <typename Fn>
void dispatch_path(const NoiseArgs& args, Fn&& fn) {
  const auto with_block = [&](auto avx2) {
    if (args.block_size == 1) return fn(avx2, std::integral_constant<int64_t, 1>{});
    QN_DISPATCH_BLOCK_SIZE(args.block_size, kBlock, [&] { fn(avx2, std::integral_constant<int64_t, kBlock>{}); });
  };
#if defined(QN_X86)
  if (args.isa != CpuIsa::kPortable) return with_block(std::true_type{});
#endif
  with_block(std::false_type{});
}

// The noise of args on the blocks of `in` (contiguous; rows as parallel_blocks's) into out.
void noise_cpu(const at::Tensor& in, at::Tensor& out, int64_t first_block, int64_t row_len, const int64_t* rows,
               const NoiseArgs& args) {
  if (in.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "block_noise_cpu", [&] {
    with_noise_kind<scalar_t, at::opmath_type<scalar_t>>(args, [&](const auto& kind) {
      dispatch_path(args, [&](auto avx2, auto block) {
        noise_body<decltype(avx2)::value, decltype(block)::value>(
            in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), first_block, in.numel() / args.block_size,
            args.block_size, row_len / args.block_size, rows, args.rng, kind);
      });
    });
  });
}

const int64_t* rows_ptr(const at::Tensor& rows) { return rows.defined() ? rows.const_data_ptr<int64_t>() : nullptr; }

at::Tensor block_noise_cpu(const at::Tensor& weight,  // [out, ...] float
                           const at::Tensor& seed,    // [] or [1] int64
                           double p, int64_t block_size, int64_t offset, bool rescale,
                           bool /*straight_through: the backward's (block_noise_backward)*/, c10::string_view noise,
                           const std::optional<at::Tensor>& centroids, const std::optional<at::Tensor>& scale,
                           const std::optional<at::Tensor>& zero_point, int64_t quant_min, int64_t quant_max,
                           const std::optional<at::Tensor>& rows) {
  const NoiseArgs args = make_noise_args("block_noise", weight, seed, p, block_size, offset, rescale, noise, centroids,
                                         scale, zero_point, quant_min, quant_max);
  const at::Tensor r = checked_noise_rows("block_noise", rows, weight);
  const at::Tensor w = weight.contiguous();
  at::Tensor out = empty_cpu_output(w.sizes(), w.options());
  noise_cpu(w, out, 0, w.numel() / std::max<int64_t>(1, w.size(0)), rows_ptr(r), args);
  return out;
}

at::Tensor block_noise_backward_cpu(const at::Tensor& grad,    // weight's shape and dtype
                                    const at::Tensor& weight,  // [out, ...] float
                                    const at::Tensor& seed, double p, int64_t block_size, int64_t offset, bool rescale,
                                    bool straight_through, c10::string_view noise,
                                    const std::optional<at::Tensor>& centroids, const std::optional<at::Tensor>& scale,
                                    const std::optional<at::Tensor>& zero_point, int64_t quant_min, int64_t quant_max,
                                    const std::optional<at::Tensor>& rows) {
  const NoiseArgs args = make_noise_args("block_noise_backward", weight, seed, p, block_size, offset, rescale, noise,
                                         centroids, scale, zero_point, quant_min, quant_max);
  const at::Tensor r = check_noise_grad_args(grad, weight, rows);
  const at::Tensor w = weight.contiguous(), g = grad.contiguous();
  at::Tensor out = empty_cpu_output(w.sizes(), w.options());
  if (w.numel() == 0) return out;
  const int64_t n_blocks = w.numel() / block_size, blocks_per_row = w.numel() / w.size(0) / block_size;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "block_noise_backward_cpu", [&] {
    with_noise_kind<scalar_t, at::opmath_type<scalar_t>>(args, [&](const auto& kind) {
      dispatch_path(args, [&](auto avx2, auto block) {
        grad_body<decltype(avx2)::value, decltype(block)::value>(
            g.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n_blocks,
            block_size, blocks_per_row, rows_ptr(r), args.rng, straight_through, kind);
      });
    });
  });
  return out;
}

}  // namespace

void noise_blocks_cpu(const at::Tensor& in, at::Tensor& out, int64_t first_block, int64_t row_len,
                      const NoiseArgs& args) {
  noise_cpu(in, out, first_block, row_len, nullptr, args);
}

TORCH_LIBRARY_IMPL(quantnoise, CPU, m) {
  m.impl("block_noise", &block_noise_cpu);
  m.impl("block_noise_backward", &block_noise_backward_cpu);
}

}  // namespace quantnoise
