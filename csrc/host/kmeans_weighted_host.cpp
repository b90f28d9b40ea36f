// Host helpers of the weighted k-means ops shared by the CPU, CUDA and emulated CUDA launchers.
#include "quantnoise/kmeans_weighted_host.h"

#include <ATen/ops/zeros.h>

namespace quantnoise {

KMeansWeightedUpdateIO kmeans_weighted_update_io(const KMeansWeightedShape& s, const at::Tensor& x,
                                                 const at::Tensor& codes, const at::Tensor& h, int64_t n_centroids) {
  const int64_t k = n_centroids;
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor h_sums = s.diag ? at::zeros({s.batch, k, s.dim}, f32) : at::zeros({s.batch, k, s.dim, s.dim}, f32);
  return {s,
          k,
          x.contiguous(),
          codes.contiguous(),
          h.contiguous(),
          h_sums,
          at::zeros({s.batch, k, s.dim}, f32),
          at::zeros({s.batch, k, s.dim}, f32),
          at::zeros({s.batch, k}, x.options().dtype(at::kLong))};
}

}  // namespace quantnoise
