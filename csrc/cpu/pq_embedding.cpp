// CPU kernel of quantnoise::pq_embedding: decodes only the rows looked up (DESIGN §3.3). Codes in
// the interchange layout [num_embeddings, n_blocks] (quantnoise/pq.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "quantnoise/checks.h"
#include "quantnoise/cpu_alloc.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/pq_host.h"

namespace quantnoise {

namespace {

template <typename scalar_t, typename code_t, typename index_t>
void gather_rows(const index_t* idx, int64_t n, const code_t* codes, int64_t n_blocks, const scalar_t* C, int64_t bs,
                 scalar_t* out) {
  const int64_t dim = n_blocks * bs;
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
        gather_rows<scalar_t, code_t, index_t>(ii.const_data_ptr<index_t>(), ii.numel(), cc.const_data_ptr<code_t>(),
                                               s.n_blocks, C.const_data_ptr<scalar_t>(), s.block_size,
                                               out.mutable_data_ptr<scalar_t>());
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CPU, m) { m.impl("pq_embedding", &pq_embedding_cpu); }

}  // namespace quantnoise
