// CPU kernels of quantnoise::pq_embedding (decodes only the rows looked up) and its centroid
// gradient pq_embedding_backward (DESIGN §3.3). Codes in the interchange layout
// [num_embeddings, n_blocks] (quantnoise/pq.h). The block copy is unrolled for the block sizes
// iPQ uses: a row of 1024 floats is then 128 copies of 32 bytes from the L1-resident codebook.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "quantnoise/checks.h"
#include "quantnoise/cpu_alloc.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/pq_host.h"

namespace quantnoise {

namespace {

template <typename scalar_t, typename code_t, typename index_t, int64_t kBs>
void gather_rows(const index_t* idx, int64_t n, const code_t* codes, int64_t n_blocks, const scalar_t* C,
                 int64_t runtime_bs, scalar_t* out) {
  const int64_t bs = kBs > 0 ? kBs : runtime_bs, dim = n_blocks * bs;
  at::parallel_for(0, n, std::max<int64_t>(1, 8192 / std::max<int64_t>(dim, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const code_t* row = codes + static_cast<int64_t>(idx[i]) * n_blocks;
      scalar_t* dst = out + i * dim;
      for (int64_t j = 0; j < n_blocks; ++j) {
        const scalar_t* src = C + static_cast<int64_t>(row[j]) * bs;
        for (int64_t d = 0; d < bs; ++d) dst[j * bs + d] = src[d];
      }
    }
  });
}

// gc [K][bs] += grad's blocks by code; threads take rows and sum their own partial codebooks.
template <typename scalar_t, typename code_t, typename index_t, int64_t kBs>
void scatter_rows(const scalar_t* grad, const index_t* idx, int64_t n, const code_t* codes, int64_t n_blocks,
                  int64_t runtime_bs, int64_t K, scalar_t* gc) {
  const int64_t bs = kBs > 0 ? kBs : runtime_bs, dim = n_blocks * bs;
  const int64_t n_threads = at::get_num_threads();
  std::vector<scalar_t> parts(n_threads * K * bs, scalar_t(0));
  std::vector<char> used(n_threads, 0);
  at::parallel_for(0, n, std::max<int64_t>(1, 8192 / std::max<int64_t>(dim, 1)), [&](int64_t b, int64_t e) {
    const int64_t t = at::get_thread_num();
    used[t] = 1;
    scalar_t* part = parts.data() + t * K * bs;
    for (int64_t i = b; i < e; ++i) {
      const code_t* row = codes + static_cast<int64_t>(idx[i]) * n_blocks;
      const scalar_t* g = grad + i * dim;
      for (int64_t j = 0; j < n_blocks; ++j) {
        scalar_t* dst = part + static_cast<int64_t>(row[j]) * bs;
        for (int64_t d = 0; d < bs; ++d) dst[d] += g[j * bs + d];
      }
    }
  });
  for (int64_t t = 0; t < n_threads; ++t) {
    if (!used[t]) continue;
    const scalar_t* part = parts.data() + t * K * bs;
    for (int64_t e = 0; e < K * bs; ++e) gc[e] += part[e];
  }
}

at::Tensor pq_embedding_cpu(const at::Tensor& indices, const at::Tensor& codes, const at::Tensor& centroids,
                            const std::optional<at::Tensor>& centroid_scale,
                            const std::optional<at::Tensor>& centroid_zero_point,
                            std::optional<at::ScalarType> out_dtype) {
  const PQArgs a = check_pq_embedding_args(indices, codes, centroids, centroid_scale, centroid_zero_point, out_dtype);
  const PQShape& s = a.s;
  const at::ScalarType dtype = a.out_dtype;
  at::Tensor out = empty_cpu_output(a.out_shape, centroids.options().dtype(dtype));
  if (out.numel() == 0) return out;
  const at::Tensor C = pq_dequantized_centroids(centroids, centroid_scale, centroid_zero_point, dtype);
  const at::Tensor cc = codes.contiguous(), ii = indices.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "pq_embedding_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(ii.scalar_type(), "pq_embedding_cpu_idx", [&] {
      QN_DISPATCH_CODE_TYPES(codes.scalar_type(), "pq_embedding", [&] {
        QN_DISPATCH_BLOCK_SIZE(s.block_size, kBs, [&] {
          gather_rows<scalar_t, code_t, index_t, kBs>(
              ii.const_data_ptr<index_t>(), ii.numel(), cc.const_data_ptr<code_t>(), s.n_blocks,
              C.const_data_ptr<scalar_t>(), s.block_size, out.mutable_data_ptr<scalar_t>());
        });
      });
    });
  });
  return out;
}

at::Tensor pq_embedding_backward_cpu(const at::Tensor& grad_out, const at::Tensor& indices, const at::Tensor& codes,
                                     int64_t n_centroids) {
  const PQShape s = check_pq_embedding_backward_args(grad_out, indices, codes, n_centroids);
  const at::ScalarType compute = grad_out.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor gc = at::zeros({s.n_centroids, s.block_size}, grad_out.options().dtype(compute));
  if (indices.numel() == 0 || s.n_blocks == 0) return gc;
  const at::Tensor g = grad_out.to(compute).contiguous(), cc = codes.contiguous(), ii = indices.contiguous();
  AT_DISPATCH_FLOATING_TYPES(compute, "pq_embedding_backward_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(ii.scalar_type(), "pq_embedding_backward_cpu_idx", [&] {
      QN_DISPATCH_CODE_TYPES(codes.scalar_type(), "pq_embedding_backward", [&] {
        QN_DISPATCH_BLOCK_SIZE(s.block_size, kBs, [&] {
          scatter_rows<scalar_t, code_t, index_t, kBs>(g.const_data_ptr<scalar_t>(), ii.const_data_ptr<index_t>(),
                                                       ii.numel(), cc.const_data_ptr<code_t>(), s.n_blocks,
                                                       s.block_size, s.n_centroids, gc.mutable_data_ptr<scalar_t>());
        });
      });
    });
  });
  return gc;
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CPU, m) {
  m.impl("pq_embedding", &pq_embedding_cpu);
  m.impl("pq_embedding_backward", &pq_embedding_backward_cpu);
}

}  // namespace quantnoise
