// Host helpers of the k-means ops shared by the CPU, CUDA and emulated CUDA launchers (kmeans_host.h).
#include "quantnoise/kmeans_host.h"

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

}  // namespace quantnoise
