// Host helpers of the k-means ops shared by the CPU, CUDA and emulated CUDA launchers (kmeans_host.h).
#include "quantnoise/kmeans_host.h"

#include <ATen/ops/amax.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

namespace quantnoise {

KMeansUpdateIO kmeans_update_io(const at::Tensor& x, const at::Tensor& codes, int64_t n_centroids) {
  const int64_t batch = x.size(0), n = x.size(1), dim = x.size(2), k = n_centroids;
  return {batch,
          n,
          dim,
          k,
          x.contiguous(),
          codes.contiguous(),
          at::zeros({batch, k, dim}, x.options().dtype(at::kFloat)),
          at::zeros({batch, k}, x.options().dtype(at::kLong))};
}

at::Tensor kmeans_centroid_bounds(const at::Tensor& centroids) {
  const at::Tensor a = centroids.to(at::kFloat).abs();
  if (a.size(1) == 0 || a.size(2) == 0) return at::zeros({a.size(0)}, a.options());
  return at::where(at::isnan(a), at::zeros({}, a.options()), a).amax({1, 2});
}

}  // namespace quantnoise
