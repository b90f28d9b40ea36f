// CPU kernels of quantnoise::noisy_linear and its input gradient: y = x . block_noise(W)^T + b
// without materialising the noised weight. W is noised a chunk of rows at a time into a
// buffer that stays in L2 and is multiplied from there, so the GEMM's read of W from memory is
// the only pass over W: a noisy training step costs about what a plain one does.
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "block_noise_cpu.h"
#include "quantnoise/checks.h"
#include "quantnoise/noise_host.h"

namespace quantnoise {
namespace {

// Rows of W per chunk: about 1 MiB, half of a core's L2, leaving room for x and y tiles.
int64_t chunk_rows(const at::Tensor& w) {
  const int64_t row_bytes = std::max<int64_t>(1, w.size(1) * static_cast<int64_t>(w.element_size()));
  return std::max<int64_t>(1, std::min<int64_t>(w.size(0), (int64_t{1} << 20) / row_bytes));
}

// Calls fn(thread, r0, n, noised_chunk) for the row chunks of the noised weight, in ONE parallel
// region: each thread noises its chunks into its own buffer and runs its GEMMs single-threaded
// (BLAS runs serially inside a parallel region). One fork-join per call, not two per chunk:
// with many small regions, a core taken by another process stalls every barrier.
template <typename Fn>
void parallel_noised_chunks(const at::Tensor& w, const NoiseArgs& args, Fn&& fn) {
  const int64_t rows = chunk_rows(w), in_features = w.size(1);
  const int64_t n_chunks = (w.size(0) + rows - 1) / rows;
  // Worker threads do not inherit this thread's dispatch state (e.g. "below autograd"): carry it.
  const at::ThreadLocalState state;
  at::parallel_for(0, n_chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    const at::ThreadLocalStateGuard guard(state);
    at::Tensor buffer = at::empty({rows, in_features}, w.options());
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t r0 = c * rows, n = std::min(rows, w.size(0) - r0);
      at::Tensor chunk = buffer.narrow(0, 0, n);
      noise_blocks_cpu(w.narrow(0, r0, n), chunk, r0 * in_features / args.block_size, in_features, args);
      fn(at::get_thread_num(), r0, n, chunk);
    }
  });
}

at::Tensor noisy_linear_cpu(const at::Tensor& input,                // [..., in]
                            const at::Tensor& weight,               // [out, in]
                            const std::optional<at::Tensor>& bias,  // [out] or None
                            const at::Tensor& seed, double p, int64_t block_size, int64_t offset, bool rescale,
                            bool /*straight_through: the autograd formula's (ops/noise.py)*/, c10::string_view noise,
                            const std::optional<at::Tensor>& centroids, const std::optional<at::Tensor>& scale,
                            const std::optional<at::Tensor>& zero_point, int64_t quant_min, int64_t quant_max) {
  check_noisy_linear_args(input, weight, bias);
  const NoiseArgs args = make_noise_args("noisy_linear", weight, seed, p, block_size, offset, rescale, noise, centroids,
                                         scale, zero_point, quant_min, quant_max);
  const at::Tensor w = weight.contiguous();
  const at::Tensor x = flatten_rows(input);
  at::Tensor y = at::empty({x.size(0), w.size(0)}, input.options());
  parallel_noised_chunks(w, args, [&](int, int64_t r0, int64_t n, const at::Tensor& chunk) {
    at::Tensor y_chunk = y.narrow(1, r0, n);
    if (bias.has_value()) {
      at::addmm_out(y_chunk, bias->narrow(0, r0, n), x, chunk.t());
    } else {
      at::mm_out(y_chunk, x, chunk.t());
    }
  });
  std::vector<int64_t> sizes(input.sizes().begin(), input.sizes().end() - 1);
  sizes.push_back(w.size(0));
  return y.view(sizes);
}

at::Tensor noisy_linear_backward_input_cpu(const at::Tensor& grad_output,  // [..., out]
                                           const at::Tensor& weight,       // [out, in]
                                           const at::Tensor& seed, double p, int64_t block_size, int64_t offset,
                                           bool rescale, c10::string_view noise,
                                           const std::optional<at::Tensor>& centroids,
                                           const std::optional<at::Tensor>& scale,
                                           const std::optional<at::Tensor>& zero_point, int64_t quant_min,
                                           int64_t quant_max) {
  check_noisy_linear_backward_args(grad_output, weight);
  const NoiseArgs args = make_noise_args("noisy_linear_backward_input", weight, seed, p, block_size, offset, rescale,
                                         noise, centroids, scale, zero_point, quant_min, quant_max);
  const at::Tensor w = weight.contiguous();
  const at::Tensor g = flatten_rows(grad_output);
  // One partial sum per thread (summed at the end): deterministic for a given thread count.
  at::Tensor partials = at::zeros({at::get_num_threads(), g.size(0), w.size(1)}, grad_output.options());
  parallel_noised_chunks(w, args, [&](int thread, int64_t r0, int64_t n, const at::Tensor& chunk) {
    partials[thread].addmm_(g.narrow(1, r0, n), chunk);
  });
  at::Tensor grad_input = partials.sum(0);
  std::vector<int64_t> sizes(grad_output.sizes().begin(), grad_output.sizes().end() - 1);
  sizes.push_back(w.size(1));
  return grad_input.view(sizes);
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CPU, m) {
  m.impl("noisy_linear", &noisy_linear_cpu);
  m.impl("noisy_linear_backward_input", &noisy_linear_backward_input_cpu);
}

}  // namespace quantnoise
